//! The processing loop: Kafka source → decode → per-partition tasks → the Parquet buffers of
//! the next checkpoint ([`crate::checkpoint`]) and the gauges ([`crate::sink::prometheus`]).
//!
//! The loop runs on one dedicated thread and owns all state, so no locks sit on the hot path;
//! the HTTP endpoint only reads metrics and health flags. Rebalances are applied by the loop
//! too: revoked partitions are checkpointed before release, assigned ones restored before they
//! start, at their checkpointed offsets.

#![deny(clippy::too_many_lines)]

use crate::assignment::{Assignment, Retry};
use crate::checkpoint::{CheckpointFailure, Commit, Coordinator, Republish};
use crate::codec::{DecodeError, Decoder, WriterSchemaSource};
use crate::config::Settings;
use crate::event::{Event, Stream};
use crate::operators::{Disposition, ForeignStream, Registry, TaskId, TaskOutput};
use crate::sink::dead_letter::{DeadLetterTopic, Rejected};
use crate::sink::prometheus::Gauges;
use crate::sink::storage::Storage;
use crate::source::{KafkaSource, PendingRebalance, Polled, Record, TopicPartition};
use crate::table::{LateEventRow, Progress, QuarantinedEventRow, TableSpec};
use crate::telemetry::{EventDuplicate, EventLate, EventRejected, Health, LOG_EVERY, LogLimit, Metrics, Outcomes};
use crate::time::{WallClock, rfc3339_ms, system_time_ms};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub use crate::control::{Control, ControlHandle};
pub use crate::telemetry::RunReport;

