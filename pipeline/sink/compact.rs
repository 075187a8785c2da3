//! `storepulse compact`: merges the files of each complete hour partition into one and marks
//! the hours complete. An hour is complete when the pipeline's low watermark (and the table's
//! allowed lateness) has passed it, as its checkpoints record (never by the wall clock, except
//! for the wall-clock-partitioned `dead_letters`); the caller passes that time per table.
//!
//! A merge never changes query results: the merged file holds exactly the rows of its inputs.
//!
//! **Delta tables**: the merge is one commit removing the inputs and adding the merged file, so
//! a reader sees one or the other; the table's `storepulse.complete` transaction records how far
//! hours are complete; removed files are deleted by a vacuum once older than the retention.
//!
//! **Plain Parquet**: the steps are ordered so that a crash at any point is repaired by the
//! next run: the merged file is staged and a manifest naming it and its inputs is written; the
//! file is renamed into the partition; the inputs are deleted; the manifest is deleted;
//! `_SUCCESS` is written. A leftover manifest means the crash came between; the next run
//! finishes or undoes that merge before anything else. Readers listing files while this runs
//! may see a partition twice or miss a file: query plain tables only where `_SUCCESS` is.

use crate::sink::delta::{DeltaError, DeltaLake, LiveFile};
use crate::sink::parquet::{StagedFile, encode, hour_partition};
use crate::sink::storage::{Storage, StorageError};
use crate::table::TableSpec;
use arrow_array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Name of the marker of a compacted, complete hour partition.
pub const SUCCESS: &str = "_SUCCESS";

const HOUR_MS: i64 = 3_600_000;

/// A compaction that could not finish; what was done before it is consistent.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    /// Reading, writing or deleting failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A Delta table's log could not be read or written.
    #[error(transparent)]
    Delta(#[from] DeltaError),
    /// A file could not be decoded or the merged file encoded.
    #[error("Parquet in {partition}: {message}")]
    Parquet {
        /// The partition being merged.
        partition: String,
        /// Library error.
        message: String,
    },
}

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Partitions merged (more than one file became one).
    pub merged: usize,
    /// Files those partitions had before.
    pub files_before: usize,
    /// Rows in the merged files.
    pub rows: u64,
    /// Partitions newly marked complete (merged or already a single file).
    pub marked: usize,
    /// Partitions skipped because their hour is not complete yet.
    pub open: usize,
    /// Interrupted merges of an earlier run that were finished or undone (plain Parquet).
    pub recovered: usize,
    /// Files deleted by vacuums (Delta: removed longer ago than the retention, or never added).
    pub vacuumed: usize,
}

/// The record of a merge in flight, kept under `_staging/compaction/`.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    staged: String,
    output: String,
    inputs: Vec<String>,
}

const MANIFESTS: &str = "_staging/compaction";

/// Compacts every complete hour partition of `tables`: those ending at or before the table's
/// time in `complete_through` (a table without one has none complete). Delta tables are then
/// vacuumed: of files removed longer than `retention` ago, and of files never committed that
/// are older than that and than `debris_grace`.
///
/// # Errors
/// [`CompactError`] on the first failure; partitions done before it stay done, and a merge
/// interrupted by it is repaired by the next run.
pub fn compact(
    storage: &Storage,
    tables: &[TableSpec],
    complete_through: &BTreeMap<String, i64>,
    (retention, debris_grace): (std::time::Duration, std::time::Duration),
) -> Result<CompactReport, CompactError> {
    let mut report = CompactReport { recovered: recover(storage)?, ..CompactReport::default() };
    let mut lake = DeltaLake::new(storage.clone());
    for table in tables {
        let complete = complete_through.get(table.name).copied().unwrap_or(i64::MIN);
        if lake.exists(table.name)? {
            compact_delta(&mut lake, table, complete, (retention, debris_grace), &mut report)?;
        } else {
            compact_plain(storage, table.name, complete, &mut report)?;
        }
    }
    Ok(report)
}

