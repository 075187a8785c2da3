//! Every Prometheus metric storepulse exports, in one place, plus the health flags behind
//! `/readyz` and the pipeline's own events ([`events`]). Names follow
//! `storepulse_<what>_<unit>[_total]`; ratios are left to PromQL, so numerators and
//! denominators are exported.

pub mod events;

pub use events::{EventDuplicate, EventLate, EventRejected, LOG_EVERY, LogLimit, Outcomes, RunReport};

use crate::codec::DecodeError;
use crate::event::{Channel, Device, Stream};
use crate::labels::{OTHER, TOTAL};
use crate::operators::Step;
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Flags that decide readiness, and the processing loop's heartbeat that decides liveness,
/// shared between the pipeline thread and the HTTP server.
#[derive(Debug)]
pub struct Health {
    brokers_up: AtomicBool,
    assigned: AtomicBool,
    checkpoint_ok: AtomicBool,
    dependencies_ok: AtomicBool,
    /// What the heartbeat counts from.
    started: Instant,
    /// When the loop last came round, ms since `started`.
    heartbeat_ms: AtomicU64,
    /// How long it may go without, ms.
    liveness_timeout_ms: AtomicU64,
}

impl Health {
    /// Fresh flags: not ready until brokers answer and partitions are assigned; alive for two
    /// minutes without a heartbeat (see [`Health::set_liveness_timeout`]).
    pub fn new() -> Arc<Self> {
        Arc::new(Health {
            brokers_up: AtomicBool::new(false),
            assigned: AtomicBool::new(false),
            checkpoint_ok: AtomicBool::new(true),
            dependencies_ok: AtomicBool::new(true),
            started: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
            liveness_timeout_ms: AtomicU64::new(120_000),
        })
    }
    /// How long the loop may go without a heartbeat before [`Health::stalled_for`] says so.
    pub fn set_liveness_timeout(&self, timeout: Duration) {
        self.liveness_timeout_ms.store(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
    /// The processing loop came round: it is not wedged.
    pub fn beat(&self) {
        self.heartbeat_ms.store(self.millis_since_start(), Ordering::Relaxed);
    }
    /// How long since the last heartbeat, when that is longer than the liveness timeout.
    pub fn stalled_for(&self) -> Option<Duration> {
        let silent = self.millis_since_start().saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed));
        (silent > self.liveness_timeout_ms.load(Ordering::Relaxed)).then(|| Duration::from_millis(silent))
    }
    fn millis_since_start(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
    /// Records whether at least one broker connection is up.
    pub fn set_brokers_up(&self, up: bool) {
        self.brokers_up.store(up, Ordering::Relaxed);
    }
    /// Records whether this instance has partitions assigned.
    pub fn set_assigned(&self, assigned: bool) {
        self.assigned.store(assigned, Ordering::Relaxed);
    }
    /// Records whether the last checkpoint (staged files, state and manifest) committed.
    pub fn set_checkpoint_ok(&self, ok: bool) {
        self.checkpoint_ok.store(ok, Ordering::Relaxed);
    }
    /// Records whether external dependencies (the schema registry) answer.
    pub fn set_dependencies_ok(&self, ok: bool) {
        self.dependencies_ok.store(ok, Ordering::Relaxed);
    }
    /// Whether this instance owns partitions.
    pub fn assigned(&self) -> bool {
        self.assigned.load(Ordering::Relaxed)
    }

    /// Whether a broker answered recently.
    pub fn brokers_up(&self) -> bool {
        self.brokers_up.load(Ordering::Relaxed)
    }
    /// Ready: brokers reachable, partitions assigned, sinks writing.
    pub fn ready(&self) -> bool {
        self.not_ready_reasons().is_empty()
    }
    /// Why the instance is not ready, for the `/readyz` body.
    pub fn not_ready_reasons(&self) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        if !self.brokers_up() {
            reasons.push("no Kafka broker connection");
        }
        if !self.assigned.load(Ordering::Relaxed) {
            reasons.push("no partitions assigned");
        }
        if !self.checkpoint_ok.load(Ordering::Relaxed) {
            reasons.push("last checkpoint failed (staging, state or manifest write)");
        }
        if !self.dependencies_ok.load(Ordering::Relaxed) {
            reasons.push("schema registry unreachable; consumption paused");
        }
        reasons
    }
}

