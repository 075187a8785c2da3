//! One task's processing, pure: duplicate suppression, then each of the stream's operators
//! (on time, or late for that operator's family), then the watermarks, which close windows and
//! sessions. The whole task snapshots to bytes and restores exactly.
//!
//! A clickstream task owns one `clickstream` partition. A commerce task owns partition `p` of
//! both `orders` and `logistics` (co-partitioned by `order_id`), so a shipment meets its order in
//! one place. Each event's lateness, and how long its id is remembered against retries, are
//! decided by the watermark of its own partition, which depends only on that partition's order;
//! fulfillment windows close at the lower of the two watermarks, so a scan that arrived before
//! its order can still be joined into its window.

use super::fulfillment::ClosedFulfillment;
use super::funnel::FunnelSnapshot;
use super::lifecycle::JoinSample;
use super::{
    Family, FulfillmentOperator, FulfillmentRow, FunnelOperator, FunnelRow, OrderBook, OrderFact, OrdersOperator,
    OrdersRow, OrphanShipment, SessionOperator, SessionRow,
};
use crate::config::TimeSettings;
use crate::event::{Event, OrderEvent, ShipmentEvent, Stream};
use crate::time::{
    Dedupe, Late, LatenessGate, PartitionWatermark, SnapshotError, restore, snapshot, snapshot_sized, window_start,
};
use serde::{Deserialize, Serialize};

/// An event that arrived after its window closed for one metric family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateEvent {
    /// The family it missed.
    pub family: Family,
    /// Its id.
    pub event_id: String,
    /// Its event time, UTC ms.
    pub event_time: i64,
    /// The window it missed and by how much.
    pub late: Late,
}

/// Which latency histogram an observation belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyMetric {
    /// Order created to paid, labelled by channel.
    CreatedToPaid,
    /// Payment to carrier pickup, labelled by warehouse.
    PaidToPickup,
    /// Pickup to delivery, labelled by carrier.
    PickupToDelivery,
}

/// One duration recorded into a window, for the Prometheus histograms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyObservation {
    /// The histogram.
    pub metric: LatencyMetric,
    /// Its label value (channel, warehouse or carrier).
    pub label: String,
    /// The duration, ms.
    pub ms: i64,
}

/// Rows produced by tasks, accumulated until the next write.
#[derive(Debug, Default)]
pub struct TaskOutput {
    /// Closed funnel windows.
    pub funnel: Vec<FunnelRow>,
    /// Closed sessions.
    pub sessions: Vec<SessionRow>,
    /// Closed order windows.
    pub orders: Vec<OrdersRow>,
    /// Closed fulfillment windows.
    pub fulfillment: Vec<FulfillmentRow>,
    /// Orders the state is finished with.
    pub facts: Vec<OrderFact>,
    /// Scans whose order never arrived.
    pub orphans: Vec<OrphanShipment>,
    /// Late events, one per family missed.
    pub late: Vec<LateEvent>,
    /// Join figures lost because the order's payment arrived after the scan's window closed.
    pub joins_late: u64,
    /// Durations recorded into windows.
    pub latencies: Vec<LatencyObservation>,
}

impl TaskOutput {
    /// Drops every row and observation, keeping the allocations.
    pub fn clear(&mut self) {
        self.funnel.clear();
        self.sessions.clear();
        self.orders.clear();
        self.fulfillment.clear();
        self.facts.clear();
        self.orphans.clear();
        self.late.clear();
        self.joins_late = 0;
        self.latencies.clear();
    }

    /// Rows and observations waiting to be routed: non-zero after a call changed the state.
    pub fn pending(&self) -> usize {
        self.funnel.len()
            + self.sessions.len()
            + self.orders.len()
            + self.fulfillment.len()
            + self.facts.len()
            + self.orphans.len()
            + self.late.len()
            + self.latencies.len()
            + usize::from(self.joins_late > 0)
    }
}

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Suppressed: the same `event_id` was seen within the dedupe horizon.
    Duplicate,
    /// Recorded by every family of its stream, or late for some (listed in the output).
    Processed,
}

