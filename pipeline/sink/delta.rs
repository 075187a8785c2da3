//! Delta Lake tables: each table's Parquet files become visible to readers through one commit
//! of its transaction log, so a reader sees a checkpoint's rows of a table all at once or not
//! at all, and a compaction's merged file or its inputs, never both.
//!
//! storepulse writes the Parquet itself and commits `add` actions (no query engine needed).
//! Every commit of a checkpoint's files carries a `txn` action, application id = the writing
//! instance, version = the checkpoint's number: a commit repeated after a crash finds its
//! version already in the table and is skipped, which is Delta's own idempotent streaming
//! write. Compaction commits `remove` and `add` actions together, as Delta's optimize does;
//! removed files are deleted by a vacuum after a retention period, so that readers of the
//! previous version can finish.
//!
//! Tables are partitioned like the Hive layout, by `dt` (date) and `hour` (integer) of the
//! partition time; those two columns are in the table's schema, not in its files.
//!
//! Commits need put-if-absent from the storage: local directories have it; on S3 it is a
//! conditional write (`If-None-Match: *`, object_store's default; AWS S3, MinIO and R2 honour
//! it). A store without it cannot hold storepulse's Delta tables.

use super::parquet::StagedFile;
use super::storage::{Storage, StorageError};
use crate::table::TableSpec;
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake_core::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake_core::kernel::{Action, Add, Remove, StructField, StructType, Transaction};
use deltalake_core::logstore::object_store::ObjectStore;
use deltalake_core::logstore::{LogStore, LogStoreFactory, StorageConfig, logstore_factories};
use deltalake_core::operations::create::CreateBuilder;
use deltalake_core::operations::vacuum::{VacuumBuilder, VacuumMode};
use deltalake_core::protocol::{DeltaOperation, OutputMode, SaveMode};
use deltalake_core::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Once};
use url::Url;

/// The partition columns of every table.
pub const PARTITION_COLUMNS: [&str; 2] = ["dt", "hour"];

/// The application id of the `txn` whose version is the UTC ms before which every hour
/// partition of the table is complete (see `docs/tables.md`).
pub const COMPLETE_APP_ID: &str = "storepulse.complete";

/// Key of storepulse's own fields in a commit's `commitInfo`.
const COMMIT_INFO_KEY: &str = "storepulse";

/// A Delta operation that failed; what it committed before stays committed.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// The storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// delta-rs refused or failed (log I/O, a conflicting commit, a malformed log).
    #[error("Delta table {table}: {source}")]
    Table {
        /// The table.
        table: String,
        /// What delta-rs said (boxed: it is large, and errors travel by value).
        source: Box<DeltaTableError>,
    },
    /// The table's schema is not one storepulse can write (a bug).
    #[error("Delta table {table}: schema: {message}")]
    Schema {
        /// The table.
        table: String,
        /// What is wrong.
        message: String,
    },
}

/// A data file of a table as its log lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveFile {
    /// Path relative to the table root.
    pub path: String,
    /// Size in bytes.
    pub size: i64,
    /// Start of its hour partition, UTC ms.
    pub hour_ms: i64,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Committed as this table version.
    Committed(i64),
    /// The table already holds this application's transaction of this version or a later
    /// one: the files were committed before (a replay after a crash).
    AlreadyCommitted,
}

/// The Delta tables under one storage root.
pub struct DeltaLake {
    storage: Storage,
    /// Loaded tables, by name.
    tables: BTreeMap<String, DeltaTable>,
}

impl DeltaLake {
    /// The Delta tables under `storage`'s root.
    pub fn new(storage: Storage) -> Self {
        register_s3_log_store();
        DeltaLake { storage, tables: BTreeMap::new() }
    }

    /// The storage the tables live on.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Whether `table` is a Delta table (its log exists).
    ///
    /// # Errors
    /// When the storage fails.
    pub fn exists(&self, table: &str) -> Result<bool, DeltaError> {
        Ok(!self.storage.list(&format!("{table}/_delta_log"))?.is_empty())
    }

