//! The Prometheus sink: closed windows become the business gauges, closed sessions the session
//! counters, recorded durations the latency histograms, and the tasks' state the backlog and
//! open-state gauges. Windows are summed across this instance's partitions
//! ([`summary::SummaryBoard`]) and published once the low watermark has passed them.

pub mod summary;

use crate::event::{Channel, Device, minor_to_major};
use crate::labels::{TOTAL, carrier_label, channel_label, device_label, value_or_total, window_label};
use crate::operators::{
    Backlog, FULFILLMENT, FulfillmentCounts, FulfillmentRow, FunnelRow, LatencyMetric, ORDERS, OrderCounts, OrdersRow,
    OrphanShipment, SessionRow, StateReport, Step, TRAFFIC, TaskOutput,
};
use crate::telemetry::Metrics;
use crate::time::TimeSettings;
use prometheus::{Counter, IntCounter};
use std::collections::{BTreeMap, BTreeSet};
use summary::{SummaryBoard, WindowSummary};

/// Label sets already exported, so a series absent from a newer window is set to zero
/// instead of keeping a stale value.
#[derive(Default)]
struct ExportedSeries {
    fulfillment: BTreeSet<(String, String, String)>,
    currencies: BTreeSet<String>,
    warehouses: BTreeSet<String>,
}

/// The gauges, counters and histograms fed by closed windows and task state.
pub struct Gauges {
    metrics: Metrics,
    board: SummaryBoard,
    exported: ExportedSeries,
    sessions: SessionCounters,
    /// The board holds windows of several families: one is released once every family has
    /// closed it.
    lateness_ms: i64,
    /// Print each released window to the terminal (the demo) instead of logging it.
    progress: bool,
}

impl Gauges {
    /// Gauges of `metrics` for windows closed with `time`'s lateness.
    pub fn new(metrics: Metrics, time: &TimeSettings, progress: bool) -> Self {
        let lateness_ms = [TRAFFIC, ORDERS, FULFILLMENT].map(|family| time.lateness.of(family)).into_iter().max();
        Gauges {
            sessions: SessionCounters::new(&metrics),
            metrics,
            board: SummaryBoard::default(),
            exported: ExportedSeries::default(),
            lateness_ms: lateness_ms.unwrap_or_default(),
            progress,
        }
    }

    /// Takes what one call into a task closed: windows onto the board, sessions and orphans
    /// into their counters, and the durations and lost joins it recorded (which leave `out`).
    pub fn observe(&mut self, out: &mut TaskOutput) {
        let rows = &out.rows;
        self.board.add_funnel(rows.of::<FunnelRow>());
        self.board.add_orders(rows.of::<OrdersRow>());
        self.board.add_fulfillment(rows.of::<FulfillmentRow>());
        for session in rows.of::<SessionRow>() {
            self.sessions.count(session);
        }
        self.metrics.shipments_orphaned.inc_by(rows.of::<OrphanShipment>().len() as u64);
        self.metrics.joins_late.inc_by(std::mem::take(&mut out.joins_late));
        let budget = &self.metrics.label_budget;
        for o in out.latencies.drain(..) {
            let (histogram, label) = match o.metric {
                LatencyMetric::CreatedToPaid => (&self.metrics.order_created_to_paid, o.label.as_str()),
                LatencyMetric::PaidToPickup => (&self.metrics.paid_to_pickup, budget.admit("warehouse", &o.label)),
                LatencyMetric::PickupToDelivery => {
                    (&self.metrics.pickup_to_delivery, budget.admit("carrier", carrier_label(&o.label)))
                }
            };
            histogram.with_label_values(&[label]).observe(o.ms as f64 / 1000.0);
        }
    }

    /// Publishes every window the instance's low watermark has passed; returns how many.
    pub fn release_through(&mut self, low_watermark: i64) -> u64 {
        let released = self.board.release_through(low_watermark - self.lateness_ms);
        self.publish_all(&released)
    }

    /// Publishes every window held (end of a drain); returns how many.
    pub fn release_all(&mut self) -> u64 {
        let released = self.board.release_all();
        self.publish_all(&released)
    }

    /// Sets the state gauges from every task's report: open sessions and orders, and, when the
    /// reports hold it, the backlog at the lowest fulfillment watermark.
    pub fn publish_state(&mut self, reports: impl Iterator<Item = StateReport>) {
        let (mut sessions, mut orders) = (0, 0);
        let mut by_warehouse: BTreeMap<String, Backlog> = BTreeMap::new();
        let mut at: Option<i64> = None;
        for report in reports {
            sessions += report.open_sessions;
            orders += report.open_orders;
            if let Some((task_at, backlog)) = report.backlog {
                at = Some(at.map_or(task_at, |a| a.min(task_at)));
                for (warehouse, b) in backlog {
                    let warehouse = self.metrics.label_budget.admit("warehouse", &warehouse).to_owned();
                    by_warehouse.entry(warehouse).or_default().add(&b);
                    by_warehouse.entry(TOTAL.to_owned()).or_default().add(&b);
                }
            }
        }
        self.metrics.sessions_open.set(sessions as i64);
        self.metrics.orders_open.set(orders as i64);
        if let Some(at) = at {
            self.publish_backlog(at, &by_warehouse);
        }
    }