/// Orders and logistics of one partition number.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Commerce {
    orders: OrdersOperator,
    fulfillment: FulfillmentOperator,
    book: OrderBook,
    orders_watermark: PartitionWatermark,
    logistics_watermark: PartitionWatermark,
    /// Fulfillment lateness, decided on the logistics partition's own watermark.
    logistics_gate: LatenessGate,
    /// Streams the runtime reports idle (caught up and quiet): they do not hold windows back.
    orders_idle: bool,
    logistics_idle: bool,
    /// Start of the base window in which the order book was last swept.
    swept_at: Option<i64>,
    base_window_ms: i64,
    /// Ids of the logistics partition (the task's own `dedupe` holds the orders partition's).
    /// Each expires on its own partition's watermark: the consumer may read hours of one
    /// partition between an event of the other and its retry. `None` only after restoring a
    /// checkpoint of a release with one set for both: the next scan takes a copy of it.
    #[serde(default)]
    logistics_dedupe: Option<Dedupe>,
}

impl Commerce {
    /// The lower of the two partitions' watermarks, skipping an idle partition; `None` while a
    /// partition that is not idle has delivered nothing.
    fn joint_watermark(&self) -> Option<i64> {
        let parts = [
            (self.orders_watermark.current(), self.orders_idle),
            (self.logistics_watermark.current(), self.logistics_idle),
        ];
        if parts.iter().any(|(w, idle)| w.is_none() && !idle) {
            return None;
        }
        let active = parts.iter().filter(|(_, idle)| !idle).filter_map(|(w, _)| *w).min();
        active.or_else(|| parts.iter().filter_map(|(w, _)| *w).min())
    }

    fn record_order(&mut self, e: &OrderEvent, out: &mut TaskOutput) -> Result<(), Late> {
        let update = self.book.apply_order(e);
        for sample in &update.resolved {
            self.join(sample, out);
        }
        self.orders.record(e, update.created_at)?;
        // Opens the fulfillment window too, so that its backlog row is written even when no parcel
        // moves (a stalled warehouse); a window already closed for fulfillment just gets no row.
        let _ = self.fulfillment.touch(e.event_time);
        if let Some(created_at) = update.created_at {
            out.latencies.push(LatencyObservation {
                metric: LatencyMetric::CreatedToPaid,
                label: e.channel.as_str().to_owned(),
                ms: e.event_time - created_at,
            });
        }
        Ok(())
    }

    fn record_scan(&mut self, e: &ShipmentEvent, out: &mut TaskOutput) -> Result<(), Late> {
        let on_time = self.logistics_gate.check(e.event_time);
        let update = self.book.apply_scan(e, on_time.is_ok());
        on_time?;
        self.fulfillment.touch(e.event_time)?;
        let (carrier, warehouse) = (update.carrier, update.warehouse);
        if update.counts {
            self.fulfillment.record_scan(e.event_time, carrier, warehouse, e.status)?;
        }
        if let Some(ms) = update.pickup_to_delivery_ms {
            self.fulfillment.record_transit(e.event_time, carrier, warehouse, ms)?;
            out.latencies.push(LatencyObservation {
                metric: LatencyMetric::PickupToDelivery,
                label: e.carrier.clone(),
                ms,
            });
        }
        if let Some(sample) = &update.join {
            self.join(sample, out);
        }
        Ok(())
    }

    fn join(&mut self, sample: &JoinSample, out: &mut TaskOutput) {
        if self.fulfillment.record_join(sample).is_err() {
            out.joins_late += 1;
            return;
        }
        if let JoinSample::Pickup { warehouse, paid_to_pickup_ms, .. } = *sample {
            out.latencies.push(LatencyObservation {
                metric: LatencyMetric::PaidToPickup,
                label: self.book.symbols.name(warehouse).unwrap_or("unknown").to_owned(),
                ms: paid_to_pickup_ms,
            });
        }
    }

    fn advance(&mut self, out: &mut TaskOutput) {
        if let Some(w) = self.orders_watermark.current() {
            out.orders.extend(self.orders.advance_to(w));
        }
        if let Some(w) = self.logistics_watermark.current() {
            self.logistics_gate.advance(w);
        }
        let Some(joint) = self.joint_watermark() else { return };
        let closed = self.fulfillment.advance_to(joint);
        // Windows close in end order and the joint watermark is past them: every backlog
        // counted from now on is at this end or later.
        let settled = closed.iter().map(ClosedFulfillment::end).max();
        self.fulfillment_rows(closed, out);
        if let Some(end) = settled {
            self.book.settle_backlog(end);
        }
        let base = window_start(joint, self.base_window_ms);
        if self.swept_at.is_none_or(|s| base > s) {
            self.swept_at = Some(base);
            let (facts, orphans) = self.book.sweep(joint);
            out.facts.extend(facts);
            out.orphans.extend(orphans);
        }
    }

