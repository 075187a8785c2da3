//! Operators: keyed, single-threaded state machines per task (`record`, `advance_to`,
//! `close_all`). They receive decoded events and return closed-window rows; no I/O.
//! [`PartitionTask`] chains duplicate suppression, the watermark and a stream's operators.

#[cfg(test)]
mod fixtures;
mod fulfillment;
mod funnel;
mod latency;
mod lifecycle;
mod orders;
mod sessions;
mod state_codec;
mod task;

pub use fulfillment::{FulfillmentCounts, FulfillmentOperator, FulfillmentRow};
pub use funnel::{FunnelCounts, FunnelOperator, FunnelRow, channel_label, device_label};
pub use latency::{LatencySketch, RELATIVE_ACCURACY};
pub use lifecycle::{Backlog, ClosedReason, OrderBook, OrderFact, OrphanShipment, Retention};
pub use orders::{OrderCounts, OrdersOperator, OrdersRow};
pub use sessions::{SessionOperator, SessionRow};
pub use task::{Disposition, LateEvent, LatencyMetric, LatencyObservation, PartitionTask, TaskOutput};

use crate::event::ClickEventType;

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

/// A metric family: the unit that allowed lateness is configured for and late events are
/// counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// Traffic and funnel (`funnel` table).
    Traffic,
    /// Sessions (`sessions` table).
    Sessions,
    /// Order lifecycle per channel (`orders` table).
    Orders,
    /// Shipments per carrier and warehouse (`fulfillment` table).
    Fulfillment,
}

impl Family {
    /// Every family.
    pub const ALL: [Family; 4] = [Family::Traffic, Family::Sessions, Family::Orders, Family::Fulfillment];

    /// The name used in `late_events.family` and the Prometheus `family` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Traffic => "traffic",
            Family::Sessions => "sessions",
            Family::Orders => "orders",
            Family::Fulfillment => "fulfillment",
        }
    }
}
