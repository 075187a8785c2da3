//! The clickstream operator: the traffic (funnel) and sessions families of one clickstream
//! partition. They share one table per visitor, the sessions' table, which also holds the
//! funnel's touches of the visitor: a click looks its visitor up once for both.

use super::{Family, FunnelOperator, FunnelRow, SessionOperator, SessionRow, StateReport, TaskKind, TaskOutput};
use crate::event::{Event, Stream};
use crate::table::TableSpec;
use crate::time::TimeSettings;
use serde::{Deserialize, Serialize};

/// The traffic family: funnel windows per channel and device.
pub const TRAFFIC: &str = "traffic";
/// The sessions family: one row per closed session.
pub const SESSIONS: &str = "sessions";

/// Funnel and sessions of one clickstream partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Clickstream {
    pub(super) funnel: FunnelOperator,
    /// The sessions' table also holds the funnel's touches of each visitor.
    pub(super) sessions: SessionOperator,
}

impl Family for Clickstream {
    const NAME: &'static str = "clickstream";
    const TASK: TaskKind = TaskKind::Clickstream;
    const FAMILIES: &'static [(&'static str, Stream)] =
        &[(TRAFFIC, Stream::Clickstream), (SESSIONS, Stream::Clickstream)];
    const TABLES: &'static [TableSpec] = &[TableSpec::of::<FunnelRow>(), TableSpec::of::<SessionRow>()];

    fn new(partition: i32, time: &TimeSettings) -> Self {
        Clickstream {
            funnel: FunnelOperator::new(partition, &time.window_sizes_ms, time.lateness.of(TRAFFIC)),
            sessions: SessionOperator::new(
                partition,
                time.session_gap_ms,
                time.session_max_length_ms,
                time.base_window_ms(),
                time.lateness.of(SESSIONS),
            ),
        }
    }
}

impl super::Operator for Clickstream {
    fn record(&mut self, event: &Event, out: &mut TaskOutput) {
        let Event::Click(click) = event else { return };
        let Clickstream { funnel, sessions } = self;
        // One lookup of the visitor serves both: the funnel's touches live in its entry.
        let traffic = funnel.check(click.event_time);
        let count = traffic.is_ok().then_some(|touches: &mut _| funnel.record(click, touches));
        let (counted, in_session) = sessions.record_with_touches(click, count);
        out.late_for(TRAFFIC, event, counted.unwrap_or(traffic));
        out.late_for(SESSIONS, event, in_session);
    }

    fn on_watermark(&mut self, clocks: &super::Clocks, out: &mut TaskOutput) {
        if let Some(w) = clocks.watermark(Stream::Clickstream) {
            out.rows.extend(self.funnel.advance_to(w, &mut self.sessions));
            out.rows.extend(self.sessions.advance_to(w));
        }
    }

    fn close_all(&mut self, _: &super::Clocks, out: &mut TaskOutput) {
        out.rows.extend(self.funnel.close_all());
        out.rows.extend(self.sessions.close_all());
    }

    fn report(&self, _: &super::Clocks, report: &mut StateReport) {
        report.open_sessions += self.sessions.open_sessions();
    }
}
