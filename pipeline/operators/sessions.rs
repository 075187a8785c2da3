//! Sessions: a visitor's events with gaps under the inactivity gap; a client-provided
//! `session_id` wins, so events of different client sessions never mix. Channel, device and
//! page come from the landing (first) event. One row per closed session, attributed to the
//! window of its start; per-window figures (sessions, engaged, bounce rate, funnel counts)
//! are sums over these rows.

use super::Step;
use super::funnel::{Touches, VisitorTouches};
use crate::event::{Channel, ClickEvent, ClickEventType, Device};
use crate::labels::window_label;
use crate::table::columns::{flags, int32, int64, optional_text, text, utc_millis};
use crate::table::{Progress, TableRow, floor_hour};
use crate::time::{KeyEntry, KeySessions, Lane, Late, LatenessGate, Merge, Session, SessionWindows, window_start};
use arrow_array::RecordBatch;
use arrow_schema::ArrowError;
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;
use std::cmp::Ordering;

/// A session longer than this is engaged.
pub const ENGAGED_AFTER_MS: i64 = 10_000;

/// One closed session.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SessionRow {
    /// Start of the window (base size) the session started in, UTC ms.
    pub window_start: i64,
    /// Window size, ms.
    pub window_ms: i64,
    /// Event time of the first event, UTC ms.
    pub session_start: i64,
    /// Event time of the last event, UTC ms.
    pub session_end: i64,
    /// Source partition of the clickstream topic.
    pub partition: i32,
    /// The visitor.
    pub visitor_id: String,
    /// The client's session id, when the events carried one.
    pub client_session_id: Option<String>,
    /// Channel of the landing event.
    pub channel: Channel,
    /// Device of the landing event.
    pub device: Device,
    /// Page of the landing event.
    pub landing_page: Option<String>,
    /// Events in the session.
    pub events: u32,
    /// `page_view` events in the session.
    pub page_views: u32,
    /// Whether the session reached each step at all, in [`Step::ALL`] order (open funnel).
    pub reached: [bool; Step::COUNT],
    /// How many steps the session reached in funnel order (closed funnel), 0–4.
    pub funnel_depth_in_order: u8,
    /// Closed early by the end of a bounded input (a drain), before its inactivity gap passed:
    /// more events may have belonged to it.
    pub partial: bool,
}

impl TableRow for SessionRow {
    const TABLE: &'static str = "sessions";
    const PARTITION_BY: &'static str = "session_start";
    fn partition_time(&self) -> i64 {
        self.session_start
    }
    /// A session closes an inactivity gap after its last event, once the watermark less the
    /// lateness has passed that, and lasts at most the length guard: sessions starting before
    /// that much ahead of the closing point are all closed.
    fn complete_through(progress: &Progress<'_>) -> Option<i64> {
        let time = progress.time;
        let lateness = time.lateness.of(super::SESSIONS);
        let closing = |w: i64| window_start(w - lateness, time.base_window_ms()) - time.session_gap_ms;
        progress.low_watermark.map(|w| floor_hour(closing(w) - time.session_max_length_ms))
    }
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError> {
        let reached = |step: Step| flags(rows.iter().map(move |r| r.reached[step as usize]));
        RecordBatch::try_from_iter([
            ("window_size", text(rows.iter().map(|r| window_label(r.window_ms)))),
            ("window_start", utc_millis(rows.iter().map(|r| r.window_start))),
            ("session_start", utc_millis(rows.iter().map(|r| r.session_start))),
            ("session_end", utc_millis(rows.iter().map(|r| r.session_end))),
            ("source_partition", int32(rows.iter().map(|r| r.partition))),
            ("visitor_id", text(rows.iter().map(|r| r.visitor_id.as_str()))),
            ("client_session_id", optional_text(rows.iter().map(|r| r.client_session_id.as_deref()))),
            ("channel", text(rows.iter().map(|r| r.channel.as_str()))),
            ("device", text(rows.iter().map(|r| r.device.as_str()))),
            ("landing_page", optional_text(rows.iter().map(|r| r.landing_page.as_deref()))),
            ("events", int64(rows.iter().map(|r| i64::from(r.events)))),
            ("page_views", int64(rows.iter().map(|r| i64::from(r.page_views)))),
            ("duration_ms", int64(rows.iter().map(SessionRow::duration_ms))),
            ("engaged", flags(rows.iter().map(SessionRow::engaged))),
            ("converted", flags(rows.iter().map(SessionRow::converted))),
            ("reached_product_view", reached(Step::ProductView)),
            ("reached_add_to_cart", reached(Step::AddToCart)),
            ("reached_begin_checkout", reached(Step::BeginCheckout)),
            ("reached_purchase", reached(Step::Purchase)),
            ("funnel_depth_in_order", int32(rows.iter().map(|r| i32::from(r.funnel_depth_in_order)))),
            ("partial", flags(rows.iter().map(|r| r.partial))),
        ])
    }
}

