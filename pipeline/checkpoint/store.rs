//! The checkpoint store: manifests and task state on the output storage, under prefixes
//! readers skip, and the repair and clean-up of what a crash left behind.

use crate::sink::parquet::{STAGING, StagedFile, publish};
use crate::sink::storage::{Storage, StorageError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Root of checkpoint manifests and task state.
pub const CHECKPOINTS: &str = "_checkpoints";
const MANIFESTS: &str = "_checkpoints/manifests";
const STATES: &str = "_checkpoints/state";
/// Merges in flight of `storepulse compact`, which has its own recovery.
const COMPACTION_STAGING: &str = "_staging/compaction";

/// One task's part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCheckpoint {
    /// Grows by one at each checkpoint of the task, across instances.
    pub epoch: u64,
    /// Key of the state snapshot.
    pub state: String,
    /// Next offset to consume, per source topic.
    pub offsets: BTreeMap<String, i64>,
}

/// The commit record of one checkpoint of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Writer instance (process start time and pid).
    pub instance: String,
    /// Checkpoint number within the instance.
    pub seq: u64,
    /// Wall-clock time of the commit, Unix milliseconds.
    pub written_at_ms: i64,
    /// Every task the instance owned, by name (`clickstream-3`, `commerce-3`).
    pub tasks: BTreeMap<String, TaskCheckpoint>,
    /// Files this checkpoint commits that were not yet seen published.
    pub files: Vec<StagedFile>,
    /// Per table, the partition time before which the instance's partitions will add no more
    /// rows: every hour ending at or before it is complete, as far as this instance goes.
    #[serde(default)]
    pub complete_through: BTreeMap<String, i64>,
}

impl Manifest {
    /// Its key: sorts by instance, then by checkpoint number.
    pub fn key(&self) -> String {
        format!("{MANIFESTS}/{}/{:012}.json", self.instance, self.seq)
    }
}

/// A checkpoint store that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The storage failed; retried by the caller.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A manifest that is not valid JSON of a manifest (a bug or a foreign file).
    #[error("checkpoint manifest {key}: {message}")]
    Manifest {
        /// Its key.
        key: String,
        /// Parser message.
        message: String,
    },
    /// Operator state that cannot be encoded or decoded.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// Publishing a committed checkpoint's files failed; retried later.
    #[error("publishing committed files: {0}")]
    Publish(String),
}

/// Every committed manifest, as read at one moment.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    /// Manifests, oldest first (by commit time, then key).
    pub manifests: Vec<Manifest>,
}

impl Catalog {
    /// A catalog of `manifests` in commit order.
    pub fn new(mut manifests: Vec<Manifest>) -> Self {
        manifests.sort_by_key(|m| (m.written_at_ms, m.key()));
        Catalog { manifests }
    }

    /// The newest checkpoint of `task`: the highest epoch, and of equal epochs the latest
    /// committed.
    pub fn latest(&self, task: &str) -> Option<&TaskCheckpoint> {
        let mut best: Option<&TaskCheckpoint> = None;
        for manifest in &self.manifests {
            if let Some(t) = manifest.tasks.get(task)
                && best.is_none_or(|b| t.epoch >= b.epoch)
            {
                best = Some(t);
            }
        }
        best
    }

    /// The time before which every hour of `table` is complete across the whole group: the
    /// lowest that the manifests holding each task's newest checkpoint record. `None` while a
    /// task's newest manifest records none (or there is no checkpoint).
    pub fn complete_through(&self, table: &str) -> Option<i64> {
        let mut owners: BTreeMap<&str, (u64, usize)> = BTreeMap::new();
        for (at, manifest) in self.manifests.iter().enumerate() {
            for (task, checkpoint) in &manifest.tasks {
                let owner = owners.entry(task.as_str()).or_insert((checkpoint.epoch, at));
                if checkpoint.epoch >= owner.0 {
                    *owner = (checkpoint.epoch, at);
                }
            }
        }
        let indices: BTreeSet<usize> = owners.values().map(|(_, at)| *at).collect();
        let mut through: Option<i64> = None;
        for at in indices {
            let mine = *self.manifests[at].complete_through.get(table)?;
            through = Some(through.map_or(mine, |t| t.min(mine)));
        }
        through
    }

    /// Indices of manifests nothing depends on any more: for every task they list, a later
    /// manifest holds the same or a newer epoch. Their files must be published before they go.
    pub fn superseded(&self) -> Vec<usize> {
        (0..self.manifests.len())
            .filter(|&i| {
                self.manifests[i].tasks.iter().all(|(task, t)| {
                    self.manifests[i + 1..]
                        .iter()
                        .any(|later| later.tasks.get(task).is_some_and(|l| l.epoch >= t.epoch))
                })
            })
            .collect()
    }
}

