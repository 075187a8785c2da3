//! Traffic and funnel per window × channel × device: events, visitors (distinct `visitor_id`
//! with any event), page views and distinct visitors at each funnel step, with exact subtotals
//! for all channels, all devices and both. Clickstream is keyed by `visitor_id`, so a visitor
//! lives in one partition and per-partition rows add up exactly across partitions.

use super::Step;
use crate::event::{Channel, ClickEvent, ClickEventType, Device};
use crate::time::{Late, TumblingWindows};
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One closed window of one partition, channel and device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FunnelRow {
    /// Window size, ms.
    pub window_ms: i64,
    /// Window start, UTC ms.
    pub window_start: i64,
    /// Source partition of the clickstream topic.
    pub partition: i32,
    /// Channel; `None` is the exact all-channels subtotal.
    pub channel: Option<Channel>,
    /// Device; `None` is the exact all-devices subtotal.
    pub device: Option<Device>,
    /// The counts.
    pub counts: FunnelCounts,
}

impl FunnelRow {
    /// Window end (exclusive), UTC ms.
    pub fn window_end(&self) -> i64 {
        self.window_start + self.window_ms
    }
}

/// Counts of one funnel row; all add up across partitions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct FunnelCounts {
    /// Clickstream events.
    pub events: u64,
    /// Distinct visitors with any event.
    pub visitors: u64,
    /// `page_view` events.
    pub page_views: u64,
    /// Distinct visitors with at least one event of each step, in [`Step::ALL`] order.
    pub step_visitors: [u64; Step::COUNT],
}

impl FunnelCounts {
    /// Distinct visitors who reached `step`.
    pub fn visitors_at(&self, step: Step) -> u64 {
        self.step_visitors[step as usize]
    }

    /// Adds another partition's counts.
    pub fn add(&mut self, other: &FunnelCounts) {
        self.events += other.events;
        self.visitors += other.visitors;
        self.page_views += other.page_views;
        for (mine, theirs) in self.step_visitors.iter_mut().zip(other.step_visitors) {
            *mine += theirs;
        }
    }
}

/// What one visitor did in one window under one channel and device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Touch {
    channel: Channel,
    device: Device,
    /// Bit per [`Step`] reached.
    steps: u8,
    events: u32,
    page_views: u32,
}

/// Per window: each visitor's touches (almost always one).
type WindowState = HashMap<Box<str>, Vec<Touch>>;

/// A row's grouping: channel and device, `None` for the all-values subtotal.
type GroupKey = (Option<Channel>, Option<Device>);

/// Per-partition funnel state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunnelOperator {
    partition: i32,
    windows: TumblingWindows<WindowState>,
}

impl FunnelOperator {
    /// State for clickstream partition `partition`, windows of each of `sizes_ms`.
    pub fn new(partition: i32, sizes_ms: &[i64], lateness_ms: i64) -> Self {
        FunnelOperator { partition, windows: TumblingWindows::new(sizes_ms, lateness_ms) }
    }

    /// Counts one click into its windows.
    ///
    /// # Errors
    /// [`Late`] when the event's window has already closed; nothing is counted then.
    pub fn record(&mut self, event: &ClickEvent) -> Result<(), Late> {
        let (channel, device) = (event.effective_channel(), event.device);
        let step_bit = Step::of(event.event_type).map_or(0, Step::bit);
        let page_view = u32::from(event.event_type == ClickEventType::PageView);
        self.windows.record(event.event_time, |window| {
            let touches = match window.get_mut(event.visitor_id.as_str()) {
                Some(touches) => touches,
                None => window.entry(event.visitor_id.as_str().into()).or_default(),
            };
            match touches.iter_mut().find(|t| t.channel == channel && t.device == device) {
                Some(t) => {
                    t.steps |= step_bit;
                    t.events += 1;
                    t.page_views += page_view;
                }
                None => touches.push(Touch { channel, device, steps: step_bit, events: 1, page_views: page_view }),
            }
        })
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

    fn rows(&self, closed: Vec<crate::time::ClosedWindow<WindowState>>) -> Vec<FunnelRow> {
        let mut rows = Vec::new();
        for window in closed {
            let mut groups: BTreeMap<GroupKey, FunnelCounts> = BTreeMap::new();
            let mut per_visitor: Vec<(GroupKey, u8, u32, u32)> = Vec::new();
            for touches in window.state.values() {
                // Union the visitor's touches per group first, so each group counts them once.
                per_visitor.clear();
                for t in touches {
                    let (c, d) = (Some(t.channel), Some(t.device));
                    for key in [(c, d), (c, None), (None, d), (None, None)] {
                        match per_visitor.iter_mut().find(|(k, ..)| *k == key) {
                            Some(entry) => {
                                entry.1 |= t.steps;
                                entry.2 += t.events;
                                entry.3 += t.page_views;
                            }
                            None => per_visitor.push((key, t.steps, t.events, t.page_views)),
                        }
                    }
                }
                for &(key, steps, events, page_views) in &per_visitor {
                    let counts = groups.entry(key).or_default();
                    counts.visitors += 1;
                    counts.events += u64::from(events);
                    counts.page_views += u64::from(page_views);
                    for step in Step::ALL {
                        counts.step_visitors[step as usize] += u64::from(steps & step.bit() != 0);
                    }
                }
            }
            rows.extend(groups.into_iter().map(|((channel, device), counts)| FunnelRow {
                window_ms: window.size_ms,
                window_start: window.start,
                partition: self.partition,
                channel,
                device,
                counts,
            }));
        }
        rows.sort();
        rows
    }
}

/// The label of a row's channel: the channel symbol, or `all`.
pub fn channel_label(channel: Option<Channel>) -> &'static str {
    channel.map_or("all", Channel::as_str)
}