/// All exported metric families.
#[derive(Clone)]
#[allow(missing_docs, reason = "each family carries its help text")]
pub struct Metrics {
    pub registry: Registry,
    pub messages_consumed: IntCounterVec,
    pub events_decoded: IntCounterVec,
    pub events_rejected: IntCounterVec,
    pub events_late: IntCounterVec,
    pub events_duplicate: IntCounterVec,
    pub dead_letter_publish_errors: IntCounterVec,
    pub consumer_lag: IntGaugeVec,
    pub consumer_lag_committed: IntGaugeVec,
    pub fetch_queue_messages: IntGaugeVec,
    pub fetch_queue_bytes: IntGaugeVec,
    pub build_info: IntGaugeVec,
    pub partition_watermark: GaugeVec,
    pub event_time_lag: GaugeVec,
    pub checkpoint_duration: Histogram,
    pub checkpoint_last_success: prometheus::Gauge,
    pub checkpoint_failures: IntCounter,
    pub checkpoint_restore_duration: Histogram,
    pub tasks_restored: IntCounter,
    pub buffered_rows: IntGauge,
    pub buffered_bytes: IntGauge,
    pub offsets_skipped: IntCounterVec,
    pub events_quarantined: IntCounterVec,
    pub watermark_jumps: IntCounterVec,
    pub consumption_paused: IntGauge,
    pub label_budget: LabelBudget,
    pub kafka_connected: IntGauge,
    pub ready: IntGauge,
    pub parquet_files: IntCounterVec,
    pub parquet_bytes: IntCounterVec,
    pub sink_errors: IntCounterVec,
    pub window_end: GaugeVec,
    pub funnel_visitors: IntGaugeVec,
    pub funnel_page_views: IntGaugeVec,
    pub funnel_step_visitors: IntGaugeVec,
    pub sessions_closed: IntCounterVec,
    pub sessions_engaged: IntCounterVec,
    pub sessions_converted: IntCounterVec,
    pub session_steps: IntCounterVec,
    pub session_duration_seconds: prometheus::CounterVec,
    pub session_page_views: IntCounterVec,
    pub sessions_open: IntGauge,
    pub orders: OrderGauges,
    pub fulfillment: FulfillmentGauges,
    pub order_created_to_paid: HistogramVec,
    pub paid_to_pickup: HistogramVec,
    pub pickup_to_delivery: HistogramVec,
    pub orders_open: IntGauge,
    pub shipments_orphaned: IntCounter,
    pub joins_late: IntCounter,
}

/// Order gauges of the latest closed window, by window and channel (`all` = every channel).
#[derive(Clone)]
#[allow(missing_docs, reason = "each family carries its help text")]
pub struct OrderGauges {
    pub created: IntGaugeVec,
    pub paid: IntGaugeVec,
    pub paying_buyers: IntGaugeVec,
    pub units: IntGaugeVec,
    pub cancelled: IntGaugeVec,
    pub refunded: IntGaugeVec,
    pub paid_amount: GaugeVec,
    pub refunded_amount: GaugeVec,
}

/// Fulfillment gauges of the latest closed window, by window, carrier and warehouse, and the
/// backlog by warehouse at the watermark.
#[derive(Clone)]
#[allow(missing_docs, reason = "each family carries its help text")]
pub struct FulfillmentGauges {
    pub picked_up: IntGaugeVec,
    pub delivered: IntGaugeVec,
    pub failed_attempts: IntGaugeVec,
    pub exceptions: IntGaugeVec,
    pub returned: IntGaugeVec,
    pub ship_promised: IntGaugeVec,
    pub shipped_on_time: IntGaugeVec,
    pub deliver_promised: IntGaugeVec,
    pub delivered_on_time: IntGaugeVec,
    pub backlog_orders: IntGaugeVec,
    pub backlog_past_ship_by: IntGaugeVec,
    pub oldest_unshipped_age: GaugeVec,
    pub backlog_at: prometheus::Gauge,
}