impl SessionRow {
    /// Duration from first to last event, ms.
    pub fn duration_ms(&self) -> i64 {
        self.session_end - self.session_start
    }

    /// Converted: the session contains a purchase.
    pub fn converted(&self) -> bool {
        self.reached[Step::Purchase as usize]
    }

    /// Engaged: longer than 10 s, or 2+ page views, or a purchase. Bounced = not engaged.
    pub fn engaged(&self) -> bool {
        self.duration_ms() > ENGAGED_AFTER_MS || self.page_views >= 2 || self.converted()
    }
}

/// The landing event: the earliest, ties broken by event id so any arrival order agrees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Landing {
    event_time: i64,
    event_id: Box<str>,
    channel: Channel,
    device: Device,
    page: Option<Box<str>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SessionFacts {
    landing: Option<Landing>,
    events: u32,
    page_views: u32,
    /// (event time, step) of every step event, for the in-order funnel at close.
    steps: Vec<(i64, u8)>,
}

impl SessionFacts {
    /// Whether an event would be the landing event: earlier than the current one.
    fn lands_before(&self, event_time: i64, event_id: &str) -> bool {
        self.landing.as_ref().is_none_or(|l| (event_time, event_id) < (l.event_time, &*l.event_id))
    }

    /// Sorts the steps by time (the session is closing; their order is not kept).
    fn depth_in_order(&mut self) -> u8 {
        self.steps.sort_unstable();
        let mut depth = 0u8;
        for &(_, step) in &self.steps {
            if usize::from(depth) < Step::COUNT && step == depth {
                depth += 1;
            }
        }
        depth
    }
}

impl Merge for SessionFacts {
    fn merge(&mut self, other: Self) {
        if let Some(landing) = other.landing
            && self.lands_before(landing.event_time, &landing.event_id)
        {
            self.landing = Some(landing);
        }
        self.events += other.events;
        self.page_views += other.page_views;
        self.steps.extend(other.steps);
    }
}

/// A session's lane: the client's session id, when the events carry one. Sessions of one
/// visitor under different client session ids never mix.
type ClientSession = Option<SmolStr>;

/// The client session id of an event, borrowed, so that finding its session copies nothing.
impl Lane<ClientSession> for Option<&str> {
    fn cmp_lane(&self, lane: &ClientSession) -> Ordering {
        self.cmp(&lane.as_deref())
    }

    fn to_lane(&self) -> ClientSession {
        self.map(SmolStr::from)
    }
}

/// What the table keeps per visitor: its open sessions and the funnel's touches.
type VisitorEntry = KeyEntry<SessionFacts, ClientSession, Touches>;

/// Per-partition session state, keyed by visitor. Each visitor's entry also holds the funnel's
/// touches of that visitor (see [`VisitorTouches`]): a click finds both under one lookup.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "SessionOperatorSnapshot")]
pub struct SessionOperator {
    partition: i32,
    window_ms: i64,
    sessions: SessionWindows<SmolStr, SessionFacts, ClientSession, Touches>,
}

/// The serialized fields of a [`SessionOperator`] of any release.
#[derive(Deserialize)]
struct SessionOperatorSnapshot {
    partition: i32,
    window_ms: i64,
    sessions: WindowsSnapshot,
}

