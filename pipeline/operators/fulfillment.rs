//! Fulfillment per window × carrier × warehouse, with exact `all` rows: shipments picked up
//! (揽收), delivered (签收), failed attempts, exceptions, returns; on-time shipment and delivery
//! against the order's promises; paid-to-pickup and pickup-to-delivery latency sketches; and,
//! on `carrier = all` rows, the backlog at the window's end.
//!
//! Carriers and warehouses are interned symbols of the partition's [`OrderBook`] while windows
//! are open and names once they close.
//!
//! [`OrderBook`]: super::lifecycle::OrderBook

use super::latency::{LatencySketch, latency_columns};
use super::lifecycle::{Backlog, JoinSample, NO_SYMBOL, Symbols};
use crate::event::ShipmentStatus;
use crate::labels::{value_or_total, window_label};
use crate::table::columns::{count, flags, int32, int64, optional_int64, text, utc_millis};
use crate::table::{Progress, TableRow, windows_complete_through};
use crate::time::{ClosedWindow, Late, TumblingWindows};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::ArrowError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Fulfillment figures of one window and group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FulfillmentCounts {
    /// Orders picked up by the carrier (first `picked_up` scan of each order).
    pub picked_up: u64,
    /// Orders delivered (first `delivered` scan).
    pub delivered: u64,
    /// `failed_attempt` scans.
    pub failed_attempts: u64,
    /// `exception` scans.
    pub exceptions: u64,
    /// Orders returned to the merchant (first `returned` scan).
    pub returns: u64,
    /// Pickups of paid orders with a `promised_ship_by`: the on-time shipment denominator.
    pub ship_promised: u64,
    /// Of those, picked up at or before the promise.
    pub shipped_on_time: u64,
    /// Deliveries of paid orders with a `promised_deliver_by`: the on-time delivery denominator.
    pub deliver_promised: u64,
    /// Of those, delivered at or before the promise.
    pub delivered_on_time: u64,
    /// Payment to pickup, per pickup of a paid order.
    pub paid_to_pickup: LatencySketch,
    /// Pickup to delivery, per delivery after a known pickup.
    pub pickup_to_delivery: LatencySketch,
}

impl FulfillmentCounts {
    /// Adds another partition's figures of the same window and group.
    pub fn add(&mut self, other: &FulfillmentCounts) {
        self.picked_up += other.picked_up;
        self.delivered += other.delivered;
        self.failed_attempts += other.failed_attempts;
        self.exceptions += other.exceptions;
        self.returns += other.returns;
        self.ship_promised += other.ship_promised;
        self.shipped_on_time += other.shipped_on_time;
        self.deliver_promised += other.deliver_promised;
        self.delivered_on_time += other.delivered_on_time;
        self.paid_to_pickup.merge(&other.paid_to_pickup);
        self.pickup_to_delivery.merge(&other.pickup_to_delivery);
    }

    fn count_scan(&mut self, status: ShipmentStatus) {
        match status {
            ShipmentStatus::PickedUp => self.picked_up += 1,
            ShipmentStatus::Delivered => self.delivered += 1,
            ShipmentStatus::FailedAttempt => self.failed_attempts += 1,
            ShipmentStatus::Exception => self.exceptions += 1,
            ShipmentStatus::Returned => self.returns += 1,
            _ => {}
        }
    }

    fn count_join(&mut self, sample: &JoinSample) {
        match *sample {
            JoinSample::Pickup { paid_to_pickup_ms, on_time, .. } => {
                self.paid_to_pickup.record(paid_to_pickup_ms);
                if let Some(on_time) = on_time {
                    self.ship_promised += 1;
                    self.shipped_on_time += u64::from(on_time);
                }
            }
            JoinSample::Delivery { on_time, .. } => {
                if let Some(on_time) = on_time {
                    self.deliver_promised += 1;
                    self.delivered_on_time += u64::from(on_time);
                }
            }
        }
    }
}

