//! Duplicate suppression by `event_id` within a bounded event-time horizon.
//!
//! Retrying producers resend an event with the same id and key, so a duplicate lands in the
//! same partition shortly after the original: per-partition state with a horizon of minutes is
//! enough. Ids are held in two generations. The current one takes new ids; once the watermark
//! has moved a horizon past its start, it becomes the previous one and the old previous is
//! dropped whole. So an id is remembered for at least one horizon of watermark progress and at
//! most two, and forgetting costs no per-id work. Memory is also capped: past `max_ids` the
//! older generation is dropped early (and counted).
//!
//! Every new id is checked against both generations. The previous one is screened by a small
//! Bloom filter, so that check usually stays in cache and only a filter hit reads the set.

use hashbrown::HashSet;
use serde::{Deserialize, Serialize};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

/// Seen event ids of one partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "DedupeSnapshot")]
pub struct Dedupe {
    horizon_ms: i64,
    max_ids: usize,
    /// 64-bit fingerprints of the ids since `current_since` (about 9 bytes per id in memory and
    /// 7 in a checkpoint, whatever the id's length). A false "duplicate" needs a fingerprint
    /// collision: about n / 2^64 per event for n ids held.
    #[serde(serialize_with = "packed::serialize")]
    current: HashSet<u64>,
    /// The generation before the current one.
    #[serde(serialize_with = "packed::serialize")]
    previous: HashSet<u64>,
    /// Watermark (or first event time) at which `current` started taking ids.
    current_since: Option<i64>,
    /// Screens `previous`; rebuilt from it on every rotation and restore.
    #[serde(skip)]
    screen: Screen,
    evicted_early: u64,
}

/// The serialized fields of [`Dedupe`]; also reads the single-generation layout of earlier
/// releases (`seen` with its arrival `order`).
#[derive(Deserialize)]
struct DedupeSnapshot {
    horizon_ms: i64,
    max_ids: usize,
    #[serde(default, deserialize_with = "packed::deserialize")]
    current: HashSet<u64>,
    #[serde(default, deserialize_with = "packed::deserialize")]
    previous: HashSet<u64>,
    #[serde(default)]
    current_since: Option<i64>,
    #[serde(default)]
    evicted_early: u64,
    #[serde(default)]
    seen: HashSet<u64>,
    #[serde(default)]
    order: Vec<(i64, u64)>,
}

impl From<DedupeSnapshot> for Dedupe {
    fn from(snap: DedupeSnapshot) -> Self {
        let mut current = snap.current;
        current.extend(snap.seen);
        let current_since = snap.current_since.or_else(|| snap.order.first().map(|(t, _)| *t));
        let screen = Screen::of(&snap.previous);
        Dedupe {
            horizon_ms: snap.horizon_ms,
            max_ids: snap.max_ids.max(1),
            current,
            previous: snap.previous,
            current_since,
            screen,
            evicted_early: snap.evicted_early,
        }
    }
}

impl Dedupe {
    /// Remembers ids for one to two `horizon_ms` of watermark progress, at most `max_ids`.
    pub fn new(horizon_ms: i64, max_ids: usize) -> Self {
        Dedupe {
            horizon_ms,
            max_ids: max_ids.max(1),
            current: HashSet::new(),
            previous: HashSet::new(),
            current_since: None,
            screen: Screen::default(),
            evicted_early: 0,
        }
    }

    fn fingerprint(event_id: &str) -> u64 {
        // SipHash with fixed zero keys: the same id gives the same fingerprint in every process.
        BuildHasherDefault::<DefaultHasher>::default().hash_one(event_id)
    }

    /// Records `event_id`; returns true if it was already seen within the horizon.
    pub fn is_duplicate(&mut self, event_id: &str, event_time: i64) -> bool {
        let fp = Self::fingerprint(event_id);
        if self.screen.may_contain(fp) && self.previous.contains(&fp) {
            return true;
        }
        if !self.current.insert(fp) {
            return true;
        }
        self.current_since.get_or_insert(event_time);
        // Both generations together stay within `max_ids`.
        if self.current.len() >= self.max_ids.div_ceil(2) {
            self.evicted_early += self.previous.len() as u64;
            self.rotate();
            self.current_since = None;
        }
        false
    }

