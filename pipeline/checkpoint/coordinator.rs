//! The checkpoint protocol of one instance over tasks given as data: output rows wait here
//! until a checkpoint stages them; a checkpoint writes the state of the tasks that changed and
//! commits the manifest; publication follows the commit; a roll-back forgets everything not
//! committed; a restore finds each task's newest checkpoint in any instance's manifests.

use super::store::{
    Catalog, CheckpointError, CheckpointStore, Manifest, Republish, TaskCheckpoint, TidyReport, republish_by_rename,
};
use crate::sink::TableFormat;
use crate::sink::delta::{DeltaError, DeltaLake};
use crate::sink::parquet::{ParquetWriter, SinkError, StagedFile};
use crate::sink::storage::{Storage, StorageError};
use crate::snapshot::SnapshotError;
use crate::table::{DeadLetterRow, Rows, TableSpec};
use std::collections::BTreeMap;

/// Makes a task's state bytes when called.
pub type StateBytes<'a> = Box<dyn FnOnce() -> Result<Vec<u8>, SnapshotError> + 'a>;

/// One task as a checkpoint sees it.
pub struct TaskEntry<'a> {
    /// Its name in checkpoints (`clickstream-3`).
    pub name: String,
    /// Next offset to consume, per source topic.
    pub offsets: BTreeMap<String, i64>,
    /// Makes its state's bytes, when it changed since its last checkpoint (or it has none
    /// yet); `None` lists its last state again.
    pub state: Option<StateBytes<'a>>,
}

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    /// Nothing changed since the last checkpoint: every task's newest state, every row and
    /// every file is committed already, and nothing was written.
    Unchanged,
    /// Manifest `seq` is committed; its files wait for [`Coordinator::publish`].
    Committed {
        /// Its number within the instance.
        seq: u64,
        /// Tasks whose state it wrote, with the state's length in bytes.
        written: Vec<(String, usize)>,
    },
}