/// Caps the distinct values a data-driven label (warehouse, carrier) may take, protecting
/// Prometheus from a feed that suddenly names thousands of warehouses. Values seen first are
/// admitted up to the limit; later ones fold into `other` and are counted.
#[derive(Clone)]
pub struct LabelBudget {
    limit: Arc<AtomicUsize>,
    admitted: Arc<Mutex<HashMap<&'static str, HashSet<String>>>>,
    folded: IntCounterVec,
}

impl LabelBudget {
    /// The label value to export for `value` of `label`: itself while within budget, else
    /// [`OTHER`]. [`TOTAL`] and [`OTHER`] are always admitted and never count.
    pub fn admit<'a>(&self, label: &'static str, value: &'a str) -> &'a str {
        if value == TOTAL || value == OTHER {
            return value;
        }
        let mut admitted = self.admitted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let values = admitted.entry(label).or_default();
        if values.contains(value) {
            return value;
        }
        if values.len() < self.limit.load(Ordering::Relaxed) {
            values.insert(value.to_owned());
            return value;
        }
        self.folded.with_label_values(&[label]).inc();
        OTHER
    }

    /// Sets how many distinct values each label may take.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }
}

/// Default for `metrics.max_values_per_label`.
pub const DEFAULT_MAX_VALUES_PER_LABEL: usize = 100;

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec, prometheus::Error> {
    IntGaugeVec::new(opts(name, help), labels)
}

fn histogram(name: &str, help: &str, label: &str, buckets: &[f64]) -> Result<HistogramVec, prometheus::Error> {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), &[label])
}

const HOUR_SECS: f64 = 3_600.0;

impl OrderGauges {
    fn new() -> Result<Self, prometheus::Error> {
        let by = ["window", "channel"];
        let money = ["window", "channel", "currency"];
        Ok(OrderGauges {
            created: gauge_vec("storepulse_orders_created", "Orders created in the latest closed window.", &by)?,
            paid: gauge_vec(
                "storepulse_orders_paid",
                "Orders paid in the latest closed window; AOV = storepulse_orders_paid_amount / this.",
                &by,
            )?,
            paying_buyers: gauge_vec(
                "storepulse_orders_paying_buyers",
                "Distinct paying buyers in the latest closed window, exact per instance;                  客单价 = storepulse_orders_paid_amount / this.",
                &by,
            )?,
            units: gauge_vec("storepulse_orders_units", "Units of orders paid in the latest closed window.", &by)?,
            cancelled: gauge_vec(
                "storepulse_orders_cancelled",
                "Orders cancelled in the latest closed window; cancellation rate = this / storepulse_orders_created.",
                &by,
            )?,
            refunded: gauge_vec("storepulse_orders_refunded", "Refunds in the latest closed window.", &by)?,
            paid_amount: GaugeVec::new(
                opts(
                    "storepulse_orders_paid_amount",
                    "Amount paid (GMV paid) in the latest closed window, in currency units.",
                ),
                &money,
            )?,
            refunded_amount: GaugeVec::new(
                opts(
                    "storepulse_orders_refunded_amount",
                    "Amount refunded in the latest closed window, in currency units.",
                ),
                &money,
            )?,
        })
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.created.clone()),
            Box::new(self.paid.clone()),
            Box::new(self.paying_buyers.clone()),
            Box::new(self.units.clone()),
            Box::new(self.cancelled.clone()),
            Box::new(self.refunded.clone()),
            Box::new(self.paid_amount.clone()),
            Box::new(self.refunded_amount.clone()),
        ]
    }
}