    /// Retires the current generation once the watermark is a horizon past its start.
    pub fn expire(&mut self, watermark: i64) {
        match self.current_since {
            Some(since) if watermark.saturating_sub(since) >= self.horizon_ms => {
                self.rotate();
                self.current_since = Some(watermark);
            }
            _ => {}
        }
    }

    /// The current generation becomes the previous one; the old previous is forgotten.
    fn rotate(&mut self) {
        std::mem::swap(&mut self.current, &mut self.previous);
        // Keeps the allocation: a steady stream needs the same capacity every generation.
        self.current.clear();
        self.screen = Screen::of(&self.previous);
    }

    /// Ids held now.
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ids forgotten before their horizon because of `max_ids`.
    pub fn evicted_early(&self) -> u64 {
        self.evicted_early
    }
}

/// A blocked Bloom filter over fingerprints: about 8 bits per id, two bits in one 64-bit word
/// per id, so a check reads one word. False positives (a few percent) only cost a set lookup.
#[derive(Debug, Clone, Default)]
struct Screen {
    words: Vec<u64>,
}

impl Screen {
    fn of(ids: &HashSet<u64>) -> Self {
        if ids.is_empty() {
            return Screen::default();
        }
        let mut screen = Screen { words: vec![0; (ids.len() / 8 + 1).next_power_of_two()] };
        for &fp in ids {
            let (word, bits) = screen.locate(fp);
            screen.words[word] |= bits;
        }
        screen
    }

    /// The word and the two bits of `fp`, from bits of the fingerprint the set's own hashing
    /// does not depend on.
    fn locate(&self, fp: u64) -> (usize, u64) {
        let word = (fp as usize) & (self.words.len() - 1);
        let bits = (1u64 << ((fp >> 52) & 63)) | (1u64 << ((fp >> 58) & 63));
        (word, bits)
    }

    fn may_contain(&self, fp: u64) -> bool {
        if self.words.is_empty() {
            return false;
        }
        let (word, bits) = self.locate(fp);
        self.words[word] & bits == bits
    }
}

