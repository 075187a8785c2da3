//! The commerce operator: orders, fulfillment and the order lifecycle of one partition of
//! `orders` and `logistics`. The order book joins each scan to its order (a scan that arrives
//! first is held), feeds the fulfillment windows their on-time and latency figures and the
//! backlog, and writes a fact row per finished order. Fulfillment windows close at the lower of
//! the two partitions' watermarks, so that a scan that arrived before its order can still be
//! joined into its window.

use super::fulfillment::ClosedFulfillment;
use super::lifecycle::JoinSample;
use super::{
    Family, FulfillmentOperator, FulfillmentRow, LatencyMetric, LatencyObservation, OrderBook, OrderFact,
    OrdersOperator, OrdersRow, OrphanShipment, StateReport, TaskKind, TaskOutput,
};
use crate::event::{Event, OrderEvent, ShipmentEvent, Stream};
use crate::table::TableSpec;
use crate::time::{Late, LatenessGate, TimeSettings, window_start};
use serde::{Deserialize, Serialize};

/// The `orders` family: order windows per channel.
pub const ORDERS: &str = "orders";
/// The `fulfillment` family: shipment windows per carrier and warehouse.
pub const FULFILLMENT: &str = "fulfillment";

/// Orders and logistics of one partition number.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Commerce {
    pub(super) orders: OrdersOperator,
    pub(super) fulfillment: FulfillmentOperator,
    pub(super) book: OrderBook,
    /// Fulfillment lateness, decided on the logistics partition's own watermark.
    pub(super) logistics_gate: LatenessGate,
    /// The orders partition's own watermark after its latest event: with the logistics one,
    /// it decides from when an event counts in the backlog.
    #[serde(default)]
    pub(super) orders_watermark: Option<i64>,
    /// Start of the base window in which the order book was last swept.
    pub(super) swept_at: Option<i64>,
    pub(super) base_window_ms: i64,
}

impl Family for Commerce {
    const NAME: &'static str = "commerce";
    const TASK: TaskKind = TaskKind::Commerce;
    const FAMILIES: &'static [(&'static str, Stream)] = &[(ORDERS, Stream::Orders), (FULFILLMENT, Stream::Logistics)];
    const TABLES: &'static [TableSpec] = &[
        TableSpec::of::<OrdersRow>(),
        TableSpec::of::<FulfillmentRow>(),
        TableSpec::of::<OrderFact>(),
        TableSpec::of::<OrphanShipment>(),
    ];

    fn new(partition: i32, time: &TimeSettings) -> Self {
        let sizes = &time.window_sizes_ms;
        Commerce {
            orders: OrdersOperator::new(partition, sizes, time.lateness.of(ORDERS)),
            fulfillment: FulfillmentOperator::new(partition, sizes, time.lateness.of(FULFILLMENT)),
            book: OrderBook::new(partition, time.retention),
            logistics_gate: LatenessGate::new(time.base_window_ms(), time.lateness.of(FULFILLMENT)),
            orders_watermark: None,
            swept_at: None,
            base_window_ms: time.base_window_ms(),
        }
    }

    fn restored(&mut self) {
        self.book.rebuild_index();
    }
}

impl super::Operator for Commerce {
    fn record(&mut self, event: &Event, out: &mut TaskOutput) {
        match event {
            Event::Order(order) => {
                let result = self.record_order(order, out);
                out.late_for(ORDERS, event, result);
            }
            Event::Shipment(scan) => {
                let result = self.record_scan(scan, out);
                out.late_for(FULFILLMENT, event, result);
            }
            Event::Click(_) => {}
        }
    }

    fn on_watermark(&mut self, clocks: &super::Clocks, out: &mut TaskOutput) {
        if let Some(w) = clocks.watermark(Stream::Orders) {
            self.orders_watermark = Some(w);
            out.rows.extend(self.orders.advance_to(w));
        }
        if let Some(w) = clocks.watermark(Stream::Logistics) {
            self.logistics_gate.advance(w);
        }
        let Some(joint) = clocks.joint() else { return };
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
            out.rows.extend(facts);
            out.rows.extend(orphans);
        }
    }

    fn close_all(&mut self, clocks: &super::Clocks, out: &mut TaskOutput) {
        out.rows.extend(self.orders.close_all());
        let closed = self.fulfillment.close_all();
        self.fulfillment_rows(closed, out);
        let watermark = clocks.joint().or(clocks.watermark(Stream::Orders)).unwrap_or_default();
        let (facts, orphans) = self.book.drain(watermark);
        out.rows.extend(facts);
        out.rows.extend(orphans);
    }

    fn report(&self, clocks: &super::Clocks, report: &mut StateReport) {
        report.open_orders += self.book.open_orders();
        if let (true, Some(at)) = (report.wants_backlog(), clocks.joint()) {
            let by_warehouse = self
                .book
                .backlog_at(at)
                .into_iter()
                .map(|(w, b)| (self.book.symbols.name(w).unwrap_or("unknown").to_owned(), b))
                .collect();
            report.backlog = Some((at, by_warehouse));
        }
    }
}

impl Commerce {
    fn record_order(&mut self, e: &OrderEvent, out: &mut TaskOutput) -> Result<(), Late> {
        let update = self.book.apply_order(e, self.counts_from(self.orders_watermark));
        for sample in &update.resolved {
            self.join(sample, out);
        }
        self.orders.record(e, update.created_at)?;
        // Opens the fulfillment window too, so that its backlog row is written even when no parcel
        // moves (a stalled warehouse). Only while the orders partition has not passed it: then
        // the window is surely still open, and whether it gets a row does not depend on the
        // logistics partition's progress.
        if self.counts_from(self.orders_watermark) < self.fulfillment_window_end(e.event_time) {
            let _ = self.fulfillment.touch(e.event_time);
        }
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
        let counts_from = self.counts_from(self.logistics_gate.watermark());
        let update = self.book.apply_scan(e, on_time.is_ok(), counts_from);
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

    /// The earliest fulfillment window end an event can still change when its partition's
    /// watermark is `watermark`: windows ending earlier are closed as far as that partition
    /// is concerned, whether or not the other partition has closed them yet.
    fn counts_from(&self, watermark: Option<i64>) -> i64 {
        watermark.map_or(i64::MIN, |w| w - self.logistics_gate.lateness_ms())
    }

    /// End of the base fulfillment window holding `t`.
    fn fulfillment_window_end(&self, t: i64) -> i64 {
        window_start(t, self.base_window_ms) + self.base_window_ms
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

    fn fulfillment_rows(&self, closed: Vec<ClosedFulfillment>, out: &mut TaskOutput) {
        for window in closed {
            let backlog = self.book.backlog_at(window.end());
            out.rows.extend(self.fulfillment.rows(window, &backlog, &self.book.symbols));
        }
    }
}