    fn fulfillment_rows(&self, closed: Vec<ClosedFulfillment>, out: &mut TaskOutput) {
        for window in closed {
            let backlog = self.book.backlog_at(window.end());
            out.fulfillment.extend(self.fulfillment.rows(window, &backlog, &self.book.symbols));
        }
    }

    fn close_all(&mut self, out: &mut TaskOutput) {
        out.orders.extend(self.orders.close_all());
        let closed = self.fulfillment.close_all();
        self.fulfillment_rows(closed, out);
        let watermark = self.joint_watermark().or(self.orders_watermark.current()).unwrap_or_default();
        let (facts, orphans) = self.book.drain(watermark);
        out.facts.extend(facts);
        out.orphans.extend(orphans);
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "OperatorsSnapshot")]
#[expect(clippy::large_enum_variant, reason = "one per partition; clickstream tasks are the common case")]
enum Operators {
    /// The sessions' table also holds the funnel's touches of each visitor.
    Clickstream {
        watermark: PartitionWatermark,
        funnel: FunnelOperator,
        sessions: SessionOperator,
    },
    Commerce(Box<Commerce>),
}

/// The serialized [`Operators`] of any release: those before the visitor table kept the
/// funnel's touches in the funnel.
#[derive(Deserialize)]
#[expect(clippy::large_enum_variant, reason = "read once per task on restore")]
enum OperatorsSnapshot {
    Clickstream { watermark: PartitionWatermark, funnel: FunnelSnapshot, sessions: SessionOperator },
    Commerce(Box<Commerce>),
}

impl From<OperatorsSnapshot> for Operators {
    fn from(snap: OperatorsSnapshot) -> Self {
        match snap {
            OperatorsSnapshot::Clickstream { watermark, funnel, mut sessions } => {
                let (funnel, visitors) = funnel.into_parts();
                for (visitor, touches) in visitors {
                    sessions.set_touches(visitor, touches);
                }
                Operators::Clickstream { watermark, funnel, sessions }
            }
            OperatorsSnapshot::Commerce(commerce) => Operators::Commerce(commerce),
        }
    }
}

/// The state of one task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionTask {
    /// Ids of the clickstream partition, or of a commerce task's orders partition.
    dedupe: Dedupe,
    operators: Operators,
}

impl PartitionTask {
    /// Fresh state for partition `partition` of `stream`; `orders` and `logistics` give the
    /// same (commerce) task.
    pub fn new(stream: Stream, partition: i32, time: &TimeSettings) -> Self {
        let sizes = &time.window_sizes_ms;
        let operators = match stream {
            Stream::Clickstream => Operators::Clickstream {
                watermark: PartitionWatermark::new(time.out_of_orderness_ms),
                funnel: FunnelOperator::new(partition, sizes, time.lateness.traffic_ms),
                sessions: SessionOperator::new(
                    partition,
                    time.session_gap_ms,
                    time.session_max_length_ms,
                    time.base_window_ms(),
                    time.lateness.sessions_ms,
                ),
            },
            Stream::Orders | Stream::Logistics => Operators::Commerce(Box::new(Commerce {
                orders: OrdersOperator::new(partition, sizes, time.lateness.orders_ms),
                fulfillment: FulfillmentOperator::new(partition, sizes, time.lateness.fulfillment_ms),
                book: OrderBook::new(partition, time.retention),
                orders_watermark: PartitionWatermark::new(time.out_of_orderness_ms),
                logistics_watermark: PartitionWatermark::new(time.out_of_orderness_ms),
                logistics_gate: LatenessGate::new(time.base_window_ms(), time.lateness.fulfillment_ms),
                orders_idle: false,
                logistics_idle: false,
                swept_at: None,
                base_window_ms: time.base_window_ms(),
                logistics_dedupe: Some(Dedupe::new(time.dedupe_horizon_ms, time.dedupe_max_ids)),
            })),
        };
        PartitionTask { dedupe: Dedupe::new(time.dedupe_horizon_ms, time.dedupe_max_ids), operators }
    }

