//! Wires the stages: Kafka source → decode → per-partition operators → Parquet, gauges and
//! dead letters, with checkpoints (see [`crate::checkpoint`]) as the one commit point of
//! state, offsets and output files.
//!
//! The loop runs on one dedicated thread and owns all state, so no locks sit on the hot path;
//! the HTTP endpoint only reads metrics and health flags. Rebalances are applied by the loop
//! too: revoked partitions are checkpointed before release, assigned ones restored before they
//! start, at their checkpointed offsets.

use crate::checkpoint::{CheckpointStore, Manifest, TaskCheckpoint};
use crate::codec::{DecodeError, Decoder, WriterSchemaSource};
use crate::config::{Settings, system_time_ms};
use crate::event::{Channel, Device, Event, Stream};
use crate::operators::{
    Backlog, Disposition, FulfillmentCounts, FulfillmentRow, FunnelRow, LatencyMetric, OrderCounts, OrderFact,
    OrdersRow, OrphanShipment, PartitionTask, SessionRow, Step, TaskOutput, channel_label, device_label,
};
use crate::sink::dead_letter::{DeadLetterTopic, Rejected};
use crate::sink::parquet::{DeadLetterRow, LateEventRow, ParquetWriter, SinkError, StagedFile};
use crate::sink::storage::Storage;
use crate::source::{KafkaSource, PendingRebalance, TopicPartition};
use crate::summary::{SummaryBoard, WindowSummary};
use crate::telemetry::{Health, Metrics, SessionCounters, carrier_label, minor_to_major, window_label};
use crate::time::{PartitionProgress, low_watermark};
use anyhow::Context;
use prometheus::IntCounter;
use rdkafka::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Keep consuming.
pub const CONTROL_RUN: u8 = 0;
/// Consume up to the end offsets as of now, close every window, checkpoint, return.
pub const CONTROL_DRAIN: u8 = 1;
/// Stop consuming, checkpoint (within the shutdown deadline), return.
pub const CONTROL_STOP: u8 = 2;

/// A failure that stops the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Draining was requested but no partition was ever assigned.
    #[error("no partitions were assigned within {0:?}; do the topics exist and is the broker reachable?")]
    NoAssignment(Duration),
    /// The final checkpoint did not commit within the shutdown deadline; a restart replays
    /// from the last committed one, so nothing is lost.
    #[error("the final checkpoint did not commit within {0:?}; the next start resumes from the previous one")]
    FinalCheckpoint(Duration),
    /// The dead-letter producer could not be created.
    #[error("dead-letter producer: {0}")]
    DeadLetterProducer(#[from] rdkafka::error::KafkaError),
    /// The output location could not be opened.
    #[error(transparent)]
    Storage(#[from] crate::sink::storage::StorageError),
}

/// Runs a pipeline on a thread of its own: connects the Kafka source, builds the pipeline and
/// runs it until `control` says stop (or a drain completes). See [`Pipeline::new`] for `progress`.
pub fn spawn(
    settings: Settings,
    metrics: Metrics,
    health: Arc<Health>,
    control: Arc<AtomicU8>,
    progress: bool,
) -> std::thread::JoinHandle<anyhow::Result<RunReport>> {
    std::thread::Builder::new()
        .name("pipeline".into())
        .spawn(move || {
            let source = KafkaSource::connect(&settings, metrics.clone(), Arc::clone(&health))
                .context("creating the Kafka consumer")?;
            let pipeline = Pipeline::new(settings, metrics, health, progress).context("starting the pipeline")?;
            Ok(pipeline.run(&source, &control)?)
        })
        .unwrap_or_else(|e| panic!("cannot spawn the pipeline thread: {e}"))
}

/// Counts of one run, for the final report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Messages consumed.
    pub consumed: u64,
    /// Events decoded and validated.
    pub decoded: u64,
    /// Messages sent to dead letters.
    pub rejected: u64,
    /// Late events, one per metric family whose window they missed.
    pub late: u64,
    /// Events suppressed as duplicates.
    pub duplicates: u64,
    /// Instance-wide windows closed.
    pub windows_closed: u64,
    /// Parquet files published.
    pub files: u64,
    /// Checkpoints committed.
    pub checkpoints: u64,
    /// Partition tasks restored from a checkpoint.
    pub restored: u64,
}

/// One task: a clickstream partition, or the same partition of orders and logistics.
struct Task {
    state: PartitionTask,
    /// Progress of each source partition the task has seen.
    progress: BTreeMap<Stream, PartitionProgress>,
    /// Next offset to consume of each source partition: what its state has seen.
    offsets: BTreeMap<Stream, i64>,
    /// Epoch and state key of its last committed checkpoint; epoch 0 when it has none.
    epoch: u64,
    state_key: Option<String>,
    /// Changed since the last checkpoint.
    dirty: bool,
    /// Length of its last state snapshot: the next one is allocated at about this size.
    snapshot_len: usize,
}

impl Task {
    fn new(state: PartitionTask) -> Self {
        Task {
            state,
            progress: BTreeMap::new(),
            offsets: BTreeMap::new(),
            epoch: 0,
            state_key: None,
            dirty: true,
            snapshot_len: 0,
        }
    }
}

/// Where an assigned partition must resume, how far before it the consumer was sent back, and
/// since when it waits for its first message.
#[derive(Debug, Clone, Copy)]
struct Resume {
    next: i64,
    rewind: i64,
    since: Instant,
}

impl Resume {
    fn at(next: i64) -> Self {
        Resume { next, rewind: 0, since: Instant::now() }
    }
}

/// How long a resumed partition with messages to deliver may stay silent before it is sent
/// back further (a broker that skips to the next batch delivers nothing from inside the last).
const RESUME_SILENCE: Duration = Duration::from_secs(2);

/// The name of a task in checkpoints.
fn task_name((kind, partition): (Stream, i32)) -> String {
    match kind {
        Stream::Clickstream => format!("clickstream-{partition}"),
        _ => format!("commerce-{partition}"),
    }
}

/// The key of the task that processes `partition` of `stream`: orders and logistics share one.
fn task_key(stream: Stream, partition: i32) -> (Stream, i32) {
    match stream {
        Stream::Logistics => (Stream::Orders, partition),
        other => (other, partition),
    }
}

/// The source streams a task of `kind` reads.
fn task_streams(kind: Stream) -> &'static [Stream] {
    match kind {
        Stream::Clickstream => &[Stream::Clickstream],
        _ => &[Stream::Orders, Stream::Logistics],
    }
}