/// Merges each complete hour of a Delta table in a commit of its own and records how far
/// hours are complete.
fn compact_delta(
    lake: &mut DeltaLake,
    table: &TableSpec,
    complete: i64,
    (retention, debris_grace): (std::time::Duration, std::time::Duration),
    report: &mut CompactReport,
) -> Result<(), CompactError> {
    let marked_before = lake.complete_through(table)?.unwrap_or(i64::MIN);
    let stamp = crate::time::system_time_ms(std::time::SystemTime::now());
    for (hour, files) in lake.live_files(table)? {
        if hour + HOUR_MS > complete {
            report.open += 1;
            continue;
        }
        if files.len() > 1 {
            report.files_before += files.len();
            let merged = merge_live(lake.storage(), table.name, hour, &files, stamp)?;
            report.rows += merged.rows;
            crate::crash::point("compact-merged");
            lake.replace(table, &files, &merged, complete)?;
            crate::crash::point("compact-replaced");
            report.merged += 1;
        }
        report.marked += usize::from(hour + HOUR_MS > marked_before);
    }
    if complete > marked_before && complete > i64::MIN {
        lake.mark_complete(table, complete)?;
    }
    report.vacuumed += lake.vacuum(table, retention, debris_grace)?;
    Ok(())
}

/// Writes the rows of `files` (one hour of a Delta table) as one file in their partition; no
/// reader sees it until a commit adds it.
fn merge_live(
    storage: &Storage,
    table: &str,
    hour: i64,
    files: &[LiveFile],
    stamp: i64,
) -> Result<StagedFile, CompactError> {
    let dir = format!("{table}/{}", hour_partition(hour));
    let keys: Vec<String> = files.iter().map(|f| format!("{table}/{}", f.path)).collect();
    let (data, rows) = merged(storage, &dir, &keys)?;
    let key = format!("{dir}/part-compacted-{stamp}.parquet");
    let bytes = data.len() as u64;
    storage.put(&key, data)?;
    Ok(StagedFile { table: table.to_owned(), staged: key.clone(), key, bytes, rows, hour_ms: hour, checkpoint: 0 })
}

/// Merges each complete hour of a plain Parquet table and marks it `_SUCCESS`.
fn compact_plain(
    storage: &Storage,
    table: &str,
    complete: i64,
    report: &mut CompactReport,
) -> Result<(), CompactError> {
    let stamp = crate::time::system_time_ms(std::time::SystemTime::now());
    let mut partitions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in storage.list(table)? {
        if let Some((dir, _)) = entry.key.rsplit_once('/') {
            partitions.entry(dir.to_owned()).or_default().push(entry.key);
        }
    }
    for (dir, keys) in partitions {
        let Some(hour) = partition_hour(&dir) else { continue };
        if hour + HOUR_MS > complete {
            report.open += 1;
            continue;
        }
        let marked = keys.iter().any(|key| key.ends_with(&format!("/{SUCCESS}")));
        let files: Vec<String> = keys.into_iter().filter(|key| key.ends_with(".parquet")).collect();
        if files.len() > 1 {
            report.files_before += files.len();
            report.rows += merge(storage, &dir, files, stamp)?;
            report.merged += 1;
        } else if marked {
            continue;
        }
        storage.put(&format!("{dir}/{SUCCESS}"), Vec::new())?;
        report.marked += 1;
    }
    Ok(())
}

/// The hour start of a `table/dt=YYYY-MM-DD/hour=HH` directory, or `None` for anything else.
fn partition_hour(dir: &str) -> Option<i64> {
    let mut parts = dir.rsplit('/');
    let hour: i64 = parts.next()?.strip_prefix("hour=")?.parse().ok()?;
    let date = parts.next()?.strip_prefix("dt=")?;
    let midnight = humantime::parse_rfc3339(&format!("{date}T00:00:00Z")).ok()?;
    let ms = i64::try_from(midnight.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis()).ok()?;
    let start = ms + hour * HOUR_MS;
    // Only directories this module would have named.
    (dir.ends_with(&hour_partition(start))).then_some(start)
}

