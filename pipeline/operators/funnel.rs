//! Traffic and funnel per window × channel × device: events, visitors (distinct `visitor_id`
//! with any event), page views and distinct visitors at each funnel step, with exact subtotals
//! for all channels, all devices and both. Clickstream is keyed by `visitor_id`, so a visitor
//! lives in one partition and per-partition rows add up exactly across partitions.

use super::Step;
use crate::event::{Channel, ClickEvent, ClickEventType, Device};
use crate::labels::{channel_label, device_label, window_label};
use crate::table::columns::{count, flags, int32, int64, text, utc_millis};
use crate::table::{Progress, TableRow, windows_complete_through};
use crate::time::{Late, TumblingWindows};
use arrow_array::RecordBatch;
use arrow_schema::ArrowError;
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use smol_str::SmolStr;

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
    /// Closed early by the end of a bounded input (a drain), before the watermark passed its
    /// end: its figures may be short of what the window would have held.
    pub partial: bool,
}

impl FunnelRow {
    /// Window end (exclusive), UTC ms.
    pub fn window_end(&self) -> i64 {
        self.window_start + self.window_ms
    }
}

impl TableRow for FunnelRow {
    const TABLE: &'static str = "funnel";
    const PARTITION_BY: &'static str = "window_start";
    fn partition_time(&self) -> i64 {
        self.window_start
    }
    fn complete_through(progress: &Progress<'_>) -> Option<i64> {
        let lateness = progress.time.lateness.of(super::TRAFFIC);
        progress.low_watermark.map(|w| windows_complete_through(w, &progress.time.window_sizes_ms, lateness))
    }
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError> {
        let step = |step: Step| int64(rows.iter().map(move |r| count(r.counts.visitors_at(step))));
        RecordBatch::try_from_iter([
            ("window_size", text(rows.iter().map(|r| window_label(r.window_ms)))),
            ("window_start", utc_millis(rows.iter().map(|r| r.window_start))),
            ("window_end", utc_millis(rows.iter().map(FunnelRow::window_end))),
            ("source_partition", int32(rows.iter().map(|r| r.partition))),
            ("channel", text(rows.iter().map(|r| channel_label(r.channel)))),
            ("device", text(rows.iter().map(|r| device_label(r.device)))),
            ("events", int64(rows.iter().map(|r| count(r.counts.events)))),
            ("visitors", int64(rows.iter().map(|r| count(r.counts.visitors)))),
            ("page_views", int64(rows.iter().map(|r| count(r.counts.page_views)))),
            ("product_view_visitors", step(Step::ProductView)),
            ("add_to_cart_visitors", step(Step::AddToCart)),
            ("begin_checkout_visitors", step(Step::BeginCheckout)),
            ("purchasing_visitors", step(Step::Purchase)),
            ("partial", flags(rows.iter().map(|r| r.partial))),
        ])
    }
}

/// Counts of one funnel row; all add up across partitions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
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

/// What one visitor did in one open window under one channel and device: 16 bytes, two of
/// them inline in a visitor's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Touch {
    /// The window's end, ms.
    window_end: i64,
    /// The window's size, ms: at most a day (sizes divide a day), so it fits. Checkpoints
    /// encode integers by value, so those that held it as an `i64` restore unchanged.
    window_ms: u32,
    channel: Channel,
    device: Device,
    /// Bit per [`Step`] reached.
    steps: u8,
}

/// A window size as a [`Touch`] holds it. Sizes past `u32::MAX` ms (49 days) cannot be
/// configured; they would all read as that one.
fn touch_size(window_ms: i64) -> u32 {
    u32::try_from(window_ms).unwrap_or(u32::MAX)
}

/// A visitor's touches of the open windows: one per window size for most visitors (one channel,
/// one device), held inline.
pub type Touches = SmallVec<[Touch; 2]>;

/// Where the visitors' touches are kept: in the sessions' table, so that a click looks its
/// visitor up once for both operators, or in a map of their own.
pub trait VisitorTouches {
    /// Applies `prune` to every visitor's touches; a visitor left with nothing (no touches, nor
    /// anything else the table keeps for it) goes.
    fn prune_touches(&mut self, prune: impl FnMut(&mut Touches));
}

impl VisitorTouches for HashMap<SmolStr, Touches> {
    fn prune_touches(&mut self, mut prune: impl FnMut(&mut Touches)) {
        self.retain(|_, touches| {
            prune(touches);
            !touches.is_empty()
        });
    }
}

impl crate::time::Companion for Touches {
    fn is_empty(&self) -> bool {
        SmallVec::is_empty(self)
    }
}

/// Counts of one open window, one cell per channel × device including the `None` subtotals,
/// updated as events arrive: closing a window reads its cells and nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<(usize, FunnelCounts)>", into = "Vec<(usize, FunnelCounts)>")]
struct WindowCounts(Vec<FunnelCounts>);