/// The sessions' table as written now (`entries`, by visitor) or by releases that keyed
/// sessions by visitor and client session id (`open`).
#[derive(Deserialize)]
struct WindowsSnapshot {
    gap_ms: i64,
    max_length_ms: i64,
    gate: LatenessGate,
    #[serde(default)]
    entries: HashMap<SmolStr, VisitorEntry>,
    #[serde(default)]
    open: HashMap<(SmolStr, ClientSession), KeySessions<SessionFacts, ClientSession>>,
}

impl From<SessionOperatorSnapshot> for SessionOperator {
    fn from(snap: SessionOperatorSnapshot) -> Self {
        let WindowsSnapshot { gap_ms, max_length_ms, gate, mut entries, open } = snap.sessions;
        if !open.is_empty() {
            for ((visitor, client_session), sessions) in open {
                let entry = entries.entry(visitor).or_default();
                entry.sessions.extend(sessions.into_iter().map(|s| Session { lane: client_session.clone(), ..s }));
            }
            for entry in entries.values_mut() {
                entry.sessions.sort_unstable_by(|a, b| (&a.lane, a.start).cmp(&(&b.lane, b.start)));
            }
        }
        SessionOperator {
            partition: snap.partition,
            window_ms: snap.window_ms,
            sessions: SessionWindows::from_entries(gap_ms, max_length_ms, gate, entries),
        }
    }
}

impl SessionOperator {
    /// Sessions of clickstream partition `partition`, split by `gap_ms` and at most
    /// `max_length_ms` long, attributed to windows of `window_ms` with `lateness_ms`.
    pub fn new(partition: i32, gap_ms: i64, max_length_ms: i64, window_ms: i64, lateness_ms: i64) -> Self {
        SessionOperator {
            partition,
            window_ms,
            sessions: SessionWindows::new(gap_ms, max_length_ms, window_ms, lateness_ms),
        }
    }

    /// Adds one click to its session.
    ///
    /// # Errors
    /// [`Late`] when the event's window has closed; nothing is recorded then.
    pub fn record(&mut self, event: &ClickEvent) -> Result<(), Late> {
        self.record_with_touches(event, None::<fn(&mut Touches)>).1
    }

    /// [`SessionOperator::record`], also handing the visitor's funnel touches to `touches`
    /// under the same lookup, whether or not the event is late for sessions. Without `touches`,
    /// a late event adds no visitor.
    #[inline]
    pub fn record_with_touches<R>(
        &mut self,
        event: &ClickEvent,
        touches: Option<impl FnOnce(&mut Touches) -> R>,
    ) -> (Option<R>, Result<(), Late>) {
        let visitor = event.visitor_id.as_str();
        self.sessions.record_with(visitor, &event.session_id.as_deref(), event.event_time, touches, |facts| {
            if facts.lands_before(event.event_time, &event.event_id) {
                facts.landing = Some(Landing {
                    event_time: event.event_time,
                    event_id: event.event_id.as_str().into(),
                    channel: event.effective_channel(),
                    device: event.device,
                    page: event.page.as_deref().map(Into::into),
                });
            }
            facts.events += 1;
            facts.page_views += u32::from(event.event_type == ClickEventType::PageView);
            if let Some(step) = Step::of(event.event_type) {
                facts.steps.push((event.event_time, step as u8));
            }
        })
    }

    /// Closes sessions no on-time event can reach any more.
    pub fn advance_to(&mut self, watermark: i64) -> Vec<SessionRow> {
        let closed = self.sessions.advance(watermark);
        self.rows(closed, false)
    }

    /// Closes every session (end of a bounded input).
    pub fn close_all(&mut self) -> Vec<SessionRow> {
        let closed = self.sessions.close_all();
        self.rows(closed, true)
    }

    /// Open sessions.
    pub fn open_sessions(&self) -> usize {
        self.sessions.open_sessions()
    }

    /// Sets a visitor's funnel touches (restoring them from a checkpoint that kept them apart).
    pub fn set_touches(&mut self, visitor: SmolStr, touches: Touches) {
        self.sessions.set_companion(visitor, touches);
    }

    /// Visitors with funnel touches held.
    pub fn visitors_with_touches(&self) -> usize {
        self.sessions.companions_held()
    }