/// What [`CheckpointStore::tidy`] repaired and removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TidyReport {
    /// Files of committed checkpoints published now (their writer stopped before it could).
    pub republished: usize,
    /// Manifests removed because later ones supersede them.
    pub manifests_removed: usize,
    /// State snapshots no manifest refers to, removed.
    pub states_removed: usize,
    /// Staged files no manifest lists (a checkpoint that never committed), removed.
    pub staged_discarded: usize,
}

/// Reads and writes checkpoints on the output storage.
#[derive(Clone)]
pub struct CheckpointStore {
    storage: Storage,
    /// How old an unreferenced state or staged file must be before it is taken for debris: a
    /// live instance commits what it stages within one checkpoint.
    grace_ms: i64,
}

impl CheckpointStore {
    /// A store on `storage`; unreferenced objects younger than `grace_ms` are left alone.
    pub fn new(storage: Storage, grace_ms: i64) -> Self {
        CheckpointStore { storage, grace_ms }
    }

    /// The storage it writes to.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Every committed manifest.
    ///
    /// # Errors
    /// When the storage fails or a manifest does not parse.
    pub fn catalog(&self) -> Result<Catalog, CheckpointError> {
        let mut manifests = Vec::new();
        for entry in self.storage.list(MANIFESTS)? {
            if !entry.key.ends_with(".json") {
                continue;
            }
            let bytes = match self.storage.get(&entry.key) {
                Ok(bytes) => bytes,
                // Removed by another instance's tidy between list and get.
                Err(_) if !self.storage.exists(&entry.key)? => continue,
                Err(error) => return Err(error.into()),
            };
            let manifest: Manifest = serde_json::from_slice(&bytes)
                .map_err(|e| CheckpointError::Manifest { key: entry.key.clone(), message: e.to_string() })?;
            manifests.push(manifest);
        }
        Ok(Catalog::new(manifests))
    }

    /// Writes a task's state for `epoch` and returns its key.
    ///
    /// # Errors
    /// When the storage fails.
    pub fn put_state(&self, task: &str, epoch: u64, state: Vec<u8>) -> Result<String, CheckpointError> {
        let key = format!("{STATES}/{task}/{epoch:012}.cbor");
        self.storage.put(&key, state)?;
        Ok(key)
    }

    /// Reads a task's state.
    ///
    /// # Errors
    /// When the storage fails.
    pub fn load_state(&self, checkpoint: &TaskCheckpoint) -> Result<bytes::Bytes, CheckpointError> {
        Ok(self.storage.get(&checkpoint.state)?)
    }

    /// Commits `manifest`: the single write after which the checkpoint exists.
    ///
    /// # Errors
    /// When the storage fails; the checkpoint then does not exist.
    pub fn commit(&self, manifest: &Manifest) -> Result<(), CheckpointError> {
        let json = serde_json::to_vec_pretty(manifest)
            .map_err(|e| CheckpointError::Manifest { key: manifest.key(), message: e.to_string() })?;
        self.storage.put(&manifest.key(), json)?;
        Ok(())
    }

    /// Publishes committed files; returns those that failed, to be retried.
    pub fn publish(&self, files: Vec<StagedFile>) -> Vec<(StagedFile, StorageError)> {
        files.into_iter().filter_map(|file| publish(&self.storage, &file).err().map(|error| (file, error))).collect()
    }

    /// Removes every checkpoint (for a source that starts empty, like the demo's embedded
    /// cluster, whose offsets no earlier checkpoint can describe); returns how many objects.
    ///
    /// # Errors
    /// When the storage fails.
    pub fn discard_all(&self) -> Result<usize, CheckpointError> {
        let entries = self.storage.list(CHECKPOINTS)?;
        for entry in &entries {
            self.storage.delete(&entry.key)?;
        }
        Ok(entries.len())
    }