/// Fingerprints in a checkpoint: one byte string of the sorted fingerprints, each the LEB128
/// varint of its distance from the one before. Random 64-bit values n to a set lie about 2^64/n
/// apart, so an id takes about 7 bytes, against 9 as a CBOR integer; the ids are most of a
/// clickstream task's state once its windows have closed. Snapshots of format 3 and before
/// hold an array of integers, read as well.
mod packed {
    use hashbrown::HashSet;
    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(set: &HashSet<u64>, serializer: S) -> Result<S::Ok, S::Error> {
        let mut sorted: Vec<u64> = set.iter().copied().collect();
        sorted.sort_unstable();
        let mut bytes = Vec::with_capacity(sorted.len() * 7);
        let mut last = 0;
        for fp in sorted {
            let mut gap = fp - last;
            last = fp;
            while gap >= 0x80 {
                bytes.push((gap as u8) | 0x80);
                gap >>= 7;
            }
            bytes.push(gap as u8);
        }
        serializer.serialize_bytes(&bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<HashSet<u64>, D::Error> {
        deserializer.deserialize_any(Fingerprints)
    }

    struct Fingerprints;

    impl<'de> Visitor<'de> for Fingerprints {
        type Value = HashSet<u64>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("packed fingerprints or an array of them")
        }

        fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Self::Value, E> {
            let mut set = HashSet::with_capacity(bytes.len() / 7);
            let (mut last, mut gap, mut shift) = (0u64, 0u64, 0u32);
            for &byte in bytes {
                if shift > 63 {
                    return Err(E::custom("a fingerprint gap longer than 64 bits"));
                }
                gap |= u64::from(byte & 0x7f) << shift;
                shift += 7;
                if byte & 0x80 == 0 {
                    last = last.checked_add(gap).ok_or_else(|| E::custom("fingerprints past 2^64"))?;
                    set.insert(last);
                    (gap, shift) = (0, 0);
                }
            }
            if shift != 0 {
                return Err(E::custom("truncated fingerprints"));
            }
            Ok(set)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut set = HashSet::with_capacity(seq.size_hint().unwrap_or_default());
            while let Some(fp) = seq.next_element()? {
                set.insert(fp);
            }
            Ok(set)
        }
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
    fn ids_are_held_one_horizon_and_forgotten_within_two() {
        let mut d = Dedupe::new(60_000, 100);
        assert!(!d.is_duplicate("e1", 1_000));
        d.expire(60_999);
        assert!(d.is_duplicate("e1", 1_000), "within one horizon of the first event");
        d.expire(61_000);
        assert!(d.is_duplicate("e1", 1_000), "the retired generation is still checked");
        assert!(!d.is_duplicate("e2", 61_000));
        d.expire(121_000);
        assert_eq!(d.len(), 1, "e1 went with its generation, e2 stays");
        assert!(!d.is_duplicate("e1", 1_000), "forgotten ids are new again");
        assert!(d.is_duplicate("e2", 61_000));
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

    #[test]
    fn the_screen_never_hides_a_held_id() {
        let ids: HashSet<u64> = (0..10_000u64).map(|i| Dedupe::fingerprint(&format!("id-{i}"))).collect();
        let screen = Screen::of(&ids);
        assert!(ids.iter().all(|&fp| screen.may_contain(fp)));
        let false_hits =
            (0..10_000u64).filter(|i| screen.may_contain(Dedupe::fingerprint(&format!("other-{i}")))).count();
        assert!(false_hits < 1_000, "{false_hits} false hits in 10,000");
    }

    #[test]
    fn both_generations_survive_a_snapshot() {
        let mut d = Dedupe::new(60_000, 100);
        assert!(!d.is_duplicate("old", 0));
        d.expire(60_000);
        assert!(!d.is_duplicate("new", 60_000));
        let bytes = crate::snapshot::cbor(&d).expect("snapshot");
        let mut back: Dedupe = crate::snapshot::read_cbor(&bytes).expect("restore");
        assert!(back.is_duplicate("old", 0), "the previous generation and its screen are restored");
        assert!(back.is_duplicate("new", 60_000));
        back.expire(120_000);
        assert!(!back.is_duplicate("old", 0), "and retire on the same schedule");
    }

    #[test]
    fn fingerprints_pack_to_about_seven_bytes_and_the_array_layout_still_reads() {
        let mut d = Dedupe::new(60_000, 1_000_000);
        for i in 0..50_000 {
            d.is_duplicate(&format!("event-{i}"), 0);
        }
        // The extremes a gap can take: 0 (the first fingerprint) and the largest.
        d.current.extend([0, 1, u64::MAX]);
        let bytes = crate::snapshot::cbor(&d).expect("snapshot");
        let per_id = bytes.len() as f64 / d.len() as f64;
        assert!(per_id < 7.5, "{per_id:.2} bytes an id");
        let back: Dedupe = crate::snapshot::read_cbor(&bytes).expect("restore");
        assert_eq!(back.current, d.current);

        #[derive(Serialize)]
        struct Format3 {
            horizon_ms: i64,
            max_ids: usize,
            current: HashSet<u64>,
            previous: HashSet<u64>,
        }
        let old = Format3 { horizon_ms: 1, max_ids: 9, current: d.current.clone(), previous: HashSet::new() };
        let back: Dedupe = crate::snapshot::read_cbor(&crate::snapshot::cbor(&old).expect("cbor")).expect("restore");
        assert_eq!(back.current, d.current);
    }

    #[test]
    fn a_snapshot_of_the_single_generation_layout_restores() {
        #[derive(Serialize)]
        struct Before {
            horizon_ms: i64,
            max_ids: usize,
            seen: HashSet<u64>,
            order: std::collections::VecDeque<(i64, u64)>,
            evicted_early: u64,
        }
        let fp = Dedupe::fingerprint("e1");
        let before = Before {
            horizon_ms: 60_000,
            max_ids: 100,
            seen: HashSet::from([fp]),
            order: [(5_000, fp)].into(),
            evicted_early: 3,
        };
        let bytes = crate::snapshot::cbor(&before).expect("snapshot");
        let mut back: Dedupe = crate::snapshot::read_cbor(&bytes).expect("restore");
        assert!(back.is_duplicate("e1", 5_000));
        assert_eq!(back.evicted_early(), 3);
        back.expire(65_000);
        back.expire(125_000);
        assert!(back.is_empty(), "the old ids age out like any generation");
    }
}
