//! Parquet files in Hive-style hour partitions, `TABLE/dt=YYYY-MM-DD/hour=HH/part-….parquet`.
//! A checkpoint writes one zstd-compressed file per table and hour it has rows for, whole, and
//! it becomes visible only after the checkpoint that lists it is committed: a Delta commit adds
//! it ([`super::delta`]), or, for plain Parquet, it waits under `_staging/` and is renamed into
//! its partition. A reader never sees a partial or uncommitted file.

use crate::sink::TableFormat;
use crate::sink::storage::{Storage, StorageError};
use crate::table::{RowBuffer, Rows};
use arrow_array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

/// A failed Parquet write. The rows stay buffered and the write is retried at the next flush.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Storing or publishing a file failed (disk full, permissions, object store down, ...).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The Parquet or Arrow library refused the data (a bug).
    #[error("Parquet encoding of table {table}: {message}")]
    Encode {
        /// Table name.
        table: &'static str,
        /// Library error.
        message: String,
    },
}

/// The Hive partition directory of a UTC ms: `dt=YYYY-MM-DD/hour=HH`.
pub fn hour_partition(ms: i64) -> String {
    let stamp =
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64))
            .to_string();
    format!("dt={}/hour={}", &stamp[..10], &stamp[11..13])
}

/// Start of the UTC hour containing `ms`.
pub fn hour_start(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS) * HOUR_MS
}

const HOUR_MS: i64 = 3_600_000;

/// Staged files wait here, outside every table directory, until they are renamed into place.
pub const STAGING: &str = "_staging";

/// Encoding settings shared by the pipeline and compaction: zstd, statistics per page (min/max
/// for pruning), row groups big enough for scans, and no dictionary for [`UNIQUE_COLUMNS`].
pub fn writer_properties() -> WriterProperties {
    UNIQUE_COLUMNS
        .iter()
        .fold(WriterProperties::builder(), |builder, column| {
            builder.set_column_dictionary_enabled(ColumnPath::from(*column), false)
        })
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(concat!("storepulse ", env!("CARGO_PKG_VERSION")).to_owned())
        .build()
}

/// Columns whose values rarely repeat within a file. Their dictionary would hold every value,
/// as plain encoding does, plus an index per row, and the writer would keep them all in a hash
/// table until the file is done (or until 1 MiB, when it falls back to plain encoding): bytes
/// and memory for nothing. zstd still compresses what the ids share.
const UNIQUE_COLUMNS: [&str; 6] = ["visitor_id", "client_session_id", "order_id", "buyer_id", "event_id", "payload"];

/// Rows per row group: pruning works per row group, so not everything in one, but big enough
/// that metadata stays small.
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Encodes batches (of one schema) as one Parquet file in memory.
///
/// # Errors
/// Arrow or Parquet errors (a bug, or batches of different schemas).
pub fn encode(batches: &[RecordBatch]) -> Result<Vec<u8>, ParquetError> {
    encode_each(batches.iter().cloned().map(Ok))
}

/// Rows converted to Arrow per chunk: bounds the columns held at once, whatever a checkpoint
/// holds, and the file is the same (row groups are cut by [`ROW_GROUP_ROWS`], not by batch).
const ENCODE_CHUNK_ROWS: usize = 8 * 1024;

/// Writes batches, made as they are needed, into one Parquet file in memory.
fn encode_each(batches: impl Iterator<Item = Result<RecordBatch, ParquetError>>) -> Result<Vec<u8>, ParquetError> {
    let mut writer: Option<ArrowWriter<Vec<u8>>> = None;
    for batch in batches {
        let batch = batch?;
        let writer = match &mut writer {
            Some(writer) => writer,
            None => writer.insert(ArrowWriter::try_new(Vec::new(), batch.schema(), Some(writer_properties()))?),
        };
        writer.write(&batch)?;
    }
    let mut writer = writer.ok_or_else(|| ParquetError::General("no batches to encode".into()))?;
    // The file is written into this buffer at the end: size it once rather than by doublings.
    let expected = writer.in_progress_size();
    writer.inner_mut().reserve(expected + expected / 8 + 4096);
    writer.into_inner()
}

