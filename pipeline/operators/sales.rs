//! Sales per window × channel × currency: paid orders and paid amount (GMV paid), in integer
//! minor units. Orders are keyed by order_id, so each order's events live in one partition.

use crate::event::{Channel, OrderEvent, OrderEventType};
use crate::time::{ClosedWindow, Late, TumblingWindows};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One closed window of one partition, channel and currency.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SalesRow {
    /// Window size, ms.
    pub window_ms: i64,
    /// Window start, UTC ms.
    pub window_start: i64,
    /// Source partition of the orders topic.
    pub partition: i32,
    /// Channel the orders are attributed to.
    pub channel: Channel,
    /// ISO 4217 currency of `paid_amount_minor`.
    pub currency: String,
    /// Orders whose `paid` event falls in the window.
    pub orders_paid: u64,
    /// Sum of `paid_amount_minor` of those orders.
    pub paid_amount_minor: i64,
}

impl SalesRow {
    /// Window end (exclusive), UTC ms.
    pub fn window_end(&self) -> i64 {
        self.window_start + self.window_ms
    }
}

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
struct PaidTotals {
    orders: u64,
    amount_minor: i64,
}

type WindowState = BTreeMap<(Channel, String), PaidTotals>;

/// Per-partition sales state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SalesOperator {
    partition: i32,
    windows: TumblingWindows<WindowState>,
}

impl SalesOperator {
    /// State for orders partition `partition`, windows of each of `sizes_ms`.
    pub fn new(partition: i32, sizes_ms: &[i64], lateness_ms: i64) -> Self {
        SalesOperator { partition, windows: TumblingWindows::new(sizes_ms, lateness_ms) }
    }

    /// Counts one order event into its window (only `paid` events contribute here).
    ///
    /// # Errors
    /// [`Late`] when the event's window has already closed.
    pub fn record(&mut self, event: &OrderEvent) -> Result<(), Late> {
        let paid = event.event_type == OrderEventType::Paid;
        self.windows.record(event.event_time, |window| {
            if paid {
                let totals = window.entry((event.channel, event.currency.clone())).or_default();
                totals.orders += 1;
                totals.amount_minor = totals.amount_minor.saturating_add(event.paid_amount_minor);
            }
        })
    }

    /// Closes windows the watermark has passed.
    pub fn advance_to(&mut self, watermark: i64) -> Vec<SalesRow> {
        let closed = self.windows.advance(watermark);
        self.rows(closed)
    }

    /// Closes every window (end of a bounded input).
    pub fn close_all(&mut self) -> Vec<SalesRow> {
        let closed = self.windows.close_all();
        self.rows(closed)
    }

    fn rows(&self, closed: Vec<ClosedWindow<WindowState>>) -> Vec<SalesRow> {
        closed
            .into_iter()
            .flat_map(|window| {
                window.state.into_iter().map(move |((channel, currency), t)| SalesRow {
                    window_ms: window.size_ms,
                    window_start: window.start,
                    partition: self.partition,
                    channel,
                    currency,
                    orders_paid: t.orders,
                    paid_amount_minor: t.amount_minor,
                })
            })
            .collect()
    }
}
