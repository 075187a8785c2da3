//! What happened to each message, counted once: consumed, decoded, rejected to the dead
//! letters, late for a family, or suppressed as a duplicate. The last three are typed events
//! whose `emit` counts them (series resolved once, not looked up by label per message) and
//! writes a log line at most every [`LOG_EVERY`], saying how many it left out.

use super::Metrics;
use crate::codec::DecodeError;
use crate::event::Stream;
use prometheus::IntCounter;
use std::time::{Duration, Instant};

/// At most one log line per kind of event this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Counts of one run, for the final report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Messages consumed.
    pub consumed: u64,
    /// Events decoded and validated.
    pub decoded: u64,
    /// Messages sent to dead letters.
    pub rejected: u64,
    /// Late events, one per metric family whose window they missed.
    pub late: u64,
    /// Events suppressed as duplicates.
    pub duplicates: u64,
    /// Instance-wide windows closed.
    pub windows_closed: u64,
    /// Parquet files published.
    pub files: u64,
    /// Checkpoints committed.
    pub checkpoints: u64,
    /// Partition tasks restored from a checkpoint.
    pub restored: u64,
}

impl RunReport {
    /// Prints (`progress`, the demo) or logs the counts so far and the rate since `since`
    /// (when, and how many were consumed then).
    pub fn print_status(&self, since: (Instant, u64), progress: bool) {
        let secs = since.0.elapsed().as_secs_f64().max(1e-3);
        let rate = (self.consumed - since.1) as f64 / secs;
        let line = format!(
            "consumed {} ({rate:.0}/s)  decoded {}  dead letters {}  late {}  duplicates {}  windows closed {}  files {}",
            self.consumed, self.decoded, self.rejected, self.late, self.duplicates, self.windows_closed, self.files
        );
        if progress {
            println!("{line}");
        } else {
            tracing::info!("{line}");
        }
    }
}

/// Lets a log line through at most every [`LOG_EVERY`], counting the ones it holds back: a
/// condition that repeats (a broker outage reports every reconnect) gets one line per interval.
#[derive(Debug, Default)]
pub struct LogLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    /// `Some(lines held back since the last one)` when a line may be written now.
    pub fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < LOG_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The outcome counters of one pipeline, and its run's report.
pub struct Outcomes {
    metrics: Metrics,
    consumed: [IntCounter; 3],
    decoded: [IntCounter; 3],
    duplicates: [IntCounter; 3],
    /// By stream, then by [`DecodeError::REASONS`] position.
    rejected: [Vec<IntCounter>; 3],
    /// By stream and family, resolved on first use.
    late: Vec<(Stream, &'static str, IntCounter)>,
    rejected_log: LogLimit,
    late_log: LogLimit,
    duplicate_log: LogLimit,
    /// This run's counts.
    pub report: RunReport,
}

impl Outcomes {
    /// Counters of `metrics`, with `topic_of` naming each stream's topic. Their series exist
    /// from the first scrape, so `rate()` and absence alerts work before traffic.
    pub fn new(metrics: &Metrics, topic_of: impl Fn(Stream) -> String) -> Self {
        let by_stream = |stream: Stream| stream.as_str();
        Outcomes {
            consumed: Stream::ALL.map(|s| metrics.messages_consumed.with_label_values(&[topic_of(s).as_str()])),
            decoded: Stream::ALL.map(|s| metrics.events_decoded.with_label_values(&[by_stream(s)])),
            duplicates: Stream::ALL.map(|s| metrics.events_duplicate.with_label_values(&[by_stream(s)])),
            rejected: Stream::ALL.map(|s| {
                DecodeError::REASONS
                    .iter()
                    .map(|r| metrics.events_rejected.with_label_values(&[by_stream(s), r]))
                    .collect()
            }),
            late: Vec::new(),
            metrics: metrics.clone(),
            rejected_log: LogLimit::default(),
            late_log: LogLimit::default(),
            duplicate_log: LogLimit::default(),
            report: RunReport::default(),
        }
    }

    /// A message of `stream` was consumed (whatever becomes of it).
    pub fn consumed(&mut self, stream: Stream) {
        self.consumed[stream.index()].inc();
        self.report.consumed += 1;
    }

    /// A message of `stream` decoded and validated into an event.
    pub fn decoded(&mut self, stream: Stream) {
        self.decoded[stream.index()].inc();
        self.report.decoded += 1;
    }

    fn rejected_counter(&self, stream: Stream, reason: &str) -> IntCounter {
        match DecodeError::REASONS.iter().position(|r| *r == reason) {
            Some(at) => self.rejected[stream.index()][at].clone(),
            None => self.metrics.events_rejected.with_label_values(&[stream.as_str(), reason]),
        }
    }