/// Writes Parquet files to a [`Storage`]. For plain Parquet tables a file is staged under
/// `_staging/` and published by [`publish`]; for Delta tables it is written in its partition
/// at once (no reader sees it until a commit adds it) with timestamps in microseconds.
pub struct ParquetWriter {
    storage: Storage,
    /// Distinguishes files of this process from those of earlier runs and other instances.
    instance: String,
    seq: u64,
    format: TableFormat,
}

/// A file written whole and the partition key it is published at. Checkpoint manifests list
/// these: publishing (a Delta commit, or a rename from `_staging/`) is repeated safely after a
/// crash.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StagedFile {
    /// Table name.
    pub table: String,
    /// Where the file waits: under `_staging/` (plain Parquet), or `key` itself (Delta).
    pub staged: String,
    /// Where readers find it once published.
    pub key: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Rows written.
    pub rows: u64,
    /// Start of its hour partition, UTC ms.
    #[serde(default)]
    pub hour_ms: i64,
    /// The checkpoint it was written for: a Delta table adds it in that checkpoint's commit.
    #[serde(default)]
    pub checkpoint: u64,
}

/// The files a flush staged, and the first failure, if any. Rows of failed hours are left in
/// the caller's buffer.
#[derive(Debug, Default)]
pub struct StageOutcome {
    /// Files written under `_staging/`, not yet visible to readers.
    pub staged: Vec<StagedFile>,
    /// Why some rows are still buffered.
    pub error: Option<SinkError>,
}

impl ParquetWriter {
    /// A writer staging into `storage` whose file names carry `instance`, unique to this
    /// process.
    pub fn new(storage: Storage, instance: String, format: TableFormat) -> Self {
        ParquetWriter { storage, instance, seq: 0, format }
    }

    /// Where files go.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Writes every table's buffered rows under `_staging/INSTANCE/CHECKPOINT/`, one file per
    /// table and hour partition. Written rows leave `rows`; rows whose file failed stay.
    pub fn stage_all(&mut self, rows: &mut Rows, checkpoint: u64) -> StageOutcome {
        let mut outcome = StageOutcome::default();
        for buffer in rows.buffers_mut() {
            let table = self.stage(buffer, checkpoint);
            outcome.staged.extend(table.staged);
            if let Some(error) = table.error {
                outcome.error.get_or_insert(error);
            }
        }
        outcome
    }

    /// Writes one table's buffered rows under `_staging/INSTANCE/CHECKPOINT/`, one file per
    /// hour partition. Written rows leave `rows`; rows whose file failed stay.
    ///
    /// The rows are encoded where they lie, a chunk at a time, rather than copied per hour and
    /// converted to Arrow all at once: sessions close once a window, so one checkpoint may stage
    /// a whole window's worth, and such copies would be a third of that checkpoint's memory.
    pub fn stage(&mut self, rows: &mut dyn RowBuffer, checkpoint: u64) -> StageOutcome {
        let mut outcome = StageOutcome::default();
        let mut failed_hours = Vec::new();
        for (hour, range) in rows.group_by(&hour_start) {
            let count = range.len() as u64;
            let batches =
                rows.batches(range, ENCODE_CHUNK_ROWS).map(|b| b.map_err(|e| ParquetError::General(e.to_string())));
            match self.stage_file(rows.spec().name, hour, count, batches, checkpoint) {
                Ok(staged) => outcome.staged.push(staged),
                Err(error) => {
                    failed_hours.push(hour);
                    outcome.error.get_or_insert(error);
                }
            }
        }
        rows.retain_groups(&hour_start, &failed_hours);
        outcome
    }

    /// Stages and at once publishes `rows` (no checkpoint protects them): for tools and tests.
    ///
    /// # Errors
    /// The first failure; rows of files not staged stay in `rows`.
    pub fn write(&mut self, rows: &mut Rows) -> Result<Vec<StagedFile>, SinkError> {
        let outcome = self.stage_all(rows, 0);
        for file in &outcome.staged {
            publish(&self.storage, file)?;
        }
        match outcome.error {
            Some(error) => Err(error),
            None => Ok(outcome.staged),
        }
    }

