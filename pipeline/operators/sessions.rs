//! Sessions: a visitor's events with gaps under the inactivity gap; a client-provided
//! `session_id` wins, so events of different client sessions never mix. Channel, device and
//! page come from the landing (first) event. One row per closed session, attributed to the
//! window of its start; per-window figures (sessions, engaged, bounce rate, funnel counts)
//! are sums over these rows.

use super::Step;
use crate::event::{Channel, ClickEvent, ClickEventType, Device};
use crate::time::{Late, Merge, Session, SessionWindows, window_start};
use hashbrown::Equivalent;
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

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

/// Session key: visitor and client session id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
struct Key(SmolStr, Option<SmolStr>);

/// A [`Key`] borrowed from an event, so that looking a session up copies nothing. Hashes like
/// [`Key`]: the derived `Hash` of both hashes the same strings in the same order.
#[derive(Hash)]
struct KeyRef<'a>(&'a str, Option<&'a str>);

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.0 == key.0 && self.1 == key.1.as_deref()
    }
}

impl From<&KeyRef<'_>> for Key {
    fn from(key: &KeyRef<'_>) -> Self {
        Key(key.0.into(), key.1.map(Into::into))
    }
}

/// Per-partition session state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionOperator {
    partition: i32,
    window_ms: i64,
    sessions: SessionWindows<Key, SessionFacts>,
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
        let key = KeyRef(&event.visitor_id, event.session_id.as_deref());
        self.sessions.record(&key, event.event_time, |facts| {
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
        self.rows(closed)
    }

    /// Closes every session (end of a bounded input).
    pub fn close_all(&mut self) -> Vec<SessionRow> {
        let closed = self.sessions.close_all();
        self.rows(closed)
    }

    /// Open sessions.
    pub fn open_sessions(&self) -> usize {
        self.sessions.open_sessions()
    }

    fn rows(&self, closed: Vec<(Key, Session<SessionFacts>)>) -> Vec<SessionRow> {
        closed
            .into_iter()
            .filter_map(|(Key(visitor, client_session), session)| {
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
                })
            })
            .collect()
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
    fn a_borrowed_key_hashes_and_compares_like_the_key_it_stands_for() {
        use std::hash::BuildHasher;
        let hasher = hashbrown::DefaultHashBuilder::default();
        for (visitor, session) in [("v000000001", None), ("v000000001", Some("s1")), ("", Some(""))] {
            let key = Key(visitor.into(), session.map(Into::into));
            let borrowed = KeyRef(visitor, session);
            assert_eq!(hasher.hash_one(&borrowed), hasher.hash_one(&key));
            assert!(borrowed.equivalent(&key));
            assert_eq!(Key::from(&borrowed), key);
        }
        assert!(!KeyRef("v1", None).equivalent(&Key("v1".into(), Some("".into()))));
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