/// The rows of `inputs` (files of partition `dir`) as one Parquet file, and how many.
fn merged(storage: &Storage, dir: &str, inputs: &[String]) -> Result<(Vec<u8>, u64), CompactError> {
    let parquet_error = |message: String| CompactError::Parquet { partition: dir.to_owned(), message };
    let mut batches: Vec<RecordBatch> = Vec::new();
    for key in inputs {
        let reader = ParquetRecordBatchReaderBuilder::try_new(storage.get(key)?)
            .and_then(|builder| builder.build())
            .map_err(|e| parquet_error(format!("{key}: {e}")))?;
        for batch in reader {
            batches.push(batch.map_err(|e| parquet_error(format!("{key}: {e}")))?);
        }
    }
    if let Some(first) = batches.first()
        && let Some(other) = batches.iter().find(|b| b.schema() != first.schema())
    {
        return Err(parquet_error(format!(
            "files have different schemas (written by different storepulse versions?): {:?} vs {:?}; left as is",
            first.schema().fields().len(),
            other.schema().fields().len()
        )));
    }
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let data = encode(&batches).map_err(|e| parquet_error(e.to_string()))?;
    Ok((data, rows as u64))
}

fn merge(storage: &Storage, dir: &str, inputs: Vec<String>, stamp: i64) -> Result<u64, CompactError> {
    let parquet_error = |message: String| CompactError::Parquet { partition: dir.to_owned(), message };
    let (data, rows) = merged(storage, dir, &inputs)?;
    let name = format!("part-compacted-{stamp}.parquet");
    let manifest = Manifest {
        staged: format!("{MANIFESTS}/{}-{name}", dir.replace('/', "-")),
        output: format!("{dir}/{name}"),
        inputs,
    };
    let manifest_key = format!("{}.json", manifest.staged);
    storage.put(&manifest.staged, data)?;
    let json = serde_json::to_vec(&manifest).map_err(|e| parquet_error(e.to_string()))?;
    storage.put(&manifest_key, json)?;
    finish(storage, &manifest_key, &manifest)?;
    Ok(rows)
}

/// Publishes a staged merge (if not yet) and removes its inputs and manifest.
fn finish(storage: &Storage, manifest_key: &str, manifest: &Manifest) -> Result<(), StorageError> {
    if storage.exists(&manifest.staged)? {
        storage.rename(&manifest.staged, &manifest.output)?;
    }
    for input in &manifest.inputs {
        storage.delete(input)?;
    }
    storage.delete(manifest_key)
}

