//! Instance-wide summaries of closed windows: per-partition rows are added up per window and
//! released once the instance's low watermark has passed the window, so that gauges and the
//! demo's progress lines never show a window that some partition has not finished.

use crate::event::{Channel, Device};
use crate::operators::{FulfillmentCounts, FulfillmentRow, FunnelCounts, FunnelRow, OrderCounts, OrdersRow, Step};
use std::collections::BTreeMap;

/// Totals of one window across this instance's partitions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowSummary {
    /// Window size, ms.
    pub window_ms: i64,
    /// Window start, UTC ms.
    pub window_start: i64,
    /// Funnel counts by channel and device (`None` = exact all-channels / all-devices count).
    pub traffic: BTreeMap<(Option<Channel>, Option<Device>), FunnelCounts>,
    /// Order figures by channel (`None` = all channels) and currency; paying buyers are
    /// distinct across this instance's partitions.
    pub orders: BTreeMap<(Option<Channel>, String), OrderCounts>,
    /// Fulfillment figures by carrier and warehouse (`None` = all).
    pub fulfillment: BTreeMap<(Option<String>, Option<String>), FulfillmentCounts>,
}

impl WindowSummary {
    /// Window end, UTC ms.
    pub fn window_end(&self) -> i64 {
        self.window_start + self.window_ms
    }

    /// All-channel, all-device visitors and purchasing visitors.
    pub fn all_traffic(&self) -> (u64, u64) {
        self.traffic.get(&(None, None)).map_or((0, 0), |c| (c.visitors, c.visitors_at(Step::Purchase)))
    }

    /// Paid orders and paid amount per currency, all channels.
    pub fn sales_by_currency(&self) -> BTreeMap<&str, (u64, i128)> {
        self.orders
            .iter()
            .filter(|((channel, _), _)| channel.is_none())
            .map(|((_, currency), c)| (currency.as_str(), (c.paid, c.paid_amount_minor)))
            .collect()
    }
}

/// Pending window summaries, keyed by (end, size) so they release in end order.
#[derive(Debug, Default)]
pub struct SummaryBoard {
    pending: BTreeMap<(i64, i64), WindowSummary>,
    /// Per size, end of the latest released window; rows for earlier windows (a partition that
    /// was idle and resumed) are in Parquet but do not move the gauges backwards.
    released_through: BTreeMap<i64, i64>,
}

impl SummaryBoard {
    fn window(&mut self, window_ms: i64, start: i64) -> Option<&mut WindowSummary> {
        let end = start + window_ms;
        if self.released_through.get(&window_ms).is_some_and(|r| end <= *r) {
            return None;
        }
        Some(self.pending.entry((end, window_ms)).or_insert_with(|| WindowSummary {
            window_ms,
            window_start: start,
            ..Default::default()
        }))
    }

    /// Adds closed funnel rows of one partition.
    pub fn add_funnel(&mut self, rows: &[FunnelRow]) {
        for r in rows {
            if let Some(w) = self.window(r.window_ms, r.window_start) {
                w.traffic.entry((r.channel, r.device)).or_default().add(&r.counts);
            }
        }
    }

    /// Adds closed order rows of one partition.
    pub fn add_orders(&mut self, rows: &[OrdersRow]) {
        for r in rows {
            if let Some(w) = self.window(r.window_ms, r.window_start) {
                w.orders.entry((r.channel, r.currency.clone())).or_default().add(&r.counts);
            }
        }
    }

    /// Adds closed fulfillment rows of one partition.
    pub fn add_fulfillment(&mut self, rows: &[FulfillmentRow]) {
        for r in rows {
            if let Some(w) = self.window(r.window_ms, r.window_start) {
                w.fulfillment.entry((r.carrier.clone(), r.warehouse.clone())).or_default().add(&r.counts);
            }
        }
    }

    /// Releases, in end order, every window whose end is at or before `through`.
    pub fn release_through(&mut self, through: i64) -> Vec<WindowSummary> {
        let mut out = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            if entry.key().0 > through {
                break;
            }
            out.push(entry.remove());
        }
        self.mark_released(&out);
        out
    }

    /// Releases every pending window.
    pub fn release_all(&mut self) -> Vec<WindowSummary> {
        let all: Vec<WindowSummary> = std::mem::take(&mut self.pending).into_values().collect();
        self.mark_released(&all);
        all
    }

    fn mark_released(&mut self, released: &[WindowSummary]) {
        for w in released {
            self.released_through.insert(w.window_ms, w.window_end());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_partitions_and_releases_only_passed_windows() {
        let mut board = SummaryBoard::default();
        let row = |start: i64, partition, visitors| FunnelRow {
            window_ms: 60_000,
            window_start: start,
            partition,
            channel: None,
            device: None,
            counts: FunnelCounts { visitors, step_visitors: [0, 0, 0, 1], ..Default::default() },
            partial: false,
        };
        board.add_funnel(&[row(0, 0, 5), row(0, 1, 7), row(60_000, 0, 1)]);
        let released = board.release_through(60_000);
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].all_traffic(), (12, 2));
        board.add_funnel(&[row(0, 2, 3)]);
        assert_eq!(board.release_all().len(), 1, "a released window is not published twice");
    }
}