impl WindowCounts {
    const DEVICE_CELLS: usize = Device::COUNT + 1;

    fn cell(channel: Option<Channel>, device: Option<Device>) -> usize {
        channel.map_or(0, |c| c.index() + 1) * Self::DEVICE_CELLS + device.map_or(0, |d| d.index() + 1)
    }

    fn group(cell: usize) -> GroupKey {
        let (channel, device) = (cell / Self::DEVICE_CELLS, cell % Self::DEVICE_CELLS);
        let channel = channel.checked_sub(1).and_then(|i| Channel::ALL.get(i)).copied();
        (channel, device.checked_sub(1).and_then(|i| Device::ALL.get(i)).copied())
    }
}

impl Default for WindowCounts {
    fn default() -> Self {
        WindowCounts(vec![FunnelCounts::default(); (Channel::COUNT + 1) * Self::DEVICE_CELLS])
    }
}

/// Checkpoints hold the cells with visitors only.
impl From<WindowCounts> for Vec<(usize, FunnelCounts)> {
    fn from(counts: WindowCounts) -> Self {
        counts.0.into_iter().enumerate().filter(|(_, c)| c.visitors > 0).collect()
    }
}

impl From<Vec<(usize, FunnelCounts)>> for WindowCounts {
    fn from(cells: Vec<(usize, FunnelCounts)>) -> Self {
        let mut counts = WindowCounts::default();
        for (cell, c) in cells {
            if let Some(slot) = counts.0.get_mut(cell) {
                *slot = c;
            }
        }
        counts
    }
}

/// A row's grouping: channel and device, `None` for the all-values subtotal.
type GroupKey = (Option<Channel>, Option<Device>);

/// Per-partition funnel state.
///
/// Distinct visitors are counted when they first appear in a window's cell, and a step's
/// visitors when a visitor first reaches it there; each visitor's touches of the open windows
/// are kept for that. The touches live with the caller ([`VisitorTouches`]): a clickstream task
/// keeps them in the sessions' entry of the visitor, which a click looks up anyway. A visitor's
/// touches are forgotten once all the windows it touched have closed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunnelOperator {
    partition: i32,
    windows: TumblingWindows<WindowCounts>,
}

/// The serialized fields of a [`FunnelOperator`] of any release: those before the sessions'
/// table held the touches kept them here, under `visitors`.
#[derive(Deserialize)]
pub(super) struct FunnelSnapshot {
    partition: i32,
    windows: TumblingWindows<WindowCounts>,
    #[serde(default)]
    visitors: HashMap<SmolStr, Touches>,
}

impl FunnelSnapshot {
    /// The operator, and the visitors' touches a snapshot of an earlier release held.
    pub(super) fn into_parts(self) -> (FunnelOperator, HashMap<SmolStr, Touches>) {
        (FunnelOperator { partition: self.partition, windows: self.windows }, self.visitors)
    }
}

impl FunnelOperator {
    /// State for clickstream partition `partition`, windows of each of `sizes_ms`.
    pub fn new(partition: i32, sizes_ms: &[i64], lateness_ms: i64) -> Self {
        FunnelOperator { partition, windows: TumblingWindows::new(sizes_ms, lateness_ms) }
    }

    /// The clickstream partition it counts.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Whether an event at `event_time` is on time: [`FunnelOperator::record`] would count it.
    ///
    /// # Errors
    /// [`Late`] when the event's window has already closed.
    pub fn check(&self, event_time: i64) -> Result<(), Late> {
        self.windows.check(event_time)
    }

    /// Counts one click into its windows; `touches` are its visitor's.
    ///
    /// # Errors
    /// [`Late`] when the event's window has already closed; nothing is counted then.
    pub fn record(&mut self, event: &ClickEvent, touches: &mut Touches) -> Result<(), Late> {
        self.windows.check(event.event_time)?;
        let (channel, device) = (event.effective_channel(), event.device);
        let step = Step::of(event.event_type);
        let step_bit = step.map_or(0, Step::bit);
        let page_views = u64::from(event.event_type == ClickEventType::PageView);
        // The visitor's own cell and the three subtotals it adds to.
        let groups: [GroupKey; 4] =
            [(Some(channel), Some(device)), (Some(channel), None), (None, Some(device)), (None, None)];
        touches.retain(|t| self.windows.is_open(t.window_end));
        self.windows.record_each(event.event_time, |window_end, window_ms, counts| {
            let window_ms = touch_size(window_ms);
            let in_window = |t: &Touch| t.window_end == window_end && t.window_ms == window_ms;
            for (c, d) in groups {
                // Steps the visitor had reached in this group and window; `None` if it was not in it.
                let before = touches
                    .iter()
                    .filter(|t| in_window(t) && c.is_none_or(|c| c == t.channel) && d.is_none_or(|d| d == t.device))
                    .map(|t| t.steps)
                    .reduce(|a, b| a | b);
                let cell = &mut counts.0[WindowCounts::cell(c, d)];
                cell.events += 1;
                cell.page_views += page_views;
                cell.visitors += u64::from(before.is_none());
                if let Some(step) = step
                    && before.unwrap_or(0) & step_bit == 0
                {
                    cell.step_visitors[step as usize] += 1;
                }
            }
            match touches.iter_mut().find(|t| in_window(t) && t.channel == channel && t.device == device) {
                Some(t) => t.steps |= step_bit,
                None => touches.push(Touch { window_end, window_ms, channel, device, steps: step_bit }),
            }
        })
    }

