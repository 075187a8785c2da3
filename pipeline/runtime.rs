//! Wires the stages: Kafka source → decode → per-partition operators → Parquet, gauges and
//! dead letters, with offsets committed after the rows they produced are written.
//!
//! The loop runs on one dedicated thread and owns all state, so no locks sit on the hot path;
//! the HTTP endpoint only reads metrics and health flags.

use crate::codec::{DecodeError, Decoder, WriterSchemaSource};
use crate::config::{Settings, system_time_ms};
use crate::event::{Channel, Device, Stream};
use crate::operators::{
    Backlog, Disposition, FulfillmentCounts, FulfillmentRow, FunnelRow, LatencyMetric, OrderCounts, OrderFact,
    OrdersRow, OrphanShipment, PartitionTask, SessionRow, Step, TaskOutput, channel_label, device_label,
};
use crate::sink::dead_letter::{DeadLetterTopic, Rejected};
use crate::sink::parquet::{DeadLetterRow, LateEventRow, ParquetWriter, SinkError};
use crate::sink::storage::Storage;
use crate::source::{KafkaSource, TopicPartition};
use crate::summary::{SummaryBoard, WindowSummary};
use crate::telemetry::{Health, Metrics, carrier_label, minor_to_major, window_label};
use crate::time::{PartitionProgress, low_watermark};
use rdkafka::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Keep consuming.
pub const CONTROL_RUN: u8 = 0;
/// Consume up to the end offsets as of now, close every window, write, commit, return.
pub const CONTROL_DRAIN: u8 = 1;
/// Write what is closed, commit, return now.
pub const CONTROL_STOP: u8 = 2;