    /// Processes one event of this task's partitions; rows of windows it closes go to `out`.
    pub fn process(&mut self, event: &Event, out: &mut TaskOutput) -> Disposition {
        let dedupe = match (&mut self.operators, event) {
            (Operators::Commerce(c), Event::Shipment(_)) => {
                c.logistics_dedupe.get_or_insert_with(|| self.dedupe.clone())
            }
            _ => &mut self.dedupe,
        };
        if dedupe.is_duplicate(event.event_id(), event.event_time()) {
            return Disposition::Duplicate;
        }
        let late = |out: &mut TaskOutput, family: Family, result: Result<(), Late>| {
            if let Err(late) = result {
                out.late.push(LateEvent {
                    family,
                    event_id: event.event_id().to_owned(),
                    event_time: event.event_time(),
                    late,
                });
            }
        };
        match (&mut self.operators, event) {
            (Operators::Clickstream { watermark, funnel, sessions }, Event::Click(click)) => {
                // One lookup of the visitor serves both: the funnel's touches live in its entry.
                let traffic = funnel.check(click.event_time);
                let count = traffic.is_ok().then_some(|touches: &mut _| funnel.record(click, touches));
                let (counted, in_session) = sessions.record_with_touches(click, count);
                late(out, Family::Traffic, counted.unwrap_or(traffic));
                late(out, Family::Sessions, in_session);
                watermark.observe(click.event_time);
            }
            (Operators::Commerce(c), Event::Order(order)) => {
                let result = c.record_order(order, out);
                late(out, Family::Orders, result);
                c.orders_watermark.observe(order.event_time);
                c.orders_idle = false;
            }
            (Operators::Commerce(c), Event::Shipment(scan)) => {
                let result = c.record_scan(scan, out);
                late(out, Family::Fulfillment, result);
                c.logistics_watermark.observe(scan.event_time);
                c.logistics_idle = false;
            }
            _ => {}
        }
        self.advance(out);
        Disposition::Processed
    }

    /// Tells a commerce task whether `stream`'s partition is idle (caught up and quiet), so
    /// that it does not hold fulfillment windows back; closes what that releases.
    pub fn set_idle(&mut self, stream: Stream, idle: bool, out: &mut TaskOutput) {
        if let Operators::Commerce(c) = &mut self.operators {
            let flag = if stream == Stream::Orders { &mut c.orders_idle } else { &mut c.logistics_idle };
            if *flag != idle {
                *flag = idle;
                self.advance(out);
            }
        }
    }

    fn advance(&mut self, out: &mut TaskOutput) {
        match &mut self.operators {
            Operators::Clickstream { watermark, funnel, sessions } => {
                if let Some(w) = watermark.current() {
                    self.dedupe.expire(w);
                    out.funnel.extend(funnel.advance_to(w, sessions));
                    out.sessions.extend(sessions.advance_to(w));
                }
            }
            Operators::Commerce(c) => {
                if let Some(w) = c.orders_watermark.current() {
                    self.dedupe.expire(w);
                }
                if let (Some(w), Some(dedupe)) = (c.logistics_watermark.current(), &mut c.logistics_dedupe) {
                    dedupe.expire(w);
                }
                c.advance(out);
            }
        }
    }

    /// The watermark of this task's partition of `stream`, once it has seen an event.
    pub fn watermark(&self, stream: Stream) -> Option<i64> {
        match (&self.operators, stream) {
            (Operators::Clickstream { watermark, .. }, Stream::Clickstream) => watermark.current(),
            (Operators::Commerce(c), Stream::Orders) => c.orders_watermark.current(),
            (Operators::Commerce(c), Stream::Logistics) => c.logistics_watermark.current(),
            _ => None,
        }
    }

    /// Closes every window and session and finishes every order (end of a bounded input).
    pub fn close_all(&mut self, out: &mut TaskOutput) {
        match &mut self.operators {
            Operators::Clickstream { funnel, sessions, .. } => {
                out.funnel.extend(funnel.close_all());
                out.sessions.extend(sessions.close_all());
            }
            Operators::Commerce(c) => c.close_all(out),
        }
    }

    /// Open sessions held (clickstream tasks).
    pub fn open_sessions(&self) -> usize {
        match &self.operators {
            Operators::Clickstream { sessions, .. } => sessions.open_sessions(),
            Operators::Commerce(_) => 0,
        }
    }

    /// Open orders held (commerce tasks).
    pub fn open_orders(&self) -> usize {
        match &self.operators {
            Operators::Commerce(c) => c.book.open_orders(),
            Operators::Clickstream { .. } => 0,
        }
    }

    /// Unshipped paid orders by warehouse at the fulfillment watermark (commerce tasks).
    pub fn backlog_now(&self) -> Option<(i64, Vec<(String, super::Backlog)>)> {
        let Operators::Commerce(c) = &self.operators else { return None };
        let at = c.joint_watermark()?;
        let by_warehouse = c
            .book
            .backlog_at(at)
            .into_iter()
            .map(|(w, b)| (c.book.symbols.name(w).unwrap_or("unknown").to_owned(), b))
            .collect();
        Some((at, by_warehouse))
    }