    fn publish_backlog(&mut self, at: i64, by_warehouse: &BTreeMap<String, Backlog>) {
        let g = &self.metrics.fulfillment;
        g.backlog_at.set(at as f64 / 1000.0);
        self.exported.warehouses.extend(by_warehouse.keys().cloned());
        self.exported.warehouses.insert(TOTAL.to_owned());
        for warehouse in &self.exported.warehouses {
            let b = by_warehouse.get(warehouse).copied().unwrap_or_default();
            let labels = [warehouse.as_str()];
            g.backlog_orders.with_label_values(&labels).set(b.orders as i64);
            g.backlog_past_ship_by.with_label_values(&labels).set(b.past_ship_by as i64);
            let age = b.oldest_paid_at.map_or(0, |paid| (at - paid).max(0));
            g.oldest_unshipped_age.with_label_values(&labels).set(age as f64 / 1000.0);
        }
    }

    fn publish_all(&mut self, released: &[WindowSummary]) -> u64 {
        for summary in released {
            self.publish(summary);
        }
        released.len() as u64
    }

    /// Sets the business gauges to a closed window and reports it.
    fn publish(&mut self, summary: &WindowSummary) {
        let label = window_label(summary.window_ms);
        let w = label.as_str();
        self.metrics.window_end.with_label_values(&[w]).set(summary.window_end() as f64 / 1000.0);
        self.publish_traffic(w, summary);
        self.publish_orders(w, summary);
        self.publish_fulfillment(w, summary);
        report_window(w, summary, self.progress);
    }

    /// Funnel gauges: every channel × device series is set, to zero when absent, so none keeps
    /// a stale value.
    fn publish_traffic(&self, w: &str, summary: &WindowSummary) {
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
    }

    /// Order gauges of a closed window: every channel and the total is set (zero when absent).
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
            let carrier = budget.admit("carrier", carrier.as_deref().map_or(TOTAL, carrier_label)).to_owned();
            let warehouse = budget.admit("warehouse", value_or_total(warehouse.as_deref())).to_owned();
            folded.entry((carrier, warehouse)).or_default().add(counts);
        }
        folded.entry((TOTAL.to_owned(), TOTAL.to_owned())).or_default();
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
}

/// Prints a released window's headline figures (the demo) or logs them.
fn report_window(w: &str, summary: &WindowSummary, progress: bool) {
    let (visitors, purchasers) = summary.all_traffic();
    let conversion = if visitors == 0 { 0.0 } else { 100.0 * purchasers as f64 / visitors as f64 };
    let start = humantime::format_rfc3339_seconds(
        std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(summary.window_start.max(0) as u64),
    );
    if !progress {
        tracing::info!(window = w, window_start = %start, visitors, purchasers, "window closed");
        return;
    }
    let sales: Vec<String> = summary
        .sales_by_currency()
        .into_iter()
        .map(|(currency, (orders, amount))| {
            format!("paid orders {orders:>5}  GMV {currency} {:>12.2}", minor_to_major(amount, currency))
        })
        .collect();
    println!(
        "{w:>3} window {start}  visitors {visitors:>6}  purchasers {purchasers:>5}  paid conversion {conversion:>5.2}%  {}",
        if sales.is_empty() { "paid orders     0".to_owned() } else { sales.join("  ") }
    );
}

/// The session counters of one landing channel and device.
struct SessionSeries {
    closed: IntCounter,
    engaged: IntCounter,
    converted: IntCounter,
    duration_seconds: Counter,
    page_views: IntCounter,
}

/// Counters of closed sessions, resolved once: a closed session updates up to thirteen series,
/// and a labelled lookup hashes its labels every time.
pub struct SessionCounters {
    /// By channel × device index.
    by_landing: Vec<SessionSeries>,
    /// By channel × step × (any, in order).
    steps: Vec<IntCounter>,
}