/// The label of a row's device: the device symbol, or `all`.
pub fn device_label(device: Option<Device>) -> &'static str {
    device.map_or("all", Device::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn click(visitor: &str, t: i64, kind: ClickEventType, channel: Channel, device: Device) -> ClickEvent {
        ClickEvent {
            channel: Some(channel),
            ..ClickEvent::new(format!("{visitor}-{t}"), kind, t, visitor.into(), device)
        }
    }

    fn counts(rows: &[FunnelRow], channel: Option<Channel>, device: Option<Device>) -> FunnelCounts {
        rows.iter().find(|r| r.channel == channel && r.device == device).map(|r| r.counts).unwrap_or_default()
    }

    #[test]
    fn counts_distinct_visitors_per_step_channel_and_device_and_exact_subtotals() {
        use ClickEventType::*;
        let mut op = FunnelOperator::new(3, &[60_000], 0);
        for e in [
            click("a", 1_000, PageView, Channel::Direct, Device::App),
            click("a", 2_000, ProductView, Channel::Direct, Device::App),
            click("a", 3_000, Purchase, Channel::Direct, Device::App),
            click("a", 3_500, Purchase, Channel::Direct, Device::App),
            click("b", 4_000, PageView, Channel::Direct, Device::Desktop),
            click("c", 5_000, PageView, Channel::LiveStream, Device::App),
            click("b", 6_000, AddToCart, Channel::LiveStream, Device::Desktop),
        ] {
            op.record(&e).expect("not late");
        }
        let rows = op.advance_to(60_000);
        assert!(rows.iter().all(|r| r.partition == 3 && r.window_start == 0 && r.window_ms == 60_000));
        let all = counts(&rows, None, None);
        assert_eq!((all.events, all.visitors, all.page_views), (7, 3, 3));
        assert_eq!(all.step_visitors, [1, 1, 0, 1]);
        let direct = counts(&rows, Some(Channel::Direct), None);
        assert_eq!((direct.visitors, direct.visitors_at(Step::Purchase)), (2, 1));
        let app = counts(&rows, None, Some(Device::App));
        assert_eq!((app.visitors, app.page_views), (2, 2));
        let live_desktop = counts(&rows, Some(Channel::LiveStream), Some(Device::Desktop));
        assert_eq!((live_desktop.visitors, live_desktop.visitors_at(Step::AddToCart)), (1, 1));
        assert_eq!(counts(&rows, Some(Channel::Direct), Some(Device::Desktop)).visitors_at(Step::AddToCart), 0);
    }

    #[test]
    fn event_for_closed_window_is_late_and_not_counted() {
        let mut op = FunnelOperator::new(0, &[60_000], 0);
        op.record(&click("a", 1_000, ClickEventType::PageView, Channel::Direct, Device::App)).expect("open");
        assert_eq!(op.advance_to(60_000).len(), 4);
        assert!(op.record(&click("b", 2_000, ClickEventType::PageView, Channel::Direct, Device::App)).is_err());
        assert!(op.close_all().is_empty());
    }
}