    /// Closes windows the watermark has passed.
    pub fn advance_to(&mut self, watermark: i64, visitors: &mut impl VisitorTouches) -> Vec<FunnelRow> {
        let closed = self.windows.advance(watermark);
        // Visitors go when the longest window they touched closes; closed windows' touches of
        // the visitors that stay go when the visitor is next seen.
        if closed.iter().any(|w| w.size_ms == self.windows.longest_ms()) {
            self.forget_closed(visitors);
        }
        self.rows(closed, false)
    }

    /// Drops the touches of closed windows; visitors left with none go.
    pub fn forget_closed(&self, visitors: &mut impl VisitorTouches) {
        visitors.prune_touches(|touches| touches.retain(|t| self.windows.is_open(t.window_end)));
    }

    /// Closes every window (end of a bounded input). Every touch is then of a closed window;
    /// whoever keeps them drops them with its own state.
    pub fn close_all(&mut self) -> Vec<FunnelRow> {
        let closed = self.windows.close_all();
        self.rows(closed, true)
    }

    fn rows(&self, closed: Vec<crate::time::ClosedWindow<WindowCounts>>, partial: bool) -> Vec<FunnelRow> {
        let mut rows: Vec<FunnelRow> = closed
            .into_iter()
            .flat_map(|window| {
                let (window_ms, window_start, partition) = (window.size_ms, window.start, self.partition);
                window.state.0.into_iter().enumerate().filter(|(_, counts)| counts.visitors > 0).map(
                    move |(cell, counts)| {
                        let (channel, device) = WindowCounts::group(cell);
                        FunnelRow { window_ms, window_start, partition, channel, device, counts, partial }
                    },
                )
            })
            .collect();
        rows.sort();
        rows
    }
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

    /// The visitors' touches in a map of their own.
    type Visitors = HashMap<SmolStr, Touches>;

    /// Counts `event` as a clickstream task does, its visitor's touches looked up only when
    /// the event is on time.
    fn count(op: &mut FunnelOperator, visitors: &mut Visitors, event: &ClickEvent) -> Result<(), Late> {
        op.check(event.event_time)?;
        op.record(event, visitors.entry(event.visitor_id.as_str().into()).or_default())
    }

    #[test]
    fn a_touch_takes_16_bytes_and_touches_of_earlier_checkpoints_restore() {
        assert_eq!(std::mem::size_of::<Touch>(), 16);
        // The layout of earlier releases, with the size as an i64.
        #[derive(Serialize)]
        struct EarlierTouch {
            window_end: i64,
            window_ms: i64,
            channel: Channel,
            device: Device,
            steps: u8,
        }
        let earlier = EarlierTouch {
            window_end: 3_600_000,
            window_ms: 3_600_000,
            channel: Channel::PaidSearch,
            device: Device::App,
            steps: 5,
        };
        let mut cbor = Vec::new();
        ciborium::into_writer(&earlier, &mut cbor).expect("encodes");
        let restored: Touch = ciborium::from_reader(cbor.as_slice()).expect("decodes");
        assert_eq!(
            restored,
            Touch {
                window_end: 3_600_000,
                window_ms: 3_600_000,
                channel: Channel::PaidSearch,
                device: Device::App,
                steps: 5
            }
        );
    }

    fn counts(rows: &[FunnelRow], channel: Option<Channel>, device: Option<Device>) -> FunnelCounts {
        rows.iter().find(|r| r.channel == channel && r.device == device).map(|r| r.counts).unwrap_or_default()
    }

