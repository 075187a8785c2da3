//! The partitions this instance owns: one task per partition (orders and logistics share one),
//! what each has consumed and how far each partition has come. A task is created by its first
//! message, restored from its newest checkpoint when its partitions are assigned, or kept from
//! before a revocation when nobody has checkpointed it since.

use crate::checkpoint::{CheckpointError, Coordinator, StateBytes, TaskCheckpoint, TaskEntry};
use crate::config::TopicNames;
use crate::control::{Control, ControlHandle};
use crate::event::Stream;
use crate::operators::{PartitionTask, Registry, StateReport, TaskId, TaskOutput};
use crate::source::TopicPartition;
use crate::telemetry::Health;
use crate::time::{PartitionProgress, TimeSettings, low_watermark, system_time_ms};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

/// One task and what the instance knows of its partitions.
pub struct Task {
    /// Its state.
    pub state: PartitionTask,
    /// Progress of each source partition the task has seen.
    pub progress: BTreeMap<Stream, PartitionProgress>,
    /// Next offset to consume of each source partition: what its state has seen.
    pub offsets: BTreeMap<Stream, i64>,
    /// Changed since its last checkpoint.
    pub dirty: bool,
    /// Length of its last state snapshot: the next one is allocated at about this size.
    snapshot_len: usize,
}

impl Task {
    fn new(state: PartitionTask) -> Self {
        Task { state, progress: BTreeMap::new(), offsets: BTreeMap::new(), dirty: true, snapshot_len: 0 }
    }
}

/// The tasks of the partitions this instance owns.
pub struct Assignment {
    topics: TopicNames,
    registry: Registry,
    time: TimeSettings,
    tasks: BTreeMap<TaskId, Task>,
    /// Tasks checkpointed and released at the last revocation, reused if assigned back unchanged.
    released: BTreeMap<TaskId, Task>,
    /// When each assigned partition was assigned (wall ms): one that delivers nothing counts
    /// as idle only an idle timeout later, so an empty-looking partition (fetch statistics lag
    /// behind the log) cannot let windows close before its first events arrive.
    assigned_at: BTreeMap<TopicPartition, i64>,
}

impl Assignment {
    /// No partitions yet; tasks run `registry`'s operators with `time`.
    pub fn new(topics: TopicNames, registry: Registry, time: TimeSettings) -> Self {
        Assignment {
            topics,
            registry,
            time,
            tasks: BTreeMap::new(),
            released: BTreeMap::new(),
            assigned_at: BTreeMap::new(),
        }
    }

    /// Task `id`, created empty on its first message.
    pub fn task(&mut self, id: TaskId) -> &mut Task {
        let (registry, time) = (&self.registry, &self.time);
        self.tasks.entry(id).or_insert_with(|| Task::new(PartitionTask::new(id, registry, time)))
    }

    /// Next offset of every partition this instance consumes.
    pub fn positions(&self) -> BTreeMap<TopicPartition, i64> {
        let mut positions = BTreeMap::new();
        for (id, task) in &self.tasks {
            for (stream, offset) in &task.offsets {
                positions.insert((self.topics.of(*stream).to_owned(), id.partition), *offset);
            }
        }
        positions
    }