    fn late_counter(&mut self, stream: Stream, family: &'static str) -> &IntCounter {
        let at = match self.late.iter().position(|(s, f, _)| *s == stream && *f == family) {
            Some(at) => at,
            None => {
                let counter = self.metrics.events_late.with_label_values(&[stream.as_str(), family]);
                self.late.push((stream, family, counter));
                self.late.len() - 1
            }
        };
        &self.late[at].2
    }
}

/// A message that failed to decode or validate; it goes to the dead letters.
pub struct EventRejected<'a> {
    /// Its stream.
    pub stream: Stream,
    /// Where it was.
    pub topic: &'a str,
    /// See `topic`.
    pub partition: i32,
    /// See `topic`.
    pub offset: i64,
    /// Why.
    pub error: &'a DecodeError,
}

impl EventRejected<'_> {
    /// Counts it in `storepulse_events_rejected_total{stream,reason}` and logs it (rate-limited).
    pub fn emit(&self, outcomes: &mut Outcomes) {
        let reason = self.error.reason();
        outcomes.rejected_counter(self.stream, reason).inc();
        outcomes.report.rejected += 1;
        if let Some(suppressed) = outcomes.rejected_log.allow() {
            tracing::warn!(
                stream = self.stream.as_str(),
                topic = self.topic,
                partition = self.partition,
                offset = self.offset,
                reason,
                error = %self.error,
                suppressed,
                "message rejected; kept in dead_letters"
            );
        }
    }
}

/// An event whose window had closed for one metric family; it goes to `late_events`.
pub struct EventLate<'a> {
    /// Its stream.
    pub stream: Stream,
    /// The family whose window it missed.
    pub family: &'static str,
    /// Its id.
    pub event_id: &'a str,
    /// How far the watermark was past its time, ms.
    pub behind_watermark_ms: i64,
}

impl EventLate<'_> {
    /// Counts it in `storepulse_events_late_total{stream,family}` and logs it at debug level
    /// (rate-limited): late events are expected in small numbers.
    pub fn emit(&self, outcomes: &mut Outcomes) {
        outcomes.late_counter(self.stream, self.family).inc();
        outcomes.report.late += 1;
        if let Some(suppressed) = outcomes.late_log.allow() {
            tracing::debug!(
                stream = self.stream.as_str(),
                family = self.family,
                event_id = self.event_id,
                behind_watermark_ms = self.behind_watermark_ms,
                suppressed,
                "late event; kept in late_events"
            );
        }
    }
}

/// An event whose id was seen within the dedupe horizon: a producer's retry, not counted.
pub struct EventDuplicate<'a> {
    /// Its stream.
    pub stream: Stream,
    /// Its id.
    pub event_id: &'a str,
}

impl EventDuplicate<'_> {
    /// Counts it in `storepulse_events_duplicate_total{stream}` and logs it at debug level
    /// (rate-limited).
    pub fn emit(&self, outcomes: &mut Outcomes) {
        outcomes.duplicates[self.stream.index()].inc();
        outcomes.report.duplicates += 1;
        if let Some(suppressed) = outcomes.duplicate_log.allow() {
            tracing::debug!(
                stream = self.stream.as_str(),
                event_id = self.event_id,
                suppressed,
                "duplicate suppressed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_per_interval_counts_what_it_held_back() {
        let mut limit = LogLimit::default();
        assert_eq!(limit.allow(), Some(0));
        assert_eq!((limit.allow(), limit.allow()), (None, None));
        limit.last = limit.last.and_then(|t| t.checked_sub(LOG_EVERY));
        assert_eq!(limit.allow(), Some(2));
    }

    #[test]
    fn each_outcome_counts_once_in_its_series_and_in_the_report() {
        let metrics = Metrics::new(&[("traffic", Stream::Clickstream)]).expect("metrics");
        let mut outcomes = Outcomes::new(&metrics, |s| format!("topic-{}", s.as_str()));
        outcomes.consumed(Stream::Orders);
        outcomes.decoded(Stream::Orders);
        let error = DecodeError::EmptyPayload;
        EventRejected { stream: Stream::Orders, topic: "topic-orders", partition: 0, offset: 1, error: &error }
            .emit(&mut outcomes);
        EventLate { stream: Stream::Clickstream, family: "traffic", event_id: "e1", behind_watermark_ms: 5 }
            .emit(&mut outcomes);
        EventLate { stream: Stream::Clickstream, family: "traffic", event_id: "e2", behind_watermark_ms: 5 }
            .emit(&mut outcomes);
        EventDuplicate { stream: Stream::Logistics, event_id: "e3" }.emit(&mut outcomes);
        let r = outcomes.report;
        assert_eq!((r.consumed, r.decoded, r.rejected, r.late, r.duplicates), (1, 1, 1, 2, 1));
        let text = metrics.render();
        for line in [
            "storepulse_messages_consumed_total{topic=\"topic-orders\"} 1",
            "storepulse_events_rejected_total{reason=\"empty_payload\",stream=\"orders\"} 1",
            "storepulse_events_late_total{family=\"traffic\",stream=\"clickstream\"} 2",
            "storepulse_events_duplicate_total{stream=\"logistics\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