    fn fail(table: &str) -> impl Fn(DeltaTableError) -> DeltaError + '_ {
        move |source| DeltaError::Table { table: table.to_owned(), source: Box::new(source) }
    }

    /// `table` at its newest version, created (empty, with `spec`'s schema) if missing.
    fn table(&mut self, spec: &TableSpec) -> Result<&mut DeltaTable, DeltaError> {
        let name = spec.name;
        let (url, store) = self.storage.url_of(name)?;
        if !self.tables.contains_key(name) {
            let table = DeltaTableBuilder::from_url(url.clone())
                .map_err(Self::fail(name))?
                .with_storage_backend(Arc::clone(&store), url.clone())
                .build()
                .map_err(Self::fail(name))?;
            self.tables.insert(name.to_owned(), table);
        }
        // Loading a missing table fails loudly inside delta-rs; a look at the log says first.
        let missing = self.tables.get(name).is_some_and(|t| t.version().is_none()) && !self.exists(name)?;
        let storage = self.storage.clone();
        let table = self.tables.get_mut(name).unwrap_or_else(|| unreachable!("inserted above"));
        let loaded =
            if missing { Err(DeltaTableError::NotATable(name.into())) } else { storage.block_on(table.load()) };
        match loaded {
            Ok(()) => {}
            Err(DeltaTableError::NotATable(_)) => {
                let columns =
                    delta_columns(spec).map_err(|message| DeltaError::Schema { table: name.into(), message })?;
                let created = storage.block_on(
                    CreateBuilder::new()
                        .with_log_store(table.log_store())
                        .with_table_name(name)
                        .with_columns(columns)
                        .with_partition_columns(PARTITION_COLUMNS)
                        .with_save_mode(SaveMode::Ignore)
                        .into_future(),
                );
                *table = created.map_err(Self::fail(name))?;
                storage.block_on(table.load()).map_err(Self::fail(name))?;
            }
            Err(source) => return Err(Self::fail(name)(source)),
        }
        Ok(table)
    }

    /// The version of `app_id`'s last transaction in `table`, if any.
    fn app_version(&mut self, spec: &TableSpec, app_id: &str) -> Result<Option<i64>, DeltaError> {
        let storage = self.storage.clone();
        let table = self.table(spec)?;
        let log_store = table.log_store();
        let state = table.snapshot().map_err(Self::fail(spec.name))?;
        storage.block_on(state.transaction_version(log_store.as_ref(), app_id)).map_err(Self::fail(spec.name))
    }

    /// Adds `files` (written under `spec`'s table directory) to the table in one commit, as
    /// `app_id`'s transaction `version`, unless the table holds that transaction already.
    /// `complete_through` goes into the commit's metadata.
    ///
    /// # Errors
    /// When the log cannot be read or written; nothing was committed then.
    pub fn append(
        &mut self,
        spec: &TableSpec,
        files: &[StagedFile],
        app_id: &str,
        version: i64,
        complete_through: Option<i64>,
    ) -> Result<Appended, DeltaError> {
        if self.app_version(spec, app_id)?.is_some_and(|v| v >= version) {
            return Ok(Appended::AlreadyCommitted);
        }
        let now = crate::time::system_time_ms(std::time::SystemTime::now());
        let actions: Vec<Action> = files.iter().map(|f| Action::Add(add_action(spec.name, f, now))).collect();
        let operation = DeltaOperation::StreamingUpdate {
            output_mode: OutputMode::Append,
            query_id: app_id.to_owned(),
            epoch_id: version,
        };
        let properties = CommitProperties::default()
            .with_application_transaction(Transaction::new(app_id, version))
            .with_metadata(commit_info(app_id, complete_through));
        match self.commit(spec, actions, properties, operation) {
            Ok(committed) => Ok(Appended::Committed(committed)),
            // Another writer (a tidy elsewhere) may have committed the same transaction first.
            Err(error) if self.app_version(spec, app_id)?.is_some_and(|v| v >= version) => {
                tracing::debug!(table = spec.name, %error, "transaction committed by another writer");
                Ok(Appended::AlreadyCommitted)
            }
            Err(error) => Err(error),
        }
    }

    fn commit(
        &mut self,
        spec: &TableSpec,
        actions: Vec<Action>,
        properties: CommitProperties,
        operation: DeltaOperation,
    ) -> Result<i64, DeltaError> {
        let storage = self.storage.clone();
        let table = self.table(spec)?;
        let log_store = table.log_store();
        let state = table.snapshot().map_err(Self::fail(spec.name))?;
        let builder = CommitBuilder::from(properties).with_actions(actions);
        let finalized = storage
            .block_on(builder.build(Some(state), log_store, operation).into_future())
            .map_err(Self::fail(spec.name))?;
        i64::try_from(finalized.version())
            .map_err(|_| DeltaError::Schema { table: spec.name.into(), message: "a table version past i64".into() })
    }

    /// The table's live data files by hour partition (its newest version).
    ///
    /// # Errors
    /// When the log cannot be read.
    pub fn live_files(&mut self, spec: &TableSpec) -> Result<BTreeMap<i64, Vec<LiveFile>>, DeltaError> {
        let table = self.table(spec)?;
        let state = table.snapshot().map_err(Self::fail(spec.name))?;
        let mut by_hour: BTreeMap<i64, Vec<LiveFile>> = BTreeMap::new();
        for file in state.log_data() {
            let Some(hour_ms) = partition_hour(&file.partition_values_map()) else { continue };
            let live = LiveFile { path: file.path().into_owned(), size: file.size(), hour_ms };
            by_hour.entry(hour_ms).or_default().push(live);
        }
        Ok(by_hour)
    }

    /// Replaces `inputs` (live files of one hour partition) by `merged` in one commit, and
    /// records `complete_through` as the table's complete-through transaction.
    ///
    /// # Errors
    /// When the log cannot be read or written, or an input was removed meanwhile; nothing was
    /// committed then.
    pub fn replace(
        &mut self,
        spec: &TableSpec,
        inputs: &[LiveFile],
        merged: &StagedFile,
        complete_through: i64,
    ) -> Result<i64, DeltaError> {
        let now = crate::time::system_time_ms(std::time::SystemTime::now());
        let mut actions: Vec<Action> = inputs.iter().map(|f| Action::Remove(remove_action(f, now))).collect();
        let mut add = add_action(spec.name, merged, now);
        add.data_change = false;
        actions.push(Action::Add(add));
        let operation = DeltaOperation::Optimize { predicate: None, target_size: merged.bytes as i64 };
        self.commit(spec, actions, complete(complete_through), operation)
    }

    /// Records `complete_through` as the table's complete-through transaction, when it moved.
    ///
    /// # Errors
    /// When the log cannot be read or written.
    pub fn mark_complete(&mut self, spec: &TableSpec, complete_through: i64) -> Result<bool, DeltaError> {
        if self.app_version(spec, COMPLETE_APP_ID)?.is_some_and(|v| v >= complete_through) {
            return Ok(false);
        }
        let operation = DeltaOperation::StreamingUpdate {
            output_mode: OutputMode::Append,
            query_id: COMPLETE_APP_ID.to_owned(),
            epoch_id: complete_through,
        };
        self.commit(spec, Vec::new(), complete(complete_through), operation)?;
        Ok(true)
    }

    /// The table's complete-through time, UTC ms: every hour partition ending at or before it
    /// is complete.
    ///
    /// # Errors
    /// When the log cannot be read.
    pub fn complete_through(&mut self, spec: &TableSpec) -> Result<Option<i64>, DeltaError> {
        self.app_version(spec, COMPLETE_APP_ID)
    }

    /// Deletes the data files removed longer than `retention` ago (a reader of an older
    /// version may still need them until then), and files no commit ever added once older than
    /// `retention` and `grace` both (a checkpoint or merge that never committed; a live writer
    /// commits what it writes within `grace`).
    ///
    /// # Errors
    /// When the log or the storage fails.
    pub fn vacuum(
        &mut self,
        spec: &TableSpec,
        retention: std::time::Duration,
        grace: std::time::Duration,
    ) -> Result<usize, DeltaError> {
        // delta-rs counts a removed file again at every vacuum while the log remembers it.
        let data_files = |storage: &Storage| -> Result<BTreeSet<String>, DeltaError> {
            let entries = storage.list(spec.name)?;
            Ok(entries.into_iter().map(|e| e.key).filter(|key| !key.contains("/_delta_log/")).collect())
        };
        let before = data_files(&self.storage)?;
        for (mode, keep) in [(VacuumMode::Lite, retention), (VacuumMode::Full, retention.max(grace))] {
            let storage = self.storage.clone();
            let table = self.table(spec)?.clone();
            let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
            let vacuum: VacuumBuilder =
                table.vacuum().with_retention_period(keep).with_enforce_retention_duration(false).with_mode(mode);
            let (vacuumed, _) = storage.block_on(vacuum.into_future()).map_err(Self::fail(spec.name))?;
            self.tables.insert(spec.name.to_owned(), vacuumed);
        }
        Ok(before.difference(&data_files(&self.storage)?).count())
    }
}