/// One closed window of one partition, carrier (or all) and warehouse (or all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FulfillmentRow {
    /// Window size, ms.
    pub window_ms: i64,
    /// Window start, UTC ms.
    pub window_start: i64,
    /// Source partition (of both `orders` and `logistics`).
    pub partition: i32,
    /// Carrier code; `None` = all carriers.
    pub carrier: Option<String>,
    /// Warehouse code; `None` = all warehouses.
    pub warehouse: Option<String>,
    /// The figures.
    pub counts: FulfillmentCounts,
    /// Backlog at the window's end (on `carrier = all` rows only).
    pub backlog: Option<Backlog>,
    /// Closed early by the end of a bounded input (a drain), before the watermark passed its
    /// end: its figures may be short of what the window would have held.
    pub partial: bool,
}

impl TableRow for FulfillmentRow {
    const TABLE: &'static str = "fulfillment";
    const PARTITION_BY: &'static str = "window_start";
    fn partition_time(&self) -> i64 {
        self.window_start
    }
    fn complete_through(progress: &Progress<'_>) -> Option<i64> {
        let lateness = progress.time.lateness.of(super::FULFILLMENT);
        progress.low_watermark.map(|w| windows_complete_through(w, &progress.time.window_sizes_ms, lateness))
    }
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError> {
        let counted = |f: fn(&FulfillmentRow) -> u64| int64(rows.iter().map(move |r| count(f(r))));
        let backlog =
            |f: fn(&Backlog) -> u64| optional_int64(rows.iter().map(move |r| r.backlog.as_ref().map(|b| count(f(b)))));
        let mut columns: Vec<(String, ArrayRef)> = [
            ("window_size", text(rows.iter().map(|r| window_label(r.window_ms)))),
            ("window_start", utc_millis(rows.iter().map(|r| r.window_start))),
            ("window_end", utc_millis(rows.iter().map(FulfillmentRow::window_end))),
            ("source_partition", int32(rows.iter().map(|r| r.partition))),
            ("carrier", text(rows.iter().map(|r| value_or_total(r.carrier.as_deref())))),
            ("warehouse", text(rows.iter().map(|r| value_or_total(r.warehouse.as_deref())))),
            ("picked_up", counted(|r| r.counts.picked_up)),
            ("delivered", counted(|r| r.counts.delivered)),
            ("failed_attempts", counted(|r| r.counts.failed_attempts)),
            ("exceptions", counted(|r| r.counts.exceptions)),
            ("returns", counted(|r| r.counts.returns)),
            ("ship_promised", counted(|r| r.counts.ship_promised)),
            ("shipped_on_time", counted(|r| r.counts.shipped_on_time)),
            ("deliver_promised", counted(|r| r.counts.deliver_promised)),
            ("delivered_on_time", counted(|r| r.counts.delivered_on_time)),
            ("backlog_orders", backlog(|b| b.orders)),
            ("backlog_past_ship_by", backlog(|b| b.past_ship_by)),
            (
                "oldest_unshipped_age_ms",
                optional_int64(
                    rows.iter()
                        .map(|r| r.backlog.as_ref().and_then(|b| b.oldest_paid_at).map(|paid| r.window_end() - paid)),
                ),
            ),
        ]
        .into_iter()
        .map(|(name, column)| (name.to_owned(), column))
        .collect();
        columns.extend(latency_columns(rows, "paid_to_pickup", |r| &r.counts.paid_to_pickup));
        columns.extend(latency_columns(rows, "pickup_to_delivery", |r| &r.counts.pickup_to_delivery));
        columns.push(("partial".into(), flags(rows.iter().map(|r| r.partial))));
        RecordBatch::try_from_iter(columns)
    }
}

impl FulfillmentRow {
    /// Window end (exclusive), UTC ms.
    pub fn window_end(&self) -> i64 {
        self.window_start + self.window_ms
    }
}

/// Group key: (carrier, warehouse) symbols, [`NO_SYMBOL`] standing for `all`.
type Group = (u16, u16);
type WindowState = BTreeMap<Group, FulfillmentCounts>;

fn groups(carrier: u16, warehouse: u16) -> [Group; 4] {
    [(carrier, warehouse), (carrier, NO_SYMBOL), (NO_SYMBOL, warehouse), (NO_SYMBOL, NO_SYMBOL)]
}

/// Per-partition fulfillment windows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FulfillmentOperator {
    partition: i32,
    windows: TumblingWindows<WindowState>,
}