    fn stage_file(
        &mut self,
        table: &'static str,
        hour: i64,
        rows: u64,
        batches: impl Iterator<Item = Result<RecordBatch, ParquetError>>,
        checkpoint: u64,
    ) -> Result<StagedFile, SinkError> {
        let data = match self.format {
            TableFormat::Parquet => encode_each(batches),
            TableFormat::Delta => encode_each(batches.map(|b| b.and_then(|b| to_microseconds(&b)))),
        }
        .map_err(|e| SinkError::Encode { table, message: e.to_string() })?;
        let bytes = data.len() as u64;
        self.seq += 1;
        let name = format!("part-{}-{:06}.parquet", self.instance, self.seq);
        let key = format!("{table}/{}/{name}", hour_partition(hour));
        let staged = match self.format {
            TableFormat::Parquet => format!("{STAGING}/{}/{checkpoint:012}/{table}-{name}", self.instance),
            TableFormat::Delta => key.clone(),
        };
        self.storage.put(&staged, data)?;
        Ok(StagedFile { table: table.to_owned(), staged, key, bytes, rows, hour_ms: hour, checkpoint })
    }
}

/// `batch` with millisecond timestamps as microseconds, Delta's precision.
///
/// # Errors
/// Arrow errors, which mean a bug.
pub fn to_microseconds(batch: &RecordBatch) -> Result<RecordBatch, ParquetError> {
    let schema = super::delta::delta_schema(batch.schema().as_ref());
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| arrow_cast::cast(column, field.data_type()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ParquetError::General(e.to_string()))?;
    RecordBatch::try_new(schema, columns).map_err(|e| ParquetError::General(e.to_string()))
}