/// The table's columns as Delta sees them: the files' columns (timestamps in microseconds),
/// then the partition columns.
fn delta_columns(spec: &TableSpec) -> Result<Vec<StructField>, String> {
    let schema = delta_schema(spec.schema().map_err(|e| e.to_string())?.as_ref());
    let kernel: StructType = schema.as_ref().try_into_kernel().map_err(|e| e.to_string())?;
    let mut columns: Vec<StructField> = kernel.fields().cloned().collect();
    columns.push(StructField::nullable(PARTITION_COLUMNS[0], deltalake_core::kernel::DataType::DATE));
    columns.push(StructField::nullable(PARTITION_COLUMNS[1], deltalake_core::kernel::DataType::INTEGER));
    Ok(columns)
}

/// `schema` with millisecond timestamps as microseconds, the precision of Delta's timestamp.
pub fn delta_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Timestamp(TimeUnit::Millisecond, tz) => {
                f.as_ref().clone().with_data_type(DataType::Timestamp(TimeUnit::Microsecond, tz.clone()))
            }
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// The partition values of an hour: `dt` = its UTC date, `hour` = its UTC hour.
pub fn partition_values(hour_ms: i64) -> HashMap<String, Option<String>> {
    let stamp = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(hour_ms.max(0).unsigned_abs()),
    )
    .to_string();
    let hour: u32 = stamp[11..13].parse().unwrap_or_default();
    HashMap::from([
        (PARTITION_COLUMNS[0].to_owned(), Some(stamp[..10].to_owned())),
        (PARTITION_COLUMNS[1].to_owned(), Some(hour.to_string())),
    ])
}