/// The wall clock derived from a monotonic reading, so that the loop reads one clock per
/// message for its timers and the message's wall time (five reads per message before, about
/// 20 ns each). Read again every tick, so it follows steps of the system clock within 200 ms.
struct WallClock {
    at: Instant,
    ms: i64,
}

impl WallClock {
    fn read() -> Self {
        WallClock { at: Instant::now(), ms: system_time_ms(SystemTime::now()) }
    }

    /// Wall-clock ms at `instant`, taken at or after this reading.
    fn ms_at(&self, instant: Instant) -> i64 {
        let since = instant.saturating_duration_since(self.at).as_millis();
        self.ms.saturating_add(i64::try_from(since).unwrap_or(i64::MAX))
    }
}

/// Output rows waiting for the next checkpoint.
#[derive(Default)]
struct Buffers {
    funnel: Vec<FunnelRow>,
    sessions: Vec<SessionRow>,
    orders: Vec<OrdersRow>,
    fulfillment: Vec<FulfillmentRow>,
    facts: Vec<OrderFact>,
    orphans: Vec<OrphanShipment>,
    late: Vec<LateEventRow>,
    dead: Vec<DeadLetterRow>,
}

impl Buffers {
    fn rows(&self) -> usize {
        self.funnel.len()
            + self.sessions.len()
            + self.orders.len()
            + self.fulfillment.len()
            + self.facts.len()
            + self.orphans.len()
            + self.late.len()
            + self.dead.len()
    }
}

/// Label sets already exported, so a series absent from a newer window is set to zero
/// instead of keeping a stale value.
#[derive(Default)]
struct ExportedSeries {
    fulfillment: BTreeSet<(String, String, String)>,
    currencies: BTreeSet<String>,
    warehouses: BTreeSet<String>,
}

/// Per-stream counters resolved once: a labelled lookup per message would hash the labels.
struct StreamCounters {
    consumed: [IntCounter; 3],
    decoded: [IntCounter; 3],
}

/// The processing loop and everything it owns.
pub struct Pipeline {
    settings: Settings,
    metrics: Metrics,
    counters: StreamCounters,
    session_counters: SessionCounters,
    health: Arc<Health>,
    decoder: Decoder,
    /// The latest event of each stream, decoded into in place so its buffers are reused.
    decoded: [Event; 3],
    tasks: BTreeMap<(Stream, i32), Task>,
    /// Tasks checkpointed and released at the last revocation, reused if assigned back unchanged.
    released: BTreeMap<(Stream, i32), Task>,
    /// Rows of the event being handled, before they are routed to buffers and gauges.
    scratch: TaskOutput,
    buffers: Buffers,
    writer: ParquetWriter,
    store: CheckpointStore,
    /// This process in manifests and file names.
    instance: String,
    /// Number of the last committed checkpoint of this process.
    checkpoint_seq: u64,
    /// Files staged for the next checkpoint.
    staged: Vec<StagedFile>,
    /// Files of committed checkpoints whose publication failed; listed again until it succeeds.
    unpublished: Vec<StagedFile>,
    paused: bool,
    /// Partitions just assigned at a checkpointed offset, until their first message shows the
    /// broker started there.
    resuming: BTreeMap<TopicPartition, Resume>,
    /// When each assigned partition was assigned (wall ms): one that delivers nothing counts
    /// as idle only an idle timeout later, so an empty-looking partition (fetch statistics lag
    /// behind the log) cannot let windows close before its first events arrive.
    assigned_at: BTreeMap<TopicPartition, i64>,
    board: SummaryBoard,
    exported: ExportedSeries,
    last_backlog: Instant,
    dead_letter_topic: Option<DeadLetterTopic>,
    progress: bool,
    report: RunReport,
}

impl Pipeline {
    /// A pipeline for `settings`. With `progress`, closed windows and throughput are printed
    /// to the terminal (the demo); otherwise they are logged.
    ///
    /// # Errors
    /// When the dead-letter topic producer cannot be created or the output location opened.
    pub fn new(
        settings: Settings,
        metrics: Metrics,
        health: Arc<Health>,
        progress: bool,
    ) -> Result<Self, RuntimeError> {
        let schemas = match &settings.schema_registry_url {
            Some(url) => WriterSchemaSource::registry(url),
            None => WriterSchemaSource::local(settings.writer_schemas_dir.as_deref()),
        };
        let decoder = Decoder::new(settings.format, schemas, settings.validation);
        // Series exist from the first scrape, so rate() and absence alerts work before traffic.
        let counters = StreamCounters {
            consumed: Stream::ALL.map(|s| metrics.messages_consumed.with_label_values(&[settings.topics.of(s)])),
            decoded: Stream::ALL.map(|s| metrics.events_decoded.with_label_values(&[s.as_str()])),
        };
        let dead_letter_topic = settings
            .dead_letter_topic
            .as_deref()
            .map(|topic| DeadLetterTopic::new(&settings.brokers, &settings.kafka_client, topic, metrics.clone()))
            .transpose()?;
        metrics.label_budget.set_limit(settings.max_values_per_label);
        let storage = Storage::open(&settings.output)?;
        let instance = format!("{}-{}", system_time_ms(SystemTime::now()), std::process::id());
        Ok(Pipeline {
            writer: ParquetWriter::with_instance(storage.clone(), instance.clone()),
            store: CheckpointStore::new(storage, settings.checkpoint.debris_grace_ms),
            instance,
            checkpoint_seq: 0,
            staged: Vec::new(),
            unpublished: Vec::new(),
            paused: false,
            resuming: BTreeMap::new(),
            assigned_at: BTreeMap::new(),
            scratch: TaskOutput::default(),
            counters,
            session_counters: SessionCounters::new(&metrics),
            settings,
            metrics,
            health,
            decoder,
            decoded: Stream::ALL.map(Event::placeholder),
            tasks: BTreeMap::new(),
            released: BTreeMap::new(),
            buffers: Buffers::default(),
            board: SummaryBoard::default(),
            exported: ExportedSeries::default(),
            last_backlog: Instant::now(),
            dead_letter_topic,
            progress,
            report: RunReport::default(),
        })
    }