    /// The whole state as bytes.
    ///
    /// # Errors
    /// Only on a programming error (state that cannot be encoded).
    pub fn snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        snapshot(self)
    }

    /// [`PartitionTask::snapshot`] into a buffer of `expected_len` bytes allocated up front.
    ///
    /// # Errors
    /// As [`PartitionTask::snapshot`].
    pub fn snapshot_sized(&self, expected_len: usize) -> Result<Vec<u8>, SnapshotError> {
        snapshot_sized(self, expected_len)
    }

    /// State written by [`PartitionTask::snapshot`].
    ///
    /// # Errors
    /// [`SnapshotError`] when the bytes are not a task snapshot.
    pub fn restore(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let mut task: PartitionTask = restore(bytes)?;
        if let Operators::Commerce(c) = &mut task.operators {
            c.book.rebuild_index();
        }
        Ok(task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{OrderEventType as O, ShipmentStatus as S};
    use crate::operators::fixtures::{HOUR, order, scan};
    use crate::operators::{Backlog, ClosedReason};

    const T0: i64 = 1_794_322_800_000;

    fn settings() -> TimeSettings {
        TimeSettings { out_of_orderness_ms: 0, ..TimeSettings::default() }
    }

    fn commerce() -> PartitionTask {
        PartitionTask::new(Stream::Orders, 2, &settings())
    }

    fn feed(task: &mut PartitionTask, events: impl IntoIterator<Item = Event>) -> TaskOutput {
        let mut out = TaskOutput::default();
        for e in events {
            task.process(&e, &mut out);
        }
        out
    }

    /// The all-carrier, all-warehouse 1 m row of the window starting at `start`.
    fn all_row(out: &TaskOutput, start: i64) -> &FulfillmentRow {
        out.fulfillment
            .iter()
            .find(|r| r.window_ms == 60_000 && r.window_start == start && r.carrier.is_none() && r.warehouse.is_none())
            .expect("a fulfillment row for the window")
    }

    fn paid_order(id: &str, paid_at: i64) -> [Event; 2] {
        [Event::Order(order(O::Created, paid_at - 60_000, id, "u1")), Event::Order(order(O::Paid, paid_at, id, "u1"))]
    }

    #[test]
    fn a_retry_is_a_duplicate_however_far_the_other_stream_moves_before_it_arrives() {
        // The consumer reads the two partitions at their own pace: between an event and its
        // retry (adjacent in their partition) it may read hours of the other, lagging partition.
        let mut task = commerce();
        let late_scans = |from: i64| (0..7).map(move |i| Event::Shipment(scan(S::InTransit, from + i * 600_000, "o0")));
        let created = Event::Order(order(O::Created, T0 + 5 * HOUR, "o1", "u1"));
        feed(&mut task, [Event::Shipment(scan(S::LabelCreated, T0 + 4 * HOUR, "o0")), created.clone()]);
        feed(&mut task, late_scans(T0 + 4 * HOUR + 600_000));
        assert_eq!(task.process(&created, &mut TaskOutput::default()), Disposition::Duplicate);

        // The other way round: the orders partition lags and catches up between a scan and its retry.
        let mut task = commerce();
        let scanned = Event::Shipment(scan(S::PickedUp, T0 + 5 * HOUR, "o2"));
        feed(&mut task, [Event::Order(order(O::Created, T0 + 4 * HOUR, "o3", "u3")), scanned.clone()]);
        feed(
            &mut task,
            (1..8).map(|i| Event::Order(order(O::Created, T0 + 4 * HOUR + i * 600_000, &format!("o{}", i + 3), "u"))),
        );
        assert_eq!(task.process(&scanned, &mut TaskOutput::default()), Disposition::Duplicate);
    }

    #[test]
    fn a_shipment_that_arrives_before_its_order_is_held_and_joined_into_its_window() {
        let mut task = commerce();
        let pickup = T0 + 2 * HOUR;
        // The logistics partition runs ahead: the pickup arrives before the orders partition
        // has even seen the payment.
        let mut out = feed(&mut task, [Event::Shipment(scan(S::PickedUp, pickup, "o1"))]);
        out.fulfillment.clear();
        let later = feed(
            &mut task,
            paid_order("o1", T0)
                .into_iter()
                .chain([Event::Order(order(O::Created, pickup + 5 * 60_000, "o2", "u2"))])
                .chain([Event::Shipment(scan(S::InTransit, pickup + 5 * 60_000, "o1"))]),
        );
        let row = all_row(&later, crate::time::window_start(pickup, 60_000));
        assert_eq!(row.counts.picked_up, 1);
        assert_eq!((row.counts.ship_promised, row.counts.shipped_on_time), (1, 1));
        assert_eq!(row.counts.paid_to_pickup.sum_ms(), 2 * HOUR);
        assert_eq!(later.joins_late, 0);
        assert!(later.latencies.iter().any(|l| l.metric == LatencyMetric::PaidToPickup && l.ms == 2 * HOUR));
    }

    #[test]
    fn a_cancelled_order_is_never_backlog_and_its_fact_says_cancelled_after_the_ttl() {
        let mut task = commerce();
        let cancelled_at = T0 + 30 * 60_000;
        let mut out = feed(
            &mut task,
            paid_order("o1", T0).into_iter().chain([Event::Order(order(O::Created, T0 + 60_000, "o2", "u2"))]),
        );
        assert_eq!(task.backlog_now(), None, "logistics not seen yet: no fulfillment watermark");
        task.set_idle(Stream::Logistics, true, &mut out);
        assert_eq!(
            task.backlog_now().expect("present in this scenario").1[0].1.orders,
            1,
            "paid, not picked up: backlog"
        );
        feed(
            &mut task,
            [
                Event::Order(order(O::Cancelled, cancelled_at, "o1", "u1")),
                Event::Order(order(O::Created, cancelled_at + 1, "o3", "u3")),
            ],
        );
        let (_, backlog) = task.backlog_now().expect("present in this scenario");
        assert!(backlog.is_empty(), "cancelled orders leave the backlog");
        // Quiet for longer than the terminal time-to-live: the fact is written.
        let ttl = settings().retention.terminal_ttl_ms;
        let out = feed(&mut task, [Event::Order(order(O::Created, cancelled_at + ttl + 2 * 60_000, "o9", "u9"))]);
        let fact = out.facts.iter().find(|f| f.order_id == "o1").expect("o1 is finished");
        assert_eq!((fact.final_state, fact.closed_reason), ("cancelled", ClosedReason::Terminal));
        assert_eq!((fact.picked_up_at, fact.shipped_on_time), (None, None));
        assert_eq!(fact.cancelled_at, Some(cancelled_at));
        assert_eq!(task.open_orders(), 3, "o2, o3 (open) and o9 are left");
    }

    #[test]
    fn a_refund_after_delivery_counts_in_its_window_and_reaches_the_fact() {
        let mut task = commerce();
        let delivered = T0 + 30 * HOUR;
        let refunded = delivered + 48 * HOUR;
        let events = paid_order("o1", T0).into_iter().chain([
            Event::Shipment(scan(S::PickedUp, T0 + 3 * HOUR, "o1")),
            Event::Shipment(scan(S::Delivered, delivered, "o1")),
            Event::Order(order(O::Refunded, refunded, "o1", "u1")),
            Event::Shipment(scan(S::InTransit, refunded + 2 * 60_000, "zz")),
        ]);
        let mut out = feed(&mut task, events);
        task.close_all(&mut out);
        let refund_window = crate::time::window_start(refunded, 60_000);
        let row = out
            .orders
            .iter()
            .find(|r| r.window_ms == 60_000 && r.window_start == refund_window && r.channel.is_none())
            .expect("present in this scenario");
        assert_eq!((row.counts.refunds, row.counts.refund_amount_minor), (1, 2_500));
        let fact = out.facts.iter().find(|f| f.order_id == "o1").expect("present in this scenario");
        assert_eq!(
            (fact.final_state, fact.refunded_amount_minor, fact.last_refund_at),
            ("delivered", 2_500, Some(refunded))
        );
        assert_eq!((fact.shipped_on_time, fact.delivered_on_time), (Some(true), Some(true)));
        assert_eq!(out.orphans.len(), 1, "scans of an order that never came are an orphan, not dropped");
        assert_eq!(out.orphans[0].order_id, "zz");
    }

    #[test]
    fn a_delivery_after_its_promise_is_not_on_time() {
        let mut task = commerce();
        let promise = T0 + 120 * HOUR;
        let delivered = promise + 1;
        let mut out = feed(
            &mut task,
            paid_order("o1", T0).into_iter().chain([
                Event::Shipment(scan(S::PickedUp, T0 + 50 * HOUR, "o1")),
                Event::Shipment(scan(S::Delivered, delivered, "o1")),
            ]),
        );
        task.close_all(&mut out);
        let pickup = all_row(&out, crate::time::window_start(T0 + 50 * HOUR, 60_000));
        assert_eq!((pickup.counts.ship_promised, pickup.counts.shipped_on_time), (1, 0), "picked up after 48 h");
        let delivery = all_row(&out, crate::time::window_start(delivered, 60_000));
        assert_eq!((delivery.counts.deliver_promised, delivery.counts.delivered_on_time), (1, 0));
        assert_eq!(delivery.counts.pickup_to_delivery.sum_ms(), delivered - (T0 + 50 * HOUR));
        let fact = &out.facts[0];
        assert_eq!((fact.shipped_on_time, fact.delivered_on_time), (Some(false), Some(false)));
    }

    #[test]
    fn backlog_at_a_watermark_counts_unshipped_orders_past_promise_and_the_oldest() {
        let mut task = commerce();
        let mut events: Vec<Event> = Vec::new();
        for (id, paid_at) in [("a", T0), ("b", T0 + HOUR), ("c", T0 + 2 * HOUR)] {
            events.extend(paid_order(id, paid_at));
        }
        events.push(Event::Shipment(scan(S::PickedUp, T0 + 3 * HOUR, "b")));
        // Both partitions reach T0 + 50 h: `a` (ship-by T0 + 48 h) is past its promise.
        let at = T0 + 50 * HOUR;
        events.push(Event::Order(order(O::Created, at, "later", "u3")));
        events.push(Event::Shipment(scan(S::InTransit, at, "b")));
        let out = feed(&mut task, events);
        let (evaluated_at, backlog) = task.backlog_now().expect("present in this scenario");
        assert_eq!(evaluated_at, at);
        assert_eq!(
            backlog,
            vec![("WH-HZ1".to_owned(), Backlog { orders: 2, past_ship_by: 1, oldest_paid_at: Some(T0) })]
        );
        // The window ending at T0 + 2 h 30 m saw `b` picked up after it: still backlog there.
        let row = all_row(&out, crate::time::window_start(T0 + 3 * HOUR, 60_000));
        let b = row.backlog.expect("present in this scenario");
        assert_eq!((b.orders, b.past_ship_by), (2, 0), "a and c at pickup of b; b leaves at its pickup time");
    }

    #[test]
    fn a_late_scan_updates_the_order_but_not_closed_windows() {
        let mut task = commerce();
        let mut out = feed(
            &mut task,
            paid_order("o1", T0).into_iter().chain([Event::Shipment(scan(S::InTransit, T0 + 10 * HOUR, "x"))]),
        );
        out.late.clear();
        let late = feed(&mut task, [Event::Shipment(scan(S::PickedUp, T0 + HOUR, "o1"))]);
        assert_eq!(late.late.len(), 1);
        assert_eq!(late.late[0].family, Family::Fulfillment);
        task.close_all(&mut out);
        assert!(out.fulfillment.iter().all(|r| r.counts.picked_up == 0));
        let fact = out.facts.iter().find(|f| f.order_id == "o1").expect("present in this scenario");
        assert_eq!(fact.picked_up_at, Some(T0 + HOUR), "facts do not depend on windows");
    }

    #[test]
    fn commerce_state_survives_a_snapshot() {
        let mut task = commerce();
        feed(&mut task, paid_order("o1", T0).into_iter().chain([Event::Shipment(scan(S::PickedUp, T0 + HOUR, "o1"))]));
        let mut restored = PartitionTask::restore(&task.snapshot().expect("present in this scenario"))
            .expect("present in this scenario");
        let (mut a, mut b) = (TaskOutput::default(), TaskOutput::default());
        task.close_all(&mut a);
        restored.close_all(&mut b);
        assert_eq!((a.orders, a.fulfillment, a.facts), (b.orders, b.fulfillment, b.facts));
    }

    #[test]
    fn a_checkpoint_with_one_id_set_for_both_streams_restores_with_its_scans_remembered() {
        use ciborium::Value;
        fn entries(map: &mut Value) -> &mut Vec<(Value, Value)> {
            let Value::Map(entries) = map else { panic!("a map") };
            entries
        }
        fn field<'a>(map: &'a mut Value, name: &str) -> &'a mut Value {
            entries(map).iter_mut().find(|(k, _)| k.as_text() == Some(name)).map(|(_, v)| v).expect("the field")
        }
        let mut task = commerce();
        let scanned = Event::Shipment(scan(S::PickedUp, T0 + HOUR, "o1"));
        feed(&mut task, paid_order("o1", T0).into_iter().chain([scanned.clone()]));
        // The earlier layout: no `logistics_dedupe`, the scan's id in the task's one set.
        let mut value: Value = restore(&task.snapshot().expect("encodes")).expect("decodes");
        let commerce = entries(field(field(&mut value, "operators"), "Commerce"));
        let at = commerce.iter().position(|(k, _)| k.as_text() == Some("logistics_dedupe")).expect("the field");
        let (_, logistics) = commerce.remove(at);
        *field(&mut value, "dedupe") = logistics;

        let mut restored = PartitionTask::restore(&snapshot(&value).expect("encodes")).expect("restores");
        assert_eq!(restored.process(&scanned, &mut TaskOutput::default()), Disposition::Duplicate);
    }

    #[test]
    fn a_clickstream_checkpoint_with_the_funnels_touches_apart_restores_into_the_visitor_table() {
        use crate::event::{Channel, ClickEvent, ClickEventType, Device};
        use ciborium::Value;
        fn field<'a>(map: &'a mut Value, name: &str) -> &'a mut Value {
            let Value::Map(entries) = map else { panic!("a map") };
            entries.iter_mut().find(|(k, _)| k.as_text() == Some(name)).map(|(_, v)| v).expect("the field")
        }
        fn take(map: &mut Value, name: &str) -> Value {
            std::mem::replace(field(map, name), Value::Null)
        }
        let click = |visitor: &str, session: Option<&str>, minute: i64, kind| {
            let mut c =
                ClickEvent::new(format!("{visitor}-{minute}"), kind, T0 + minute * 60_000, visitor.into(), Device::App);
            c.session_id = session.map(Into::into);
            c.channel = Some(Channel::PaidSearch);
            Event::Click(c)
        };
        let before = [
            click("a", Some("s1"), 0, ClickEventType::PageView),
            click("a", None, 1, ClickEventType::ProductView),
            click("b", None, 2, ClickEventType::PageView),
        ];
        let after = [
            click("a", Some("s1"), 3, ClickEventType::AddToCart),
            click("b", None, 4, ClickEventType::ProductView),
            click("c", None, 80, ClickEventType::PageView),
        ];
        let mut task = PartitionTask::new(Stream::Clickstream, 0, &settings());
        feed(&mut task, before);

        // The earlier layout: the funnel's touches under `funnel.visitors`, sessions under
        // `open`, keyed by (visitor, client session id), without their lane.
        let mut value: Value = restore(&task.snapshot().expect("encodes")).expect("decodes");
        let clickstream = field(field(&mut value, "operators"), "Clickstream");
        let Value::Map(visitors) = take(field(field(clickstream, "sessions"), "sessions"), "entries") else {
            panic!("a map of visitors")
        };
        let (mut touches, mut open) = (Vec::new(), Vec::new());
        for (visitor, mut entry) in visitors {
            touches.push((visitor.clone(), take(&mut entry, "companion")));
            let Value::Array(sessions) = take(&mut entry, "sessions") else { panic!("an array") };
            for mut session in sessions {
                let lane = take(&mut session, "lane");
                let Value::Map(fields) = &mut session else { panic!("a map") };
                fields.retain(|(k, _)| k.as_text() != Some("lane"));
                open.push((Value::Array(vec![visitor.clone(), lane]), Value::Array(vec![session])));
            }
        }
        assert_eq!(open.len(), 3, "a/s1, a/none and b/none");
        let Value::Map(windows_fields) = field(field(clickstream, "sessions"), "sessions") else { panic!("a map") };
        windows_fields.retain(|(k, _)| k.as_text() != Some("entries"));
        windows_fields.push((Value::Text("open".into()), Value::Map(open)));
        let Value::Map(funnel) = field(clickstream, "funnel") else { panic!("a map") };
        funnel.push((Value::Text("visitors".into()), Value::Map(touches)));

        let mut restored = PartitionTask::restore(&snapshot(&value).expect("encodes")).expect("restores");
        assert_eq!(restored.open_sessions(), 3);
        let (mut a, mut b) = (feed(&mut task, after.clone()), feed(&mut restored, after));
        task.close_all(&mut a);
        restored.close_all(&mut b);
        assert_eq!((&a.funnel, &a.sessions, &a.late.len()), (&b.funnel, &b.sessions, &b.late.len()));
        let all = a
            .funnel
            .iter()
            .find(|r| {
                r.window_ms == 60 * 60_000
                    && r.window_start == T0 - T0 % (60 * 60_000)
                    && r.channel.is_none()
                    && r.device.is_none()
            })
            .expect("the hour's all row");
        assert_eq!(all.counts.visitors, 2, "a and b, each counted once across the checkpoint");
    }
}