/// The hour of `dt` and `hour` partition values.
fn partition_hour(values: &HashMap<String, Option<String>>) -> Option<i64> {
    let date = values.get(PARTITION_COLUMNS[0])?.as_deref()?;
    let hour: i64 = values.get(PARTITION_COLUMNS[1])?.as_deref()?.parse().ok()?;
    let midnight = humantime::parse_rfc3339(&format!("{date}T00:00:00Z")).ok()?;
    let ms = crate::time::system_time_ms(midnight);
    Some(ms + hour * 3_600_000)
}

fn add_action(table: &str, file: &StagedFile, now: i64) -> Add {
    Add {
        path: relative_path(table, &file.key),
        partition_values: partition_values(file.hour_ms),
        size: file.bytes as i64,
        modification_time: now,
        data_change: true,
        stats: Some(format!("{{\"numRecords\":{}}}", file.rows)),
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
        clustering_provider: None,
    }
}

fn remove_action(file: &LiveFile, now: i64) -> Remove {
    Remove {
        path: file.path.clone(),
        data_change: false,
        deletion_timestamp: Some(now),
        extended_file_metadata: Some(true),
        partition_values: Some(partition_values(file.hour_ms)),
        size: Some(file.size),
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
    }
}

/// `key` (relative to the storage root) relative to its table's root.
fn relative_path(table: &str, key: &str) -> String {
    key.strip_prefix(table).map(|rest| rest.trim_start_matches('/')).unwrap_or(key).to_owned()
}

fn commit_info(app_id: &str, complete_through: Option<i64>) -> HashMap<String, serde_json::Value> {
    let mut info = serde_json::Map::new();
    info.insert("instance".into(), app_id.into());
    if let Some(ms) = complete_through {
        info.insert("completeThroughMs".into(), ms.into());
    }
    HashMap::from([(COMMIT_INFO_KEY.to_owned(), serde_json::Value::Object(info))])
}

/// Commit properties recording `complete_through` as the table's complete-through version.
fn complete(complete_through: i64) -> CommitProperties {
    CommitProperties::default()
        .with_application_transaction(Transaction::new(COMPLETE_APP_ID, complete_through))
        .with_metadata(commit_info("storepulse compact", Some(complete_through)))
}

/// The log store of `s3://` tables: delta-rs's default one over our object store, whose
/// conditional put makes a commit appear once or fail.
#[derive(Debug, Default)]
struct ConditionalPutLogStores;