/// Makes a staged file visible at its partition key. Idempotent: when the staged file is gone,
/// an earlier attempt published it (and compaction may since have merged it).
///
/// # Errors
/// When the store fails.
pub fn publish(storage: &Storage, file: &StagedFile) -> Result<(), StorageError> {
    match storage.rename(&file.staged, &file.key) {
        Ok(()) => Ok(()),
        Err(_) if !storage.exists(&file.staged)? => Ok(()),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Channel;
    use crate::operators::{FunnelCounts, FunnelRow, SessionRow};
    use crate::sink::storage::Location;
    use crate::table::DeadLetterRow;
    use arrow_array::Int32Array;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    #[test]
    fn writes_a_readable_file_and_leaves_no_staging_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(&Location::Local(dir.path().to_path_buf())).expect("storage");
        let mut writer = ParquetWriter::new(storage, "1-1".into(), TableFormat::Parquet);
        let row = |window_start| FunnelRow {
            window_ms: 60_000,
            window_start,
            partition: 1,
            channel: Some(Channel::Social),
            device: None,
            counts: FunnelCounts { events: 9, visitors: 7, page_views: 4, step_visitors: [5, 4, 3, 2] },
            partial: false,
        };
        // 2026-11-11 00:59 and 01:00 (UTC), and 00:30 again: two hour partitions.
        let (h0, h1) = (1_762_819_200_000, 1_762_822_800_000);
        let mut rows = vec![row(h1 - 60_000), row(h1), row(h0 + 1_800_000)];
        let outcome = writer.stage(&mut rows, 3);
        assert!(outcome.error.is_none() && rows.is_empty());
        assert!(outcome.staged.iter().all(|f| f.staged.starts_with(STAGING) && f.staged.contains("/000000000003/")));
        assert!(writer.storage().list("funnel").expect("list").is_empty(), "nothing visible before publication");
        for file in &outcome.staged {
            publish(writer.storage(), file).expect("publish");
            publish(writer.storage(), file).expect("publishing again is a no-op");
        }
        let keys: Vec<_> = outcome.staged.iter().map(|p| (p.key.rsplit_once('/').expect("dir").0, p.rows)).collect();
        assert_eq!(keys, [("funnel/dt=2025-11-11/hour=00", 2), ("funnel/dt=2025-11-11/hour=01", 1)]);
        for published in &outcome.staged {
            let file = std::fs::File::open(dir.path().join(&published.key)).expect("published file");
            let reader = ParquetRecordBatchReaderBuilder::try_new(file).expect("parquet").build().expect("reader");
            let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().expect("batches");
            assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>() as u64, published.rows);
        }
        assert!(writer.storage().list(STAGING).expect("list").is_empty(), "staging must be empty after publish");
    }

    #[test]
    fn rows_of_many_chunks_and_two_hours_keep_their_order_in_one_row_group_per_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(&Location::Local(dir.path().to_path_buf())).expect("storage");
        let mut writer = ParquetWriter::new(storage, "1-1".into(), TableFormat::Parquet);
        let (h0, h1) = (1_762_819_200_000, 1_762_822_800_000);
        let n = 2 * ENCODE_CHUNK_ROWS + 5;
        // Hours interleaved; the partition column numbers the rows in arrival order.
        let mut rows: Vec<FunnelRow> = (0..n)
            .map(|i| FunnelRow {
                window_ms: 60_000,
                window_start: if i % 3 == 0 { h1 } else { h0 },
                partition: i32::try_from(i).expect("small"),
                channel: None,
                device: None,
                counts: FunnelCounts::default(),
                partial: false,
            })
            .collect();
        let outcome = writer.stage(&mut rows, 1);
        assert!(outcome.error.is_none() && rows.is_empty());
        let mut seen = Vec::new();
        for file in &outcome.staged {
            let bytes = std::fs::read(dir.path().join(&file.staged)).expect("staged file");
            let builder = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes)).expect("parquet");
            assert_eq!(builder.metadata().num_row_groups(), 1, "chunks are not row groups");
            let mut partitions = Vec::new();
            for batch in builder.build().expect("reader") {
                let batch = batch.expect("batch");
                let column = batch.column_by_name("source_partition").expect("column");
                let values = column.as_any().downcast_ref::<Int32Array>().expect("int32");
                partitions.extend(values.values().iter().copied());
            }
            assert_eq!(partitions.len() as u64, file.rows);
            assert!(partitions.is_sorted(), "arrival order within the hour");
            seen.extend(partitions);
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..i32::try_from(n).expect("small")).collect::<Vec<_>>(), "every row once");
    }

    #[test]
    fn ids_are_written_without_a_dictionary_and_labels_with_one() {
        let rows: Vec<SessionRow> = (0..2_000)
            .map(|i| SessionRow {
                window_start: 0,
                window_ms: 60_000,
                session_start: i,
                session_end: i + 5_000,
                partition: 0,
                visitor_id: format!("v-{i:08}"),
                client_session_id: Some(format!("s-{i:08}")),
                channel: Channel::ALL[i as usize % Channel::ALL.len()],
                device: crate::event::Device::ALL[0],
                landing_page: None,
                events: 3,
                page_views: 2,
                reached: [true, false, false, false],
                funnel_depth_in_order: 1,
                partial: false,
            })
            .collect();
        let batches =
            rows.batches(0..rows.len(), ENCODE_CHUNK_ROWS).map(|b| b.map_err(|e| ParquetError::General(e.to_string())));
        let bytes = bytes::Bytes::from(encode_each(batches).expect("encode"));
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).expect("parquet");
        let group = builder.metadata().row_group(0);
        let has_dictionary = |name: &str| {
            let column = group.columns().iter().find(|c| c.column_path().string() == name).expect("column");
            column.dictionary_page_offset().is_some()
        };
        assert!(!has_dictionary("visitor_id") && !has_dictionary("client_session_id"), "unique ids: plain");
        assert!(has_dictionary("channel"), "a label of few values keeps its dictionary");
        let read: usize = builder.build().expect("reader").map(|b| b.expect("batch").num_rows()).sum();
        assert_eq!(read, rows.len());
    }

    #[test]
    fn a_failed_write_keeps_the_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("lake");
        let mut writer = ParquetWriter::new(
            Storage::open(&Location::Local(root.clone())).expect("storage"),
            "1-1".into(),
            TableFormat::Parquet,
        );
        // A file where the staging directory should be: every put fails.
        std::fs::write(root.join(STAGING), b"not a directory").expect("blocker");
        let mut rows = vec![DeadLetterRow {
            rejected_at: 0,
            topic: "orders".into(),
            partition: 0,
            offset: 7,
            key: None,
            payload: b"{".to_vec(),
            payload_length: 0,
            payload_sha256: String::new(),
            reason: "malformed",
            detail: "eof".into(),
        }];
        let outcome = writer.stage(&mut rows, 1);
        assert!(outcome.staged.is_empty());
        assert!(outcome.error.expect("error").to_string().contains("_staging"));
        assert_eq!(rows.len(), 1, "rows stay buffered for the next flush");
    }
}