impl SessionCounters {
    /// The series of `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        let mut by_landing = Vec::with_capacity(Channel::COUNT * Device::COUNT);
        let mut steps = Vec::with_capacity(Channel::COUNT * Step::COUNT * 2);
        for channel in Channel::ALL.iter().map(|c| c.as_str()) {
            for device in Device::ALL.iter().map(|d| d.as_str()) {
                let labels = [channel, device];
                by_landing.push(SessionSeries {
                    closed: metrics.sessions_closed.with_label_values(&labels),
                    engaged: metrics.sessions_engaged.with_label_values(&labels),
                    converted: metrics.sessions_converted.with_label_values(&labels),
                    duration_seconds: metrics.session_duration_seconds.with_label_values(&labels),
                    page_views: metrics.session_page_views.with_label_values(&labels),
                });
            }
            for step in Step::ALL {
                for order in ["any", "in_order"] {
                    steps.push(metrics.session_steps.with_label_values(&[channel, step.as_str(), order]));
                }
            }
        }
        SessionCounters { by_landing, steps }
    }

    /// Adds a closed session, by landing channel and device.
    pub fn count(&self, session: &SessionRow) {
        let series = &self.by_landing[session.channel.index() * Device::COUNT + session.device.index()];
        series.closed.inc();
        if session.engaged() {
            series.engaged.inc();
        }
        if session.converted() {
            series.converted.inc();
        }
        series.duration_seconds.inc_by(session.duration_ms() as f64 / 1000.0);
        series.page_views.inc_by(u64::from(session.page_views));
        let steps = &self.steps[session.channel.index() * Step::COUNT * 2..];
        for i in 0..Step::COUNT {
            if session.reached[i] {
                steps[i * 2].inc();
            }
            if usize::from(session.funnel_depth_in_order) > i {
                steps[i * 2 + 1].inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::FunnelCounts;

    #[test]
    fn a_window_size_has_no_series_until_its_first_window_closes() {
        let metrics = Metrics::new(&[]).expect("metrics");
        let mut gauges = Gauges::new(metrics.clone(), &TimeSettings::default(), false);
        assert!(!metrics.render().contains("window=\""), "nothing closed yet: no window series");
        let row = |window_ms| FunnelRow {
            window_ms,
            window_start: 0,
            partition: 0,
            channel: None,
            device: None,
            counts: FunnelCounts { events: 4, visitors: 3, page_views: 2, step_visitors: [1, 1, 0, 0] },
            partial: false,
        };
        let mut out = TaskOutput::default();
        out.rows.table::<FunnelRow>().extend([row(60_000), row(3_600_000)]);
        gauges.observe(&mut out);
        assert_eq!(gauges.release_through(60_000), 1, "the minute closed, the hour is open");
        let text = metrics.render();
        assert!(text.contains("storepulse_funnel_visitors{channel=\"all\",device=\"all\",window=\"1m\"} 3"), "{text}");
        assert!(!text.contains("window=\"1h\""), "a 1h series before the first hour closed:\n{text}");
        assert_eq!(gauges.release_through(3_600_000), 1);
        assert!(
            metrics.render().contains("storepulse_funnel_visitors{channel=\"all\",device=\"all\",window=\"1h\"} 3")
        );
    }

    #[test]
    fn session_counters_count_each_session_into_its_own_series() {
        let metrics = Metrics::new(&[]).expect("metrics");
        let counters = SessionCounters::new(&metrics);
        let bounced = SessionRow {
            window_start: 0,
            window_ms: 60_000,
            session_start: 0,
            session_end: 2_000,
            partition: 0,
            visitor_id: "v1".into(),
            client_session_id: None,
            channel: Channel::PaidSearch,
            device: Device::App,
            landing_page: None,
            events: 1,
            page_views: 1,
            reached: [true, false, false, false],
            funnel_depth_in_order: 1,
            partial: false,
        };
        let bought = SessionRow {
            session_end: 30_000,
            page_views: 3,
            reached: [true, true, false, true],
            funnel_depth_in_order: 2,
            ..bounced.clone()
        };
        for session in [&bounced, &bought, &bought] {
            counters.count(session);
        }
        let text = metrics.render();
        for line in [
            "storepulse_sessions_closed_total{channel=\"paid_search\",device=\"app\"} 3",
            "storepulse_sessions_engaged_total{channel=\"paid_search\",device=\"app\"} 2",
            "storepulse_sessions_converted_total{channel=\"paid_search\",device=\"app\"} 2",
            "storepulse_session_duration_seconds_total{channel=\"paid_search\",device=\"app\"} 62",
            "storepulse_session_page_views_total{channel=\"paid_search\",device=\"app\"} 7",
            "storepulse_session_funnel_steps_total{channel=\"paid_search\",order=\"any\",step=\"product_view\"} 3",
            "storepulse_session_funnel_steps_total{channel=\"paid_search\",order=\"any\",step=\"purchase\"} 2",
            "storepulse_session_funnel_steps_total{channel=\"paid_search\",order=\"in_order\",step=\"add_to_cart\"} 2",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        for zero in [
            "storepulse_session_funnel_steps_total{channel=\"paid_search\",order=\"any\",step=\"begin_checkout\"} 0",
            "storepulse_sessions_closed_total{channel=\"paid_search\",device=\"desktop\"} 0",
            "storepulse_sessions_closed_total{channel=\"direct\",device=\"app\"} 0",
        ] {
            assert!(text.contains(zero), "missing {zero}");
        }
    }
}