    /// Runs until `control` says stop (or drain and the drain completes).
    ///
    /// # Errors
    /// [`RuntimeError`] when a drain cannot start or the final checkpoint does not commit.
    pub fn run(mut self, source: &KafkaSource, control: &AtomicU8) -> Result<RunReport, RuntimeError> {
        let started = Instant::now();
        source.defer_rebalances();
        self.tidy();
        let mut drain_target: Option<BTreeMap<TopicPartition, (i64, i64)>> = None;
        let mut drain_requested_at: Option<Instant> = None;
        let mut last_tick = Instant::now();
        let mut next_checkpoint = Instant::now() + self.settings.checkpoint.interval;
        let mut checkpoint_backoff = Duration::from_secs(1);
        let mut last_status = (Instant::now(), 0u64);
        let mut last_broker_warning = Instant::now();
        let mut last_message = Instant::now();
        let mut clock = WallClock::read();
        loop {
            match control.load(Ordering::Relaxed) {
                CONTROL_STOP => break,
                CONTROL_DRAIN if drain_target.is_none() => {
                    let since = *drain_requested_at.get_or_insert_with(Instant::now);
                    if !source.assignment().is_empty() {
                        match source.start_and_end_offsets(Duration::from_secs(10)) {
                            Ok(target) => {
                                tracing::info!(
                                    partitions = target.len(),
                                    "draining to the current end of every assigned partition"
                                );
                                drain_target = Some(target);
                            }
                            Err(error) => tracing::warn!(%error, "cannot read end offsets yet; retrying"),
                        }
                    } else if since.elapsed() > Duration::from_secs(120) {
                        return Err(RuntimeError::NoAssignment(since.elapsed()));
                    }
                }
                _ => {}
            }
            if let Some(target) = &drain_target
                && self.reached(target, source, last_message)
            {
                self.close_all();
                break;
            }
            let polled = source.consumer().poll(Duration::from_millis(100));
            // One clock read per message serves the timers below and the message's wall time.
            let now = Instant::now();
            match polled {
                Some(Ok(message)) if self.rewound(source, message.topic(), message.partition(), message.offset()) => {}
                Some(Ok(message)) => {
                    last_message = now;
                    let mut now_ms = clock.ms_at(now);
                    let topic = message.topic();
                    let (partition, offset, key) = (message.partition(), message.offset(), message.key());
                    let payload = message.payload().unwrap_or_default();
                    let mut backoff = Duration::from_millis(500);
                    // An outage (schema registry) pauses consumption on this message instead of
                    // turning good data into dead letters; its offset is not passed until it is handled.
                    while let Err(error) = self.handle(topic, partition, offset, key, payload, now_ms) {
                        self.health.set_dependencies_ok(false);
                        if control.load(Ordering::Relaxed) == CONTROL_STOP {
                            break;
                        }
                        tracing::warn!(%error, topic, partition, offset, retry_in = ?backoff, "paused on an external outage");
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        now_ms = system_time_ms(SystemTime::now());
                    }
                    if backoff > Duration::from_millis(500) && control.load(Ordering::Relaxed) != CONTROL_STOP {
                        self.health.set_dependencies_ok(true);
                        tracing::info!(topic, partition, offset, "outage over; consuming again");
                    }
                }
                Some(Err(error)) => tracing::warn!(%error, "Kafka consume error"),
                None => {}
            }
            // A message returned with a queued revocation is still this instance's: it was
            // handled above, before the revocation's checkpoint.
            while let Some(rebalance) = source.next_rebalance() {
                self.rebalance(source, rebalance, control);
            }
            if now.duration_since(last_tick) >= Duration::from_millis(200) {
                last_tick = now;
                clock = WallClock::read();
                self.tick(source);
                self.apply_backpressure(source);
            }
            if now >= next_checkpoint {
                if self.checkpoint(source) {
                    checkpoint_backoff = Duration::from_secs(1);
                    next_checkpoint = Instant::now() + self.settings.checkpoint.interval;
                } else {
                    next_checkpoint = Instant::now() + checkpoint_backoff.min(self.settings.checkpoint.interval);
                    checkpoint_backoff = (checkpoint_backoff * 2).min(Duration::from_secs(60));
                }
            }
            if !self.health.brokers_up()
                && now.duration_since(last_broker_warning) >= Duration::from_secs(10)
                && started.elapsed() >= Duration::from_secs(5)
            {
                last_broker_warning = Instant::now();
                tracing::warn!(brokers = %self.settings.brokers, "cannot reach any Kafka broker; not ready, retrying");
            }
            if now.duration_since(last_status.0) >= Duration::from_secs(5) {
                self.print_status(last_status);
                last_status = (Instant::now(), self.report.consumed);
            }
        }
        self.tick(source);
        let deadline = Instant::now() + self.settings.checkpoint.shutdown_deadline;
        while !self.checkpoint(source) {
            if Instant::now() + Duration::from_secs(1) >= deadline {
                return Err(RuntimeError::FinalCheckpoint(self.settings.checkpoint.shutdown_deadline));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        if let Some(dlq) = &self.dead_letter_topic {
            dlq.flush(deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1)));
        }
        Ok(self.report)
    }

    /// Checks the first message of a partition resumed at a checkpointed offset. Kafka answers a
    /// fetch with the whole batch that holds the offset (the consumer skips what precedes it),
    /// but some Kafka-protocol brokers (tansu 0.6) start at the next batch instead, which would
    /// silently skip the rest of that batch. When the first offset is past the resume point,
    /// the partition is sent back further, twice as far each time, until the broker delivers
    /// the resume point; what precedes it is skipped by [`Pipeline::handle`]. True when the
    /// message is to be dropped.
    fn rewound(&mut self, source: &KafkaSource, topic: &str, partition: i32, offset: i64) -> bool {
        if self.resuming.is_empty() {
            // The usual case, checked before the key below allocates.
            return false;
        }
        let tp = (topic.to_owned(), partition);
        let Some(resume) = self.resuming.get_mut(&tp) else { return false };
        if offset <= resume.next || resume.next - resume.rewind <= 0 {
            if offset > resume.next {
                tracing::warn!(topic, partition, expected = resume.next, got = offset, "offsets missing from the log");
            }
            self.resuming.remove(&tp);
            return false;
        }
        tracing::info!(
            topic,
            partition,
            resume_at = resume.next,
            got = offset,
            "the broker started past the resume point"
        );
        if !Self::send_back(source, &tp, resume) {
            self.resuming.remove(&tp);
            return false;
        }
        true
    }