impl FulfillmentGauges {
    fn new() -> Result<Self, prometheus::Error> {
        let by = ["window", "carrier", "warehouse"];
        Ok(FulfillmentGauges {
            picked_up: gauge_vec(
                "storepulse_shipments_picked_up",
                "Orders picked up by the carrier (揽收) in the latest closed window.",
                &by,
            )?,
            delivered: gauge_vec(
                "storepulse_shipments_delivered",
                "Orders delivered (签收) in the latest closed window.",
                &by,
            )?,
            failed_attempts: gauge_vec(
                "storepulse_shipments_failed_attempts",
                "Failed delivery attempts in the latest closed window.",
                &by,
            )?,
            exceptions: gauge_vec(
                "storepulse_shipments_exceptions",
                "Shipment exceptions in the latest closed window; exception rate = this / storepulse_shipments_picked_up.",
                &by,
            )?,
            returned: gauge_vec("storepulse_shipments_returned", "Orders returned in the latest closed window.", &by)?,
            ship_promised: gauge_vec(
                "storepulse_shipments_ship_promised",
                "Pickups of paid orders with a promised ship-by in the latest closed window (on-time shipment denominator).",
                &by,
            )?,
            shipped_on_time: gauge_vec(
                "storepulse_shipments_shipped_on_time",
                "Of storepulse_shipments_ship_promised, picked up by the promise.",
                &by,
            )?,
            deliver_promised: gauge_vec(
                "storepulse_shipments_deliver_promised",
                "Deliveries of paid orders with a promised deliver-by in the latest closed window (on-time delivery denominator).",
                &by,
            )?,
            delivered_on_time: gauge_vec(
                "storepulse_shipments_delivered_on_time",
                "Of storepulse_shipments_deliver_promised, delivered by the promise.",
                &by,
            )?,
            backlog_orders: gauge_vec(
                "storepulse_fulfillment_backlog_orders",
                "Paid orders not yet picked up, delivered, returned or cancelled, at the fulfillment watermark.",
                &["warehouse"],
            )?,
            backlog_past_ship_by: gauge_vec(
                "storepulse_fulfillment_backlog_past_ship_by",
                "Backlog orders already past their promised ship-by, at the fulfillment watermark.",
                &["warehouse"],
            )?,
            oldest_unshipped_age: GaugeVec::new(
                opts(
                    "storepulse_fulfillment_oldest_unshipped_age_seconds",
                    "Age of the oldest backlog order (watermark minus payment time), seconds.",
                ),
                &["warehouse"],
            )?,
            backlog_at: prometheus::Gauge::with_opts(opts(
                "storepulse_fulfillment_backlog_timestamp_seconds",
                "Event time the backlog gauges were evaluated at (the lowest fulfillment watermark), Unix seconds.",
            ))?,
        })
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.picked_up.clone()),
            Box::new(self.delivered.clone()),
            Box::new(self.failed_attempts.clone()),
            Box::new(self.exceptions.clone()),
            Box::new(self.returned.clone()),
            Box::new(self.ship_promised.clone()),
            Box::new(self.shipped_on_time.clone()),
            Box::new(self.deliver_promised.clone()),
            Box::new(self.delivered_on_time.clone()),
            Box::new(self.backlog_orders.clone()),
            Box::new(self.backlog_past_ship_by.clone()),
            Box::new(self.oldest_unshipped_age.clone()),
            Box::new(self.backlog_at.clone()),
        ]
    }
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl Metrics {
    /// Creates and registers every family, with series for the late events of `families` (each
    /// with the stream it counts) from the first scrape. Window gauges have none until their
    /// first window closes: a zero before then would read as a real figure.
    ///
    /// # Errors
    /// Only on a programming error (duplicate or invalid metric names).
    pub fn new(families: &[(&str, Stream)]) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let m = Metrics {
            messages_consumed: IntCounterVec::new(
                opts("storepulse_messages_consumed_total", "Kafka messages consumed, by topic."),
                &["topic"],
            )?,
            events_decoded: IntCounterVec::new(
                opts("storepulse_events_decoded_total", "Messages decoded and validated into events, by stream."),
                &["stream"],
            )?,
            events_rejected: IntCounterVec::new(
                opts(
                    "storepulse_events_rejected_total",
                    "Messages sent to the dead-letter outputs, by stream and reason.",
                ),
                &["stream", "reason"],
            )?,
            events_late: IntCounterVec::new(
                opts(
                    "storepulse_events_late_total",
                    "Events whose window had closed for a metric family, written to late_events, by stream and family.",
                ),
                &["stream", "family"],
            )?,
            events_duplicate: IntCounterVec::new(
                opts(
                    "storepulse_events_duplicate_total",
                    "Events suppressed as duplicates of an event_id already seen, by stream.",
                ),
                &["stream"],
            )?,
            dead_letter_publish_errors: IntCounterVec::new(
                opts(
                    "storepulse_dead_letter_publish_errors_total",
                    "Dead letters the dead-letter topic did not accept (they are still in the Parquet table).",
                ),
                &["topic"],
            )?,
            consumer_lag: IntGaugeVec::new(
                opts(
                    "storepulse_consumer_lag_messages",
                    "Messages not yet processed: from the next offset to process to the high watermark, per assigned partition.",
                ),
                &["topic", "partition"],
            )?,
            consumer_lag_committed: IntGaugeVec::new(
                opts(
                    "storepulse_consumer_lag_committed_messages",
                    "Messages from the offset committed at the last checkpoint to the high watermark (what a restart would reprocess), per assigned partition.",
                ),
                &["topic", "partition"],
            )?,
            fetch_queue_messages: IntGaugeVec::new(
                opts(
                    "storepulse_kafka_fetch_queue_messages",
                    "Messages fetched and waiting in librdkafka's queue, per assigned partition: near queued.max.messages.kbytes the consumer fetches as fast as the loop processes.",
                ),
                &["topic", "partition"],
            )?,
            fetch_queue_bytes: IntGaugeVec::new(
                opts("storepulse_kafka_fetch_queue_bytes", "Bytes fetched and waiting in librdkafka's queue, per assigned partition."),
                &["topic", "partition"],
            )?,
            build_info: IntGaugeVec::new(
                opts("storepulse_build_info", "Always 1; the labels say which release and commit run."),
                &["version", "commit"],
            )?,
            partition_watermark: GaugeVec::new(
                opts(
                    "storepulse_watermark_timestamp_seconds",
                    "Event-time watermark of each assigned partition, Unix seconds.",
                ),
                &["topic", "partition"],
            )?,
            event_time_lag: GaugeVec::new(
                opts(
                    "storepulse_event_time_lag_seconds",
                    "Wall clock minus the event-time watermark of each assigned partition, seconds.",
                ),
                &["topic", "partition"],
            )?,
            checkpoint_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "storepulse_checkpoint_duration_seconds",
                    "Time to stage buffered rows, write task state, commit the manifest, publish its files and commit offsets, seconds.",
                )
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            )?,
            checkpoint_last_success: prometheus::Gauge::with_opts(opts(
                "storepulse_checkpoint_last_success_timestamp_seconds",
                "When everything consumed was last known checkpointed (a commit, or nothing new since), Unix seconds (alert on its age).",
            ))?,
            checkpoint_failures: IntCounter::with_opts(opts(
                "storepulse_checkpoint_failures_total",
                "Checkpoints that did not commit (staging, state or manifest write failed); retried with backoff.",
            ))?,
            checkpoint_restore_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "storepulse_checkpoint_restore_duration_seconds",
                    "Time to read the checkpoint catalog and restore the state of newly assigned partitions, seconds.",
                )
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            )?,
            tasks_restored: IntCounter::with_opts(opts(
                "storepulse_tasks_restored_total",
                "Partition tasks whose state was restored from a checkpoint on assignment.",
            ))?,
            buffered_rows: IntGauge::with_opts(opts(
                "storepulse_buffered_rows",
                "Output rows waiting for the next checkpoint.",
            ))?,
            offsets_skipped: IntCounterVec::new(
                opts(
                    "storepulse_offsets_skipped_total",
                    "Offsets a partition resumed past because the log no longer held them (retention removed them before they were processed).",
                ),
                &["topic", "partition"],
            )?,
            events_quarantined: IntCounterVec::new(
                opts(
                    "storepulse_events_quarantined_total",
                    "Events far ahead of their partition's time that no later events corroborated, kept out of every metric and written to quarantined_events, by stream.",
                ),
                &["stream"],
            )?,
            watermark_jumps: IntCounterVec::new(
                opts(
                    "storepulse_watermark_jumps_total",
                    "Times a partition's event time moved further than time.max_watermark_jump_secs at once, corroborated by enough events in a row, by stream.",
                ),
                &["stream"],
            )?,
            buffered_bytes: IntGauge::with_opts(opts(
                "storepulse_buffered_bytes",
                "Bytes of rejected messages (kept payloads, keys, details) waiting for the next checkpoint.",
            ))?,
            consumption_paused: IntGauge::with_opts(opts(
                "storepulse_consumption_paused",
                "1 while consumption is paused because too many rows wait for a checkpoint (storage slow or down).",
            ))?,
            label_budget: LabelBudget {
                limit: Arc::new(AtomicUsize::new(DEFAULT_MAX_VALUES_PER_LABEL)),
                admitted: Arc::default(),
                folded: IntCounterVec::new(
                    opts(
                        "storepulse_label_values_folded_total",
                        "Label values folded into \"other\" because the label reached metrics.max_values_per_label, by label.",
                    ),
                    &["label"],
                )?,
            },
            kafka_connected: IntGauge::with_opts(opts(
                "storepulse_kafka_connected",
                "1 when at least one broker connection is up.",
            ))?,
            ready: IntGauge::with_opts(opts("storepulse_ready", "1 when /readyz answers 200."))?,
            parquet_files: IntCounterVec::new(
                opts("storepulse_parquet_files_committed_total", "Parquet files published, by table."),
                &["table"],
            )?,
            parquet_bytes: IntCounterVec::new(
                opts("storepulse_parquet_bytes_committed_total", "Bytes of Parquet files published, by table."),
                &["table"],
            )?,
            sink_errors: IntCounterVec::new(
                opts("storepulse_sink_errors_total", "Failed sink writes (retried), by sink."),
                &["sink"],
            )?,
            window_end: GaugeVec::new(
                opts(
                    "storepulse_window_end_timestamp_seconds",
                    "End of the latest closed window the business gauges describe, Unix seconds.",
                ),
                &["window"],
            )?,
            funnel_visitors: IntGaugeVec::new(
                opts(
                    "storepulse_funnel_visitors",
                    "Distinct visitors in the latest closed window, by channel and device; \"all\" values are exact, not sums.",
                ),
                &["window", "channel", "device"],
            )?,
            funnel_page_views: IntGaugeVec::new(
                opts("storepulse_funnel_page_views", "Page views in the latest closed window, by channel and device."),
                &["window", "channel", "device"],
            )?,
            funnel_step_visitors: IntGaugeVec::new(
                opts(
                    "storepulse_funnel_step_visitors",
                    "Distinct visitors who reached a funnel step in the latest closed window, by channel and device; \
                     paid conversion = step=\"purchase\" / storepulse_funnel_visitors.",
                ),
                &["window", "channel", "device", "step"],
            )?,
            sessions_closed: IntCounterVec::new(
                opts("storepulse_sessions_closed_total", "Sessions closed, by landing channel and device."),
                &["channel", "device"],
            )?,
            sessions_engaged: IntCounterVec::new(
                opts(
                    "storepulse_sessions_engaged_total",
                    "Closed sessions that were engaged (> 10 s, 2+ page views or a purchase); bounce rate = 1 - this / closed.",
                ),
                &["channel", "device"],
            )?,
            sessions_converted: IntCounterVec::new(
                opts("storepulse_sessions_converted_total", "Closed sessions with a purchase."),
                &["channel", "device"],
            )?,
            session_steps: IntCounterVec::new(
                opts(
                    "storepulse_session_funnel_steps_total",
                    "Closed sessions that reached a funnel step: order=\"any\" (open funnel) or \"in_order\" (closed funnel).",
                ),
                &["channel", "step", "order"],
            )?,
            session_duration_seconds: prometheus::CounterVec::new(
                opts("storepulse_session_duration_seconds_total", "Summed duration of closed sessions, seconds."),
                &["channel", "device"],
            )?,
            session_page_views: IntCounterVec::new(
                opts("storepulse_session_page_views_total", "Summed page views of closed sessions."),
                &["channel", "device"],
            )?,
            sessions_open: IntGauge::with_opts(opts(
                "storepulse_sessions_open",
                "Sessions held open in memory on this instance, waiting for their inactivity gap.",
            ))?,
            orders: OrderGauges::new()?,
            fulfillment: FulfillmentGauges::new()?,
            order_created_to_paid: histogram(
                "storepulse_order_created_to_paid_seconds",
                "Order creation to payment, by channel.",
                "channel",
                &[1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1_800.0, HOUR_SECS, 6.0 * HOUR_SECS],
            )?,
            paid_to_pickup: histogram(
                "storepulse_fulfillment_paid_to_pickup_seconds",
                "Payment to carrier pickup (揽收), by warehouse.",
                "warehouse",
                &[0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0, 48.0, 72.0, 120.0].map(|h| h * HOUR_SECS),
            )?,
            pickup_to_delivery: histogram(
                "storepulse_fulfillment_pickup_to_delivery_seconds",
                "Carrier pickup to delivery (签收), by carrier.",
                "carrier",
                &[6.0, 12.0, 24.0, 36.0, 48.0, 72.0, 96.0, 120.0, 168.0].map(|h| h * HOUR_SECS),
            )?,
            orders_open: IntGauge::with_opts(opts(
                "storepulse_orders_open",
                "Orders held in lifecycle state on this instance (open, or finished and within their time-to-live).",
            ))?,
            shipments_orphaned: IntCounter::with_opts(opts(
                "storepulse_shipments_orphaned_total",
                "Orders whose scans arrived but whose order did not within orders.orphan_after_secs (see orphan_shipments).",
            ))?,
            joins_late: IntCounter::with_opts(opts(
                "storepulse_fulfillment_joins_late_total",
                "On-time and latency figures lost because an order's payment arrived after its scan's window closed.",
            ))?,
            registry,
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.messages_consumed.clone()),
            Box::new(m.events_decoded.clone()),
            Box::new(m.events_rejected.clone()),
            Box::new(m.events_late.clone()),
            Box::new(m.events_duplicate.clone()),
            Box::new(m.dead_letter_publish_errors.clone()),
            Box::new(m.consumer_lag.clone()),
            Box::new(m.consumer_lag_committed.clone()),
            Box::new(m.fetch_queue_messages.clone()),
            Box::new(m.fetch_queue_bytes.clone()),
            Box::new(m.build_info.clone()),
            // CPU seconds, resident and virtual memory, open and maximum file descriptors,
            // threads and start time, read from /proc at each scrape.
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
            Box::new(m.partition_watermark.clone()),
            Box::new(m.event_time_lag.clone()),
            Box::new(m.checkpoint_duration.clone()),
            Box::new(m.checkpoint_last_success.clone()),
            Box::new(m.checkpoint_failures.clone()),
            Box::new(m.checkpoint_restore_duration.clone()),
            Box::new(m.tasks_restored.clone()),
            Box::new(m.buffered_rows.clone()),
            Box::new(m.buffered_bytes.clone()),
            Box::new(m.offsets_skipped.clone()),
            Box::new(m.events_quarantined.clone()),
            Box::new(m.watermark_jumps.clone()),
            Box::new(m.consumption_paused.clone()),
            Box::new(m.label_budget.folded.clone()),
            Box::new(m.kafka_connected.clone()),
            Box::new(m.ready.clone()),
            Box::new(m.parquet_files.clone()),
            Box::new(m.parquet_bytes.clone()),
            Box::new(m.sink_errors.clone()),
            Box::new(m.window_end.clone()),
            Box::new(m.funnel_visitors.clone()),
            Box::new(m.funnel_page_views.clone()),
            Box::new(m.funnel_step_visitors.clone()),
            Box::new(m.sessions_closed.clone()),
            Box::new(m.sessions_engaged.clone()),
            Box::new(m.sessions_converted.clone()),
            Box::new(m.session_steps.clone()),
            Box::new(m.session_duration_seconds.clone()),
            Box::new(m.session_page_views.clone()),
            Box::new(m.sessions_open.clone()),
            Box::new(m.order_created_to_paid.clone()),
            Box::new(m.paid_to_pickup.clone()),
            Box::new(m.pickup_to_delivery.clone()),
            Box::new(m.orders_open.clone()),
            Box::new(m.shipments_orphaned.clone()),
            Box::new(m.joins_late.clone()),
        ];
        let collectors = collectors.into_iter().chain(m.orders.collectors()).chain(m.fulfillment.collectors());
        for c in collectors {
            m.registry.register(c)?;
        }
        m.pre_register(families);
        Ok(m)
    }

    /// Creates zero-valued series for every bounded label value, so that rates and absence
    /// alerts work from the first scrape.
    fn pre_register(&self, families: &[(&str, Stream)]) {
        self.build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), env!("STOREPULSE_COMMIT")]).set(1);
        for label in ["warehouse", "carrier"] {
            self.label_budget.folded.with_label_values(&[label]);
        }
        self.sink_errors.with_label_values(&["parquet"]);
        for stream in Stream::ALL {
            self.events_decoded.with_label_values(&[stream.as_str()]);
            self.events_duplicate.with_label_values(&[stream.as_str()]);
            self.events_quarantined.with_label_values(&[stream.as_str()]);
            self.watermark_jumps.with_label_values(&[stream.as_str()]);
            for reason in DecodeError::REASONS {
                self.events_rejected.with_label_values(&[stream.as_str(), reason]);
            }
        }
        for (family, stream) in families {
            self.events_late.with_label_values(&[stream.as_str(), family]);
        }
        for channel in Channel::ALL.iter().map(|c| c.as_str()) {
            for device in Device::ALL.iter().map(|d| d.as_str()) {
                self.sessions_closed.with_label_values(&[channel, device]);
                self.sessions_engaged.with_label_values(&[channel, device]);
                self.sessions_converted.with_label_values(&[channel, device]);
            }
            for step in Step::ALL {
                for order in ["any", "in_order"] {
                    self.session_steps.with_label_values(&[channel, step.as_str(), order]);
                }
            }
        }
    }

    /// The text exposition of every family.
    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder.encode_to_string(&self.registry.gather()).unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_and_build_series_are_exported() {
        let text = Metrics::new(&[]).expect("metrics").render();
        let build = format!(
            "storepulse_build_info{{commit=\"{}\",version=\"{}\"}} 1",
            env!("STOREPULSE_COMMIT"),
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&build), "{text}");
        for family in
            ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "process_max_fds"]
        {
            assert!(text.contains(&format!("\n{family} ")), "no {family} in\n{text}");
        }
    }

    #[test]
    fn liveness_fails_after_the_timeout_without_a_heartbeat_and_recovers_with_one() {
        let health = Health::new();
        health.set_liveness_timeout(Duration::from_millis(50));
        health.beat();
        assert_eq!(health.stalled_for(), None);
        std::thread::sleep(Duration::from_millis(120));
        assert!(health.stalled_for().is_some_and(|silent| silent >= Duration::from_millis(100)));
        health.beat();
        assert_eq!(health.stalled_for(), None);
    }

    #[test]
    fn the_label_budget_admits_the_first_values_then_folds_and_counts() {
        let metrics = Metrics::new(&[]).expect("metrics");
        let budget = &metrics.label_budget;
        budget.set_limit(2);
        assert_eq!(budget.admit("warehouse", "hangzhou-1"), "hangzhou-1");
        assert_eq!(budget.admit("warehouse", "shanghai-2"), "shanghai-2");
        assert_eq!(budget.admit("warehouse", "hangzhou-1"), "hangzhou-1", "admitted values stay");
        assert_eq!(budget.admit("warehouse", "chengdu-3"), "other");
        assert_eq!(budget.admit("warehouse", "all"), "all", "the total is never folded");
        assert_eq!(budget.admit("carrier", "sf"), "sf", "each label has its own budget");
        assert_eq!(budget.folded.with_label_values(&["warehouse"]).get(), 1);
        assert!(metrics.render().contains("storepulse_label_values_folded_total{label=\"warehouse\"} 1"));
    }
}