    /// Repairs and cleans the store: `republish` is handed the committed manifests in `scope`
    /// that list files, to publish those their writer stopped before publishing; then superseded
    /// manifests go, the state of every task's older epochs goes, and state and staged files no
    /// manifest lists (checkpoints that never committed) go once older than the grace period.
    ///
    /// # Errors
    /// When the storage fails or `republish` does; what was done so far stays done, and the
    /// next call goes on.
    pub fn tidy(
        &self,
        now_ms: i64,
        scope: Republish,
        republish: &mut dyn FnMut(&Manifest) -> Result<usize, CheckpointError>,
    ) -> Result<(TidyReport, Catalog), CheckpointError> {
        let mut report = TidyReport::default();
        let catalog = self.catalog()?;
        let superseded: BTreeSet<usize> = catalog.superseded().into_iter().collect();
        let old = |modified_ms: i64| now_ms - modified_ms > self.grace_ms;
        for (i, manifest) in catalog.manifests.iter().enumerate() {
            let due = match scope {
                Republish::All => true,
                // A live writer publishes its manifest's files right after committing it.
                Republish::Stale => superseded.contains(&i) || old(manifest.written_at_ms),
            };
            if due && !manifest.files.is_empty() {
                report.republished += republish(manifest)?;
            }
        }
        for &i in &superseded {
            self.storage.delete(&catalog.manifests[i].key())?;
            report.manifests_removed += 1;
        }
        let kept: Vec<&Manifest> =
            catalog.manifests.iter().enumerate().filter(|(i, _)| !superseded.contains(i)).map(|(_, m)| m).collect();
        let referenced: BTreeSet<&str> = kept.iter().flat_map(|m| m.tasks.values().map(|t| t.state.as_str())).collect();
        for entry in self.storage.list(STATES)? {
            // An epoch older than the task's newest committed one is never restored again; a
            // newer one may be a live instance's checkpoint in the making.
            let older = state_epoch(&entry.key)
                .is_some_and(|(task, epoch)| catalog.latest(task).is_some_and(|latest| epoch < latest.epoch));
            if !referenced.contains(entry.key.as_str()) && (older || old(entry.modified_ms)) {
                self.storage.delete(&entry.key)?;
                report.states_removed += 1;
            }
        }
        let listed: BTreeSet<&str> =
            catalog.manifests.iter().flat_map(|m| &m.files).map(|f| f.staged.as_str()).collect();
        for entry in self.storage.list(STAGING)? {
            if !entry.key.starts_with(COMPACTION_STAGING)
                && !listed.contains(entry.key.as_str())
                && old(entry.modified_ms)
            {
                self.storage.delete(&entry.key)?;
                report.staged_discarded += 1;
            }
        }
        self.storage.remove_empty_directories(STAGING)?;
        Ok((report, catalog))
    }
}

/// Which committed manifests [`CheckpointStore::tidy`] publishes the files of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Republish {
    /// Those about to be removed, and those their writer left unpublished past the grace
    /// period: a running instance's routine repair.
    Stale,
    /// Every one: afterwards everything the catalog commits is visible, so its completeness
    /// can be marked.
    All,
}

/// The task and epoch of a state key, `_checkpoints/state/TASK/EPOCH.cbor`.
fn state_epoch(key: &str) -> Option<(&str, u64)> {
    let (task, file) = key.strip_prefix(STATES)?.trim_start_matches('/').split_once('/')?;
    Some((task, file.strip_suffix(".cbor")?.parse().ok()?))
}

