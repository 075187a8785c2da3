//! Orders per window × channel × currency, with an exact all-channels row: created, paid, paid
//! amount (GMV paid), paying buyers, units, cancellations, refunds and created-to-paid latency.
//! Money stays in integer minor units. Orders are keyed by order_id, so each order's events live
//! in one partition; a buyer is distinct within a partition (see `docs/tables.md`).

use super::latency::{LatencySketch, latency_columns};
use crate::event::{Channel, OrderEvent, OrderEventType};
use crate::labels::{channel_label, window_label};
use crate::table::columns::{count, flags, int32, int64, optional_int64, text, utc_millis};
use crate::table::{Progress, TableRow, windows_complete_through};
use crate::time::{ClosedWindow, Late, TumblingWindows};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::ArrowError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Order figures of one window and group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCounts {
    /// `created` events.
    pub created: u64,
    /// `paid` events.
    pub paid: u64,
    /// Sum of `paid_amount_minor` of `paid` events; 128 bits, so no window's sum can wrap.
    pub paid_amount_minor: i128,
    /// Units (item quantities) of `paid` events.
    pub units: u64,
    /// `cancelled` events.
    pub cancellations: u64,
    /// `refunded` events.
    pub refunds: u64,
    /// Sum of `refund_amount_minor` of `refunded` events, in 128 bits.
    pub refund_amount_minor: i128,
    /// Created-to-paid durations of paid orders whose `created` event came first.
    pub created_to_paid: LatencySketch,
    /// Distinct buyers (user_id, else visitor_id, else the order) with a `paid` event.
    buyers: BTreeSet<Box<str>>,
}

impl OrderCounts {
    /// Distinct paying buyers.
    pub fn paying_buyers(&self) -> u64 {
        self.buyers.len() as u64
    }

    /// Adds another partition's figures of the same window and group; buyers stay distinct.
    pub fn add(&mut self, other: &OrderCounts) {
        self.created += other.created;
        self.paid += other.paid;
        self.paid_amount_minor += other.paid_amount_minor;
        self.units += other.units;
        self.cancellations += other.cancellations;
        self.refunds += other.refunds;
        self.refund_amount_minor += other.refund_amount_minor;
        self.created_to_paid.merge(&other.created_to_paid);
        self.buyers.extend(other.buyers.iter().cloned());
    }

    fn record(&mut self, e: &OrderEvent, created_at: Option<i64>) {
        match e.event_type {
            OrderEventType::Created => self.created += 1,
            OrderEventType::Paid => {
                self.paid += 1;
                self.paid_amount_minor += i128::from(e.paid_amount_minor);
                self.units += e.items.iter().map(|i| i.quantity.max(0) as u64).sum::<u64>();
                let buyer = e.user_id.as_deref().or(e.visitor_id.as_deref()).unwrap_or(&e.order_id);
                if !self.buyers.contains(buyer) {
                    self.buyers.insert(buyer.into());
                }
                if let Some(created_at) = created_at {
                    self.created_to_paid.record(e.event_time - created_at);
                }
            }
            OrderEventType::Cancelled => self.cancellations += 1,
            OrderEventType::Refunded => {
                self.refunds += 1;
                self.refund_amount_minor += i128::from(e.refund_amount_minor.unwrap_or(0));
            }
            OrderEventType::Unknown => {}
        }
    }
}

/// A window's sum as the table's 64-bit column: empty (null) rather than wrong if the sum
/// left 64 bits, which takes nine million orders of the largest plausible amount.
fn money_column(sum_minor: i128) -> Option<i64> {
    i64::try_from(sum_minor).ok()
}

/// One closed window of one partition, channel (or all) and currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrdersRow {
    /// Window size, ms.
    pub window_ms: i64,
    /// Window start, UTC ms.
    pub window_start: i64,
    /// Source partition of the orders topic.
    pub partition: i32,
    /// Channel the orders are attributed to; `None` = all channels.
    pub channel: Option<Channel>,
    /// ISO 4217 currency of the money columns.
    pub currency: String,
    /// The figures.
    pub counts: OrderCounts,
    /// Closed early by the end of a bounded input (a drain), before the watermark passed its
    /// end: its figures may be short of what the window would have held.
    pub partial: bool,
}

