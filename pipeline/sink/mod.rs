//! Sinks: Parquet tables for data teams, the Prometheus gauges and endpoint for SREs, and the
//! optional dead-letter topic.

#![deny(clippy::too_many_lines)]

pub mod compact;
pub mod dead_letter;
pub mod delta;
pub mod http;
pub mod parquet;
pub mod prometheus;
pub mod storage;

/// How the tables are laid out for readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableFormat {
    /// Delta Lake tables: each checkpoint's files of a table appear in one commit of its log,
    /// compaction is a transaction; query them through a Delta reader.
    #[default]
    Delta,
    /// Plain Parquet in Hive partitions, for readers that glob files: files appear by rename,
    /// and `_SUCCESS` marks an hour complete once compacted.
    Parquet,
}

impl TableFormat {
    /// The format of the tables under `storage`: Delta when any of `tables` has a log.
    ///
    /// # Errors
    /// When the storage fails.
    pub fn of(storage: &storage::Storage, tables: &[crate::table::TableSpec]) -> Result<Self, storage::StorageError> {
        for table in tables {
            if !storage.list(&format!("{}/_delta_log", table.name))?.is_empty() {
                return Ok(TableFormat::Delta);
            }
        }
        Ok(TableFormat::Parquet)
    }
}

impl std::str::FromStr for TableFormat {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "delta" => Ok(TableFormat::Delta),
            "parquet" => Ok(TableFormat::Parquet),
            other => Err(format!("{other:?} is not a table format (delta or parquet)")),
        }
    }
}

impl std::fmt::Display for TableFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TableFormat::Delta => "delta",
            TableFormat::Parquet => "parquet",
        })
    }
}