    /// Every task for a checkpoint, with the state of those that changed since theirs.
    pub fn checkpoint_entries<'a>(&'a self, checkpoints: &Coordinator) -> Vec<TaskEntry<'a>> {
        self.tasks
            .iter()
            .map(|(id, task)| {
                let name = id.to_string();
                let changed = task.dirty || !checkpoints.has_state(&name);
                // State grows between checkpoints: an eighth more than last time.
                let hint = task.snapshot_len + task.snapshot_len / 8;
                let offsets = task.offsets.iter().map(|(s, offset)| (self.topics.of(*s).to_owned(), *offset)).collect();
                let state = changed.then(|| Box::new(move || task.state.snapshot(hint)) as StateBytes<'_>);
                TaskEntry { name, offsets, state }
            })
            .collect()
    }

    /// The tasks named in `written` are checkpointed as they stand, their states that long.
    pub fn committed(&mut self, written: &[(String, usize)]) {
        for (id, task) in &mut self.tasks {
            if let Some((_, len)) = written.iter().find(|(name, _)| *name == id.to_string()) {
                (task.dirty, task.snapshot_len) = (false, *len);
            }
        }
    }

    /// Tells each task whether its partitions are caught up (`caught_up`) and idle, which may
    /// close windows that waited for an idle partition; reports each partition's watermark to
    /// `watermark`.
    pub fn update_progress(
        &mut self,
        caught_up: &dyn Fn(&TopicPartition) -> bool,
        now_ms: i64,
        out: &mut TaskOutput,
        watermark: &mut dyn FnMut(&TopicPartition, i64),
    ) {
        let idle_timeout_ms = self.time.idle_timeout_ms;
        for (id, task) in &mut self.tasks {
            for &stream in id.kind.streams() {
                let tp = (self.topics.of(stream).to_owned(), id.partition);
                let up_to_date = caught_up(&tp);
                let idle = match task.progress.get_mut(&stream) {
                    Some(progress) => {
                        progress.caught_up = up_to_date;
                        if let Some(w) = progress.watermark {
                            watermark(&tp, w);
                        }
                        up_to_date && now_ms - progress.last_event_at_ms >= idle_timeout_ms
                    }
                    None => {
                        let assigned_at = self.assigned_at.get(&tp).copied().unwrap_or(now_ms);
                        up_to_date && now_ms - assigned_at >= idle_timeout_ms
                    }
                };
                let pending = out.pending();
                task.state.set_idle(stream, idle, out);
                task.dirty |= out.pending() != pending;
            }
        }
    }

    /// The instance's low watermark over `assigned` partitions. Those that have delivered
    /// nothing yet hold it back until they have been caught up (empty) for an idle timeout.
    pub fn low_watermark(
        &self,
        assigned: BTreeSet<TopicPartition>,
        caught_up: &dyn Fn(&TopicPartition) -> bool,
        now_ms: i64,
    ) -> Option<i64> {
        let unstarted: Vec<PartitionProgress> = assigned
            .into_iter()
            .filter(|(topic, partition)| {
                self.topics.stream_of(topic).is_some_and(|stream| {
                    self.tasks.get(&TaskId::of(stream, *partition)).is_none_or(|t| !t.progress.contains_key(&stream))
                })
            })
            .map(|tp| PartitionProgress {
                watermark: None,
                last_event_at_ms: self.assigned_at.get(&tp).copied().unwrap_or(now_ms),
                caught_up: caught_up(&tp),
            })
            .collect();
        let progress = self.tasks.values().flat_map(|t| t.progress.values()).chain(unstarted.iter());
        low_watermark(progress, now_ms, self.time.idle_timeout_ms)
    }

    /// Every task's state report.
    pub fn reports(&self, with_backlog: bool) -> impl Iterator<Item = StateReport> + '_ {
        self.tasks.values().map(move |t| t.state.report(with_backlog))
    }

    /// Closes every window and session of every task (end of a drain).
    pub fn close_all(&mut self, out: &mut TaskOutput) {
        for task in self.tasks.values_mut() {
            task.state.close_all(out);
            task.dirty = true;
        }
    }

    /// `partitions` are this instance's from `now_ms`.
    pub fn assigned(&mut self, partitions: &[TopicPartition], now_ms: i64) {
        self.assigned_at.extend(partitions.iter().map(|tp| (tp.clone(), now_ms)));
    }

    /// `partitions` are revoked; with `checkpointed`, their tasks are kept aside for reuse.
    pub fn revoked(&mut self, partitions: &[TopicPartition], checkpointed: bool) {
        if checkpointed {
            self.released.append(&mut self.tasks);
        } else {
            self.roll_back();
        }
        for tp in partitions {
            self.assigned_at.remove(tp);
        }
    }

    /// Drops every task: what the last checkpoint holds is replayed by the next owner.
    pub fn roll_back(&mut self) {
        self.tasks.clear();
        self.released.clear();
    }

    /// Brings the tasks of newly assigned `partitions` to their newest checkpoint; returns
    /// where each partition resumes and how many tasks were read from the store. `None` when
    /// asked to stop while the store could not be read.
    pub fn restore(
        &mut self,
        partitions: &[TopicPartition],
        checkpoints: &mut Coordinator,
        retry: &mut Retry<'_>,
    ) -> Option<(BTreeMap<TopicPartition, i64>, u64)> {
        let restored = self.restore_tasks(partitions, checkpoints, retry);
        // Released tasks not assigned back are someone else's now.
        self.released.clear();
        restored
    }

    fn restore_tasks(
        &mut self,
        partitions: &[TopicPartition],
        checkpoints: &mut Coordinator,
        retry: &mut Retry<'_>,
    ) -> Option<(BTreeMap<TopicPartition, i64>, u64)> {
        let topics = &self.topics;
        let ids: BTreeSet<TaskId> =
            partitions.iter().filter_map(|(t, p)| topics.stream_of(t).map(|s| TaskId::of(s, *p))).collect();
        let catalog = retry.until(|| checkpoints.catalog())?;
        let mut read = 0;
        for id in ids {
            let Some(latest) = catalog.latest(&id.to_string()) else { continue };
            let (task, from_store) = retry.until(|| self.restore_task(id, latest, checkpoints))?;
            read += u64::from(from_store);
            self.tasks.insert(id, task);
        }
        let mut start = BTreeMap::new();
        for (topic, partition) in partitions {
            let Some(stream) = self.topics.stream_of(topic) else { continue };
            if let Some(offset) = self.tasks.get(&TaskId::of(stream, *partition)).and_then(|t| t.offsets.get(&stream)) {
                start.insert((topic.clone(), *partition), *offset);
            }
        }
        Some((start, read))
    }

    /// Task `id` as its newest checkpoint `latest` has it: the released one when nobody
    /// checkpointed it since, else read from the store; the flag says whether it was read.
    fn restore_task(
        &mut self,
        id: TaskId,
        latest: &TaskCheckpoint,
        checkpoints: &mut Coordinator,
    ) -> Result<(Task, bool), CheckpointError> {
        let name = id.to_string();
        if let Some(task) = self.released.remove(&id)
            && checkpoints.epoch(&name) == Some(latest.epoch)
        {
            return Ok((task, false));
        }
        let state = PartitionTask::restore(&checkpoints.load(latest)?, &self.registry, &self.time)?;
        checkpoints.adopt(&name, latest);
        let mut task = Task::new(state);
        task.dirty = false;
        let now_ms = system_time_ms(SystemTime::now());
        for (topic, offset) in &latest.offsets {
            if let Some(stream) = self.topics.stream_of(topic) {
                task.offsets.insert(stream, *offset);
                let watermark = task.state.watermark(stream);
                let progress = PartitionProgress { watermark, last_event_at_ms: now_ms, caught_up: false };
                task.progress.insert(stream, progress);
            }
        }
        Ok((task, true))
    }
}

/// Retries a read of the checkpoint store with backoff while it fails, unless the loop is
/// asked to stop: starting a partition without its state would count its events twice.
pub struct Retry<'a> {
    control: &'a ControlHandle,
    health: &'a Health,
    backoff: Duration,
}

impl<'a> Retry<'a> {
    /// Retries until `control` says stop, marking `health` not ready meanwhile.
    pub fn new(control: &'a ControlHandle, health: &'a Health) -> Self {
        Retry { control, health, backoff: Duration::from_millis(500) }
    }

    /// What `read` returns once it succeeds; `None` when asked to stop first.
    pub fn until<T, E: std::fmt::Display>(&mut self, mut read: impl FnMut() -> Result<T, E>) -> Option<T> {
        loop {
            match read() {
                Ok(value) => return Some(value),
                Err(_) if self.control.get() == Control::Stop => return None,
                Err(error) => {
                    self.health.set_checkpoint_ok(false);
                    tracing::warn!(%error, retry_in_ms = self.backoff.as_millis(), "cannot read the checkpoint store; waiting");
                    std::thread::sleep(self.backoff);
                    self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}
