//! Property tests of the event-time semantics, on one clickstream partition task (funnel,
//! sessions, watermark, lateness and dedupe together):
//! - any arrival order within the allowed out-of-orderness gives identical outputs;
//! - every input event is counted exactly once across metrics, late events and duplicates;
//! - snapshot → restore → continue gives the same outputs as an uninterrupted run;
//! - whatever the arrival order, the outputs are the metric definitions applied to the events
//!   that were neither late nor duplicates (a reference model computed in batch);
//! - any number of isolated far-future events (a device clock days fast) leaves every other
//!   event's output unchanged, and each of them is quarantined.

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use storepulse::event::{Channel, ClickEvent, ClickEventType, Device, Event, Stream};
use storepulse::operators::{
    Disposition, FunnelCounts, FunnelRow, PartitionTask, SESSIONS, SessionRow, Step, TRAFFIC, TaskId, TaskOutput,
    builtin,
};
use storepulse::time::{FamilyLateness, JumpGuard, TimeSettings};

const SEC: i64 = 1_000;
const MIN: i64 = 60 * SEC;
const OUT_OF_ORDERNESS: i64 = 5 * SEC;
/// Beyond the longest gap [`clicks`] makes: in these streams only an attack jumps this far.
const MAX_JUMP: i64 = 3 * 60 * MIN;

fn settings(lateness_ms: i64) -> TimeSettings {
    TimeSettings {
        window_sizes_ms: vec![MIN, 60 * MIN],
        out_of_orderness_ms: OUT_OF_ORDERNESS,
        lateness: FamilyLateness::uniform(lateness_ms),
        session_gap_ms: 30 * MIN,
        // Far beyond any generated session: the length guard is the one order-dependent rule.
        session_max_length_ms: 48 * 60 * MIN,
        jump_guard: Some(JumpGuard { max_jump_ms: MAX_JUMP, corroborating_events: 5 }),
        ..TimeSettings::default()
    }
}

const TYPES: [ClickEventType; 6] = [
    ClickEventType::PageView,
    ClickEventType::Search,
    ClickEventType::ProductView,
    ClickEventType::AddToCart,
    ClickEventType::BeginCheckout,
    ClickEventType::Purchase,
];
const CHANNELS: [Channel; 3] = [Channel::Direct, Channel::LiveStream, Channel::PaidSearch];
const DEVICES: [Device; 2] = [Device::App, Device::Desktop];

/// Clicks in event-time order: a few visitors, gaps from milliseconds to over an hour.
fn clicks() -> impl Strategy<Value = Vec<ClickEvent>> {
    let step = (0u8..8, 0usize..6, 0usize..6, 0usize..3, 0usize..2, prop::option::of(0u8..2), 0i64..90 * SEC);
    prop::collection::vec(step, 1..160).prop_map(|steps| {
        let mut t = 1_700_000_000_000;
        steps
            .into_iter()
            .enumerate()
            .map(|(i, (gap_kind, visitor, kind, channel, device, session, small_gap))| {
                // Gaps just under and over the session gap make sessions split and merge.
                t += match gap_kind {
                    0 => 35 * MIN,
                    1 => 80 * MIN,
                    2 => 27 * MIN + small_gap,
                    _ => small_gap,
                };
                ClickEvent {
                    channel: Some(CHANNELS[channel]),
                    session_id: session.map(|s| format!("s{visitor}-{s}")),
                    ..ClickEvent::new(format!("e{i:05}"), TYPES[kind], t, format!("v{visitor}"), DEVICES[device])
                }
            })
            .collect()
    })
}