/// Publishes committed files by rename (plain Parquet tables): those still staged.
///
/// # Errors
/// When the storage fails.
pub fn republish_by_rename(storage: &Storage, manifest: &Manifest) -> Result<usize, CheckpointError> {
    let mut published = 0;
    for file in &manifest.files {
        if storage.exists(&file.staged)? {
            publish(storage, file)?;
            published += 1;
        }
    }
    Ok(published)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::storage::Location;

    fn task(epoch: u64) -> TaskCheckpoint {
        TaskCheckpoint {
            epoch,
            state: format!("{STATES}/t/{epoch:012}.cbor"),
            offsets: BTreeMap::from([("orders".to_owned(), 10 * epoch as i64)]),
        }
    }

    fn manifest(instance: &str, seq: u64, at: i64, tasks: &[(&str, u64)]) -> Manifest {
        Manifest {
            instance: instance.into(),
            seq,
            written_at_ms: at,
            tasks: tasks.iter().map(|(name, epoch)| ((*name).to_owned(), task(*epoch))).collect(),
            files: Vec::new(),
            complete_through: BTreeMap::new(),
        }
    }

    #[test]
    fn the_highest_epoch_wins_across_instances() {
        let catalog = Catalog::new(vec![
            manifest("b", 1, 200, &[("commerce-0", 4)]),
            manifest("a", 7, 100, &[("commerce-0", 3), ("clickstream-0", 9)]),
        ]);
        assert_eq!(catalog.latest("commerce-0").map(|t| t.epoch), Some(4));
        assert_eq!(catalog.latest("clickstream-0").map(|t| t.epoch), Some(9));
        assert_eq!(catalog.latest("commerce-1"), None);
    }

    #[test]
    fn the_group_is_complete_through_the_lowest_time_of_each_tasks_newest_manifest() {
        let complete = |mut m: Manifest, through: &[(&str, i64)]| {
            m.complete_through = through.iter().map(|(t, ms)| ((*t).to_owned(), *ms)).collect();
            m
        };
        let catalog = Catalog::new(vec![
            // a's old checkpoint of commerce-0 no longer counts: b holds a newer one.
            complete(manifest("a", 1, 100, &[("commerce-0", 3)]), &[("orders", 1_000)]),
            complete(manifest("a", 2, 150, &[("clickstream-0", 9)]), &[("orders", 7_000), ("funnel", 5_000)]),
            complete(manifest("b", 1, 200, &[("commerce-0", 4)]), &[("orders", 4_000)]),
        ]);
        assert_eq!(catalog.complete_through("orders"), Some(4_000));
        assert_eq!(catalog.complete_through("funnel"), None, "b records none for the funnel");
        assert_eq!(Catalog::default().complete_through("orders"), None);
    }

    #[test]
    fn a_manifest_is_superseded_only_when_every_task_it_lists_is_newer_elsewhere() {
        let catalog = Catalog::new(vec![
            // a released commerce-0 to b, which has checkpointed it since; a still owns clickstream-0.
            manifest("a", 1, 100, &[("commerce-0", 3), ("clickstream-0", 9)]),
            manifest("a", 2, 150, &[("clickstream-0", 9)]),
            manifest("b", 1, 200, &[("commerce-0", 4)]),
            // b's newer checkpoint of the same epoch (nothing new arrived) supersedes its older one.
            manifest("b", 2, 300, &[("commerce-0", 4)]),
        ]);
        assert_eq!(catalog.superseded(), [0, 2]);
        // Two manifests with the same epoch never supersede each other both.
        let tie = Catalog::new(vec![manifest("a", 1, 100, &[("t", 1)]), manifest("b", 1, 100, &[("t", 1)])]);
        assert_eq!(tie.superseded().len(), 1);
    }

    #[test]
    fn tidy_publishes_committed_files_and_discards_uncommitted_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(&Location::Local(dir.path().to_path_buf())).expect("storage");
        let store = CheckpointStore::new(storage.clone(), 0);
        let file = |n: u32| StagedFile {
            table: "funnel".into(),
            staged: format!("{STAGING}/1-1/000000000001/funnel-{n}.parquet"),
            key: format!("funnel/dt=2026-11-11/hour=00/part-{n}.parquet"),
            bytes: 3,
            rows: 1,
            hour_ms: 0,
            checkpoint: 1,
        };
        for n in 0..3 {
            storage.put(&file(n).staged, b"abc".to_vec()).expect("put");
        }
        storage.put(&format!("{COMPACTION_STAGING}/merge.json"), b"{}".to_vec()).expect("put");
        let state = store.put_state("commerce-0", 1, vec![1, 2, 3]).expect("state");
        store.put_state("commerce-0", 2, vec![4]).expect("a state whose manifest never committed");
        let mut committed = manifest("1-1", 1, 100, &[]);
        committed.tasks.insert("commerce-0".into(), TaskCheckpoint { epoch: 1, state, offsets: BTreeMap::new() });
        // File 0 was published before the crash, file 1 was not; file 2 was never committed.
        committed.files = vec![file(0), file(1)];
        store.commit(&committed).expect("commit");
        storage.rename(&file(0).staged, &file(0).key).expect("published");

        let report =
            store.tidy(i64::MAX / 2, Republish::Stale, &mut |m| republish_by_rename(&storage, m)).expect("tidy").0;
        assert_eq!(report, TidyReport { republished: 1, manifests_removed: 0, states_removed: 1, staged_discarded: 1 });
        assert!(storage.exists(&file(1).key).expect("head"));
        assert!(!storage.exists(&file(2).key).expect("head"), "an uncommitted file is never published");
        assert_eq!(storage.list(STAGING).expect("list").len(), 1, "only the compaction record remains");
        assert_eq!(store.load_state(&committed.tasks["commerce-0"]).expect("state").as_ref(), [1, 2, 3]);
        assert_eq!(
            store.tidy(i64::MAX / 2, Republish::Stale, &mut |m| republish_by_rename(&storage, m)).expect("again").0,
            TidyReport::default()
        );
    }

    #[test]
    fn young_debris_is_left_for_its_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(&Location::Local(dir.path().to_path_buf())).expect("storage");
        let store = CheckpointStore::new(storage.clone(), 3_600_000);
        storage.put(&format!("{STAGING}/2-2/000000000005/orders-x.parquet"), b"x".to_vec()).expect("put");
        store.put_state("clickstream-1", 5, vec![0]).expect("state");
        let now = crate::time::system_time_ms(std::time::SystemTime::now());
        assert_eq!(
            store.tidy(now, Republish::Stale, &mut |m| republish_by_rename(&storage, m)).expect("tidy").0,
            TidyReport::default()
        );
        assert_eq!(store.discard_all().expect("discard"), 1, "the one state object");
        assert!(storage.list(CHECKPOINTS).expect("list").is_empty());
    }
}
