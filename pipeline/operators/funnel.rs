//! Traffic per window × channel: visitors (distinct visitor_id with any event) and purchasing
//! visitors (distinct visitor_id with a purchase). Clickstream is keyed by visitor_id, so a
//! visitor lives in one partition and per-partition counts add up exactly across partitions.

use crate::event::{Channel, ClickEvent, ClickEventType};
use crate::time::{Late, TumblingWindows};
use std::collections::{HashMap, HashSet};

/// One closed window of one partition and channel.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FunnelRow {
    /// Window start, UTC ms.
    pub window_start: i64,
    /// Window end (exclusive), UTC ms.
    pub window_end: i64,
    /// Source partition of the clickstream topic.
    pub partition: i32,
    /// Channel; `None` is the exact all-channels row (distinct visitors across channels).
    pub channel: Option<Channel>,
    /// Distinct visitors with any event.
    pub visitors: u64,
    /// Distinct visitors with a purchase.
    pub purchasing_visitors: u64,
}

#[derive(Debug, Default)]
struct VisitorSets {
    visitors: HashSet<Box<str>>,
    purchasers: HashSet<Box<str>>,
}

type WindowState = HashMap<Option<Channel>, VisitorSets>;

/// Per-partition funnel state.
#[derive(Debug)]
pub struct FunnelOperator {
    partition: i32,
    windows: TumblingWindows<WindowState>,
}

impl FunnelOperator {
    /// State for clickstream partition `partition`.
    pub fn new(partition: i32, window_ms: i64, lateness_ms: i64) -> Self {
        FunnelOperator { partition, windows: TumblingWindows::new(window_ms, lateness_ms) }
    }

    /// Counts one click into its window.
    ///
    /// # Errors
    /// [`Late`] when the event's window has already closed; nothing is counted then.
    pub fn record(&mut self, event: &ClickEvent) -> Result<(), Late> {
        let channel = event.effective_channel();
        let window = self.windows.slot(event.event_time)?;
        for key in [Some(channel), None] {
            let state = window.entry(key).or_default();
            if !state.visitors.contains(event.visitor_id.as_str()) {
                state.visitors.insert(event.visitor_id.as_str().into());
            }
            if event.event_type == ClickEventType::Purchase && !state.purchasers.contains(event.visitor_id.as_str()) {
                state.purchasers.insert(event.visitor_id.as_str().into());
            }
        }
        Ok(())
    }

    /// Closes windows the watermark has passed.
    pub fn advance_to(&mut self, watermark: i64) -> Vec<FunnelRow> {
        let closed = self.windows.advance(watermark);
        self.rows(closed)
    }

    /// Closes every window (end of a bounded input).
    pub fn close_all(&mut self) -> Vec<FunnelRow> {
        let closed = self.windows.close_all();
        self.rows(closed)
    }

    fn rows(&self, closed: Vec<(i64, WindowState)>) -> Vec<FunnelRow> {
        let window_ms = self.windows.window_ms();
        let mut rows: Vec<FunnelRow> = closed
            .into_iter()
            .flat_map(|(start, channels)| {
                channels.into_iter().map(move |(channel, sets)| FunnelRow {
                    window_start: start,
                    window_end: start + window_ms,
                    partition: self.partition,
                    channel,
                    visitors: sets.visitors.len() as u64,
                    purchasing_visitors: sets.purchasers.len() as u64,
                })
            })
            .collect();
        rows.sort();
        rows
    }
}

/// The label of a funnel row's channel: the channel symbol, or `all`.
pub fn channel_label(channel: Option<Channel>) -> &'static str {
    channel.map_or("all", Channel::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Device;

    fn click(visitor: &str, t: i64, kind: ClickEventType, channel: Channel) -> ClickEvent {
        ClickEvent {
            channel: Some(channel),
            ..ClickEvent::new(format!("{visitor}-{t}"), kind, t, visitor.into(), Device::App)
        }
    }

    #[test]
    fn counts_distinct_visitors_and_purchasers_per_channel_and_exactly_across_channels() {
        let mut op = FunnelOperator::new(3, 60_000, 0);
        for e in [
            click("a", 1_000, ClickEventType::PageView, Channel::Direct),
            click("a", 2_000, ClickEventType::Purchase, Channel::Direct),
            click("a", 3_000, ClickEventType::Purchase, Channel::Direct),
            click("b", 4_000, ClickEventType::PageView, Channel::Direct),
            click("c", 5_000, ClickEventType::PageView, Channel::LiveStream),
            click("b", 6_000, ClickEventType::PageView, Channel::LiveStream),
        ] {
            op.record(&e).expect("not late");
        }
        let rows = op.advance_to(60_000);
        assert_eq!(
            rows,
            vec![
                FunnelRow {
                    window_start: 0,
                    window_end: 60_000,
                    partition: 3,
                    channel: None,
                    visitors: 3,
                    purchasing_visitors: 1
                },
                FunnelRow {
                    window_start: 0,
                    window_end: 60_000,
                    partition: 3,
                    channel: Some(Channel::Direct),
                    visitors: 2,
                    purchasing_visitors: 1
                },
                FunnelRow {
                    window_start: 0,
                    window_end: 60_000,
                    partition: 3,
                    channel: Some(Channel::LiveStream),
                    visitors: 2,
                    purchasing_visitors: 0
                },
            ]
        );
    }

    #[test]
    fn event_for_closed_window_is_late_and_not_counted() {
        let mut op = FunnelOperator::new(0, 60_000, 0);
        op.record(&click("a", 1_000, ClickEventType::PageView, Channel::Direct)).expect("open");
        assert_eq!(op.advance_to(60_000).len(), 2);
        assert!(op.record(&click("b", 2_000, ClickEventType::PageView, Channel::Direct)).is_err());
        assert!(op.close_all().is_empty());
    }
}