impl LogStoreFactory for ConditionalPutLogStores {
    fn with_options(
        &self,
        prefixed_store: Arc<dyn ObjectStore>,
        root_store: Arc<dyn ObjectStore>,
        location: &Url,
        options: &StorageConfig,
    ) -> deltalake_core::DeltaResult<Arc<dyn LogStore>> {
        Ok(deltalake_core::logstore::default_logstore(prefixed_store, root_store, location, options))
    }
}

/// delta-rs registers log stores for local and in-memory tables only; S3 tables use the
/// default one too (deltalake-aws's would add a DynamoDB lock storepulse does not need).
fn register_s3_log_store() {
    static REGISTERED: Once = Once::new();
    REGISTERED.call_once(|| {
        if let Ok(s3) = Url::parse("s3://") {
            logstore_factories().insert(s3, Arc::new(ConditionalPutLogStores));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::storage::Location;

    const HOUR: i64 = 1_762_819_200_000;

    fn dead_letters() -> TableSpec {
        crate::operators::builtin().tables().into_iter().find(|t| t.name == "dead_letters").expect("registered")
    }

    fn file(storage: &Storage, name: &str, checkpoint: u64) -> StagedFile {
        let key = format!("dead_letters/dt=2025-11-11/hour=00/{name}.parquet");
        storage.put(&key, b"rows".to_vec()).expect("put");
        StagedFile {
            table: "dead_letters".into(),
            staged: key.clone(),
            key,
            bytes: 4,
            rows: 1,
            hour_ms: HOUR,
            checkpoint,
        }
    }

    #[test]
    fn partition_values_round_trip_through_the_hour() {
        let values = partition_values(HOUR + 13 * 3_600_000);
        assert_eq!(values["dt"].as_deref(), Some("2025-11-11"));
        assert_eq!(values["hour"].as_deref(), Some("13"));
        assert_eq!(partition_hour(&values), Some(HOUR + 13 * 3_600_000));
    }

    #[test]
    fn a_repeated_append_is_skipped_and_a_replace_swaps_files_in_one_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(&Location::Local(dir.path().to_path_buf())).expect("storage");
        let spec = dead_letters();
        let (first, second, merged) = (file(&storage, "a", 1), file(&storage, "b", 2), file(&storage, "merged", 0));
        let mut lake = DeltaLake::new(storage.clone());

        assert_eq!(
            lake.append(&spec, std::slice::from_ref(&first), "1-1", 1, None).expect("append"),
            Appended::Committed(1)
        );
        assert_eq!(lake.append(&spec, &[first], "1-1", 1, None).expect("replay"), Appended::AlreadyCommitted);
        assert_eq!(lake.append(&spec, &[second], "1-1", 2, None).expect("append"), Appended::Committed(2));
        let live = lake.live_files(&spec).expect("log").remove(&HOUR).expect("the hour");
        assert_eq!(live.len(), 2);

        assert_eq!(lake.replace(&spec, &live, &merged, HOUR + 3_600_000).expect("replace"), 3);
        let after: Vec<String> = lake.live_files(&spec).expect("log").into_values().flatten().map(|f| f.path).collect();
        assert_eq!(after, ["dt=2025-11-11/hour=00/merged.parquet"]);
        assert_eq!(lake.complete_through(&spec).expect("log"), Some(HOUR + 3_600_000));
        assert!(!lake.mark_complete(&spec, HOUR).expect("log"), "completeness never goes back");
        assert!(lake.mark_complete(&spec, HOUR + 7_200_000).expect("commit"));
        assert_eq!(lake.complete_through(&spec).expect("log"), Some(HOUR + 7_200_000));

        // A file no commit added (a checkpoint that never committed) goes after the grace period.
        let debris = file(&storage, "debris", 3);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let grace = std::time::Duration::from_secs(60);
        assert_eq!(lake.vacuum(&spec, std::time::Duration::ZERO, grace).expect("vacuum"), 2, "the removed files");
        assert!(storage.exists(&debris.key).expect("exists"), "left to its writer for the grace period");
        assert_eq!(lake.vacuum(&spec, std::time::Duration::ZERO, std::time::Duration::ZERO).expect("vacuum"), 1);
        assert!(!storage.exists(&debris.key).expect("exists"));
        assert!(storage.exists(&merged.key).expect("exists"));
        let mut reread = DeltaLake::new(storage);
        assert_eq!(reread.live_files(&spec).expect("log").values().flatten().count(), 1);
    }
}
