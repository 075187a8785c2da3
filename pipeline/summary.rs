//! Instance-wide summaries of closed windows: per-partition rows are added up per window and
//! released once the instance's low watermark has passed the window, so that gauges and the
//! demo's progress lines never show a window that some partition has not finished.

use crate::event::Channel;
use crate::operators::{FunnelRow, SalesRow};
use std::collections::BTreeMap;

/// Totals of one window across this instance's partitions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowSummary {
    /// Window start, UTC ms.
    pub window_start: i64,
    /// Window end, UTC ms.
    pub window_end: i64,
    /// Visitors and purchasing visitors by channel (`None` = exact all-channels count).
    pub traffic: BTreeMap<Option<Channel>, (u64, u64)>,
    /// Paid orders and paid amount (minor units) by channel and currency.
    pub sales: BTreeMap<(Channel, String), (u64, i64)>,
}

impl WindowSummary {
    /// All-channel visitors and purchasing visitors.
    pub fn all_traffic(&self) -> (u64, u64) {
        self.traffic.get(&None).copied().unwrap_or_default()
    }

    /// Paid orders and paid amount per currency, all channels.
    pub fn sales_by_currency(&self) -> BTreeMap<&str, (u64, i64)> {
        let mut out: BTreeMap<&str, (u64, i64)> = BTreeMap::new();
        for ((_, currency), (orders, amount)) in &self.sales {
            let e = out.entry(currency.as_str()).or_default();
            e.0 += orders;
            e.1 += amount;
        }
        out
    }
}

/// Pending window summaries, keyed by window start.
#[derive(Debug, Default)]
pub struct SummaryBoard {
    pending: BTreeMap<i64, WindowSummary>,
    /// End of the latest released window; rows for earlier windows (a partition that was idle
    /// and resumed) are in Parquet but do not move the gauges backwards.
    released_through: Option<i64>,
}

impl SummaryBoard {
    fn already_released(&self, window_end: i64) -> bool {
        self.released_through.is_some_and(|r| window_end <= r)
    }

    fn window(&mut self, start: i64, end: i64) -> &mut WindowSummary {
        self.pending.entry(start).or_insert_with(|| WindowSummary {
            window_start: start,
            window_end: end,
            ..Default::default()
        })
    }

    /// Adds closed funnel rows of one partition.
    pub fn add_funnel(&mut self, rows: &[FunnelRow]) {
        for r in rows.iter().filter(|r| !self.already_released(r.window_end)).collect::<Vec<_>>() {
            let t = self.window(r.window_start, r.window_end).traffic.entry(r.channel).or_default();
            t.0 += r.visitors;
            t.1 += r.purchasing_visitors;
        }
    }

    /// Adds closed sales rows of one partition.
    pub fn add_sales(&mut self, rows: &[SalesRow]) {
        for r in rows.iter().filter(|r| !self.already_released(r.window_end)).collect::<Vec<_>>() {
            let s = self.window(r.window_start, r.window_end).sales.entry((r.channel, r.currency.clone())).or_default();
            s.0 += r.orders_paid;
            s.1 += r.paid_amount_minor;
        }
    }

    /// Releases, in order, every window whose end is at or before `through`.
    pub fn release_through(&mut self, through: i64) -> Vec<WindowSummary> {
        let mut out = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            if entry.get().window_end > through {
                break;
            }
            let summary = entry.remove();
            self.released_through = Some(summary.window_end);
            out.push(summary);
        }
        out
    }

    /// Releases every pending window.
    pub fn release_all(&mut self) -> Vec<WindowSummary> {
        let all: Vec<WindowSummary> = std::mem::take(&mut self.pending).into_values().collect();
        if let Some(last) = all.last() {
            self.released_through = Some(last.window_end);
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_partitions_and_releases_only_passed_windows() {
        let mut board = SummaryBoard::default();
        let row = |start: i64, partition, visitors| FunnelRow {
            window_start: start,
            window_end: start + 60_000,
            partition,
            channel: None,
            visitors,
            purchasing_visitors: 1,
        };
        board.add_funnel(&[row(0, 0, 5), row(0, 1, 7), row(60_000, 0, 1)]);
        let released = board.release_through(60_000);
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].all_traffic(), (12, 2));
        board.add_funnel(&[row(0, 2, 3)]);
        assert_eq!(board.release_all().len(), 1, "a released window is not published twice");
    }
}