/// A closed window, before backlog and names are attached; with whether it closed early.
pub struct ClosedFulfillment(ClosedWindow<WindowState>, bool);

impl ClosedFulfillment {
    /// The window's end, UTC ms: the backlog is evaluated there.
    pub fn end(&self) -> i64 {
        self.0.start + self.0.size_ms
    }
}

impl FulfillmentOperator {
    /// State for partition `partition`, windows of each of `sizes_ms`.
    pub fn new(partition: i32, sizes_ms: &[i64], lateness_ms: i64) -> Self {
        FulfillmentOperator { partition, windows: TumblingWindows::new(sizes_ms, lateness_ms) }
    }

    /// Counts a scan of `status` at `t`.
    ///
    /// # Errors
    /// [`Late`] when the window has closed.
    pub fn record_scan(&mut self, t: i64, carrier: u16, warehouse: u16, status: ShipmentStatus) -> Result<(), Late> {
        self.windows.record(t, |w| {
            for g in groups(carrier, warehouse) {
                w.entry(g).or_default().count_scan(status);
            }
        })
    }

    /// Opens the windows containing `t` without counting anything: every window with order or
    /// shipment activity gets rows, and with them its backlog.
    ///
    /// # Errors
    /// [`Late`] when the window has closed.
    pub fn touch(&mut self, t: i64) -> Result<(), Late> {
        self.windows.record(t, |_| {})
    }

    /// Adds a pickup-to-delivery duration to the window of the delivery at `t`.
    ///
    /// # Errors
    /// [`Late`] when the window has closed.
    pub fn record_transit(&mut self, t: i64, carrier: u16, warehouse: u16, ms: i64) -> Result<(), Late> {
        self.windows.record(t, |w| {
            for g in groups(carrier, warehouse) {
                w.entry(g).or_default().pickup_to_delivery.record(ms);
            }
        })
    }

    /// Adds a join figure to the window of its scan.
    ///
    /// # Errors
    /// [`Late`] when that window has closed (the order arrived after it did).
    pub fn record_join(&mut self, sample: &JoinSample) -> Result<(), Late> {
        let (JoinSample::Pickup { at, carrier, warehouse, .. } | JoinSample::Delivery { at, carrier, warehouse, .. }) =
            *sample;
        self.windows.record(at, |w| {
            for g in groups(carrier, warehouse) {
                w.entry(g).or_default().count_join(sample);
            }
        })
    }

    /// Closes windows the watermark has passed; attach backlog and names with [`Self::rows`].
    pub fn advance_to(&mut self, watermark: i64) -> Vec<ClosedFulfillment> {
        self.windows.advance(watermark).into_iter().map(|w| ClosedFulfillment(w, false)).collect()
    }

    /// Closes every window (end of a bounded input).
    pub fn close_all(&mut self) -> Vec<ClosedFulfillment> {
        self.windows.close_all().into_iter().map(|w| ClosedFulfillment(w, true)).collect()
    }

    /// Rows of a closed window: one per group, plus a `carrier = all` row for every warehouse
    /// with a backlog, which carries it.
    pub fn rows(
        &self,
        closed: ClosedFulfillment,
        backlog: &BTreeMap<u16, Backlog>,
        symbols: &Symbols,
    ) -> Vec<FulfillmentRow> {
        let (ClosedWindow { start, size_ms, mut state }, partial) = (closed.0, closed.1);
        let mut total = Backlog::default();
        for (warehouse, b) in backlog {
            total.add(b);
            state.entry((NO_SYMBOL, *warehouse)).or_default();
        }
        state.entry((NO_SYMBOL, NO_SYMBOL)).or_default();
        let name = |id: u16| (id != NO_SYMBOL).then(|| symbols.name(id).unwrap_or("unknown").to_owned());
        state
            .into_iter()
            .map(|((carrier, warehouse), counts)| FulfillmentRow {
                window_ms: size_ms,
                window_start: start,
                partition: self.partition,
                carrier: name(carrier),
                warehouse: name(warehouse),
                counts,
                backlog: (carrier == NO_SYMBOL).then(|| {
                    if warehouse == NO_SYMBOL { total } else { backlog.get(&warehouse).copied().unwrap_or_default() }
                }),
                partial,
            })
            .collect()
    }
}
