//! Operators: keyed, single-threaded state machines per task (`record`, `advance_to`,
//! `close_all`). They receive decoded events and return closed-window rows; no I/O.

mod funnel;
mod sales;

pub use funnel::{FunnelOperator, FunnelRow, channel_label};
pub use sales::{SalesOperator, SalesRow};