impl TableRow for OrdersRow {
    const TABLE: &'static str = "orders";
    const PARTITION_BY: &'static str = "window_start";
    fn partition_time(&self) -> i64 {
        self.window_start
    }
    fn complete_through(progress: &Progress<'_>) -> Option<i64> {
        let lateness = progress.time.lateness.of(super::ORDERS);
        progress.low_watermark.map(|w| windows_complete_through(w, &progress.time.window_sizes_ms, lateness))
    }
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError> {
        let mut columns: Vec<(String, ArrayRef)> = [
            ("window_size", text(rows.iter().map(|r| window_label(r.window_ms)))),
            ("window_start", utc_millis(rows.iter().map(|r| r.window_start))),
            ("window_end", utc_millis(rows.iter().map(OrdersRow::window_end))),
            ("source_partition", int32(rows.iter().map(|r| r.partition))),
            ("channel", text(rows.iter().map(|r| channel_label(r.channel)))),
            ("currency", text(rows.iter().map(|r| r.currency.as_str()))),
            ("orders_created", int64(rows.iter().map(|r| count(r.counts.created)))),
            ("orders_paid", int64(rows.iter().map(|r| count(r.counts.paid)))),
            ("paid_amount_minor", optional_int64(rows.iter().map(|r| money_column(r.counts.paid_amount_minor)))),
            ("paying_buyers", int64(rows.iter().map(|r| count(r.counts.paying_buyers())))),
            ("units", int64(rows.iter().map(|r| count(r.counts.units)))),
            ("cancellations", int64(rows.iter().map(|r| count(r.counts.cancellations)))),
            ("refunds", int64(rows.iter().map(|r| count(r.counts.refunds)))),
            ("refund_amount_minor", optional_int64(rows.iter().map(|r| money_column(r.counts.refund_amount_minor)))),
        ]
        .into_iter()
        .map(|(name, column)| (name.to_owned(), column))
        .collect();
        columns.extend(latency_columns(rows, "created_to_paid", |r| &r.counts.created_to_paid));
        columns.push(("partial".into(), flags(rows.iter().map(|r| r.partial))));
        RecordBatch::try_from_iter(columns)
    }
}

impl OrdersRow {
    /// Window end (exclusive), UTC ms.
    pub fn window_end(&self) -> i64 {
        self.window_start + self.window_ms
    }
}

type WindowState = BTreeMap<(Option<Channel>, Box<str>), OrderCounts>;

/// Per-partition order windows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrdersOperator {
    partition: i32,
    windows: TumblingWindows<WindowState>,
}

impl OrdersOperator {
    /// State for orders partition `partition`, windows of each of `sizes_ms`.
    pub fn new(partition: i32, sizes_ms: &[i64], lateness_ms: i64) -> Self {
        OrdersOperator { partition, windows: TumblingWindows::new(sizes_ms, lateness_ms) }
    }

    /// The orders partition it counts.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Counts one order event into its windows; `created_at` is the order's creation time when
    /// it was known before this (`paid`) event.
    ///
    /// # Errors
    /// [`Late`] when the event's window has already closed.
    pub fn record(&mut self, e: &OrderEvent, created_at: Option<i64>) -> Result<(), Late> {
        self.windows.record(e.event_time, |window| {
            for channel in [Some(e.channel), None] {
                // Found without building a key: an empty `Box<str>` does not allocate, and it
                // sorts first among the channel's currencies.
                let found = window
                    .range_mut((channel, Box::<str>::default())..)
                    .take_while(|((c, _), _)| *c == channel)
                    .find(|((_, currency), _)| **currency == *e.currency);
                match found {
                    Some((_, counts)) => counts.record(e, created_at),
                    None => {
                        let mut counts = OrderCounts::default();
                        counts.record(e, created_at);
                        window.insert((channel, e.currency.as_str().into()), counts);
                    }
                }
            }
        })
    }

    /// Closes windows the watermark has passed.
    pub fn advance_to(&mut self, watermark: i64) -> Vec<OrdersRow> {
        let closed = self.windows.advance(watermark);
        self.rows(closed, false)
    }

    /// Closes every window (end of a bounded input).
    pub fn close_all(&mut self) -> Vec<OrdersRow> {
        let closed = self.windows.close_all();
        self.rows(closed, true)
    }

    fn rows(&self, closed: Vec<ClosedWindow<WindowState>>, partial: bool) -> Vec<OrdersRow> {
        closed
            .into_iter()
            .flat_map(|window| {
                window.state.into_iter().map(move |((channel, currency), counts)| OrdersRow {
                    window_ms: window.size_ms,
                    window_start: window.start,
                    partition: self.partition,
                    channel,
                    currency: currency.into(),
                    counts,
                    partial,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::fixtures::order;
    #[test]
    fn counts_lifecycle_steps_buyers_and_latency_with_an_all_channels_row() {
        let mut op = OrdersOperator::new(3, &[60_000], 0);
        op.record(&order(OrderEventType::Created, 1_000, "o1", "u1"), None).expect("on time");
        op.record(&order(OrderEventType::Paid, 5_000, "o1", "u1"), Some(1_000)).expect("on time");
        op.record(&order(OrderEventType::Paid, 6_000, "o2", "u1"), None).expect("on time");
        op.record(&order(OrderEventType::Cancelled, 7_000, "o3", "u2"), None).expect("on time");
        op.record(&order(OrderEventType::Refunded, 8_000, "o4", "u3"), None).expect("on time");
        let rows = op.advance_to(60_000);
        assert_eq!(rows.len(), 2);
        for row in &rows {
            let c = &row.counts;
            assert_eq!((c.created, c.paid, c.paid_amount_minor, c.units), (1, 2, 20_000, 6));
            assert_eq!(c.paying_buyers(), 1, "two orders of one buyer");
            assert_eq!((c.cancellations, c.refunds, c.refund_amount_minor), (1, 1, 2_500));
            assert_eq!((c.created_to_paid.count(), c.created_to_paid.sum_ms()), (1, 4_000));
        }
        assert_eq!(rows.iter().map(|r| r.channel).collect::<Vec<_>>(), [None, Some(Channel::LiveStream)]);
    }
}
