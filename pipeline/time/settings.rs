//! Event-time settings in milliseconds, as the operators use them: window sizes, watermarks,
//! lateness per metric family, sessions, duplicate suppression and how long state is kept.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Event-time settings in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeSettings {
    /// Tumbling window sizes, ascending; the first is the base window.
    pub window_sizes_ms: Vec<i64>,
    /// Allowed out-of-orderness.
    pub out_of_orderness_ms: i64,
    /// Allowed lateness per metric family.
    pub lateness: FamilyLateness,
    /// Session inactivity gap.
    pub session_gap_ms: i64,
    /// Session length guard.
    pub session_max_length_ms: i64,
    /// Idle timeout.
    pub idle_timeout_ms: i64,
    /// Duplicate-suppression horizon.
    pub dedupe_horizon_ms: i64,
    /// Duplicate-suppression memory cap, ids per partition.
    pub dedupe_max_ids: usize,
    /// How long order lifecycle state is kept.
    pub retention: Retention,
    /// Which events may move a partition's watermark; `None`: every event.
    pub jump_guard: Option<JumpGuard>,
}

/// An event far ahead of everything its partition has shown (a device clock a day fast, one
/// mis-stamped producer) would move the watermark by itself and make every later event of the
/// partition late. Such an event is held until more arrive in a row that are as far ahead (the
/// partition really moved on: a quiet night, a producer back from an outage); an event back
/// within reach of the partition's time first sends the held ones to quarantine instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JumpGuard {
    /// How far past the partition's largest event time an event may be and still count, ms.
    pub max_jump_ms: i64,
    /// How many far-ahead events in a row prove a jump, including the first.
    pub corroborating_events: usize,
}

impl JumpGuard {
    /// Whether an event at `event_time` is too far ahead of `max_event_time` to count alone.
    pub fn far_ahead(&self, event_time: i64, max_event_time: Option<i64>) -> bool {
        max_event_time.is_some_and(|max| event_time.saturating_sub(max) > self.max_jump_ms)
    }
}

impl TimeSettings {
    /// The smallest window size: lateness and session attribution use it.
    pub fn base_window_ms(&self) -> i64 {
        self.window_sizes_ms[0]
    }
}

impl Default for TimeSettings {
    fn default() -> Self {
        TimeSettings {
            window_sizes_ms: vec![60_000, 3_600_000],
            out_of_orderness_ms: 5_000,
            lateness: FamilyLateness::default(),
            session_gap_ms: 1_800_000,
            session_max_length_ms: 6 * 3_600_000,
            idle_timeout_ms: 30_000,
            dedupe_horizon_ms: 600_000,
            dedupe_max_ids: 2_000_000,
            retention: Retention {
                terminal_ttl_ms: 7 * 86_400_000,
                open_timeout_ms: 30 * 86_400_000,
                orphan_after_ms: 3_600_000,
            },
            jump_guard: Some(JumpGuard { max_jump_ms: 600_000, corroborating_events: 5 }),
        }
    }
}

/// Allowed lateness of each metric family, ms: one default, and families set apart by name
/// (`traffic`, `sessions`, `orders`, `fulfillment`, and any family added later).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FamilyLateness {
    default_ms: i64,
    by_family: BTreeMap<String, i64>,
}

impl FamilyLateness {
    /// The same lateness for every family.
    pub fn uniform(ms: i64) -> Self {
        FamilyLateness { default_ms: ms, by_family: BTreeMap::new() }
    }

    /// This, with `family`'s lateness set to `ms`.
    #[must_use]
    pub fn with(mut self, family: &str, ms: i64) -> Self {
        self.by_family.insert(family.to_owned(), ms);
        self
    }

    /// The allowed lateness of `family`, ms.
    pub fn of(&self, family: &str) -> i64 {
        self.by_family.get(family).copied().unwrap_or(self.default_ms)
    }
}

/// How long order state is kept, ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// After a terminal state, so that refunds and late scans still reach the order's fact.
    pub terminal_ttl_ms: i64,
    /// Without any event, for orders that never finish.
    pub open_timeout_ms: i64,
    /// Scans whose order has not arrived become orphans after this.
    pub orphan_after_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_without_its_own_lateness_takes_the_default() {
        let lateness = FamilyLateness::uniform(5_000).with("orders", 60_000);
        assert_eq!(
            (lateness.of("orders"), lateness.of("traffic"), lateness.of("a-new-family")),
            (60_000, 5_000, 5_000)
        );
    }
}
