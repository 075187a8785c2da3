//! `storepulse compact`: merges the files of each closed hour partition into one and marks the
//! partition with `_SUCCESS`, which readers can wait for.
//!
//! A merge never changes query results: the merged file holds exactly the rows of its inputs.
//! Its steps are ordered so that a crash at any point is repaired by the next run: the merged
//! file is staged and a manifest naming it and its inputs is written; the file is renamed into
//! the partition; the inputs are deleted; the manifest is deleted; `_SUCCESS` is written. A
//! leftover manifest means the crash came between; the next run finishes or undoes that merge
//! before anything else.

use crate::sink::parquet::{encode, hour_partition};
use crate::sink::storage::{Storage, StorageError};
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
    /// Partitions newly marked `_SUCCESS` (merged or already a single file).
    pub marked: usize,
    /// Partitions skipped because their hour is not closed yet.
    pub open: usize,
    /// Interrupted merges of an earlier run that were finished or undone.
    pub recovered: usize,
}

/// The record of a merge in flight, kept under `_staging/compaction/`.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    staged: String,
    output: String,
    inputs: Vec<String>,
}

const MANIFESTS: &str = "_staging/compaction";

/// Compacts every hour partition of `tables` whose hour ends at or before `closed_before_ms`.
///
/// # Errors
/// [`CompactError`] on the first failure; partitions done before it stay done, and a merge
/// interrupted by it is repaired by the next run.
pub fn compact(storage: &Storage, tables: &[&str], closed_before_ms: i64) -> Result<CompactReport, CompactError> {
    let mut report = CompactReport { recovered: recover(storage)?, ..CompactReport::default() };
    let stamp = crate::time::system_time_ms(std::time::SystemTime::now());
    for table in tables {
        let mut partitions: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for entry in storage.list(table)? {
            if let Some((dir, _)) = entry.key.rsplit_once('/') {
                partitions.entry(dir.to_owned()).or_default().push(entry.key);
            }
        }
        for (dir, keys) in partitions {
            let Some(hour) = partition_hour(&dir) else { continue };
            if hour + HOUR_MS > closed_before_ms {
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
    }
    Ok(report)
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

fn merge(storage: &Storage, dir: &str, inputs: Vec<String>, stamp: i64) -> Result<u64, CompactError> {
    let parquet_error = |message: String| CompactError::Parquet { partition: dir.to_owned(), message };
    let mut batches: Vec<RecordBatch> = Vec::new();
    for key in &inputs {
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
    Ok(rows as u64)
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
    use crate::sink::parquet::ParquetWriter;
    use crate::sink::storage::Location;
    use crate::table::{DeadLetterRow, Rows};

    const TABLES: [&str; 1] = ["dead_letters"];

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
        let mut writer = ParquetWriter::new(Storage::open(&location).expect("storage"), "1-1".into());
        for offset in 0..5 {
            write(&mut writer, dead_letter(H0 + offset * 1000, offset));
        }
        write(&mut writer, dead_letter(H0 + HOUR_MS, 99));
        let storage = Storage::open(&location).expect("storage");
        let hour0 = "dead_letters/dt=2025-11-11/hour=00";
        assert_eq!(storage.list(hour0).expect("list").len(), 5);

        // Only hour 00 is closed.
        let report = compact(&storage, &TABLES, H0 + HOUR_MS).expect("compact");
        assert_eq!((report.merged, report.files_before, report.rows, report.marked, report.open), (1, 5, 5, 1, 1));
        let keys: Vec<_> = storage.list(hour0).expect("list").into_iter().map(|e| e.key).collect();
        assert_eq!(keys.len(), 2, "one file and the marker: {keys:?}");
        assert!(keys.iter().any(|k| k.ends_with("/_SUCCESS")));
        assert_eq!(offsets(&storage, hour0), [0, 1, 2, 3, 4]);
        assert!(!storage.exists("dead_letters/dt=2025-11-11/hour=01/_SUCCESS").expect("head"));

        // A second run has nothing left to do.
        let again = compact(&storage, &TABLES, H0 + HOUR_MS).expect("compact");
        assert_eq!((again.merged, again.marked), (0, 0));
    }

    #[test]
    fn an_interrupted_merge_is_finished_by_the_next_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let location = Location::Local(dir.path().to_path_buf());
        let mut writer = ParquetWriter::new(Storage::open(&location).expect("storage"), "1-1".into());
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

        let report = compact(&storage, &TABLES, H0 + HOUR_MS).expect("compact");
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