/// A failure that stops the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Draining was requested but no partition was ever assigned.
    #[error("no partitions were assigned within {0:?}; do the topics exist and is the broker reachable?")]
    NoAssignment(Duration),
    /// Parquet output could not be written at shutdown; the rows are not committed.
    #[error("final Parquet write failed: {0}")]
    FinalFlush(SinkError),
    /// The dead-letter producer could not be created.
    #[error("dead-letter producer: {0}")]
    DeadLetterProducer(#[from] rdkafka::error::KafkaError),
    /// The output location could not be opened.
    #[error(transparent)]
    Storage(#[from] crate::sink::storage::StorageError),
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
}

/// One task: a clickstream partition, or the same partition of orders and logistics.
struct Task {
    state: PartitionTask,
    /// Progress of each source partition the task has seen.
    progress: BTreeMap<Stream, PartitionProgress>,
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

/// Label sets already exported, so a series absent from a newer window is set to zero
/// instead of keeping a stale value.
#[derive(Default)]
struct ExportedSeries {
    fulfillment: BTreeSet<(String, String, String)>,
    currencies: BTreeSet<String>,
    warehouses: BTreeSet<String>,
}

/// The processing loop and everything it owns.
pub struct Pipeline {
    settings: Settings,
    metrics: Metrics,
    health: Arc<Health>,
    decoder: Decoder,
    tasks: BTreeMap<(Stream, i32), Task>,
    /// Rows of the event being handled, before they are routed to buffers and gauges.
    scratch: TaskOutput,
    positions: BTreeMap<TopicPartition, i64>,
    buffers: Buffers,
    writer: ParquetWriter,
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
        for stream in Stream::ALL {
            metrics.messages_consumed.with_label_values(&[settings.topics.of(stream)]);
        }
        let dead_letter_topic = settings
            .dead_letter_topic
            .as_deref()
            .map(|topic| DeadLetterTopic::new(&settings.brokers, &settings.kafka_client, topic, metrics.clone()))
            .transpose()?;
        metrics.label_budget.set_limit(settings.max_values_per_label);
        Ok(Pipeline {
            writer: ParquetWriter::new(Storage::open(&settings.output)?),
            scratch: TaskOutput::default(),
            settings,
            metrics,
            health,
            decoder,
            tasks: BTreeMap::new(),
            positions: BTreeMap::new(),
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
    /// [`RuntimeError`] when a drain cannot start or the final write fails.
    pub fn run(mut self, source: &KafkaSource, control: &AtomicU8) -> Result<RunReport, RuntimeError> {
        let started = Instant::now();
        let mut drain_target: Option<BTreeMap<TopicPartition, (i64, i64)>> = None;
        let mut drain_requested_at: Option<Instant> = None;
        let mut last_tick = Instant::now();
        let mut last_flush = Instant::now();
        let mut last_status = (Instant::now(), 0u64);
        let mut last_broker_warning = Instant::now();
        let mut assignment_version = u64::MAX;
        let mut last_message = Instant::now();
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
            match source.consumer().poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    last_message = Instant::now();
                    let topic = message.topic().to_owned();
                    let (partition, offset, key) = (message.partition(), message.offset(), message.key());
                    let payload = message.payload().unwrap_or_default();
                    let mut backoff = Duration::from_millis(500);
                    // An outage (schema registry) pauses consumption on this message instead of
                    // turning good data into dead letters; its offset is not passed until it is handled.
                    while let Err(error) = self.handle(&topic, partition, offset, key, payload) {
                        self.health.set_dependencies_ok(false);
                        if control.load(Ordering::Relaxed) == CONTROL_STOP {
                            break;
                        }
                        tracing::warn!(%error, topic, partition, offset, retry_in = ?backoff, "paused on an external outage");
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                    if backoff > Duration::from_millis(500) && control.load(Ordering::Relaxed) != CONTROL_STOP {
                        self.health.set_dependencies_ok(true);
                        tracing::info!(topic, partition, offset, "outage over; consuming again");
                    }
                }
                Some(Err(error)) => tracing::warn!(%error, "Kafka consume error"),
                None => {}
            }
            if last_tick.elapsed() >= Duration::from_millis(200) {
                last_tick = Instant::now();
                let version = source.assignment_version();
                if version != assignment_version {
                    assignment_version = version;
                    self.reconcile_assignment(source);
                }
                self.tick(source);
            }
            if last_flush.elapsed() >= self.settings.flush_interval {
                last_flush = Instant::now();
                self.checkpoint(source);
            }
            if !self.health.brokers_up()
                && last_broker_warning.elapsed() >= Duration::from_secs(10)
                && started.elapsed() >= Duration::from_secs(5)
            {
                last_broker_warning = Instant::now();
                tracing::warn!(brokers = %self.settings.brokers, "cannot reach any Kafka broker; not ready, retrying");
            }
            if last_status.0.elapsed() >= Duration::from_secs(5) {
                self.print_status(last_status);
                last_status = (Instant::now(), self.report.consumed);
            }
        }
        self.tick(source);
        self.flush().map_err(RuntimeError::FinalFlush)?;
        self.commit(source);
        self.metrics.checkpoint_last_success.set(system_time_ms(SystemTime::now()) as f64 / 1000.0);
        if let Some(dlq) = &self.dead_letter_topic {
            dlq.flush(Duration::from_secs(10));
        }
        Ok(self.report)
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
        target.iter().all(|(tp, (start, end))| {
            let position = self.positions.get(tp).copied().unwrap_or(*start);
            position >= *end && highs.get(tp).is_none_or(|high| position >= *high)
        })
    }

    /// Processes one message.
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
    ) -> Result<(), DecodeError> {
        let Some(stream) = self.settings.topics.stream_of(topic) else { return Ok(()) };
        let now_ms = system_time_ms(SystemTime::now());
        let decoded = self.decoder.decode(stream, payload, now_ms);
        if let Err(error) = &decoded
            && error.is_retryable()
        {
            return decoded.map(|_| ());
        }
        self.report.consumed += 1;
        self.metrics.messages_consumed.with_label_values(&[topic]).inc();
        self.positions.insert((topic.to_owned(), partition), offset + 1);
        let event = match decoded {
            Ok(event) => event,
            Err(error) => {
                self.report.rejected += 1;
                self.metrics.events_rejected.with_label_values(&[stream.as_str(), error.reason()]).inc();
                if let Some(dlq) = &self.dead_letter_topic {
                    dlq.send(
                        &Rejected { topic, partition, offset, key, payload, reason: error.reason() },
                        &self.metrics,
                    );
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
        };
        self.report.decoded += 1;
        self.metrics.events_decoded.with_label_values(&[stream.as_str()]).inc();
        let time = &self.settings.time;
        let task = self
            .tasks
            .entry(task_key(stream, partition))
            .or_insert_with(|| Task { state: PartitionTask::new(stream, partition, time), progress: BTreeMap::new() });
        let disposition = task.state.process(&event, &mut self.scratch);
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
            count_session(&self.metrics, session);
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

    /// Drops the state of partitions this instance no longer owns.
    fn reconcile_assignment(&mut self, source: &KafkaSource) {
        let assigned = source.assignment();
        let topics = &self.settings.topics;
        let metrics = &self.metrics;
        self.tasks.retain(|(kind, partition), _| {
            let mut keep = false;
            for stream in task_streams(*kind) {
                if assigned.contains(&(topics.of(*stream).to_owned(), *partition)) {
                    keep = true;
                } else {
                    let labels = [topics.of(*stream), &partition.to_string()];
                    let _ = metrics.partition_watermark.remove_label_values(&labels);
                    let _ = metrics.event_time_lag.remove_label_values(&labels);
                }
            }
            if !keep {
                tracing::info!(task = kind.as_str(), partition, "partitions revoked; their open windows are dropped");
            }
            keep
        });
    }

    /// Periodic work: caught-up flags, watermark gauges, releasing instance-wide windows.
    fn tick(&mut self, source: &KafkaSource) {
        let highs = source.high_watermarks();
        let caught_up = |tp: &TopicPartition, positions: &BTreeMap<TopicPartition, i64>| {
            highs.get(tp).is_some_and(|high| positions.get(tp).copied().unwrap_or(0) >= *high)
        };
        let now_ms = system_time_ms(SystemTime::now());
        let idle_timeout_ms = self.settings.time.idle_timeout_ms;
        for ((kind, partition), task) in &mut self.tasks {
            for &stream in task_streams(*kind) {
                let tp = (self.settings.topics.of(stream).to_owned(), *partition);
                let up_to_date = caught_up(&tp, &self.positions);
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
                    None => up_to_date,
                };
                // An idle partition of a commerce task stops holding its fulfillment windows back.
                task.state.set_idle(stream, idle, &mut self.scratch);
            }
        }
        self.route_closed();
        // Assigned partitions that have delivered nothing yet hold the low watermark back
        // unless they are known to be empty.
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
                last_event_at_ms: 0,
                caught_up: caught_up(&tp, &self.positions),
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

    /// Writes buffered rows. Rows of a table whose write fails stay buffered for the next try.
    fn flush(&mut self) -> Result<(), SinkError> {
        let writer = &mut self.writer;
        let buffers = &mut self.buffers;
        let outcomes = [
            writer.write(&mut buffers.funnel),
            writer.write(&mut buffers.sessions),
            writer.write(&mut buffers.orders),
            writer.write(&mut buffers.fulfillment),
            writer.write(&mut buffers.facts),
            writer.write(&mut buffers.orphans),
            writer.write(&mut buffers.late),
            writer.write(&mut buffers.dead),
        ];
        let mut first_error = None;
        for outcome in outcomes {
            for p in &outcome.published {
                self.report.files += 1;
                self.metrics.parquet_files.with_label_values(&[p.table]).inc();
                self.metrics.parquet_bytes.with_label_values(&[p.table]).inc_by(p.bytes);
                tracing::debug!(table = p.table, key = %p.key, rows = p.rows, "published Parquet file");
            }
            if let Some(error) = outcome.error {
                first_error.get_or_insert(error);
            }
        }
        match first_error {
            None => Ok(()),
            Some(error) => {
                self.metrics.sink_errors.with_label_values(&["parquet"]).inc();
                tracing::error!(%error, "Parquet write failed; rows stay buffered and offsets uncommitted until it succeeds");
                Err(error)
            }
        }
    }

    /// Publishes buffered rows, then commits the offsets they cover; timed and counted as a
    /// checkpoint. Offsets are committed only after every row before them is published.
    fn checkpoint(&mut self, source: &KafkaSource) {
        let started = Instant::now();
        let ok = self.flush().is_ok() && self.commit(source);
        self.health.set_checkpoint_ok(ok);
        if ok {
            self.metrics.checkpoint_duration.observe(started.elapsed().as_secs_f64());
            self.metrics.checkpoint_last_success.set(system_time_ms(SystemTime::now()) as f64 / 1000.0);
        } else {
            self.metrics.checkpoint_failures.inc();
        }
    }

    fn commit(&self, source: &KafkaSource) -> bool {
        match source.commit(&self.positions) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, "offset commit failed; will retry at the next flush");
                false
            }
        }
    }
}

/// Adds a closed session to the session counters (by landing channel and device).
fn count_session(metrics: &Metrics, session: &SessionRow) {
    let labels = [session.channel.as_str(), session.device.as_str()];
    metrics.sessions_closed.with_label_values(&labels).inc();
    if session.engaged() {
        metrics.sessions_engaged.with_label_values(&labels).inc();
    }
    if session.converted() {
        metrics.sessions_converted.with_label_values(&labels).inc();
    }
    metrics.session_duration_seconds.with_label_values(&labels).inc_by(session.duration_ms() as f64 / 1000.0);
    metrics.session_page_views.with_label_values(&labels).inc_by(u64::from(session.page_views));
    for (i, step) in Step::ALL.into_iter().enumerate() {
        if session.reached[i] {
            metrics.session_steps.with_label_values(&[labels[0], step.as_str(), "any"]).inc();
        }
        if usize::from(session.funnel_depth_in_order) > i {
            metrics.session_steps.with_label_values(&[labels[0], step.as_str(), "in_order"]).inc();
        }
    }
}
