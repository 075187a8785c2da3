//! Every Prometheus metric storepulse exports, in one place, plus the health flags behind
//! `/readyz`. Names follow `storepulse_<what>_<unit>[_total]`; ratios are left to PromQL, so
//! numerators and denominators are exported.

use crate::codec::DecodeError;
use crate::event::{Channel, Device, Stream};
use crate::operators::{Family, Step};
use prometheus::{GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Flags that decide readiness, shared between the pipeline thread and the HTTP server.
#[derive(Debug, Default)]
pub struct Health {
    brokers_up: AtomicBool,
    assigned: AtomicBool,
    sinks_ok: AtomicBool,
    dependencies_ok: AtomicBool,
}

impl Health {
    /// Fresh flags: not ready until brokers answer and partitions are assigned.
    pub fn new() -> Arc<Self> {
        Arc::new(Health {
            brokers_up: AtomicBool::new(false),
            assigned: AtomicBool::new(false),
            sinks_ok: AtomicBool::new(true),
            dependencies_ok: AtomicBool::new(true),
        })
    }
    /// Records whether at least one broker connection is up.
    pub fn set_brokers_up(&self, up: bool) {
        self.brokers_up.store(up, Ordering::Relaxed);
    }
    /// Records whether this instance has partitions assigned.
    pub fn set_assigned(&self, assigned: bool) {
        self.assigned.store(assigned, Ordering::Relaxed);
    }
    /// Records whether the last sink write succeeded.
    pub fn set_sinks_ok(&self, ok: bool) {
        self.sinks_ok.store(ok, Ordering::Relaxed);
    }
    /// Records whether external dependencies (the schema registry) answer.
    pub fn set_dependencies_ok(&self, ok: bool) {
        self.dependencies_ok.store(ok, Ordering::Relaxed);
    }
    /// Whether a broker connection is up.
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
        if !self.sinks_ok.load(Ordering::Relaxed) {
            reasons.push("last Parquet write failed");
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
    pub partition_watermark: GaugeVec,
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
    pub sales_orders_paid: IntGaugeVec,
    pub sales_paid_amount: GaugeVec,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl Metrics {
    /// Creates and registers every family.
    ///
    /// # Errors
    /// Only on a programming error (duplicate or invalid metric names).
    pub fn new(windows: &[String]) -> Result<Self, prometheus::Error> {
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
                    "Messages between the committed offset and the high watermark, per assigned partition.",
                ),
                &["topic", "partition"],
            )?,
            partition_watermark: GaugeVec::new(
                opts(
                    "storepulse_watermark_timestamp_seconds",
                    "Event-time watermark of each assigned partition, Unix seconds.",
                ),
                &["topic", "partition"],
            )?,
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
            sales_orders_paid: IntGaugeVec::new(
                opts("storepulse_sales_orders_paid", "Orders paid in the latest closed window, by channel."),
                &["window", "channel"],
            )?,
            sales_paid_amount: GaugeVec::new(
                opts(
                    "storepulse_sales_paid_amount",
                    "Amount paid (GMV paid) in the latest closed window, in currency units, by channel and currency.",
                ),
                &["window", "channel", "currency"],
            )?,
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
            Box::new(m.partition_watermark.clone()),
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
            Box::new(m.sales_orders_paid.clone()),
            Box::new(m.sales_paid_amount.clone()),
        ];
        for c in collectors {
            m.registry.register(c)?;
        }
        m.pre_register(windows);
        Ok(m)
    }

    /// Creates zero-valued series for every bounded label value, so that rates and absence
    /// alerts work from the first scrape.
    fn pre_register(&self, windows: &[String]) {
        for stream in Stream::ALL {
            self.events_decoded.with_label_values(&[stream.as_str()]);
            self.events_duplicate.with_label_values(&[stream.as_str()]);
            for reason in DecodeError::REASONS {
                self.events_rejected.with_label_values(&[stream.as_str(), reason]);
            }
        }
        for (stream, family) in [
            (Stream::Clickstream, Family::Traffic),
            (Stream::Clickstream, Family::Sessions),
            (Stream::Orders, Family::Sales),
        ] {
            self.events_late.with_label_values(&[stream.as_str(), family.as_str()]);
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
        for window in windows.iter().map(String::as_str) {
            for channel in Channel::ALL.iter().map(|c| c.as_str()).chain(["all"]) {
                for device in Device::ALL.iter().map(|d| d.as_str()).chain(["all"]) {
                    self.funnel_visitors.with_label_values(&[window, channel, device]);
                    self.funnel_page_views.with_label_values(&[window, channel, device]);
                    for step in Step::ALL {
                        self.funnel_step_visitors.with_label_values(&[window, channel, device, step.as_str()]);
                    }
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

/// Converts integer minor units to currency units for export (ISO 4217 exponents).
pub fn minor_to_major(amount_minor: i64, currency: &str) -> f64 {
    let exponent = match currency {
        "JPY" | "KRW" | "VND" | "CLP" | "ISK" | "UGX" => 0,
        "BHD" | "KWD" | "OMR" | "JOD" | "TND" => 3,
        _ => 2,
    };
    amount_minor as f64 / 10f64.powi(exponent)
}

/// The `window` labels of several window sizes.
pub fn window_labels(sizes_ms: &[i64]) -> Vec<String> {
    sizes_ms.iter().map(|ms| window_label(*ms)).collect()
}

/// The `window` label of a window size: `1m`, `1h`, otherwise seconds (`90s`).
pub fn window_label(window_ms: i64) -> String {
    let secs = window_ms / 1000;
    if secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}
