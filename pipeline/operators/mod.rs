//! Operators: keyed, single-threaded state machines per task. They receive decoded events and
//! return rows of closed windows, sessions and finished orders; no I/O.
//!
//! A metric family is an [`Operator`] (what it does with events) and a [`Family`] (how the
//! registry creates and restores it, which families and tables it owns). [`builtin`] lists
//! them; [`PartitionTask`] runs the ones of a task's kind behind duplicate suppression and a
//! watermark per source partition. `docs/architecture.md` walks through adding one.

mod clickstream;
mod commerce;
mod facts;
#[cfg(test)]
mod fixtures;
mod fulfillment;
mod funnel;
mod latency;
mod legacy;
mod lifecycle;
mod orders;
mod registry;
mod sessions;
mod state_codec;
mod task;

pub use clickstream::{Clickstream, SESSIONS, TRAFFIC};
pub use commerce::{Commerce, FULFILLMENT, ORDERS};
pub use fulfillment::{FulfillmentCounts, FulfillmentOperator, FulfillmentRow};
pub use funnel::{FunnelCounts, FunnelOperator, FunnelRow};
pub use latency::{LatencyMetric, LatencyObservation, LatencySketch, RELATIVE_ACCURACY};
pub use lifecycle::{Backlog, ClosedReason, OrderBook, OrderFact, OrphanShipment};
pub use orders::{OrderCounts, OrdersOperator, OrdersRow};
pub use registry::{Registered, Registry};
pub use sessions::{SessionOperator, SessionRow};
pub use task::{
    Clocks, Disposition, ForeignStream, LateEvent, PartitionTask, StateReport, StreamClock, TaskId, TaskKind,
    TaskOutput,
};

use crate::event::{ClickEventType, Event, Stream};
use crate::snapshot::SnapshotError;
use crate::table::TableSpec;
use crate::time::TimeSettings;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The metric families this build runs, in the order each event meets them. Adding a family
/// is a module above and one line here.
pub fn builtin() -> Registry {
    Registry::default().with::<Clickstream>().with::<Commerce>()
}

/// A family's per-partition state machine, driven by its task. Only `record` is required;
/// the hooks default to doing nothing.
pub trait Operator: OperatorState + Send + std::fmt::Debug {
    /// Records one event of the task's streams (an operator ignores the streams it does not
    /// read). Rows of what it closes go to `out.rows`; an event late for one of its families
    /// goes to `out` through [`TaskOutput::late_for`].
    fn record(&mut self, event: &Event, out: &mut TaskOutput);

    /// The task's watermarks moved, or a partition's idleness changed: closes what they pass.
    fn on_watermark(&mut self, clocks: &Clocks, out: &mut TaskOutput) {
        let _ = (clocks, out);
    }

    /// End of a bounded input: closes every window and finishes everything held.
    fn close_all(&mut self, clocks: &Clocks, out: &mut TaskOutput) {
        let _ = (clocks, out);
    }

    /// Adds what it holds to the task's state report (the state gauges).
    fn report(&self, clocks: &Clocks, report: &mut StateReport) {
        let _ = (clocks, report);
    }
}

/// How an operator's state is written for a checkpoint: its CBOR, for any operator whose
/// state is `Serialize`.
pub trait OperatorState {
    /// Appends the state's bytes to `into`.
    ///
    /// # Errors
    /// Only when the state cannot be encoded, a programming error.
    fn write_state(&self, into: &mut Vec<u8>) -> Result<(), SnapshotError>;
}

impl<T: Serialize> OperatorState for T {
    fn write_state(&self, into: &mut Vec<u8>) -> Result<(), SnapshotError> {
        crate::snapshot::write_cbor(self, into)
    }
}

/// What the registry needs to know of an operator type to run it.
pub trait Family: Operator + DeserializeOwned + 'static {
    /// Its name: the section of task snapshots its state is kept under. Never rename it; a
    /// renamed operator does not find its state.
    const NAME: &'static str;
    /// The kind of task it runs in, which sets the streams it sees.
    const TASK: TaskKind;
    /// The metric families it computes, each with the stream whose events it counts: allowed
    /// lateness is configured per family (`time.lateness.of(name)`), and late events are
    /// counted and tabled per family.
    const FAMILIES: &'static [(&'static str, Stream)];
    /// The tables it writes rows to.
    const TABLES: &'static [TableSpec];

    /// Fresh state for `partition`.
    fn new(partition: i32, time: &TimeSettings) -> Self;

    /// Rebuilds what its snapshot leaves out (indexes), after a restore.
    fn restored(&mut self) {}
}

/// A step of the purchase funnel, in funnel order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    /// A product detail page was seen.
    ProductView,
    /// A product went into the cart.
    AddToCart,
    /// Checkout began.
    BeginCheckout,
    /// An order was placed.
    Purchase,
}

impl Step {
    /// Number of steps.
    pub const COUNT: usize = 4;
    /// Every step, in funnel order.
    pub const ALL: [Step; Step::COUNT] = [Step::ProductView, Step::AddToCart, Step::BeginCheckout, Step::Purchase];

    /// The step a click event marks, if any.
    pub fn of(event_type: ClickEventType) -> Option<Step> {
        match event_type {
            ClickEventType::ProductView => Some(Step::ProductView),
            ClickEventType::AddToCart => Some(Step::AddToCart),
            ClickEventType::BeginCheckout => Some(Step::BeginCheckout),
            ClickEventType::Purchase => Some(Step::Purchase),
            _ => None,
        }
    }

    /// The step's bit in a set of reached steps.
    pub fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The event type name, also the Prometheus `step` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::ProductView => "product_view",
            Step::AddToCart => "add_to_cart",
            Step::BeginCheckout => "begin_checkout",
            Step::Purchase => "purchase",
        }
    }
}