    fn rows(&self, closed: Vec<(SmolStr, Session<SessionFacts, ClientSession>)>, partial: bool) -> Vec<SessionRow> {
        closed
            .into_iter()
            .filter_map(|(visitor, session)| {
                let client_session = session.lane;
                let mut facts = session.state;
                let depth = facts.depth_in_order();
                let landing = facts.landing?;
                let mut reached = [false; Step::COUNT];
                for (_, step) in &facts.steps {
                    reached[usize::from(*step)] = true;
                }
                Some(SessionRow {
                    window_start: window_start(session.start, self.window_ms),
                    window_ms: self.window_ms,
                    session_start: session.start,
                    session_end: session.last,
                    partition: self.partition,
                    visitor_id: visitor.into(),
                    client_session_id: client_session.map(Into::into),
                    channel: landing.channel,
                    device: landing.device,
                    landing_page: landing.page.map(Into::into),
                    events: facts.events,
                    page_views: facts.page_views,
                    reached,
                    funnel_depth_in_order: depth,
                    partial,
                })
            })
            .collect()
    }
}

impl VisitorTouches for SessionOperator {
    fn prune_touches(&mut self, prune: impl FnMut(&mut Touches)) {
        self.sessions.prune_companions(prune);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn click(visitor: &str, session: Option<&str>, t: i64, kind: ClickEventType) -> ClickEvent {
        ClickEvent {
            channel: Some(if t == 0 { Channel::LiveStream } else { Channel::Direct }),
            session_id: session.map(Into::into),
            page: Some(format!("/p{t}")),
            ..ClickEvent::new(format!("{visitor}-{t}"), kind, t, visitor.into(), Device::App)
        }
    }

    fn operator() -> SessionOperator {
        SessionOperator::new(2, 30 * MIN, 6 * 60 * MIN, MIN, 0)
    }

    #[test]
    fn landing_event_sets_channel_device_and_page_and_flags_follow_the_definitions() {
        use ClickEventType::*;
        let mut op = operator();
        for (t, kind) in [(5_000, AddToCart), (0, PageView), (3_000, ProductView), (20_000, Purchase)] {
            op.record(&click("a", None, t, kind)).expect("on time");
        }
        op.record(&click("b", None, 90_000, PageView)).expect("on time");
        let rows = op.close_all();
        assert_eq!(rows.len(), 2);
        let a = &rows[0];
        assert_eq!(
            (a.visitor_id.as_str(), a.channel, a.landing_page.as_deref()),
            ("a", Channel::LiveStream, Some("/p0"))
        );
        assert_eq!((a.window_start, a.session_start, a.session_end, a.duration_ms()), (0, 0, 20_000, 20_000));
        assert_eq!((a.events, a.page_views, a.reached), (4, 1, [true, true, false, true]));
        assert_eq!(a.funnel_depth_in_order, 2, "no begin_checkout, so the in-order funnel stops at add_to_cart");
        assert!(a.engaged() && a.converted());
        let b = &rows[1];
        assert_eq!((b.window_start, b.events, b.funnel_depth_in_order), (MIN, 1, 0));
        assert!(!b.engaged(), "one page view, zero duration: a bounce");
    }

    #[test]
    fn steps_out_of_funnel_order_count_in_the_open_funnel_only() {
        use ClickEventType::*;
        let mut op = operator();
        for (t, kind) in [(1_000, AddToCart), (2_000, ProductView)] {
            op.record(&click("a", None, t, kind)).expect("on time");
        }
        let row = &op.close_all()[0];
        assert_eq!((row.reached, row.funnel_depth_in_order), ([true, true, false, false], 1));
    }

    #[test]
    fn a_client_session_id_keeps_sessions_apart_even_without_a_gap() {
        let mut op = operator();
        op.record(&click("a", Some("s1"), 1_000, ClickEventType::PageView)).expect("on time");
        op.record(&click("a", Some("s2"), 2_000, ClickEventType::PageView)).expect("on time");
        op.record(&click("a", None, 3_000, ClickEventType::PageView)).expect("on time");
        let rows = op.close_all();
        let ids: Vec<Option<&str>> = rows.iter().map(|r| r.client_session_id.as_deref()).collect();
        assert_eq!(ids, vec![Some("s1"), Some("s2"), None]);
    }

    #[test]
    fn a_checkpoint_keyed_by_visitor_and_client_session_restores_into_the_visitor_table() {
        // The layout of releases before the visitor table: sessions keyed by (visitor, client
        // session id), written as heap vectors.
        #[derive(Serialize)]
        struct EarlierSession {
            start: i64,
            last: i64,
            state: SessionFacts,
        }
        #[derive(Serialize)]
        struct EarlierWindows {
            gap_ms: i64,
            max_length_ms: i64,
            gate: LatenessGate,
            open: HashMap<(String, Option<String>), Vec<EarlierSession>>,
        }
        #[derive(Serialize)]
        struct EarlierOperator {
            partition: i32,
            window_ms: i64,
            sessions: EarlierWindows,
        }
        // The same clicks, recorded by the current operator, give the facts to write.
        let clicks = [
            click("a", Some("s2"), 1_000, ClickEventType::PageView),
            click("a", None, 2_000, ClickEventType::PageView),
            click("a", Some("s1"), 3_000, ClickEventType::ProductView),
            click("b", None, 4_000, ClickEventType::PageView),
        ];
        let mut current = operator();
        let mut open = HashMap::new();
        for c in &clicks {
            current.record(c).expect("on time");
            let mut one = operator();
            one.record(c).expect("on time");
            let (_, session) = one.sessions.close_all().pop().expect("one session");
            open.insert(
                (c.visitor_id.clone(), c.session_id.clone()),
                vec![EarlierSession { start: session.start, last: session.last, state: session.state }],
            );
        }
        let earlier = EarlierOperator {
            partition: 2,
            window_ms: MIN,
            sessions: EarlierWindows {
                gap_ms: 30 * MIN,
                max_length_ms: 6 * 60 * MIN,
                gate: LatenessGate::new(MIN, 0),
                open,
            },
        };
        let mut restored: SessionOperator =
            crate::snapshot::read_cbor(&crate::snapshot::cbor(&earlier).expect("encodes")).expect("decodes");
        assert_eq!((restored.open_sessions(), restored.sessions.keys_held()), (4, 2));
        // Both continue alike: a click of client session s1 joins its session, and deadlines
        // were rebuilt, so advancing closes everything.
        for op in [&mut current, &mut restored] {
            op.record(&click("a", Some("s1"), 5_000, ClickEventType::AddToCart)).expect("on time");
        }
        let rows = restored.advance_to(40 * MIN);
        assert_eq!(rows, current.advance_to(40 * MIN));
        let keys: Vec<(&str, Option<&str>, u32)> =
            rows.iter().map(|r| (r.visitor_id.as_str(), r.client_session_id.as_deref(), r.events)).collect();
        assert_eq!(keys, vec![("a", Some("s2"), 1), ("a", None, 1), ("a", Some("s1"), 2), ("b", None, 1)]);
        assert_eq!(restored.sessions.keys_held(), 0);
    }

    #[test]
    fn a_visitors_touches_keep_its_entry_after_its_sessions_close() {
        let mut op = operator();
        let event = click("a", None, 0, ClickEventType::PageView);
        let mut funnel = super::super::FunnelOperator::new(2, &[MIN], 0);
        let (counted, in_session) =
            op.record_with_touches(&event, Some(|touches: &mut Touches| funnel.record(&event, touches)));
        assert_eq!((counted, in_session), (Some(Ok(())), Ok(())));
        assert_eq!(op.visitors_with_touches(), 1);
        // The session closes at 30 minutes; the funnel's touch of window [0, 1 min) keeps the
        // visitor until the funnel forgets closed windows' touches.
        assert_eq!(op.advance_to(31 * MIN).len(), 1);
        assert_eq!((op.open_sessions(), op.sessions.keys_held()), (0, 1));
        funnel.advance_to(31 * MIN, &mut op);
        assert_eq!(op.sessions.keys_held(), 0);
    }

    #[test]
    fn sessions_close_after_the_gap_passes_the_watermark() {
        let mut op = operator();
        op.record(&click("a", None, 0, ClickEventType::PageView)).expect("on time");
        assert!(op.advance_to(29 * MIN).is_empty());
        assert_eq!(op.advance_to(31 * MIN).len(), 1);
        assert_eq!(op.open_sessions(), 0);
    }
}