#[derive(Debug, Default, PartialEq)]
struct Outputs {
    funnel: Vec<FunnelRow>,
    sessions: Vec<SessionRow>,
    late: Vec<(&'static str, String)>,
    duplicates: usize,
    quarantined: Vec<String>,
}

fn run(task: &mut PartitionTask, events: &[ClickEvent], into: &mut Outputs) {
    let mut out = TaskOutput::default();
    for e in events {
        if task.process(&Event::Click(e.clone()), 0, &mut out) == Ok(Disposition::Duplicate) {
            into.duplicates += 1;
        }
    }
    collect(out, into);
}

fn finish(mut task: PartitionTask, into: &mut Outputs) {
    let mut out = TaskOutput::default();
    task.close_all(&mut out);
    collect(out, into);
}

fn collect(mut out: TaskOutput, into: &mut Outputs) {
    into.funnel.append(out.rows.table::<FunnelRow>());
    into.sessions.append(out.rows.table::<SessionRow>());
    into.late.extend(out.late.into_iter().map(|l| (l.family, l.event_id)));
    into.quarantined.extend(out.quarantined.into_iter().map(|q| q.event_id));
}

fn run_to_end(events: &[ClickEvent], lateness_ms: i64) -> Outputs {
    let mut task = PartitionTask::new(TaskId::of(Stream::Clickstream, 0), &builtin(), &settings(lateness_ms));
    let mut outputs = Outputs::default();
    run(&mut task, events, &mut outputs);
    finish(task, &mut outputs);
    outputs
}

fn sorted(mut o: Outputs) -> Outputs {
    o.funnel.sort();
    o.sessions.sort();
    o.late.sort();
    o.quarantined.sort();
    o
}

/// `events` with far-future copies inserted: `(after, ahead, copies)` puts `copies` (one to
/// four, fewer than the guard's five in a row) events `ahead` past the jump limit right after
/// event `after` (the first such group there; never after the last event), from a visitor and
/// session of the real ones. Returns them and the ids inserted.
fn with_far_future(
    events: &[ClickEvent],
    attacks: &[(prop::sample::Index, i64, usize)],
) -> (Vec<ClickEvent>, Vec<String>) {
    let mut after: BTreeMap<usize, Vec<ClickEvent>> = BTreeMap::new();
    let mut ids = Vec::new();
    for (n, (at, ahead, copies)) in attacks.iter().enumerate() {
        // Isolated: a real event follows (after the last one, the end of input would count them).
        let Some(at) = events.len().checked_sub(1).filter(|&n| n > 0).map(|n| at.index(n)) else { break };
        if after.contains_key(&at) {
            continue; // one group per place: two would make five in a row, a corroborated jump
        }
        let max_so_far = events[..=at].iter().map(|e| e.event_time).max().unwrap_or_default();
        for copy in 0..*copies {
            let template = &events[(at + copy) % events.len()];
            let id = format!("far{n}-{copy}");
            ids.push(id.clone());
            let event_time = max_so_far + MAX_JUMP + 1 + ahead + copy as i64;
            after.entry(at).or_default().push(ClickEvent { event_id: id, event_time, ..template.clone() });
        }
    }
    let mut input = Vec::new();
    for (i, e) in events.iter().enumerate() {
        input.push(e.clone());
        input.extend(after.remove(&i).unwrap_or_default());
    }
    ids.sort();
    (input, ids)
}

/// The events plus a second copy of those `duplicated` picks (as a retrying producer sends).
fn with_copies(events: &[ClickEvent], duplicated: &[prop::sample::Index]) -> Vec<ClickEvent> {
    let copies = duplicated.iter().map(|index| events[index.index(events.len())].clone());
    events.iter().cloned().chain(copies).collect()
}

/// Reorders by arrival = event time + a delay per event, stable for equal arrivals.
fn arrive(events: &[ClickEvent], delays: &[i64]) -> Vec<ClickEvent> {
    let mut arrivals: Vec<(i64, usize)> =
        events.iter().enumerate().map(|(i, e)| (e.event_time + delays[i % delays.len()], i)).collect();
    arrivals.sort();
    arrivals.into_iter().map(|(_, i)| events[i].clone()).collect()
}

type FunnelKey = (i64, i64, Option<Channel>, Option<Device>);

/// The funnel definitions in batch: per window size, start, channel and device (with
/// subtotals), events, distinct visitors, page views and distinct visitors per step.
fn reference_funnel(events: &[&ClickEvent]) -> BTreeMap<FunnelKey, FunnelCounts> {
    let mut visitors: BTreeMap<FunnelKey, BTreeMap<&str, u8>> = BTreeMap::new();
    let mut counts: BTreeMap<FunnelKey, FunnelCounts> = BTreeMap::new();
    for e in events {
        for size in [MIN, 60 * MIN] {
            let start = e.event_time.div_euclid(size) * size;
            let (c, d) = (e.channel, Some(e.device));
            for (channel, device) in [(c, d), (c, None), (None, d), (None, None)] {
                let key = (size, start, channel, device);
                let entry = counts.entry(key).or_default();
                entry.events += 1;
                entry.page_views += u64::from(e.event_type == ClickEventType::PageView);
                let steps = visitors.entry(key).or_default().entry(e.visitor_id.as_str()).or_default();
                *steps |= Step::of(e.event_type).map_or(0, Step::bit);
            }
        }
    }
    for (key, per_visitor) in visitors {
        let entry = counts.get_mut(&key).expect("same keys");
        entry.visitors = per_visitor.len() as u64;
        for step in Step::ALL {
            entry.step_visitors[step as usize] = per_visitor.values().filter(|s| **s & step.bit() != 0).count() as u64;
        }
    }
    counts
}

/// The session definition in batch: per visitor and client session id, events in time order,
/// split where the gap reaches 30 minutes. (visitor, session id, start, end, events, page views).
fn reference_sessions(events: &[&ClickEvent]) -> Vec<(String, Option<String>, i64, i64, u32, u32)> {
    let mut by_key: BTreeMap<(&str, Option<&str>), Vec<&ClickEvent>> = BTreeMap::new();
    for e in events {
        by_key.entry((e.visitor_id.as_str(), e.session_id.as_deref())).or_default().push(e);
    }
    let mut sessions = Vec::new();
    for ((visitor, session_id), mut list) in by_key {
        list.sort_by_key(|e| e.event_time);
        let mut current: Option<(i64, i64, u32, u32)> = None;
        for e in list {
            let page_view = u32::from(e.event_type == ClickEventType::PageView);
            current = match current {
                Some((start, last, n, pv)) if e.event_time - last < 30 * MIN => {
                    Some((start, e.event_time, n + 1, pv + page_view))
                }
                Some((start, last, n, pv)) => {
                    sessions.push((visitor.to_owned(), session_id.map(str::to_owned), start, last, n, pv));
                    Some((e.event_time, e.event_time, 1, page_view))
                }
                None => Some((e.event_time, e.event_time, 1, page_view)),
            };
        }
        if let Some((start, last, n, pv)) = current {
            sessions.push((visitor.to_owned(), session_id.map(str::to_owned), start, last, n, pv));
        }
    }
    sessions.sort();
    sessions
}

/// Distinct events of `input` that were not late for `family`.
fn accepted<'a>(input: &'a [ClickEvent], outputs: &Outputs, family: &str) -> Vec<&'a ClickEvent> {
    let late: BTreeSet<&str> = outputs.late.iter().filter(|(f, _)| *f == family).map(|(_, id)| id.as_str()).collect();
    let mut seen = BTreeSet::new();
    input.iter().filter(|e| !late.contains(e.event_id.as_str()) && seen.insert(e.event_id.as_str())).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_arrival_order_within_the_out_of_orderness_gives_identical_outputs(
        events in clicks(),
        delays in prop::collection::vec(0..=OUT_OF_ORDERNESS, 1..50),
    ) {
        let in_order = sorted(run_to_end(&events, 0));
        let shuffled = sorted(run_to_end(&arrive(&events, &delays), 0));
        prop_assert!(in_order.late.is_empty());
        prop_assert_eq!(shuffled, in_order);
    }

    #[test]
    fn every_event_is_counted_once_across_metrics_late_events_and_duplicates(
        events in clicks(),
        delays in prop::collection::vec(0..10 * MIN, 1..50),
        duplicated in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        lateness_ms in prop_oneof![Just(0), Just(30 * SEC), Just(5 * MIN)],
    ) {
        let input = arrive(&with_copies(&events, &duplicated), &delays);
        let outputs = run_to_end(&input, lateness_ms);
        let late = |family| outputs.late.iter().filter(|(f, _)| *f == family).count() as u64;
        let counted_in = |size| -> u64 {
            outputs.funnel.iter().filter(|r| r.window_ms == size && r.channel.is_none() && r.device.is_none())
                .map(|r| r.counts.events).sum()
        };
        let total = input.len() as u64;
        let duplicates = outputs.duplicates as u64;
        prop_assert_eq!(counted_in(MIN) + late(TRAFFIC) + duplicates, total);
        prop_assert_eq!(counted_in(60 * MIN) + late(TRAFFIC) + duplicates, total);
        let in_sessions: u64 = outputs.sessions.iter().map(|s| u64::from(s.events)).sum();
        prop_assert_eq!(in_sessions + late(SESSIONS) + duplicates, total);
        prop_assert_eq!(outputs.duplicates, duplicated.len(), "copies arrive within the dedupe horizon");
    }

    #[test]
    fn snapshot_restore_continue_equals_an_uninterrupted_run(
        events in clicks(),
        delays in prop::collection::vec(0..3 * MIN, 1..50),
        cut in any::<prop::sample::Index>(),
    ) {
        let input = arrive(&events, &delays);
        let uninterrupted = run_to_end(&input, 0);

        let (before, after) = input.split_at(cut.index(input.len() + 1).min(input.len()));
        let mut outputs = Outputs::default();
        let mut task = PartitionTask::new(TaskId::of(Stream::Clickstream, 0), &builtin(), &settings(0));
        run(&mut task, before, &mut outputs);
        let bytes = task.snapshot(0).expect("snapshot");
        drop(task);
        let mut restored = PartitionTask::restore(&bytes, &builtin(), &settings(0)).expect("restore");
        run(&mut restored, after, &mut outputs);
        finish(restored, &mut outputs);
        prop_assert_eq!(outputs, uninterrupted);
    }

    #[test]
    fn outputs_are_the_definitions_applied_to_the_events_neither_late_nor_duplicate(
        events in clicks(),
        delays in prop::collection::vec(0..10 * MIN, 1..50),
        duplicated in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        lateness_ms in prop_oneof![Just(0), Just(30 * SEC), Just(5 * MIN)],
    ) {
        let input = arrive(&with_copies(&events, &duplicated), &delays);
        let outputs = run_to_end(&input, lateness_ms);

        let mut funnel: BTreeMap<FunnelKey, FunnelCounts> = BTreeMap::new();
        for r in &outputs.funnel {
            let previous = funnel.insert((r.window_ms, r.window_start, r.channel, r.device), r.counts);
            prop_assert!(previous.is_none(), "window emitted twice: {:?}", r);
        }
        prop_assert_eq!(funnel, reference_funnel(&accepted(&input, &outputs, TRAFFIC)));

        let mut sessions: Vec<_> = outputs.sessions.iter()
            .map(|s| (s.visitor_id.clone(), s.client_session_id.clone(), s.session_start, s.session_end, s.events, s.page_views))
            .collect();
        sessions.sort();
        prop_assert_eq!(sessions, reference_sessions(&accepted(&input, &outputs, SESSIONS)));
    }

    #[test]
    fn isolated_far_future_events_leave_every_other_output_unchanged(
        events in clicks(),
        delays in prop::collection::vec(0..2 * MIN, 1..50),
        attacks in prop::collection::vec((any::<prop::sample::Index>(), 0..2 * 24 * 60 * MIN, 1..=4usize), 0..12),
    ) {
        let clean = arrive(&events, &delays);
        let (attacked, ids) = with_far_future(&clean, &attacks);
        let mut expected = sorted(run_to_end(&clean, 0));
        prop_assert!(expected.quarantined.is_empty(), "the clean stream has no jump beyond the limit");
        expected.quarantined = ids;
        prop_assert_eq!(sorted(run_to_end(&attacked, 0)), expected);
    }
}