    #[test]
    fn counts_distinct_visitors_per_step_channel_and_device_and_exact_subtotals() {
        use ClickEventType::*;
        let mut op = FunnelOperator::new(3, &[60_000], 0);
        let mut visitors = Visitors::new();
        for e in [
            click("a", 1_000, PageView, Channel::Direct, Device::App),
            click("a", 2_000, ProductView, Channel::Direct, Device::App),
            click("a", 3_000, Purchase, Channel::Direct, Device::App),
            click("a", 3_500, Purchase, Channel::Direct, Device::App),
            click("b", 4_000, PageView, Channel::Direct, Device::Desktop),
            click("c", 5_000, PageView, Channel::LiveStream, Device::App),
            click("b", 6_000, AddToCart, Channel::LiveStream, Device::Desktop),
        ] {
            count(&mut op, &mut visitors, &e).expect("not late");
        }
        let rows = op.advance_to(60_000, &mut visitors);
        assert!(visitors.is_empty(), "the only window closed: every visitor is forgotten");
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
        let mut visitors = Visitors::new();
        let a = click("a", 1_000, ClickEventType::PageView, Channel::Direct, Device::App);
        count(&mut op, &mut visitors, &a).expect("open");
        assert_eq!(op.advance_to(60_000, &mut visitors).len(), 4);
        let b = click("b", 2_000, ClickEventType::PageView, Channel::Direct, Device::App);
        assert!(count(&mut op, &mut visitors, &b).is_err());
        assert!(op.record(&b, &mut Touches::new()).is_err(), "late even when given touches");
        assert!(op.close_all().is_empty());
    }

    /// Counts from scratch: per window and group, the distinct visitors and the union of their steps.
    fn recount(clicks: &[ClickEvent], sizes: &[i64]) -> Vec<FunnelRow> {
        use std::collections::BTreeMap;
        // (size, start, group, visitor) -> (steps, events, page views)
        type PerVisitor<'a> = BTreeMap<(i64, i64, GroupKey, &'a str), (u8, u64, u64)>;
        let mut per_visitor = PerVisitor::new();
        for e in clicks {
            for &size in sizes {
                let (c, d) = (Some(e.effective_channel()), Some(e.device));
                for group in [(c, d), (c, None), (None, d), (None, None)] {
                    let v = per_visitor
                        .entry((size, crate::time::window_start(e.event_time, size), group, &e.visitor_id))
                        .or_default();
                    v.0 |= Step::of(e.event_type).map_or(0, Step::bit);
                    v.1 += 1;
                    v.2 += u64::from(e.event_type == ClickEventType::PageView);
                }
            }
        }
        let mut rows: BTreeMap<(i64, i64, GroupKey), FunnelCounts> = BTreeMap::new();
        for ((size, start, group, _), (steps, events, page_views)) in per_visitor {
            let counts = rows.entry((size, start, group)).or_default();
            counts.visitors += 1;
            counts.events += events;
            counts.page_views += page_views;
            for step in Step::ALL {
                counts.step_visitors[step as usize] += u64::from(steps & step.bit() != 0);
            }
        }
        let mut rows: Vec<FunnelRow> = rows
            .into_iter()
            .map(|((window_ms, window_start, (channel, device)), counts)| FunnelRow {
                window_ms,
                window_start,
                partition: 0,
                channel,
                device,
                counts,
                partial: false,
            })
            .collect();
        rows.sort();
        rows
    }

    proptest::proptest! {
        #[test]
        fn incremental_counts_equal_a_recount_through_advances_and_a_checkpoint(
            clicks in proptest::collection::vec((0..6usize, 0..4usize, 0..3usize, 0..ClickEventType::COUNT, 0..400_000i64), 1..120),
            restore_at in 0..120usize,
        ) {
            let sizes = [60_000, 300_000];
            let clicks: Vec<ClickEvent> = clicks
                .into_iter()
                .enumerate()
                .map(|(i, (visitor, channel, device, kind, t))| ClickEvent {
                    channel: Some(Channel::ALL[channel]),
                    ..ClickEvent::new(format!("e{i}"), ClickEventType::ALL[kind], t, format!("v{visitor}"), Device::ALL[device])
                })
                .collect();
            let mut op = FunnelOperator::new(0, &sizes, 0);
            let mut visitors = Visitors::new();
            let mut rows = Vec::new();
            let mut on_time = Vec::new();
            let mut watermark = 0;
            for (i, e) in clicks.iter().enumerate() {
                if i == restore_at {
                    (op, visitors) = crate::snapshot::read_cbor(&crate::snapshot::cbor(&(op, visitors)).expect("encodes")).expect("decodes");
                }
                if count(&mut op, &mut visitors, e).is_ok() {
                    on_time.push(e.clone());
                }
                // A watermark 100 s behind the latest event, so some events are late.
                watermark = watermark.max(e.event_time - 100_000);
                rows.extend(op.advance_to(watermark, &mut visitors));
            }
            let closed_early = op.close_all();
            proptest::prop_assert!(closed_early.iter().all(|r| r.partial), "windows a drain closes are partial");
            rows.extend(closed_early.into_iter().map(|r| FunnelRow { partial: false, ..r }));
            rows.sort();
            proptest::prop_assert_eq!(rows, recount(&on_time, &sizes));
            op.forget_closed(&mut visitors);
            proptest::prop_assert!(visitors.is_empty());
        }
    }
}