    /// Seeks a resuming partition twice as far before its resume point as last time; false
    /// when the seek failed (the partition then continues from the broker's position).
    fn send_back(source: &KafkaSource, tp: &TopicPartition, resume: &mut Resume) -> bool {
        resume.rewind = (resume.rewind * 2).max(1024);
        resume.since = Instant::now();
        let target = (resume.next - resume.rewind).max(0);
        tracing::info!(
            topic = tp.0,
            partition = tp.1,
            resume_at = resume.next,
            fetching_from = target,
            "fetching from earlier"
        );
        match source.seek(tp, target) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, topic = tp.0, partition = tp.1, "seeking back failed; continuing from the broker's position");
                false
            }
        }
    }

    /// Sends back resuming partitions that stayed silent although they have messages to deliver.
    fn unstick_silent(&mut self, source: &KafkaSource, highs: &std::collections::HashMap<TopicPartition, i64>) {
        let mut failed = Vec::new();
        for (tp, resume) in &mut self.resuming {
            let behind = highs.get(tp).is_some_and(|high| *high > resume.next);
            if behind && resume.since.elapsed() >= RESUME_SILENCE && !Self::send_back(source, tp, resume) {
                failed.push(tp.clone());
            }
        }
        for tp in failed {
            self.resuming.remove(&tp);
        }
    }

    /// Pauses consumption while more rows wait for a checkpoint than allowed (the storage is
    /// slow or down), resumes once a checkpoint took them.
    fn apply_backpressure(&mut self, source: &KafkaSource) {
        let buffered = self.buffers.rows();
        self.metrics.buffered_rows.set(buffered as i64);
        let over = buffered >= self.settings.checkpoint.max_buffered_rows;
        if over != self.paused && source.set_paused(over).is_ok() {
            self.paused = over;
            if !over {
                // Resumed partitions fetch from their position again, usually mid-batch: check
                // their first messages as after an assignment (see `rewound`).
                let assigned = source.assignment();
                self.resuming.extend(
                    self.positions()
                        .into_iter()
                        .filter(|(tp, _)| assigned.contains(tp))
                        .map(|(tp, next)| (tp, Resume::at(next))),
                );
            }
            self.metrics.consumption_paused.set(i64::from(over));
            if over {
                tracing::warn!(buffered, "consumption paused: rows wait for a checkpoint the storage has not taken");
            } else {
                tracing::info!(buffered, "consumption resumed");
            }
        }
    }

    /// Applies a rebalance the group waits for.
    fn rebalance(&mut self, source: &KafkaSource, rebalance: PendingRebalance, control: &AtomicU8) {
        match rebalance {
            PendingRebalance::Revoke(partitions) => {
                self.tick(source);
                if source.assignment_lost() {
                    tracing::warn!("assignment lost (session expired): discarding work since the last checkpoint");
                    self.roll_back();
                } else if self.checkpoint(source) {
                    self.released.append(&mut self.tasks);
                } else {
                    tracing::warn!("checkpoint before release failed: the next owner resumes from the previous one");
                    self.roll_back();
                }
                self.forget_series(&partitions);
                self.resuming.clear();
                for tp in &partitions {
                    self.assigned_at.remove(tp);
                }
                if let Err(error) = source.release(&partitions) {
                    tracing::error!(%error, "releasing revoked partitions failed");
                }
            }
            PendingRebalance::Assign(partitions) => {
                let now_ms = system_time_ms(SystemTime::now());
                self.assigned_at.extend(partitions.iter().map(|tp| (tp.clone(), now_ms)));
                let start = self.restore(&partitions, control);
                self.resuming = start.iter().map(|(tp, next)| (tp.clone(), Resume::at(*next))).collect();
                self.released.clear();
                self.paused = false;
                self.metrics.consumption_paused.set(0);
                if let Err(error) = source.accept(&partitions, &start) {
                    tracing::error!(%error, "accepting assigned partitions failed");
                }
            }
        }
    }

    /// Drops everything not yet committed: tasks, buffered rows, staged files. What the last
    /// checkpoint holds is replayed by whoever owns the partitions next.
    fn roll_back(&mut self) {
        self.tasks.clear();
        self.released.clear();
        self.buffers = Buffers::default();
        self.staged.clear();
    }

    fn forget_series(&self, partitions: &[TopicPartition]) {
        for (topic, partition) in partitions {
            let labels = [topic.as_str(), &partition.to_string()];
            let _ = self.metrics.partition_watermark.remove_label_values(&labels);
            let _ = self.metrics.event_time_lag.remove_label_values(&labels);
        }
    }

    /// Brings the tasks of newly assigned partitions to their newest checkpoint and returns
    /// where each partition resumes. Waits (with backoff) while the checkpoint store cannot be
    /// read: starting without the state would count events twice.
    fn restore(&mut self, partitions: &[TopicPartition], control: &AtomicU8) -> BTreeMap<TopicPartition, i64> {
        let started = Instant::now();
        let keys: BTreeSet<(Stream, i32)> = partitions
            .iter()
            .filter_map(|(topic, partition)| self.settings.topics.stream_of(topic).map(|s| task_key(s, *partition)))
            .collect();
        let mut backoff = Duration::from_millis(500);
        let mut wait = |error: &dyn std::fmt::Display, health: &Health| {
            if control.load(Ordering::Relaxed) == CONTROL_STOP {
                return false;
            }
            health.set_checkpoint_ok(false);
            tracing::warn!(%error, retry_in = ?backoff, "cannot read the checkpoint store; waiting");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(30));
            true
        };
        let catalog = loop {
            match self.store.catalog() {
                Ok(catalog) => break catalog,
                Err(error) if wait(&error, &self.health) => {}
                Err(_) => return BTreeMap::new(),
            }
        };
        let mut restored = 0;
        for key in keys {
            let latest = catalog.latest(&task_name(key));
            let task = loop {
                match self.restore_task(key, latest) {
                    Ok(task) => break task,
                    Err(error) if wait(&error, &self.health) => {}
                    Err(_) => return BTreeMap::new(),
                }
            };
            if let Some((task, from_store)) = task {
                restored += u64::from(from_store);
                self.tasks.insert(key, task);
            }
        }
        self.health.set_checkpoint_ok(true);
        self.report.restored += restored;
        self.metrics.tasks_restored.inc_by(restored);
        self.metrics.checkpoint_restore_duration.observe(started.elapsed().as_secs_f64());
        if restored > 0 {
            tracing::info!(tasks = restored, took = ?started.elapsed(), "restored partition state from checkpoints");
            self.tidy();
        }
        let mut start = BTreeMap::new();
        for (topic, partition) in partitions {
            let Some(stream) = self.settings.topics.stream_of(topic) else { continue };
            if let Some(offset) = self.tasks.get(&task_key(stream, *partition)).and_then(|t| t.offsets.get(&stream)) {
                start.insert((topic.clone(), *partition), *offset);
            }
        }
        start
    }

    /// The task for `key` as its newest checkpoint has it: the released one when nobody
    /// checkpointed it since, else read from the store. `None` when it has no checkpoint; the
    /// flag says whether the state was read.
    fn restore_task(
        &mut self,
        key: (Stream, i32),
        latest: Option<&TaskCheckpoint>,
    ) -> Result<Option<(Task, bool)>, crate::checkpoint::CheckpointError> {
        let Some(latest) = latest else { return Ok(None) };
        if let Some(task) = self.released.remove(&key)
            && task.epoch == latest.epoch
        {
            return Ok(Some((task, false)));
        }
        let state = PartitionTask::restore(&self.store.load_state(latest)?)?;
        let mut task = Task::new(state);
        task.epoch = latest.epoch;
        task.state_key = Some(latest.state.clone());
        task.dirty = false;
        let now_ms = system_time_ms(SystemTime::now());
        for (topic, offset) in &latest.offsets {
            if let Some(stream) = self.settings.topics.stream_of(topic) {
                task.offsets.insert(stream, *offset);
                let progress = PartitionProgress {
                    watermark: task.state.watermark(stream),
                    last_event_at_ms: now_ms,
                    caught_up: false,
                };
                task.progress.insert(stream, progress);
            }
        }
        Ok(Some((task, true)))
    }

    /// Publishes files of checkpoints whose writer stopped before publishing them, and removes
    /// what no checkpoint needs any more. Failures are retried at the next call.
    fn tidy(&self) {
        match self.store.tidy(system_time_ms(SystemTime::now())) {
            Ok(report) if report != crate::checkpoint::TidyReport::default() => {
                tracing::info!(?report, "checkpoint store tidied");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "tidying the checkpoint store failed; retried later"),
        }
    }

    /// Next offset of every partition this instance consumes.
    fn positions(&self) -> BTreeMap<TopicPartition, i64> {
        let mut positions = BTreeMap::new();
        for ((_, partition), task) in &self.tasks {
            for (stream, offset) in &task.offsets {
                positions.insert((self.settings.topics.of(*stream).to_owned(), *partition), *offset);
            }
        }
        positions
    }

    /// Whether a drain is complete: every partition is at or past both the end offset read at
    /// drain start and the high watermark of the latest fetch statistics, and nothing arrived
    /// for a quiet second. Both sources and the quiet period are needed because some
    /// Kafka-protocol brokers (tansu 0.6) answer ListOffsets with the last batch's base offset.
    fn reached(
        &self,
        target: &BTreeMap<TopicPartition, (i64, i64)>,
        source: &KafkaSource,
        last_message: Instant,
    ) -> bool {
        if last_message.elapsed() < Duration::from_secs(1) {
            return false;
        }
        let highs = source.high_watermarks();
        let positions = self.positions();
        target.iter().all(|(tp, (start, end))| {
            let position = positions.get(tp).copied().unwrap_or(*start);
            position >= *end && highs.get(tp).is_none_or(|high| position >= *high)
        })
    }

    /// Processes one message that arrived at wall-clock `now_ms`.
    ///
    /// # Errors
    /// A retryable [`DecodeError`] (an outage): nothing was recorded and the message must be
    /// handled again later.
    fn handle(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
        now_ms: i64,
    ) -> Result<(), DecodeError> {
        let Some(stream) = self.settings.topics.stream_of(topic) else { return Ok(()) };
        let time = &self.settings.time;
        let task = self
            .tasks
            .entry(task_key(stream, partition))
            .or_insert_with(|| Task::new(PartitionTask::new(stream, partition, time)));
        if task.offsets.get(&stream).is_some_and(|next| offset < *next) {
            // Already in the checkpointed state (the consumer started before it).
            return Ok(());
        }

        let event = &mut self.decoded[stream.index()];
        let decoded = self.decoder.decode_into(stream, payload, now_ms, event);
        if let Err(error) = &decoded
            && error.is_retryable()
        {
            return decoded;
        }
        task.offsets.insert(stream, offset + 1);
        task.dirty = true;
        self.report.consumed += 1;
        self.counters.consumed[stream.index()].inc();
        if let Err(error) = decoded {
            self.report.rejected += 1;
            self.metrics.events_rejected.with_label_values(&[stream.as_str(), error.reason()]).inc();
            if let Some(dlq) = &self.dead_letter_topic {
                dlq.send(&Rejected { topic, partition, offset, key, payload, reason: error.reason() }, &self.metrics);
            }
            self.buffers.dead.push(DeadLetterRow {
                rejected_at: now_ms,
                topic: topic.to_owned(),
                partition,
                offset,
                key: key.map(<[u8]>::to_vec),
                payload: payload.to_vec(),
                reason: error.reason(),
                detail: error.to_string(),
            });
            return Ok(());
        }
        self.report.decoded += 1;
        self.counters.decoded[stream.index()].inc();
        let disposition = task.state.process(event, &mut self.scratch);
        let progress = task.progress.entry(stream).or_default();
        progress.last_event_at_ms = now_ms;
        progress.watermark = task.state.watermark(stream);
        if disposition == Disposition::Duplicate {
            self.report.duplicates += 1;
            self.metrics.events_duplicate.with_label_values(&[stream.as_str()]).inc();
            return Ok(());
        }
        for late in self.scratch.late.drain(..) {
            self.report.late += 1;
            self.metrics.events_late.with_label_values(&[stream.as_str(), late.family.as_str()]).inc();
            self.buffers.late.push(LateEventRow {
                stream: stream.as_str(),
                family: late.family.as_str(),
                partition,
                offset,
                event_id: late.event_id,
                event_time: late.event_time,
                missed_window_ms: late.late.window_ms,
                missed_window_start: late.late.window_start,
                behind_watermark_ms: late.late.behind_watermark_ms,
            });
        }
        self.route_closed();
        Ok(())
    }

    /// Moves rows of closed windows, sessions and orders from the scratch output to the
    /// Parquet buffers, the instance-wide summaries, counters and histograms.
    fn route_closed(&mut self) {
        let out = &mut self.scratch;
        if !out.funnel.is_empty() {
            self.board.add_funnel(&out.funnel);
            self.buffers.funnel.append(&mut out.funnel);
        }
        if !out.orders.is_empty() {
            self.board.add_orders(&out.orders);
            self.buffers.orders.append(&mut out.orders);
        }
        if !out.fulfillment.is_empty() {
            self.board.add_fulfillment(&out.fulfillment);
            self.buffers.fulfillment.append(&mut out.fulfillment);
        }
        for session in &out.sessions {
            self.session_counters.count(session);
        }
        self.buffers.sessions.append(&mut out.sessions);
        self.buffers.facts.append(&mut out.facts);
        self.metrics.shipments_orphaned.inc_by(out.orphans.len() as u64);
        self.buffers.orphans.append(&mut out.orphans);
        self.metrics.joins_late.inc_by(std::mem::take(&mut out.joins_late));
        for o in out.latencies.drain(..) {
            let (histogram, label) = match o.metric {
                LatencyMetric::CreatedToPaid => (&self.metrics.order_created_to_paid, o.label.as_str()),
                LatencyMetric::PaidToPickup => {
                    (&self.metrics.paid_to_pickup, self.metrics.label_budget.admit("warehouse", &o.label))
                }
                LatencyMetric::PickupToDelivery => (
                    &self.metrics.pickup_to_delivery,
                    self.metrics.label_budget.admit("carrier", carrier_label(&o.label)),
                ),
            };
            histogram.with_label_values(&[label]).observe(o.ms as f64 / 1000.0);
        }
    }

    /// Periodic work: caught-up flags, watermark gauges, releasing instance-wide windows.
    fn tick(&mut self, source: &KafkaSource) {
        let highs = source.high_watermarks();
        self.unstick_silent(source, &highs);
        let positions = self.positions();
        let caught_up =
            |tp: &TopicPartition| highs.get(tp).is_some_and(|high| positions.get(tp).copied().unwrap_or(0) >= *high);
        let now_ms = system_time_ms(SystemTime::now());
        let idle_timeout_ms = self.settings.time.idle_timeout_ms;
        for ((kind, partition), task) in &mut self.tasks {
            for &stream in task_streams(*kind) {
                let tp = (self.settings.topics.of(stream).to_owned(), *partition);
                let up_to_date = caught_up(&tp);
                let assigned_at = self.assigned_at.get(&tp).copied().unwrap_or(now_ms);
                let idle = match task.progress.get_mut(&stream) {
                    Some(progress) => {
                        progress.caught_up = up_to_date;
                        if let Some(w) = progress.watermark {
                            let labels = [tp.0.as_str(), &partition.to_string()];
                            self.metrics.partition_watermark.with_label_values(&labels).set(w as f64 / 1000.0);
                            self.metrics.event_time_lag.with_label_values(&labels).set((now_ms - w) as f64 / 1000.0);
                        }
                        up_to_date && now_ms - progress.last_event_at_ms >= idle_timeout_ms
                    }
                    None => up_to_date && now_ms - assigned_at >= idle_timeout_ms,
                };
                // An idle partition of a commerce task stops holding its fulfillment windows back.
                let pending = self.scratch.pending();
                task.state.set_idle(stream, idle, &mut self.scratch);
                task.dirty |= self.scratch.pending() != pending;
            }
        }
        self.route_closed();
        // Assigned partitions that have delivered nothing yet hold the low watermark back
        // until they have been caught up (empty) for an idle timeout.
        let unstarted: Vec<PartitionProgress> = source
            .assignment()
            .into_iter()
            .filter(|(topic, partition)| {
                self.settings.topics.stream_of(topic).is_some_and(|stream| {
                    self.tasks
                        .get(&task_key(stream, *partition))
                        .is_none_or(|task| !task.progress.contains_key(&stream))
                })
            })
            .map(|tp| PartitionProgress {
                watermark: None,
                last_event_at_ms: self.assigned_at.get(&tp).copied().unwrap_or(now_ms),
                caught_up: caught_up(&tp),
            })
            .collect();
        self.metrics.sessions_open.set(self.tasks.values().map(|t| t.state.open_sessions() as i64).sum());
        self.metrics.orders_open.set(self.tasks.values().map(|t| t.state.open_orders() as i64).sum());
        if self.last_backlog.elapsed() >= Duration::from_secs(1) {
            self.last_backlog = Instant::now();
            self.publish_backlog();
        }
        let progress = self.tasks.values().flat_map(|t| t.progress.values()).chain(unstarted.iter());
        if let Some(low) = low_watermark(progress, now_ms, self.settings.time.idle_timeout_ms) {
            // The board holds windows of several families: release once every one closed them.
            let l = &self.settings.time.lateness;
            let lateness = [l.traffic_ms, l.orders_ms, l.fulfillment_ms].into_iter().max().unwrap_or_default();
            let released = self.board.release_through(low - lateness);
            for summary in released {
                self.publish(&summary);
            }
        }
    }

    /// Sets the backlog gauges: unshipped paid orders of every commerce task, at its
    /// fulfillment watermark.
    fn publish_backlog(&mut self) {
        let mut by_warehouse: BTreeMap<String, Backlog> = BTreeMap::new();
        let mut at: Option<i64> = None;
        for task in self.tasks.values() {
            if let Some((task_at, backlog)) = task.state.backlog_now() {
                at = Some(at.map_or(task_at, |a| a.min(task_at)));
                for (warehouse, b) in backlog {
                    let warehouse = self.metrics.label_budget.admit("warehouse", &warehouse).to_owned();
                    by_warehouse.entry(warehouse).or_default().add(&b);
                    by_warehouse.entry("all".to_owned()).or_default().add(&b);
                }
            }
        }
        let Some(at) = at else { return };
        let g = &self.metrics.fulfillment;
        g.backlog_at.set(at as f64 / 1000.0);
        self.exported.warehouses.extend(by_warehouse.keys().cloned());
        self.exported.warehouses.insert("all".to_owned());
        for warehouse in &self.exported.warehouses {
            let b = by_warehouse.get(warehouse).copied().unwrap_or_default();
            let labels = [warehouse.as_str()];
            g.backlog_orders.with_label_values(&labels).set(b.orders as i64);
            g.backlog_past_ship_by.with_label_values(&labels).set(b.past_ship_by as i64);
            let age = b.oldest_paid_at.map_or(0, |paid| (at - paid).max(0));
            g.oldest_unshipped_age.with_label_values(&labels).set(age as f64 / 1000.0);
        }
    }

    /// Closes every window and session of every partition (end of a drain).
    fn close_all(&mut self) {
        for task in self.tasks.values_mut() {
            task.state.close_all(&mut self.scratch);
            task.dirty = true;
        }
        self.route_closed();
        for summary in self.board.release_all() {
            self.publish(&summary);
        }
    }

    /// Sets the business gauges to a closed window and reports it.
    fn publish(&mut self, summary: &WindowSummary) {
        self.report.windows_closed += 1;
        let label = window_label(summary.window_ms);
        let w = label.as_str();
        self.metrics.window_end.with_label_values(&[w]).set(summary.window_end() as f64 / 1000.0);
        // Every channel × device series is set, to zero when absent, so none keeps a stale value.
        for channel in Channel::ALL.iter().copied().map(Some).chain([None]) {
            for device in Device::ALL.iter().copied().map(Some).chain([None]) {
                let counts = summary.traffic.get(&(channel, device)).copied().unwrap_or_default();
                let labels = [w, channel_label(channel), device_label(device)];
                self.metrics.funnel_visitors.with_label_values(&labels).set(counts.visitors as i64);
                self.metrics.funnel_page_views.with_label_values(&labels).set(counts.page_views as i64);
                for step in Step::ALL {
                    self.metrics
                        .funnel_step_visitors
                        .with_label_values(&[labels[0], labels[1], labels[2], step.as_str()])
                        .set(counts.visitors_at(step) as i64);
                }
            }
        }
        self.publish_orders(w, summary);
        self.publish_fulfillment(w, summary);
        let (visitors, purchasers) = summary.all_traffic();
        let conversion = if visitors == 0 { 0.0 } else { 100.0 * purchasers as f64 / visitors as f64 };
        let sales: Vec<String> = summary
            .sales_by_currency()
            .into_iter()
            .map(|(currency, (orders, amount))| {
                format!("paid orders {orders:>5}  GMV {currency} {:>12.2}", minor_to_major(amount, currency))
            })
            .collect();
        let start = humantime::format_rfc3339_seconds(
            SystemTime::UNIX_EPOCH + Duration::from_millis(summary.window_start.max(0) as u64),
        );
        let line = format!(
            "{w:>3} window {start}  visitors {visitors:>6}  purchasers {purchasers:>5}  paid conversion {conversion:>5.2}%  {}",
            if sales.is_empty() { "paid orders     0".to_owned() } else { sales.join("  ") }
        );
        if self.progress {
            println!("{line}");
        } else {
            tracing::info!(window = w, window_start = %start, visitors, purchasers, "window closed");
        }
    }

    /// Order gauges of a closed window: every channel and `all` is set (zero when absent).
    fn publish_orders(&mut self, w: &str, summary: &WindowSummary) {
        let g = &self.metrics.orders;
        self.exported.currencies.extend(summary.orders.keys().map(|(_, currency)| currency.clone()));
        for channel in Channel::ALL.iter().copied().map(Some).chain([None]) {
            let label = channel_label(channel);
            let mut total = OrderCounts::default();
            for currency in &self.exported.currencies {
                let counts = summary.orders.get(&(channel, currency.clone())).cloned().unwrap_or_default();
                let money = [w, label, currency.as_str()];
                g.paid_amount.with_label_values(&money).set(minor_to_major(counts.paid_amount_minor, currency));
                g.refunded_amount.with_label_values(&money).set(minor_to_major(counts.refund_amount_minor, currency));
                total.add(&counts);
            }
            let labels = [w, label];
            g.created.with_label_values(&labels).set(total.created as i64);
            g.paid.with_label_values(&labels).set(total.paid as i64);
            g.paying_buyers.with_label_values(&labels).set(total.paying_buyers() as i64);
            g.units.with_label_values(&labels).set(total.units as i64);
            g.cancelled.with_label_values(&labels).set(total.cancellations as i64);
            g.refunded.with_label_values(&labels).set(total.refunds as i64);
        }
    }

    /// Fulfillment gauges of a closed window; carriers outside the exported list fold into
    /// `other`, and series exported before but absent now are set to zero.
    fn publish_fulfillment(&mut self, w: &str, summary: &WindowSummary) {
        let mut folded: BTreeMap<(String, String), FulfillmentCounts> = BTreeMap::new();
        for ((carrier, warehouse), counts) in &summary.fulfillment {
            let budget = &self.metrics.label_budget;
            let carrier = budget.admit("carrier", carrier.as_deref().map_or("all", carrier_label)).to_owned();
            let warehouse = budget.admit("warehouse", warehouse.as_deref().unwrap_or("all")).to_owned();
            folded.entry((carrier, warehouse)).or_default().add(counts);
        }
        folded.entry(("all".to_owned(), "all".to_owned())).or_default();
        for (carrier, warehouse) in folded.keys() {
            self.exported.fulfillment.insert((w.to_owned(), carrier.clone(), warehouse.clone()));
        }
        let g = &self.metrics.fulfillment;
        for (window, carrier, warehouse) in self.exported.fulfillment.iter().filter(|s| s.0 == w) {
            let c = folded.get(&(carrier.clone(), warehouse.clone())).cloned().unwrap_or_default();
            let labels = [window.as_str(), carrier.as_str(), warehouse.as_str()];
            for (gauge, value) in [
                (&g.picked_up, c.picked_up),
                (&g.delivered, c.delivered),
                (&g.failed_attempts, c.failed_attempts),
                (&g.exceptions, c.exceptions),
                (&g.returned, c.returns),
                (&g.ship_promised, c.ship_promised),
                (&g.shipped_on_time, c.shipped_on_time),
                (&g.deliver_promised, c.deliver_promised),
                (&g.delivered_on_time, c.delivered_on_time),
            ] {
                gauge.with_label_values(&labels).set(value as i64);
            }
        }
    }

    fn print_status(&self, since: (Instant, u64)) {
        let secs = since.0.elapsed().as_secs_f64().max(1e-3);
        let rate = (self.report.consumed - since.1) as f64 / secs;
        let r = &self.report;
        let line = format!(
            "consumed {} ({rate:.0}/s)  decoded {}  dead letters {}  late {}  duplicates {}  windows closed {}  files {}",
            r.consumed, r.decoded, r.rejected, r.late, r.duplicates, r.windows_closed, r.files
        );
        if self.progress {
            println!("{line}");
        } else {
            tracing::info!("{line}");
        }
    }

    /// Stages buffered rows for checkpoint `seq`. Rows of a table whose write fails stay
    /// buffered for the next try; files already staged wait for the next commit.
    fn stage(&mut self, seq: u64) -> Result<(), SinkError> {
        let writer = &mut self.writer;
        let buffers = &mut self.buffers;
        let outcomes = [
            writer.stage(&mut buffers.funnel, seq),
            writer.stage(&mut buffers.sessions, seq),
            writer.stage(&mut buffers.orders, seq),
            writer.stage(&mut buffers.fulfillment, seq),
            writer.stage(&mut buffers.facts, seq),
            writer.stage(&mut buffers.orphans, seq),
            writer.stage(&mut buffers.late, seq),
            writer.stage(&mut buffers.dead, seq),
        ];
        let mut first_error = None;
        for outcome in outcomes {
            self.staged.extend(outcome.staged);
            if let Some(error) = outcome.error {
                first_error.get_or_insert(error);
            }
        }
        match first_error {
            None => Ok(()),
            Some(error) => {
                self.metrics.sink_errors.with_label_values(&["parquet"]).inc();
                Err(error)
            }
        }
    }

    /// Takes a checkpoint: stages buffered rows, writes the state of every task changed since
    /// the last one, commits the manifest, then publishes the files and commits the offsets to
    /// Kafka. Returns whether the manifest committed; if not, nothing of it counts and the
    /// next attempt starts over (rows stay buffered, staged files are listed again).
    fn checkpoint(&mut self, source: &KafkaSource) -> bool {
        let started = Instant::now();
        let seq = self.checkpoint_seq + 1;
        match self.commit_checkpoint(seq) {
            Ok(true) => {}
            Ok(false) => {
                // Nothing changed since the last commit: everything is checkpointed, which is
                // what the age alert watches, so an idle pipeline does not page.
                self.health.set_checkpoint_ok(true);
                self.metrics.checkpoint_last_success.set(system_time_ms(SystemTime::now()) as f64 / 1000.0);
                return true;
            }
            Err(error) => {
                self.health.set_checkpoint_ok(false);
                self.metrics.checkpoint_failures.inc();
                tracing::error!(%error, "checkpoint failed; rows stay buffered and offsets where they were, retrying");
                return false;
            }
        }
        self.checkpoint_seq = seq;
        self.report.checkpoints += 1;
        let files: Vec<StagedFile> = self.unpublished.drain(..).chain(self.staged.drain(..)).collect();
        let failed = self.store.publish(files.clone());
        for file in files.iter().filter(|f| !failed.iter().any(|(g, _)| g == *f)) {
            self.report.files += 1;
            self.metrics.parquet_files.with_label_values(&[file.table.as_str()]).inc();
            self.metrics.parquet_bytes.with_label_values(&[file.table.as_str()]).inc_by(file.bytes);
            tracing::debug!(table = file.table, key = %file.key, rows = file.rows, "published Parquet file");
        }
        if let Some((_, error)) = failed.first() {
            self.metrics.sink_errors.with_label_values(&["parquet"]).inc();
            tracing::warn!(%error, files = failed.len(), "publishing committed files failed; retried at the next checkpoint");
        }
        self.unpublished = failed.into_iter().map(|(file, _)| file).collect();
        if let Err(error) = source.commit(&self.positions()) {
            // The checkpoint holds the offsets; Kafka's copy only feeds lag monitoring.
            tracing::warn!(%error, "committing offsets to Kafka failed; retried at the next checkpoint");
        }
        if seq % 10 == 1 {
            self.tidy();
        }
        self.health.set_checkpoint_ok(true);
        self.metrics.checkpoint_duration.observe(started.elapsed().as_secs_f64());
        self.metrics.checkpoint_last_success.set(system_time_ms(SystemTime::now()) as f64 / 1000.0);
        true
    }

    /// Stages rows, writes changed state and commits the manifest of checkpoint `seq`; false
    /// when there was nothing to commit.
    fn commit_checkpoint(&mut self, seq: u64) -> Result<bool, CheckpointFailure> {
        self.stage(seq)?;
        let changed = self.tasks.values().any(|t| t.dirty || t.state_key.is_none());
        if !changed && self.staged.is_empty() && self.unpublished.is_empty() {
            // Every task's newest checkpoint is already committed as it stands.
            return Ok(false);
        }
        let mut tasks = BTreeMap::new();
        let mut written = Vec::new();
        for (key, task) in &mut self.tasks {
            let name = task_name(*key);
            let (epoch, state) = match (&task.state_key, task.dirty) {
                (Some(state), false) => (task.epoch, state.clone()),
                _ => {
                    let epoch = task.epoch + 1;
                    // State grows between checkpoints: an eighth more than last time.
                    let bytes = task.state.snapshot_sized(task.snapshot_len + task.snapshot_len / 8)?;
                    task.snapshot_len = bytes.len();
                    let state = self.store.put_state(&name, epoch, bytes)?;
                    written.push((*key, epoch, state.clone()));
                    (epoch, state)
                }
            };
            let offsets = task
                .offsets
                .iter()
                .map(|(stream, offset)| (self.settings.topics.of(*stream).to_owned(), *offset))
                .collect();
            tasks.insert(name, TaskCheckpoint { epoch, state, offsets });
        }
        let files = self.unpublished.iter().chain(&self.staged).cloned().collect();
        let manifest = Manifest {
            instance: self.instance.clone(),
            seq,
            written_at_ms: system_time_ms(SystemTime::now()),
            tasks,
            files,
        };
        self.store.commit(&manifest)?;
        for (key, epoch, state) in written {
            if let Some(task) = self.tasks.get_mut(&key) {
                task.epoch = epoch;
                task.state_key = Some(state);
                task.dirty = false;
            }
        }
        Ok(true)
    }
}

/// Why a checkpoint did not commit.
#[derive(Debug, thiserror::Error)]
enum CheckpointFailure {
    #[error("staging Parquet files: {0}")]
    Stage(#[from] SinkError),
    #[error(transparent)]
    Store(#[from] crate::checkpoint::CheckpointError),
    #[error(transparent)]
    Snapshot(#[from] crate::time::SnapshotError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wall_clock_follows_the_monotonic_reading_from_its_anchor() {
        let clock = WallClock::read();
        assert!((clock.ms - system_time_ms(SystemTime::now())).abs() < 1_000, "anchored to the system clock");
        assert_eq!(clock.ms_at(clock.at + Duration::from_millis(1_500)), clock.ms + 1_500);
        // A reading from before the anchor (a message polled just before a tick) is the anchor.
        let earlier = clock.at.checked_sub(Duration::from_millis(5)).unwrap_or(clock.at);
        assert_eq!(clock.ms_at(earlier), clock.ms);
    }
}