/// Why a checkpoint did not commit. Nothing of it counts: rows stay buffered, staged files are
/// listed again, and the next attempt starts over.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointFailure {
    /// Staging Parquet files failed (storage down or full).
    #[error("staging Parquet files: {0}")]
    Stage(#[from] SinkError),
    /// Writing state or the manifest failed.
    #[error(transparent)]
    Store(#[from] CheckpointError),
    /// A task's state could not be encoded (a bug).
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A task listed as unchanged was never checkpointed (a bug in the caller).
    #[error("task {0} is listed as unchanged but has no committed state")]
    NoState(String),
}

/// What [`Coordinator::publish`] made visible.
#[derive(Debug, Default)]
pub struct Publication {
    /// Files readers now see.
    pub published: Vec<StagedFile>,
    /// Files not yet visible: listed again at the next checkpoint, published then.
    pub failed: usize,
    /// The first failure.
    pub error: Option<PublishError>,
}

/// Why committed files could not be made visible yet.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Renaming a staged file into its partition failed.
    #[error(transparent)]
    Rename(#[from] StorageError),
    /// A Delta commit failed.
    #[error(transparent)]
    Delta(#[from] DeltaError),
}

/// How committed files become visible to readers.
enum Publisher {
    /// Renamed from `_staging/` into their partitions (plain Parquet).
    Rename,
    /// Added to their tables' Delta logs.
    Delta { lake: Box<DeltaLake>, tables: Vec<TableSpec> },
}

impl Publisher {
    fn new(format: TableFormat, storage: &Storage, tables: Vec<TableSpec>) -> Self {
        match format {
            TableFormat::Parquet => Publisher::Rename,
            TableFormat::Delta => Publisher::Delta { lake: Box::new(DeltaLake::new(storage.clone())), tables },
        }
    }

    /// Makes `files`, listed by committed manifest `seq` of `instance`, visible; returns those
    /// that became visible, those that did not, and the first failure. A Delta table gets one
    /// commit per table and checkpoint a file was written for, oldest first, each `instance`'s
    /// transaction of that checkpoint's number, so that whoever repeats it (a retry, a tidy
    /// elsewhere) finds it committed and skips it. The commit of the manifest's own checkpoint
    /// carries its completeness.
    fn publish(
        &mut self,
        store: &CheckpointStore,
        files: Vec<StagedFile>,
        (instance, seq): (&str, u64),
        complete_through: &BTreeMap<String, i64>,
    ) -> (Vec<StagedFile>, Vec<StagedFile>, Option<PublishError>) {
        let Publisher::Delta { lake, tables } = self else {
            let failed = store.publish(files.clone());
            let published = files.into_iter().filter(|f| !failed.iter().any(|(g, _)| g == f)).collect();
            let (failed, errors): (Vec<_>, Vec<_>) = failed.into_iter().unzip();
            return (published, failed, errors.into_iter().next().map(PublishError::from));
        };
        let mut groups: BTreeMap<(&str, u64), Vec<StagedFile>> = BTreeMap::new();
        for file in &files {
            groups.entry((file.table.as_str(), file.checkpoint)).or_default().push(file.clone());
        }
        let (mut published, mut failed, mut first_error) = (Vec::new(), Vec::new(), None);
        let mut failed_tables: Vec<&str> = Vec::new();
        for ((table, checkpoint), group) in groups {
            // A later checkpoint's files of a table wait for its earlier ones.
            if failed_tables.contains(&table) {
                failed.extend(group);
                continue;
            }
            let complete = (checkpoint == seq).then(|| complete_through.get(table).copied()).flatten();
            let result = match tables.iter().find(|t| t.name == table) {
                Some(spec) => lake.append(spec, &group, instance, checkpoint as i64, complete),
                None => Err(DeltaError::Schema { table: table.into(), message: "not a registered table".into() }),
            };
            match result {
                Ok(_) => {
                    published.extend(group);
                    crate::crash::point("delta-table-committed");
                }
                Err(error) => {
                    failed_tables.push(table);
                    failed.extend(group);
                    first_error.get_or_insert(PublishError::from(error));
                }
            }
        }
        (published, failed, first_error)
    }
}

/// Publishes the files of every committed checkpoint whose writer has not (a crash, or a
/// writer elsewhere), cleans the store, and returns the catalog: what `storepulse compact`
/// does before it decides which hours are complete.
///
/// # Errors
/// When the storage or a publication fails.
pub fn publish_committed(
    storage: &Storage,
    format: TableFormat,
    tables: Vec<TableSpec>,
    grace_ms: i64,
    now_ms: i64,
) -> Result<Catalog, CheckpointError> {
    let instance = format!("publisher-{now_ms}-{}", std::process::id());
    let mut publisher = Coordinator::new(storage.clone(), instance, grace_ms, format, tables);
    // Completeness is read from the catalog whose files were all published: a manifest
    // committed since may not be visible yet.
    Ok(publisher.tidy_in(now_ms, Republish::All)?.1)
}

/// Checkpoints of one instance.
pub struct Coordinator {
    store: CheckpointStore,
    writer: ParquetWriter,
    publisher: Publisher,
    /// What the last committed manifest says is complete, per table.
    complete_through: BTreeMap<String, i64>,
    instance: String,
    /// Number of the last committed checkpoint.
    seq: u64,
    /// Rows waiting for the next checkpoint.
    pending: Rows,
    /// Files staged since the last commit.
    staged: Vec<StagedFile>,
    /// Files of committed checkpoints whose publication failed; listed again until it succeeds.
    unpublished: Vec<StagedFile>,
    /// The newest committed checkpoint of each task this instance has owned.
    committed: BTreeMap<String, TaskCheckpoint>,
}

impl Coordinator {
    /// Checkpoints of `instance` (unique to the process) on `storage`, publishing `tables` in
    /// `format`; unreferenced objects younger than `grace_ms` are left to their writer.
    pub fn new(storage: Storage, instance: String, grace_ms: i64, format: TableFormat, tables: Vec<TableSpec>) -> Self {
        Coordinator {
            writer: ParquetWriter::new(storage.clone(), instance.clone(), format),
            publisher: Publisher::new(format, &storage, tables),
            complete_through: BTreeMap::new(),
            store: CheckpointStore::new(storage, grace_ms),
            instance,
            seq: 0,
            pending: Rows::default(),
            staged: Vec::new(),
            unpublished: Vec::new(),
            committed: BTreeMap::new(),
        }
    }

    /// Rows waiting for the next checkpoint; output rows are added here.
    pub fn pending(&mut self) -> &mut Rows {
        &mut self.pending
    }

    /// How many rows wait.
    pub fn buffered_rows(&self) -> usize {
        self.pending.len()
    }

    /// Bytes of rejected messages that wait (the only rows whose size the input decides).
    pub fn buffered_bytes(&self) -> usize {
        self.pending.of::<DeadLetterRow>().iter().map(DeadLetterRow::held_bytes).sum()
    }

    /// Whether `task` has a committed state this instance knows of.
    pub fn has_state(&self, task: &str) -> bool {
        self.committed.contains_key(task)
    }

    /// The epoch of `task`'s newest checkpoint this instance knows of.
    pub fn epoch(&self, task: &str) -> Option<u64> {
        self.committed.get(task).map(|c| c.epoch)
    }

    /// Steps 1 and 2 of a checkpoint: stages the pending rows, writes the state of every task
    /// that changed and commits the manifest listing `tasks`, the files and, per table, the
    /// partition time before which the instance adds no more rows (`complete_through`).
    /// `tasks` are every task the instance owns. On failure nothing of it counts.
    ///
    /// # Errors
    /// [`CheckpointFailure`]; rows whose files were not staged stay pending.
    pub fn commit(
        &mut self,
        tasks: Vec<TaskEntry<'_>>,
        complete_through: BTreeMap<String, i64>,
        now_ms: i64,
    ) -> Result<Commit, CheckpointFailure> {
        let seq = self.seq + 1;
        let outcome = self.writer.stage_all(&mut self.pending, seq);
        self.staged.extend(outcome.staged);
        if let Some(error) = outcome.error {
            return Err(error.into());
        }
        if tasks.iter().all(|t| t.state.is_none()) && self.staged.is_empty() && self.unpublished.is_empty() {
            return Ok(Commit::Unchanged);
        }
        let mut listed = BTreeMap::new();
        let mut written = Vec::new();
        for TaskEntry { name, offsets, state } in tasks {
            let checkpoint = match state {
                Some(snapshot) => {
                    let epoch = self.epoch(&name).unwrap_or(0) + 1;
                    let bytes = snapshot()?;
                    written.push((name.clone(), bytes.len()));
                    TaskCheckpoint { epoch, state: self.store.put_state(&name, epoch, bytes)?, offsets }
                }
                None => {
                    let last = self.committed.get(&name).ok_or_else(|| CheckpointFailure::NoState(name.clone()))?;
                    TaskCheckpoint { epoch: last.epoch, state: last.state.clone(), offsets }
                }
            };
            listed.insert(name, checkpoint);
        }
        let manifest = Manifest {
            instance: self.instance.clone(),
            seq,
            written_at_ms: now_ms,
            tasks: listed,
            files: self.unpublished.iter().chain(&self.staged).cloned().collect(),
            complete_through,
        };
        self.store.commit(&manifest)?;
        self.complete_through = manifest.complete_through;
        self.committed.extend(manifest.tasks);
        self.seq = seq;
        self.unpublished.append(&mut self.staged);
        Ok(Commit::Committed { seq, written })
    }

    /// Step 3: publishes the files of committed checkpoints. Idempotent; what fails is listed
    /// again by the next checkpoint and published then.
    pub fn publish(&mut self) -> Publication {
        let files = std::mem::take(&mut self.unpublished);
        let manifest = (self.store_instance(), self.seq);
        let (published, failed, error) =
            self.publisher.publish(&self.store, files, (&manifest.0, manifest.1), &self.complete_through);
        let count = failed.len();
        self.unpublished.extend(failed);
        Publication { published, failed: count, error }
    }

    fn store_instance(&self) -> String {
        self.instance.clone()
    }

    /// Forgets everything not committed: pending rows and staged files. The last checkpoint is
    /// what whoever owns the partitions next replays from.
    pub fn roll_back(&mut self) {
        self.pending.clear();
        self.staged.clear();
    }

    /// Every committed manifest of every instance.
    ///
    /// # Errors
    /// When the storage fails or a manifest does not parse.
    pub fn catalog(&self) -> Result<Catalog, CheckpointError> {
        self.store.catalog()
    }

    /// Reads a task's state.
    ///
    /// # Errors
    /// When the storage fails.
    pub fn load(&self, checkpoint: &TaskCheckpoint) -> Result<bytes::Bytes, CheckpointError> {
        self.store.load_state(checkpoint)
    }

    /// Takes `checkpoint` as `task`'s newest: its state was restored from it, or is the one
    /// this instance committed last.
    pub fn adopt(&mut self, task: &str, checkpoint: &TaskCheckpoint) {
        self.committed.insert(task.to_owned(), checkpoint.clone());
    }

    /// Publishes files of checkpoints whose writer stopped before publishing them, and removes
    /// what no checkpoint needs any more.
    ///
    /// # Errors
    /// When the storage fails; the next call goes on.
    pub fn tidy(&mut self, now_ms: i64) -> Result<TidyReport, CheckpointError> {
        Ok(self.tidy_in(now_ms, Republish::Stale)?.0)
    }

    /// [`Coordinator::tidy`] that publishes every committed manifest's files, young ones too:
    /// after a restore, whose tasks' previous owner may have died between its commit and its
    /// publication.
    ///
    /// # Errors
    /// When the storage fails; the next call goes on.
    pub fn repair(&mut self, now_ms: i64) -> Result<TidyReport, CheckpointError> {
        Ok(self.tidy_in(now_ms, Republish::All)?.0)
    }

    /// [`Coordinator::tidy`] publishing the files of the manifests in `scope`; returns the
    /// catalog it acted on.
    fn tidy_in(&mut self, now_ms: i64, scope: Republish) -> Result<(TidyReport, Catalog), CheckpointError> {
        let (store, publisher, instance) = (&self.store, &mut self.publisher, &self.instance);
        store.tidy(now_ms, scope, &mut |manifest| {
            // This instance's own files are published, in order, by `publish`.
            if manifest.instance == *instance {
                return Ok(0);
            }
            if let Publisher::Rename = publisher {
                return republish_by_rename(store.storage(), manifest);
            }
            let files = manifest.files.clone();
            let (published, _, error) =
                publisher.publish(store, files, (&manifest.instance, manifest.seq), &manifest.complete_through);
            match error {
                Some(error) => Err(CheckpointError::Publish(error.to_string())),
                None => Ok(published.len()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::delta::DeltaLake;
    use crate::sink::parquet::STAGING;
    use crate::sink::storage::Location;
    use crate::table::DeadLetterRow;

    const NOW: i64 = 1_000;

    fn storage(dir: &tempfile::TempDir) -> Storage {
        Storage::open(&Location::Local(dir.path().to_path_buf())).expect("storage")
    }

    fn dead_letter(offset: i64) -> DeadLetterRow {
        DeadLetterRow {
            rejected_at: 1_762_819_200_000,
            topic: "orders".into(),
            partition: 0,
            offset,
            key: None,
            payload: Vec::new(),
            payload_length: 0,
            payload_sha256: String::new(),
            reason: "malformed",
            detail: String::new(),
        }
    }

    fn entry(name: &str, offset: i64, state: Option<&'static [u8]>) -> TaskEntry<'static> {
        TaskEntry {
            name: name.to_owned(),
            offsets: BTreeMap::from([("orders".to_owned(), offset)]),
            state: state.map(|bytes| Box::new(move || Ok(bytes.to_vec())) as StateBytes<'static>),
        }
    }

    fn files(storage: &Storage) -> Vec<String> {
        storage.list("dead_letters").expect("list").into_iter().map(|e| e.key).collect()
    }

    fn tables() -> Vec<TableSpec> {
        crate::operators::builtin().tables()
    }

    #[test]
    fn files_become_visible_after_the_commit_and_a_crash_before_publishing_is_repaired() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut first = Coordinator::new(storage(&dir), "1-1".into(), 0, TableFormat::Parquet, tables());
        first.pending().push(dead_letter(7));
        let commit = first.commit(vec![entry("commerce-0", 8, Some(b"state"))], BTreeMap::new(), NOW).expect("commits");
        assert_eq!(commit, Commit::Committed { seq: 1, written: vec![("commerce-0".to_owned(), 5)] });
        assert!(files(&storage(&dir)).is_empty(), "committed, not yet published");
        assert_eq!(first.buffered_rows(), 0);
        // The process dies here. Whoever tidies the store past the grace period publishes what
        // the manifest lists.
        drop(first);
        let mut second = Coordinator::new(storage(&dir), "2-2".into(), 0, TableFormat::Parquet, tables());
        assert_eq!(second.tidy(NOW + 1).expect("tidy").republished, 1);
        assert_eq!(files(&storage(&dir)).len(), 1);
        assert!(storage(&dir).list(STAGING).expect("list").is_empty());

        let mut third = Coordinator::new(storage(&dir), "3-3".into(), 0, TableFormat::Parquet, tables());
        third.pending().push(dead_letter(9));
        third.commit(vec![entry("commerce-1", 1, Some(b"s"))], BTreeMap::new(), NOW).expect("commits");
        let publication = third.publish();
        assert_eq!((publication.published.len(), publication.failed), (1, 0));
        assert_eq!(files(&storage(&dir)).len(), 2);
        assert!(third.publish().published.is_empty(), "published once");
    }

    fn delta_files(storage: &Storage) -> Vec<String> {
        let spec = tables().into_iter().find(|t| t.name == "dead_letters").expect("registered");
        let mut lake = DeltaLake::new(storage.clone());
        lake.live_files(&spec).expect("log").into_values().flatten().map(|f| f.path).collect()
    }

    #[test]
    fn a_delta_commit_is_added_once_whoever_repeats_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let complete = || BTreeMap::from([("dead_letters".to_owned(), 5)]);
        let mut first = Coordinator::new(storage(&dir), "1-1".into(), 60_000, TableFormat::Delta, tables());
        first.pending().push(dead_letter(7));
        first.commit(vec![entry("commerce-0", 8, Some(b"state"))], complete(), NOW).expect("commits");
        // The process dies before publishing.
        drop(first);
        let mut second = Coordinator::new(storage(&dir), "2-2".into(), 60_000, TableFormat::Delta, tables());
        assert_eq!(second.tidy(NOW + 1).expect("tidy").republished, 0, "a live writer publishes its own");
        assert!(delta_files(&storage(&dir)).is_empty());
        assert_eq!(second.tidy(NOW + 60_001).expect("tidy").republished, 1, "past the grace period");
        assert_eq!(delta_files(&storage(&dir)).len(), 1);
        // `compact`, or a third instance, repeats the commit: the table holds its transaction.
        let catalog =
            publish_committed(&storage(&dir), TableFormat::Delta, tables(), 60_000, NOW + 2).expect("publishes");
        assert_eq!(delta_files(&storage(&dir)).len(), 1);
        assert_eq!(catalog.complete_through("dead_letters"), Some(5));

        // A writer that publishes its own commit, then is superseded, is not added twice either.
        let mut third = Coordinator::new(storage(&dir), "3-3".into(), 60_000, TableFormat::Delta, tables());
        third.pending().push(dead_letter(9));
        third.commit(vec![entry("commerce-1", 1, Some(b"s"))], complete(), NOW).expect("commits");
        assert_eq!(third.publish().published.len(), 1);
        third.commit(vec![entry("commerce-1", 2, Some(b"t"))], complete(), NOW + 1).expect("commits");
        assert_eq!(second.tidy(NOW + 2).expect("tidy").manifests_removed, 1);
        assert_eq!(delta_files(&storage(&dir)).len(), 2);
    }

    #[test]
    fn a_restart_finds_each_tasks_newest_state_and_offsets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut run = Coordinator::new(storage(&dir), "1-1".into(), 0, TableFormat::Parquet, tables());
        run.commit(
            vec![entry("clickstream-0", 10, Some(b"one")), entry("commerce-0", 5, Some(b"a"))],
            BTreeMap::new(),
            NOW,
        )
        .expect("first");
        // Only the clickstream task changed: the commerce task's state is listed again.
        let second = run.commit(
            vec![entry("clickstream-0", 20, Some(b"two")), entry("commerce-0", 6, None)],
            BTreeMap::new(),
            NOW + 1,
        );
        assert_eq!(
            second.expect("second"),
            Commit::Committed { seq: 2, written: vec![("clickstream-0".to_owned(), 3)] }
        );
        assert_eq!(
            run.commit(vec![entry("clickstream-0", 20, None), entry("commerce-0", 6, None)], BTreeMap::new(), NOW + 2)
                .expect("third"),
            Commit::Unchanged
        );

        let mut restarted = Coordinator::new(storage(&dir), "2-2".into(), 0, TableFormat::Parquet, tables());
        let catalog = restarted.catalog().expect("catalog");
        let clicks = catalog.latest("clickstream-0").expect("checkpointed");
        let commerce = catalog.latest("commerce-0").expect("checkpointed");
        assert_eq!((clicks.epoch, clicks.offsets["orders"]), (2, 20));
        assert_eq!((commerce.epoch, commerce.offsets["orders"]), (1, 6));
        assert_eq!(restarted.load(clicks).expect("state").as_ref(), b"two");
        assert_eq!(restarted.load(commerce).expect("state").as_ref(), b"a");
        // The restored tasks' epochs carry on from there.
        restarted.adopt("clickstream-0", clicks);
        let next = restarted
            .commit(vec![entry("clickstream-0", 30, Some(b"three"))], BTreeMap::new(), NOW + 3)
            .expect("commits");
        assert_eq!(next, Commit::Committed { seq: 1, written: vec![("clickstream-0".to_owned(), 5)] });
        assert_eq!(restarted.catalog().expect("catalog").latest("clickstream-0").map(|c| c.epoch), Some(3));
    }

    #[test]
    fn a_roll_back_forgets_what_was_not_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut run = Coordinator::new(storage(&dir), "1-1".into(), 0, TableFormat::Parquet, tables());
        run.pending().push(dead_letter(1));
        run.commit(vec![entry("commerce-0", 2, Some(b"kept"))], BTreeMap::new(), NOW).expect("commits");
        run.publish();
        // A checkpoint that stages its rows but cannot list a task fails before its manifest.
        run.pending().push(dead_letter(2));
        let failed =
            run.commit(vec![entry("commerce-1", 3, None)], BTreeMap::new(), NOW + 1).expect_err("no state to list");
        assert!(matches!(failed, CheckpointFailure::NoState(ref task) if task == "commerce-1"), "{failed}");
        run.roll_back();
        assert_eq!(run.buffered_rows(), 0);
        assert_eq!(
            run.commit(vec![entry("commerce-0", 2, None)], BTreeMap::new(), NOW + 2).expect("commits"),
            Commit::Unchanged
        );
        assert_eq!(run.publish().published.len(), 0, "the rolled-back file is never published");
        assert_eq!(files(&storage(&dir)).len(), 1);
        let latest = run.catalog().expect("catalog").latest("commerce-0").cloned().expect("committed");
        assert_eq!((latest.epoch, run.load(&latest).expect("state").as_ref()), (1, &b"kept"[..]));
        // The staged file no manifest lists goes once it is older than the grace period.
        assert_eq!(run.tidy(i64::MAX / 2).expect("tidy").staged_discarded, 1);
        assert!(storage(&dir).list(STAGING).expect("list").is_empty());
    }
}
