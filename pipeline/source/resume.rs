//! Resuming a partition exactly where its checkpoint left off, on brokers that do not start a
//! fetch where asked.
//!
//! Kafka answers a fetch with the whole batch that holds the requested offset, and the
//! consumer skips what precedes it. Some Kafka-protocol brokers (tansu 0.6) start at the next
//! batch instead, which would silently skip the rest of that batch. So the first message of a
//! partition resumed at a checkpointed offset is checked: when it is past the resume point,
//! the partition is sent back further, twice as far each time, until the broker delivers the
//! resume point (what precedes it is already in the task's state, and the runtime skips it).
//! A resumed partition that stays silent although it has messages to deliver is sent back too;
//! one whose log no longer holds the resume point is handed on with the count it skipped.
//! Pure decisions; the source performs the seeks.

use super::TopicPartition;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// How long a resumed partition with messages to deliver may stay silent before it is sent
/// back further (a broker that skips to the next batch delivers nothing from inside the last).
pub const RESUME_SILENCE: Duration = Duration::from_secs(2);

/// The first send-back goes this many offsets before the resume point.
const FIRST_REWIND: i64 = 1024;

/// Where an assigned partition must resume, how far before it the consumer was sent back, and
/// since when it waits for its first message.
#[derive(Debug, Clone, Copy)]
struct Resume {
    next: i64,
    rewind: i64,
    since: Instant,
}

/// What to do with a message of a partition that may be resuming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it on.
    Deliver,
    /// Drop it and fetch the partition from this offset.
    SeekBack(i64),
    /// Hand it on, although the offsets between the resume point and it are gone from the
    /// log: this many were never processed.
    Skipped(i64),
}

/// The partitions waiting for their first message since they were resumed.
#[derive(Debug, Default)]
pub struct Resumes {
    waiting: BTreeMap<TopicPartition, Resume>,
}

impl Resumes {
    /// Expects each partition of `start` to deliver its offset next, from `now`.
    pub fn expect(&mut self, start: impl IntoIterator<Item = (TopicPartition, i64)>, now: Instant) {
        self.waiting.extend(start.into_iter().map(|(tp, next)| (tp, Resume { next, rewind: 0, since: now })));
    }

    /// Forgets every partition (they were revoked).
    pub fn clear(&mut self) {
        self.waiting.clear();
    }

    /// Forgets `tp` (a seek failed: it continues from the broker's position).
    pub fn give_up(&mut self, tp: &TopicPartition) {
        self.waiting.remove(tp);
    }

    /// Decides on a message at `offset` of `topic`/`partition`, received at `now`.
    pub fn check(&mut self, topic: &str, partition: i32, offset: i64, now: Instant) -> Verdict {
        if self.waiting.is_empty() {
            // The usual case, checked before the key below allocates.
            return Verdict::Deliver;
        }
        let tp = (topic.to_owned(), partition);
        let Some(resume) = self.waiting.get_mut(&tp) else { return Verdict::Deliver };
        if offset <= resume.next || resume.next - resume.rewind <= 0 {
            let missing = offset - resume.next;
            self.waiting.remove(&tp);
            return if missing > 0 { Verdict::Skipped(missing) } else { Verdict::Deliver };
        }
        tracing::info!(
            topic,
            partition,
            resume_at = resume.next,
            got = offset,
            "the broker started past the resume point"
        );
        Verdict::SeekBack(send_back(&tp, resume, now))
    }

    /// Partitions that stayed silent since they were resumed although their high watermark
    /// says they have messages, with the offset to fetch them from.
    pub fn silent(&mut self, highs: &HashMap<TopicPartition, i64>, now: Instant) -> Vec<(TopicPartition, i64)> {
        let mut back = Vec::new();
        for (tp, resume) in &mut self.waiting {
            let behind = highs.get(tp).is_some_and(|high| *high > resume.next);
            if behind && now.duration_since(resume.since) >= RESUME_SILENCE {
                back.push((tp.clone(), send_back(tp, resume, now)));
            }
        }
        back
    }
}

/// Sends a resuming partition twice as far before its resume point as last time; the offset
/// to fetch from.
fn send_back(tp: &TopicPartition, resume: &mut Resume, now: Instant) -> i64 {
    resume.rewind = (resume.rewind * 2).max(FIRST_REWIND);
    resume.since = now;
    let target = (resume.next - resume.rewind).max(0);
    tracing::info!(
        topic = tp.0,
        partition = tp.1,
        resume_at = resume.next,
        fetching_from = target,
        "fetching from earlier"
    );
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> TopicPartition {
        ("orders".to_owned(), 0)
    }

    #[test]
    fn a_first_message_past_the_resume_point_sends_the_partition_back_twice_as_far_each_time() {
        let now = Instant::now();
        let mut resumes = Resumes::default();
        resumes.expect([(tp(), 5_000)], now);
        assert_eq!(resumes.check("orders", 0, 5_100, now), Verdict::SeekBack(5_000 - 1_024));
        assert_eq!(resumes.check("orders", 0, 5_100, now), Verdict::SeekBack(5_000 - 2_048));
        assert_eq!(resumes.check("orders", 1, 9_999, now), Verdict::Deliver, "another partition");
        assert_eq!(resumes.check("orders", 0, 3_000, now), Verdict::Deliver, "from before the resume point");
        assert_eq!(resumes.check("orders", 0, 5_100, now), Verdict::Deliver, "resumed: no longer checked");
    }

    #[test]
    fn a_partition_sent_back_to_its_start_delivers_what_the_log_has() {
        let now = Instant::now();
        let mut resumes = Resumes::default();
        resumes.expect([(tp(), 700)], now);
        assert_eq!(resumes.check("orders", 0, 800, now), Verdict::SeekBack(0));
        // Fetched from offset 0 and still past the resume point: the log lost those offsets.
        assert_eq!(resumes.check("orders", 0, 800, now), Verdict::Skipped(100));
    }

    #[test]
    fn a_silent_partition_with_messages_is_sent_back_after_the_silence() {
        let now = Instant::now();
        let mut resumes = Resumes::default();
        resumes.expect([(tp(), 5_000), (("orders".to_owned(), 1), 10)], now);
        let highs = HashMap::from([(tp(), 6_000), (("orders".to_owned(), 1), 10)]);
        assert!(resumes.silent(&highs, now).is_empty(), "not silent long enough");
        let later = now + RESUME_SILENCE;
        assert_eq!(resumes.silent(&highs, later), [(tp(), 5_000 - 1_024)], "partition 1 has nothing to deliver");
        resumes.give_up(&tp());
        resumes.clear();
        assert_eq!(resumes.check("orders", 0, 9_000, later), Verdict::Deliver);
    }
}
