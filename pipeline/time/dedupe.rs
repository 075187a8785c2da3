//! Duplicate suppression by `event_id` within a bounded event-time horizon.
//!
//! Retrying producers resend an event with the same id and key, so a duplicate lands in the
//! same partition shortly after the original: per-partition state with a horizon of minutes is
//! enough. Memory is bounded twice: ids older than the watermark minus the horizon are
//! forgotten, and past `max_ids` the oldest ids are forgotten first (and counted).

use hashbrown::HashSet;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

/// Seen event ids of one partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dedupe {
    horizon_ms: i64,
    max_ids: usize,
    /// 64-bit fingerprints of the ids (16 bytes per id with the queue, whatever the id's length).
    /// A false "duplicate" needs a fingerprint collision: about n / 2^64 per event for n ids held.
    seen: HashSet<u64>,
    /// Fingerprints in arrival order with their event time, for expiry.
    order: VecDeque<(i64, u64)>,
    evicted_early: u64,
}

impl Dedupe {
    /// Remembers ids for `horizon_ms` of event time behind the watermark, at most `max_ids`.
    pub fn new(horizon_ms: i64, max_ids: usize) -> Self {
        Dedupe { horizon_ms, max_ids: max_ids.max(1), seen: HashSet::new(), order: VecDeque::new(), evicted_early: 0 }
    }

    fn fingerprint(event_id: &str) -> u64 {
        // SipHash with fixed zero keys: the same id gives the same fingerprint in every process.
        BuildHasherDefault::<DefaultHasher>::default().hash_one(event_id)
    }

    /// Records `event_id`; returns true if it was already seen within the horizon.
    pub fn is_duplicate(&mut self, event_id: &str, event_time: i64) -> bool {
        let fp = Self::fingerprint(event_id);
        if !self.seen.insert(fp) {
            return true;
        }
        self.order.push_back((event_time, fp));
        while self.order.len() > self.max_ids {
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
                self.evicted_early += 1;
            }
        }
        false
    }

    /// Forgets ids whose event time is more than the horizon behind `watermark`.
    pub fn expire(&mut self, watermark: i64) {
        let cutoff = watermark - self.horizon_ms;
        while self.order.front().is_some_and(|(t, _)| *t < cutoff) {
            if let Some((_, fp)) = self.order.pop_front() {
                self.seen.remove(&fp);
            }
        }
    }

    /// Ids held now.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Ids forgotten before their horizon because of `max_ids`.
    pub fn evicted_early(&self) -> u64 {
        self.evicted_early
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_copy_is_a_duplicate_within_the_horizon() {
        let mut d = Dedupe::new(60_000, 100);
        assert!(!d.is_duplicate("e1", 1_000));
        assert!(!d.is_duplicate("e2", 2_000));
        assert!(d.is_duplicate("e1", 1_000));
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn ids_behind_the_horizon_are_forgotten() {
        let mut d = Dedupe::new(60_000, 100);
        assert!(!d.is_duplicate("e1", 1_000));
        d.expire(61_001);
        assert!(d.is_empty());
        assert!(!d.is_duplicate("e1", 1_000), "forgotten ids are new again");
    }

    #[test]
    fn memory_is_capped_and_early_evictions_are_counted() {
        let mut d = Dedupe::new(i64::MAX / 4, 3);
        for i in 0..5 {
            assert!(!d.is_duplicate(&format!("e{i}"), i));
        }
        assert_eq!(d.len(), 3);
        assert_eq!(d.evicted_early(), 2);
        assert!(d.is_duplicate("e4", 4));
    }
}
