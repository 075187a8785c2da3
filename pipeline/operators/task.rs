//! One partition's processing, pure: duplicate suppression, then each of the stream's operators
//! (on time, or late for that operator's family), then the partition watermark, which closes
//! windows and sessions. The whole task snapshots to bytes and restores exactly.

use super::{Family, FunnelOperator, FunnelRow, SalesOperator, SalesRow, SessionOperator, SessionRow};
use crate::config::TimeSettings;
use crate::event::{Event, Stream};
use crate::time::{Dedupe, Late, PartitionWatermark, SnapshotError, restore, snapshot};
use serde::{Deserialize, Serialize};

/// An event that arrived after its window closed for one metric family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateEvent {
    /// The family it missed.
    pub family: Family,
    /// Its id.
    pub event_id: String,
    /// Its event time, UTC ms.
    pub event_time: i64,
    /// The window it missed and by how much.
    pub late: Late,
}

/// Rows produced by tasks, accumulated until the next write.
#[derive(Debug, Default)]
pub struct TaskOutput {
    /// Closed funnel windows.
    pub funnel: Vec<FunnelRow>,
    /// Closed sessions.
    pub sessions: Vec<SessionRow>,
    /// Closed sales windows.
    pub sales: Vec<SalesRow>,
    /// Late events, one per family missed.
    pub late: Vec<LateEvent>,
}

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Suppressed: the same `event_id` was seen within the dedupe horizon.
    Duplicate,
    /// Recorded by every family of its stream, or late for some (listed in the output).
    Processed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Operators {
    Clickstream {
        funnel: FunnelOperator,
        sessions: SessionOperator,
    },
    Orders {
        sales: SalesOperator,
    },
    /// Logistics events advance the watermark; fulfillment metrics come with their operator.
    Logistics,
}

/// The state of one source partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionTask {
    watermark: PartitionWatermark,
    dedupe: Dedupe,
    operators: Operators,
}

impl PartitionTask {
    /// Fresh state for `partition` of `stream`.
    pub fn new(stream: Stream, partition: i32, time: &TimeSettings) -> Self {
        let sizes = &time.window_sizes_ms;
        let operators = match stream {
            Stream::Clickstream => Operators::Clickstream {
                funnel: FunnelOperator::new(partition, sizes, time.lateness.traffic_ms),
                sessions: SessionOperator::new(
                    partition,
                    time.session_gap_ms,
                    time.session_max_length_ms,
                    time.base_window_ms(),
                    time.lateness.sessions_ms,
                ),
            },
            Stream::Orders => Operators::Orders { sales: SalesOperator::new(partition, sizes, time.lateness.sales_ms) },
            Stream::Logistics => Operators::Logistics,
        };
        PartitionTask {
            watermark: PartitionWatermark::new(time.out_of_orderness_ms),
            dedupe: Dedupe::new(time.dedupe_horizon_ms, time.dedupe_max_ids),
            operators,
        }
    }

    /// Processes one event of this partition; rows of windows it closes go to `out`.
    pub fn process(&mut self, event: &Event, out: &mut TaskOutput) -> Disposition {
        if self.dedupe.is_duplicate(event.event_id(), event.event_time()) {
            return Disposition::Duplicate;
        }
        let mut late = |family: Family, result: Result<(), Late>| {
            if let Err(late) = result {
                out.late.push(LateEvent {
                    family,
                    event_id: event.event_id().to_owned(),
                    event_time: event.event_time(),
                    late,
                });
            }
        };
        match (&mut self.operators, event) {
            (Operators::Clickstream { funnel, sessions }, Event::Click(click)) => {
                late(Family::Traffic, funnel.record(click));
                late(Family::Sessions, sessions.record(click));
            }
            (Operators::Orders { sales }, Event::Order(order)) => late(Family::Sales, sales.record(order)),
            _ => {}
        }
        self.watermark.observe(event.event_time());
        if let Some(watermark) = self.watermark.current() {
            self.dedupe.expire(watermark);
            self.advance_to(watermark, out);
        }
        Disposition::Processed
    }

    fn advance_to(&mut self, watermark: i64, out: &mut TaskOutput) {
        match &mut self.operators {
            Operators::Clickstream { funnel, sessions } => {
                out.funnel.extend(funnel.advance_to(watermark));
                out.sessions.extend(sessions.advance_to(watermark));
            }
            Operators::Orders { sales } => out.sales.extend(sales.advance_to(watermark)),
            Operators::Logistics => {}
        }
    }

    /// The partition's watermark, once it has seen an event.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark.current()
    }

    /// Closes every window and session (end of a bounded input).
    pub fn close_all(&mut self, out: &mut TaskOutput) {
        match &mut self.operators {
            Operators::Clickstream { funnel, sessions } => {
                out.funnel.extend(funnel.close_all());
                out.sessions.extend(sessions.close_all());
            }
            Operators::Orders { sales } => out.sales.extend(sales.close_all()),
            Operators::Logistics => {}
        }
    }

    /// Open sessions held (clickstream tasks).
    pub fn open_sessions(&self) -> usize {
        match &self.operators {
            Operators::Clickstream { sessions, .. } => sessions.open_sessions(),
            _ => 0,
        }
    }

    /// The whole state as bytes.
    ///
    /// # Errors
    /// Only on a programming error (state that cannot be encoded).
    pub fn snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        snapshot(self)
    }

    /// State written by [`PartitionTask::snapshot`].
    ///
    /// # Errors
    /// [`SnapshotError`] when the bytes are not a task snapshot.
    pub fn restore(bytes: &[u8]) -> Result<Self, SnapshotError> {
        restore(bytes)
    }
}