/// Finishes merges an earlier run left half done. A manifest exists only once its staged file
/// is complete, so every manifest can be finished.
fn recover(storage: &Storage) -> Result<usize, CompactError> {
    let mut recovered = 0;
    for entry in storage.list(MANIFESTS)? {
        if let Some(staged) = entry.key.strip_suffix(".json") {
            let manifest: Manifest = match serde_json::from_slice(&storage.get(&entry.key)?) {
                Ok(manifest) => manifest,
                Err(error) => {
                    // Written in one put, so a torn manifest is not expected; drop it and its file.
                    tracing::warn!(key = %entry.key, %error, "unreadable compaction manifest; discarding it");
                    storage.delete(staged)?;
                    storage.delete(&entry.key)?;
                    continue;
                }
            };
            finish(storage, &entry.key, &manifest)?;
            recovered += 1;
        }
    }
    // Staged merges without a manifest never became visible.
    for entry in storage.list(MANIFESTS)? {
        if !entry.key.ends_with(".json") && !storage.exists(&format!("{}.json", entry.key))? {
            storage.delete(&entry.key)?;
        }
    }
    Ok(recovered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::TableFormat;
    use crate::sink::parquet::ParquetWriter;
    use crate::sink::storage::Location;
    use crate::table::{DeadLetterRow, Rows};

    const TABLES: [TableSpec; 1] = [TableSpec::of::<DeadLetterRow>()];

    fn complete(through: i64) -> BTreeMap<String, i64> {
        BTreeMap::from([("dead_letters".to_owned(), through)])
    }

    const RETENTION: (std::time::Duration, std::time::Duration) =
        (std::time::Duration::from_secs(3_600), std::time::Duration::from_secs(900));

    fn write(writer: &mut ParquetWriter, row: DeadLetterRow) {
        let mut rows = Rows::default();
        rows.push(row);
        writer.write(&mut rows).expect("write");
    }

    fn dead_letter(rejected_at: i64, offset: i64) -> DeadLetterRow {
        DeadLetterRow {
            rejected_at,
            topic: "orders".into(),
            partition: 1,
            offset,
            key: None,
            payload: vec![b'{'],
            payload_length: 0,
            payload_sha256: String::new(),
            reason: "malformed",
            detail: "eof".into(),
        }
    }

    fn offsets(storage: &Storage, dir: &str) -> Vec<i64> {
        let mut offsets = Vec::new();
        for entry in storage.list(dir).expect("list").iter().filter(|e| e.key.ends_with(".parquet")) {
            let reader = ParquetRecordBatchReaderBuilder::try_new(storage.get(&entry.key).expect("get"))
                .expect("parquet")
                .build()
                .expect("reader");
            for batch in reader {
                let batch = batch.expect("batch");
                let column = batch.column_by_name("source_offset").expect("column");
                let values = column.as_any().downcast_ref::<arrow_array::Int64Array>().expect("int64");
                offsets.extend(values.iter().flatten());
            }
        }
        offsets.sort_unstable();
        offsets
    }

    const H0: i64 = 1_762_819_200_000; // 2025-11-11 00:00 UTC

    #[test]
    fn merges_closed_hours_into_one_file_with_the_same_rows_and_marks_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let location = Location::Local(dir.path().to_path_buf());
        let mut writer =
            ParquetWriter::new(Storage::open(&location).expect("storage"), "1-1".into(), TableFormat::Parquet);
        for offset in 0..5 {
            write(&mut writer, dead_letter(H0 + offset * 1000, offset));
        }
        write(&mut writer, dead_letter(H0 + HOUR_MS, 99));
        let storage = Storage::open(&location).expect("storage");
        let hour0 = "dead_letters/dt=2025-11-11/hour=00";
        assert_eq!(storage.list(hour0).expect("list").len(), 5);

        // Only hour 00 is closed.
        let report = compact(&storage, &TABLES, &complete(H0 + HOUR_MS), RETENTION).expect("compact");
        assert_eq!((report.merged, report.files_before, report.rows, report.marked, report.open), (1, 5, 5, 1, 1));
        let keys: Vec<_> = storage.list(hour0).expect("list").into_iter().map(|e| e.key).collect();
        assert_eq!(keys.len(), 2, "one file and the marker: {keys:?}");
        assert!(keys.iter().any(|k| k.ends_with("/_SUCCESS")));
        assert_eq!(offsets(&storage, hour0), [0, 1, 2, 3, 4]);
        assert!(!storage.exists("dead_letters/dt=2025-11-11/hour=01/_SUCCESS").expect("head"));

        // A second run has nothing left to do.
        let again = compact(&storage, &TABLES, &complete(H0 + HOUR_MS), RETENTION).expect("compact");
        assert_eq!((again.merged, again.marked), (0, 0));
    }

    #[test]
    fn a_delta_table_merges_complete_hours_in_one_commit_and_records_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(&Location::Local(dir.path().to_path_buf())).expect("storage");
        let mut writer = ParquetWriter::new(storage.clone(), "1-1".into(), TableFormat::Delta);
        let mut lake = DeltaLake::new(storage.clone());
        for (checkpoint, (at, offset)) in [(H0, 0), (H0 + 1, 1), (H0 + 2, 2), (H0 + HOUR_MS, 3)].into_iter().enumerate()
        {
            let mut rows = Rows::default();
            rows.push(dead_letter(at, offset));
            let files = writer.stage_all(&mut rows, checkpoint as u64 + 1).staged;
            lake.append(&TABLES[0], &files, "1-1", checkpoint as i64 + 1, None).expect("append");
        }
        let before = lake.live_files(&TABLES[0]).expect("log");
        assert_eq!(before.values().map(Vec::len).collect::<Vec<_>>(), [3, 1]);

        let report = compact(&storage, &TABLES, &complete(H0 + HOUR_MS), RETENTION).expect("compact");
        assert_eq!((report.merged, report.files_before, report.rows, report.marked, report.open), (1, 3, 3, 1, 1));
        let after = lake.live_files(&TABLES[0]).expect("log");
        assert_eq!(after.values().map(Vec::len).collect::<Vec<_>>(), [1, 1]);
        assert_eq!(lake.complete_through(&TABLES[0]).expect("log"), Some(H0 + HOUR_MS));
        let merged = storage.get(&format!("dead_letters/{}", after[&H0][0].path)).expect("get");
        let reader = ParquetRecordBatchReaderBuilder::try_new(merged).expect("parquet").build().expect("reader");
        assert_eq!(reader.map(|batch| batch.expect("batch").num_rows()).sum::<usize>(), 3);
        assert_eq!(report.vacuumed, 0, "the merged inputs stay for the retention period");
        assert_eq!(storage.list("dead_letters/dt=2025-11-11/hour=00").expect("list").len(), 4);
        assert!(!storage.exists("dead_letters/dt=2025-11-11/hour=00/_SUCCESS").expect("head"), "no marker files");

        let again = compact(&storage, &TABLES, &complete(H0 + HOUR_MS), RETENTION).expect("compact");
        assert_eq!((again.merged, again.marked), (0, 0));
        let now = (std::time::Duration::ZERO, std::time::Duration::ZERO);
        assert_eq!(compact(&storage, &TABLES, &complete(H0 + HOUR_MS), now).expect("compact").vacuumed, 3);
    }

    #[test]
    fn an_interrupted_merge_is_finished_by_the_next_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let location = Location::Local(dir.path().to_path_buf());
        let mut writer =
            ParquetWriter::new(Storage::open(&location).expect("storage"), "1-1".into(), TableFormat::Parquet);
        for offset in 0..3 {
            write(&mut writer, dead_letter(H0, offset));
        }
        let storage = Storage::open(&location).expect("storage");
        let hour0 = "dead_letters/dt=2025-11-11/hour=00";
        let inputs: Vec<_> = storage.list(hour0).expect("list").into_iter().map(|e| e.key).collect();
        // Simulate a crash after the merged file was published and one input deleted.
        let data = storage.get(&inputs[0]).expect("get");
        let manifest = Manifest {
            staged: format!("{MANIFESTS}/x.parquet"),
            output: format!("{hour0}/part-compacted-1.parquet"),
            inputs: inputs.clone(),
        };
        // The "merged" file here is just the first input (the test checks the bookkeeping).
        storage.put(&manifest.output, data).expect("put");
        storage.put(&format!("{MANIFESTS}/x.parquet.json"), serde_json::to_vec(&manifest).expect("json")).expect("put");
        storage.delete(&inputs[1]).expect("delete");
        // A staged merge without manifest: never visible, must go.
        storage.put(&format!("{MANIFESTS}/orphan.parquet"), vec![1, 2, 3]).expect("put");

        let report = compact(&storage, &TABLES, &complete(H0 + HOUR_MS), RETENTION).expect("compact");
        assert_eq!(report.recovered, 1);
        assert!(storage.list(MANIFESTS).expect("list").is_empty());
        assert_eq!(offsets(&storage, hour0), [0], "inputs named by the manifest are gone, its output stays");
    }

    #[test]
    fn reads_only_directories_it_names() {
        assert_eq!(partition_hour("funnel/dt=2025-11-11/hour=00"), Some(H0));
        assert_eq!(partition_hour("funnel/dt=2025-11-11/hour=23"), Some(H0 + 23 * HOUR_MS));
        assert_eq!(partition_hour("funnel/dt=2025-11-11/hour=24"), None);
        assert_eq!(partition_hour("funnel/dt=2025-11-11"), None);
        assert_eq!(partition_hour("funnel/somewhere/else"), None);
    }
}