/// A failure that stops the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The Kafka consumer could not be created (librdkafka refused a setting).
    #[error("creating the Kafka consumer: {0}")]
    Source(#[source] rdkafka::error::KafkaError),
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
    /// An event reached a task that does not read its stream: a bug; nothing after it counts.
    #[error("bug: {0}")]
    Routing(#[from] ForeignStream),
    /// The orders and logistics topics are not co-partitioned (at start, or since a change).
    #[error(transparent)]
    NotCoPartitioned(#[from] crate::source::NotCoPartitioned),
    /// The pipeline thread panicked or could not start.
    #[error("the pipeline thread {0}")]
    Thread(String),
    /// The schema registry's HTTP client could not be set up (its CA file).
    #[error("schema registry client: {0}")]
    SchemaRegistry(String),
}

/// How a pipeline reports and what it runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Print closed windows and throughput to the terminal (the demo) instead of logging them.
    pub progress: bool,
    /// The operators to run.
    pub registry: Registry,
}

/// The loop's timers.
struct Timers {
    started: Instant,
    last_tick: Instant,
    next_checkpoint: Instant,
    checkpoint_backoff: Duration,
    last_status: (Instant, u64),
    last_broker_warning: Option<Instant>,
    consume_error_log: LogLimit,
    last_message: Instant,
    next_partition_check: Instant,
    clock: WallClock,
}

/// How often the topics' partition counts are checked again while running.
const PARTITION_CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// A drain: asked for when, and the offsets it runs to once known.
#[derive(Default)]
struct Drain {
    requested_at: Option<Instant>,
    target: Option<BTreeMap<TopicPartition, (i64, i64)>>,
}

/// Why a message could not be handled now.
#[derive(Debug, thiserror::Error)]
enum HandleError {
    /// A dependency is down (the schema registry): nothing was recorded; handle it again later.
    #[error(transparent)]
    Outage(DecodeError),
    /// A bug in routing.
    #[error(transparent)]
    Routing(#[from] ForeignStream),
}

/// The processing loop and everything it owns.
pub struct Pipeline {
    settings: Settings,
    metrics: Metrics,
    outcomes: Outcomes,
    health: Arc<Health>,
    decoder: Decoder,
    /// The latest event of each stream, decoded into in place so its buffers are reused.
    decoded: [Event; 3],
    /// The tasks of the partitions this instance owns.
    owned: Assignment,
    /// What the task handling the current event produced, before it is routed.
    scratch: TaskOutput,
    checkpoints: Coordinator,
    /// Every table written, for the completeness each checkpoint records.
    tables: Vec<TableSpec>,
    /// The instance's low watermark at the last tick.
    low_watermark: Option<i64>,
    gauges: Gauges,
    dead_letter_topic: Option<DeadLetterTopic>,
    paused: bool,
    last_backlog: Instant,
    progress: bool,
    /// Quarantined events are logged at most every 10 s.
    guard_log: LogLimit,
}

impl Pipeline {
    /// A pipeline for `settings`.
    ///
    /// # Errors
    /// When the dead-letter topic producer cannot be created or the output location opened.
    pub fn new(
        settings: Settings,
        metrics: Metrics,
        health: Arc<Health>,
        options: Options,
    ) -> Result<Self, RuntimeError> {
        let schemas = match &settings.schema_registry {
            Some(registry) => WriterSchemaSource::registry_with(registry).map_err(RuntimeError::SchemaRegistry)?,
            None => WriterSchemaSource::local(settings.writer_schemas_dir.as_deref()),
        };
        let schemas = Stream::ALL
            .iter()
            .zip(&settings.accepted_record_names)
            .fold(schemas, |schemas, (stream, names)| schemas.accepting(*stream, names));
        let dead_letter_topic = settings
            .dead_letter_topic
            .as_deref()
            .map(|topic| DeadLetterTopic::new(&settings.brokers, settings.kafka_client.iter(), topic, metrics.clone()))
            .transpose()?;
        metrics.label_budget.set_limit(settings.max_values_per_label);
        let instance = format!("{}-{}", system_time_ms(SystemTime::now()), std::process::id());
        let (storage, tables) = (Storage::open(&settings.output)?, options.registry.tables());
        let grace_ms = settings.checkpoint.debris_grace_ms;
        Ok(Pipeline {
            checkpoints: Coordinator::new(storage, instance, grace_ms, settings.output_format, tables.clone()),
            tables,
            low_watermark: None,
            gauges: Gauges::new(metrics.clone(), &settings.time, options.progress),
            outcomes: Outcomes::new(&metrics, |s| settings.topics.of(s).to_owned()),
            decoder: Decoder::new(settings.format, schemas, settings.validation),
            decoded: Stream::ALL.map(Event::placeholder),
            owned: Assignment::new(settings.topics.clone(), options.registry, settings.time.clone()),
            progress: options.progress,
            settings,
            metrics,
            health,
            scratch: TaskOutput::default(),
            dead_letter_topic,
            paused: false,
            last_backlog: Instant::now(),
            guard_log: LogLimit::default(),
        })
    }

    /// Runs until `control` says stop (or drain and the drain completes).
    ///
    /// # Errors
    /// [`RuntimeError`] when a drain cannot start, a bug is found, or the final checkpoint
    /// does not commit.
    pub fn run(mut self, source: &mut KafkaSource, control: &ControlHandle) -> Result<RunReport, RuntimeError> {
        source.defer_rebalances();
        self.tidy(Republish::Stale);
        let now = Instant::now();
        let mut timers = Timers {
            started: now,
            last_tick: now,
            next_checkpoint: now + self.settings.checkpoint.interval,
            checkpoint_backoff: Duration::from_secs(1),
            last_status: (now, 0),
            last_broker_warning: None,
            consume_error_log: LogLimit::default(),
            last_message: now,
            next_partition_check: now,
            clock: WallClock::read(),
        };
        let mut drain = Drain::default();
        loop {
            self.health.beat();
            match control.get() {
                Control::Stop => break,
                Control::Drain if drain.target.is_none() => self.start_drain(&mut drain, source)?,
                _ => {}
            }
            if let Some(target) = &drain.target
                && timers.last_message.elapsed() >= Duration::from_secs(1)
                && source.reached(target, &self.owned.positions())
            {
                self.close_all();
                break;
            }
            let now = self.poll(source, control, &mut timers)?;
            while let Some(rebalance) = source.next_rebalance() {
                // A message returned with a queued revocation is still this instance's: it was
                // handled above, before the revocation's checkpoint.
                self.rebalance(source, rebalance, control);
            }
            self.on_timers(source, &mut timers, now);
            // As soon as a broker answers (before the group's first assignment), then again and
            // again: partitions added to one topic only stop the job before another checkpoint.
            if now >= timers.next_partition_check && self.health.brokers_up() {
                timers.next_partition_check = now + PARTITION_CHECK_INTERVAL;
                let topics = &self.settings.topics;
                source.check_co_partitioned(&topics.orders, &topics.logistics, Duration::from_secs(5))?;
            }
        }
        self.finish(source)
    }

    /// Reads the drain's target: the current end of every assigned partition.
    fn start_drain(&mut self, drain: &mut Drain, source: &KafkaSource) -> Result<(), RuntimeError> {
        let since = *drain.requested_at.get_or_insert_with(Instant::now);
        if source.assignment().is_empty() {
            if since.elapsed() > Duration::from_secs(120) {
                return Err(RuntimeError::NoAssignment(since.elapsed()));
            }
            return Ok(());
        }
        match source.start_and_end_offsets(Duration::from_secs(10)) {
            Ok(target) => {
                tracing::info!(partitions = target.len(), "draining to the current end of every assigned partition");
                drain.target = Some(target);
            }
            Err(error) => tracing::warn!(%error, "cannot read end offsets yet; retrying"),
        }
        Ok(())
    }

    /// Polls one message and handles it; returns when the poll returned. An outage (schema
    /// registry) pauses consumption on the message instead of turning good data into dead
    /// letters; its offset is not passed until it is handled.
    fn poll(
        &mut self,
        source: &mut KafkaSource,
        control: &ControlHandle,
        timers: &mut Timers,
    ) -> Result<Instant, RuntimeError> {
        let polled = source.poll(Duration::from_millis(100));
        // One clock read per message serves the timers and the message's wall time.
        let now = Instant::now();
        let record = match polled {
            Polled::Message(record) => record,
            Polled::Error(error) => {
                if let Some(suppressed) = timers.consume_error_log.allow() {
                    tracing::warn!(%error, suppressed, "Kafka consume error");
                }
                return Ok(now);
            }
            Polled::Nothing => return Ok(now),
        };
        timers.last_message = now;
        let mut now_ms = timers.clock.ms_at(now);
        let mut backoff = Duration::from_millis(500);
        loop {
            match self.handle(&record, now_ms) {
                Ok(()) => break,
                Err(HandleError::Routing(bug)) => return Err(bug.into()),
                Err(HandleError::Outage(error)) => {
                    self.health.set_dependencies_ok(false);
                    if control.get() == Control::Stop {
                        break;
                    }
                    let (topic, partition, offset) = (record.topic(), record.partition(), record.offset());
                    tracing::warn!(%error, topic, partition, offset, retry_in_ms = backoff.as_millis(), "paused on an external outage");
                    // Waiting on purpose is not a wedge.
                    self.health.beat();
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    now_ms = system_time_ms(SystemTime::now());
                }
            }
        }
        if backoff > Duration::from_millis(500) && control.get() != Control::Stop {
            self.health.set_dependencies_ok(true);
            let (topic, partition, offset) = (record.topic(), record.partition(), record.offset());
            tracing::info!(topic, partition, offset, "outage over; consuming again");
        }
        Ok(now)
    }

    /// Ticks, checkpoints, warnings and status lines that are due at `now`.
    fn on_timers(&mut self, source: &mut KafkaSource, timers: &mut Timers, now: Instant) {
        if now.duration_since(timers.last_tick) >= Duration::from_millis(200) {
            timers.last_tick = now;
            timers.clock = WallClock::read();
            self.tick(source);
            self.apply_backpressure(source);
        }
        if now >= timers.next_checkpoint {
            let interval = self.settings.checkpoint.interval;
            if self.checkpoint(source) {
                timers.checkpoint_backoff = Duration::from_secs(1);
                timers.next_checkpoint = Instant::now() + interval;
            } else {
                timers.next_checkpoint = Instant::now() + timers.checkpoint_backoff.min(interval);
                timers.checkpoint_backoff = (timers.checkpoint_backoff * 2).min(Duration::from_secs(60));
            }
        }
        if !self.health.brokers_up()
            && timers.last_broker_warning.is_none_or(|last| now.duration_since(last) >= LOG_EVERY)
            && timers.started.elapsed() >= Duration::from_secs(5)
        {
            timers.last_broker_warning = Some(now);
            tracing::warn!(brokers = %self.settings.brokers, "cannot reach any Kafka broker; not ready, retrying");
        }
        if now.duration_since(timers.last_status.0) >= Duration::from_secs(5) {
            self.outcomes.report.print_status(timers.last_status, self.progress);
            timers.last_status = (Instant::now(), self.outcomes.report.consumed);
        }
    }

    /// The last tick and checkpoint before returning.
    fn finish(mut self, source: &mut KafkaSource) -> Result<RunReport, RuntimeError> {
        self.tick(source);
        let deadline = Instant::now() + self.settings.checkpoint.shutdown_deadline;
        while !self.checkpoint(source) {
            self.health.beat();
            if Instant::now() + Duration::from_secs(1) >= deadline {
                return Err(RuntimeError::FinalCheckpoint(self.settings.checkpoint.shutdown_deadline));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        if let Some(dlq) = &self.dead_letter_topic {
            dlq.flush(deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1)));
        }
        Ok(self.outcomes.report)
    }

    /// Processes one message that arrived at wall-clock `now_ms`.
    ///
    /// # Errors
    /// [`HandleError::Outage`]: nothing was recorded and the message must be handled again.
    fn handle(&mut self, record: &Record<'_>, now_ms: i64) -> Result<(), HandleError> {
        let Some(stream) = self.settings.topics.stream_of(record.topic()) else { return Ok(()) };
        let task = self.owned.task(TaskId::of(stream, record.partition()));
        if task.offsets.get(&stream).is_some_and(|next| record.offset() < *next) {
            // Already in the checkpointed state (the consumer started before it).
            return Ok(());
        }
        let event = &mut self.decoded[stream.index()];
        match self.decoder.decode_into(stream, record.payload(), now_ms, event) {
            Err(error) if error.is_retryable() => return Err(HandleError::Outage(error)),
            decoded => {
                task.offsets.insert(stream, record.offset() + 1);
                task.dirty = true;
                self.outcomes.consumed(stream);
                if let Err(error) = decoded {
                    self.reject(stream, record, now_ms, &error);
                    return Ok(());
                }
            }
        }
        self.outcomes.decoded(stream);
        let disposition = task.state.process(event, record.offset(), &mut self.scratch)?;
        let progress = task.progress.entry(stream).or_default();
        progress.last_event_at_ms = now_ms;
        progress.watermark = task.state.watermark(stream);
        if disposition == Disposition::Duplicate {
            EventDuplicate { stream, event_id: event.event_id() }.emit(&mut self.outcomes);
            return Ok(());
        }
        self.route_late(stream, record);
        self.route_closed();
        Ok(())
    }

    /// Sends a message that failed to decode or validate to the dead-letter outputs.
    fn reject(&mut self, stream: Stream, record: &Record<'_>, now_ms: i64, error: &DecodeError) {
        let (topic, partition, offset, key) = (record.topic(), record.partition(), record.offset(), record.key());
        EventRejected { stream, topic, partition, offset, error }.emit(&mut self.outcomes);
        let rejected = Rejected { topic, partition, offset, key, payload: record.payload(), reason: error.reason() };
        if let Some(dlq) = &self.dead_letter_topic {
            dlq.send(&rejected, &self.metrics);
        }
        let row = rejected.row(now_ms, error.to_string(), self.settings.dead_letter_payload_bytes);
        self.checkpoints.pending().push(row);
    }

    /// Tables and counts the events the current one's task found late.
    fn route_late(&mut self, stream: Stream, record: &Record<'_>) {
        for late in self.scratch.late.drain(..) {
            let behind_watermark_ms = late.late.behind_watermark_ms;
            EventLate { stream, family: late.family, event_id: &late.event_id, behind_watermark_ms }
                .emit(&mut self.outcomes);
            self.checkpoints.pending().push(LateEventRow {
                stream: stream.as_str(),
                family: late.family,
                partition: record.partition(),
                offset: record.offset(),
                event_id: late.event_id,
                event_time: late.event_time,
                missed_window_ms: late.late.window_ms,
                missed_window_start: late.late.window_start,
                behind_watermark_ms,
            });
        }
    }

    /// Moves what tasks closed to the gauges and to the rows of the next checkpoint.
    fn route_closed(&mut self) {
        if self.scratch.pending() == 0 {
            return;
        }
        self.route_guarded();
        self.gauges.observe(&mut self.scratch);
        self.checkpoints.pending().append(&mut self.scratch.rows);
    }

    /// Tables and counts what the jump guard quarantined, and reports the jumps it let through.
    fn route_guarded(&mut self) {
        for q in self.scratch.quarantined.drain(..) {
            self.metrics.events_quarantined.with_label_values(&[q.stream.as_str()]).inc();
            if let Some(suppressed) = self.guard_log.allow() {
                tracing::warn!(
                    stream = q.stream.as_str(),
                    partition = q.partition,
                    offset = q.offset,
                    event_id = %q.event_id,
                    ahead_secs = (q.event_time - q.partition_time) / 1000,
                    suppressed,
                    "event far ahead of its partition's time, not corroborated: quarantined, not counted"
                );
            }
            self.checkpoints.pending().push(QuarantinedEventRow {
                stream: q.stream.as_str(),
                partition: q.partition,
                offset: q.offset,
                event_id: q.event_id,
                event_time: q.event_time,
                partition_time: q.partition_time,
                reason: q.reason,
            });
        }
        for jump in self.scratch.jumps.drain(..) {
            self.metrics.watermark_jumps.with_label_values(&[jump.stream.as_str()]).inc();
            tracing::warn!(
                stream = jump.stream.as_str(),
                from = %rfc3339_ms(jump.from),
                to = %rfc3339_ms(jump.to),
                "a partition's event time jumped ahead, corroborated by events in a row: its watermark moves"
            );
        }
    }

    /// Periodic work: caught-up and idle flags, watermark and state gauges, releasing
    /// instance-wide windows.
    fn tick(&mut self, source: &mut KafkaSource) {
        source.tick();
        let highs = source.high_watermarks();
        let positions = self.owned.positions();
        let caught_up =
            |tp: &TopicPartition| highs.get(tp).is_some_and(|high| positions.get(tp).copied().unwrap_or(0) >= *high);
        source.set_positions(&positions);
        let now_ms = system_time_ms(SystemTime::now());
        let (partition_watermark, event_time_lag) = (&self.metrics.partition_watermark, &self.metrics.event_time_lag);
        self.owned.update_progress(&caught_up, now_ms, &mut self.scratch, &mut |(topic, partition), w| {
            let labels = [topic.as_str(), &partition.to_string()];
            partition_watermark.with_label_values(&labels).set(w as f64 / 1000.0);
            event_time_lag.with_label_values(&labels).set((now_ms - w) as f64 / 1000.0);
        });
        self.route_closed();
        let with_backlog = self.last_backlog.elapsed() >= Duration::from_secs(1);
        if with_backlog {
            self.last_backlog = Instant::now();
        }
        self.gauges.publish_state(self.owned.reports(with_backlog));
        self.low_watermark = self.owned.low_watermark(source.assignment(), &caught_up, now_ms);
        if let Some(low) = self.low_watermark {
            self.outcomes.report.windows_closed += self.gauges.release_through(low);
        }
    }

    /// Closes every window and session of every partition (end of a drain).
    fn close_all(&mut self) {
        self.owned.close_all(&mut self.scratch);
        self.route_closed();
        self.outcomes.report.windows_closed += self.gauges.release_all();
    }

    /// Takes a checkpoint: stages buffered rows, writes the state of every task changed since
    /// the last one, commits the manifest, then publishes the files and commits the offsets to
    /// Kafka. Returns whether the manifest committed; if not, nothing of it counts and the
    /// next attempt starts over (rows stay buffered, staged files are listed again).
    fn checkpoint(&mut self, source: &KafkaSource) -> bool {
        let started = Instant::now();
        let now_ms = system_time_ms(SystemTime::now());
        let progress = Progress { low_watermark: self.low_watermark, now_ms, time: &self.settings.time };
        let complete = self.tables.iter().filter_map(|t| Some((t.name.to_owned(), t.complete_through(&progress)?)));
        let entries = self.owned.checkpoint_entries(&self.checkpoints);
        match self.checkpoints.commit(entries, complete.collect(), now_ms) {
            Ok(Commit::Committed { written, .. }) => self.owned.committed(&written),
            // Nothing changed since the last commit: everything is checkpointed, which is
            // what the age alert watches, so an idle pipeline does not page.
            Ok(Commit::Unchanged) => return self.checkpointed(None),
            Err(error) => {
                if matches!(error, CheckpointFailure::Stage(_)) {
                    self.metrics.sink_errors.with_label_values(&["parquet"]).inc();
                }
                self.health.set_checkpoint_ok(false);
                self.metrics.checkpoint_failures.inc();
                tracing::error!(%error, "checkpoint failed; rows stay buffered and offsets where they were, retrying");
                return false;
            }
        };
        self.outcomes.report.checkpoints += 1;
        crate::crash::point("checkpoint-committed");
        self.publish();
        if let Err(error) = source.commit(&self.owned.positions()) {
            // The checkpoint holds the offsets; Kafka's copy only feeds lag monitoring.
            tracing::warn!(%error, "committing offsets to Kafka failed; retried at the next checkpoint");
        }
        // Superseded state goes at once, so the store holds about one checkpoint's worth.
        self.tidy(Republish::Stale);
        self.checkpointed(Some(started))
    }

    /// Step 3 of a checkpoint: publishes its files and counts them.
    fn publish(&mut self) {
        let publication = self.checkpoints.publish();
        for file in &publication.published {
            self.outcomes.report.files += 1;
            self.metrics.parquet_files.with_label_values(&[file.table.as_str()]).inc();
            self.metrics.parquet_bytes.with_label_values(&[file.table.as_str()]).inc_by(file.bytes);
            tracing::debug!(table = file.table, key = %file.key, rows = file.rows, "published Parquet file");
        }
        if let Some(error) = publication.error {
            self.metrics.sink_errors.with_label_values(&["parquet"]).inc();
            let files = publication.failed;
            tracing::warn!(%error, files, "publishing committed files failed; retried at the next checkpoint");
        }
    }

    /// Records a checkpoint that holds everything consumed; `started` when one was written.
    fn checkpointed(&self, started: Option<Instant>) -> bool {
        self.health.set_checkpoint_ok(true);
        if let Some(started) = started {
            self.metrics.checkpoint_duration.observe(started.elapsed().as_secs_f64());
        }
        self.metrics.checkpoint_last_success.set(system_time_ms(SystemTime::now()) as f64 / 1000.0);
        true
    }

    /// Pauses consumption while more rows wait for a checkpoint than allowed (the storage is
    /// slow or down), resumes once a checkpoint took them.
    fn apply_backpressure(&mut self, source: &mut KafkaSource) {
        let buffered = self.checkpoints.buffered_rows();
        let bytes = self.checkpoints.buffered_bytes();
        self.metrics.buffered_rows.set(buffered as i64);
        self.metrics.buffered_bytes.set(bytes as i64);
        let limits = &self.settings.checkpoint;
        let over = buffered >= limits.max_buffered_rows || bytes >= limits.max_buffered_bytes;
        if over != self.paused && source.set_paused(over, &self.owned.positions()).is_ok() {
            self.paused = over;
            self.metrics.consumption_paused.set(i64::from(over));
            if over {
                tracing::warn!(
                    buffered,
                    bytes,
                    "consumption paused: rows wait for a checkpoint the storage has not taken"
                );
            } else {
                tracing::info!(buffered, bytes, "consumption resumed");
            }
        }
    }

    /// Applies a rebalance the group waits for.
    fn rebalance(&mut self, source: &mut KafkaSource, rebalance: PendingRebalance, control: &ControlHandle) {
        match rebalance {
            PendingRebalance::Revoke(partitions) => {
                self.tick(source);
                let checkpointed = if source.assignment_lost() {
                    tracing::warn!("assignment lost (session expired): discarding work since the last checkpoint");
                    false
                } else {
                    let checkpointed = self.checkpoint(source);
                    if !checkpointed {
                        tracing::warn!(
                            "checkpoint before release failed: the next owner resumes from the previous one"
                        );
                    }
                    checkpointed
                };
                if !checkpointed {
                    self.checkpoints.roll_back();
                }
                self.owned.revoked(&partitions, checkpointed);
                for (topic, partition) in &partitions {
                    let labels = [topic.as_str(), &partition.to_string()];
                    let _ = self.metrics.partition_watermark.remove_label_values(&labels);
                    let _ = self.metrics.event_time_lag.remove_label_values(&labels);
                }
                if let Err(error) = source.release(&partitions) {
                    tracing::error!(%error, "releasing revoked partitions failed");
                }
            }
            PendingRebalance::Assign(partitions) => {
                self.owned.assigned(&partitions, system_time_ms(SystemTime::now()));
                let start = self.restore(&partitions, control);
                self.paused = false;
                self.metrics.consumption_paused.set(0);
                if let Err(error) = source.accept(&partitions, &start) {
                    tracing::error!(%error, "accepting assigned partitions failed");
                }
            }
        }
    }

    /// Brings the tasks of newly assigned partitions to their newest checkpoint and returns
    /// where each partition resumes. Waits (with backoff) while the checkpoint store cannot be
    /// read: starting without the state would count events twice.
    fn restore(&mut self, partitions: &[TopicPartition], control: &ControlHandle) -> BTreeMap<TopicPartition, i64> {
        let started = Instant::now();
        let mut retry = Retry::new(control, &self.health);
        let Some((start, restored)) = self.owned.restore(partitions, &mut self.checkpoints, &mut retry) else {
            return BTreeMap::new();
        };
        self.health.set_checkpoint_ok(true);
        self.outcomes.report.restored += restored;
        self.metrics.tasks_restored.inc_by(restored);
        self.metrics.checkpoint_restore_duration.observe(started.elapsed().as_secs_f64());
        if restored > 0 {
            tracing::info!(
                tasks = restored,
                took_ms = started.elapsed().as_millis(),
                "restored partition state from checkpoints"
            );
            self.tidy(Republish::All);
        }
        start
    }

    /// Publishes files of checkpoints whose writer stopped before publishing them, and removes
    /// what no checkpoint needs any more. Failures are retried at the next call.
    fn tidy(&mut self, scope: Republish) {
        let now_ms = system_time_ms(SystemTime::now());
        let tidied = match scope {
            Republish::Stale => self.checkpoints.tidy(now_ms),
            Republish::All => self.checkpoints.repair(now_ms),
        };
        match tidied {
            // Publishing another writer's files is a repair worth a line; routine removal of
            // superseded state is not.
            Ok(report) if report.republished > 0 => tracing::info!(
                republished = report.republished,
                manifests_removed = report.manifests_removed,
                states_removed = report.states_removed,
                staged_discarded = report.staged_discarded,
                "checkpoint store repaired"
            ),
            Ok(report) => tracing::debug!(
                manifests_removed = report.manifests_removed,
                states_removed = report.states_removed,
                staged_discarded = report.staged_discarded,
                "checkpoint store tidied"
            ),
            Err(error) => tracing::warn!(%error, "tidying the checkpoint store failed; retried later"),
        }
    }
}
