//! The rows of finished orders: one `order_facts` row per order the state is done with, and one
//! `orphan_shipments` row per order whose scans came but whose order never did.

use super::lifecycle::ClosedReason;
use crate::event::{Channel, Device, PaymentMethod};
use crate::table::TableRow;
use crate::table::columns::{
    int32, int64, optional_flags, optional_int64, optional_text, optional_utc_millis, text, utc_millis,
};
use arrow_array::RecordBatch;
use arrow_schema::ArrowError;

/// One finished order (a row of `order_facts`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs, reason = "columns are documented in docs/tables.md")]
pub struct OrderFact {
    pub order_id: String,
    pub buyer_id: Option<String>,
    pub partition: i32,
    pub channel: Channel,
    pub device: Device,
    pub region: Option<String>,
    pub currency: Option<String>,
    pub payment_method: Option<PaymentMethod>,
    pub warehouse: Option<String>,
    pub carrier: Option<String>,
    pub items_subtotal_minor: i64,
    pub discount_minor: i64,
    pub shipping_minor: i64,
    pub paid_amount_minor: i64,
    /// Null when the order's refunds summed beyond 64 bits.
    pub refunded_amount_minor: Option<i64>,
    pub units: u32,
    pub created_at: Option<i64>,
    pub paid_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub label_created_at: Option<i64>,
    pub picked_up_at: Option<i64>,
    pub delivered_at: Option<i64>,
    pub returned_at: Option<i64>,
    pub first_exception_at: Option<i64>,
    pub last_refund_at: Option<i64>,
    pub promised_ship_by: Option<i64>,
    pub promised_deliver_by: Option<i64>,
    pub failed_attempts: u16,
    pub exceptions: u16,
    pub shipped_on_time: Option<bool>,
    pub delivered_on_time: Option<bool>,
    pub final_state: &'static str,
    pub closed_reason: ClosedReason,
    pub closed_at_watermark: i64,
}

/// Scans of an order that never arrived within the orphan horizon (a row of `orphan_shipments`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs, reason = "columns are documented in docs/tables.md")]
pub struct OrphanShipment {
    pub order_id: String,
    pub partition: i32,
    pub carrier: Option<String>,
    pub warehouse: Option<String>,
    pub first_scan_at: i64,
    pub last_scan_at: i64,
    pub picked_up_at: Option<i64>,
    pub delivered_at: Option<i64>,
    pub closed_reason: ClosedReason,
    pub closed_at_watermark: i64,
}

impl TableRow for OrderFact {
    const TABLE: &'static str = "order_facts";
    const PARTITION_BY: &'static str = "closed_at_watermark";
    fn partition_time(&self) -> i64 {
        self.closed_at_watermark
    }
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError> {
        let time = |f: fn(&OrderFact) -> Option<i64>| optional_utc_millis(rows.iter().map(f));
        let name = |f: fn(&OrderFact) -> Option<&str>| optional_text(rows.iter().map(f));
        RecordBatch::try_from_iter([
            ("order_id", text(rows.iter().map(|r| r.order_id.as_str()))),
            ("buyer_id", name(|r| r.buyer_id.as_deref())),
            ("source_partition", int32(rows.iter().map(|r| r.partition))),
            ("channel", text(rows.iter().map(|r| r.channel.as_str()))),
            ("device", text(rows.iter().map(|r| r.device.as_str()))),
            ("region", name(|r| r.region.as_deref())),
            ("currency", name(|r| r.currency.as_deref())),
            ("payment_method", name(|r| r.payment_method.map(|p| p.as_str()))),
            ("warehouse", name(|r| r.warehouse.as_deref())),
            ("carrier", name(|r| r.carrier.as_deref())),
            ("items_subtotal_minor", int64(rows.iter().map(|r| r.items_subtotal_minor))),
            ("discount_minor", int64(rows.iter().map(|r| r.discount_minor))),
            ("shipping_minor", int64(rows.iter().map(|r| r.shipping_minor))),
            ("paid_amount_minor", int64(rows.iter().map(|r| r.paid_amount_minor))),
            ("refunded_amount_minor", optional_int64(rows.iter().map(|r| r.refunded_amount_minor))),
            ("units", int64(rows.iter().map(|r| i64::from(r.units)))),
            ("created_at", time(|r| r.created_at)),
            ("paid_at", time(|r| r.paid_at)),
            ("cancelled_at", time(|r| r.cancelled_at)),
            ("label_created_at", time(|r| r.label_created_at)),
            ("picked_up_at", time(|r| r.picked_up_at)),
            ("delivered_at", time(|r| r.delivered_at)),
            ("returned_at", time(|r| r.returned_at)),
            ("first_exception_at", time(|r| r.first_exception_at)),
            ("last_refund_at", time(|r| r.last_refund_at)),
            ("promised_ship_by", time(|r| r.promised_ship_by)),
            ("promised_deliver_by", time(|r| r.promised_deliver_by)),
            ("failed_attempts", int32(rows.iter().map(|r| i32::from(r.failed_attempts)))),
            ("exceptions", int32(rows.iter().map(|r| i32::from(r.exceptions)))),
            ("shipped_on_time", optional_flags(rows.iter().map(|r| r.shipped_on_time))),
            ("delivered_on_time", optional_flags(rows.iter().map(|r| r.delivered_on_time))),
            ("final_state", text(rows.iter().map(|r| r.final_state))),
            ("closed_reason", text(rows.iter().map(|r| r.closed_reason.as_str()))),
            ("closed_at_watermark", utc_millis(rows.iter().map(|r| r.closed_at_watermark))),
        ])
    }
}

impl TableRow for OrphanShipment {
    const TABLE: &'static str = "orphan_shipments";
    const PARTITION_BY: &'static str = "closed_at_watermark";
    fn partition_time(&self) -> i64 {
        self.closed_at_watermark
    }
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError> {
        RecordBatch::try_from_iter([
            ("order_id", text(rows.iter().map(|r| r.order_id.as_str()))),
            ("source_partition", int32(rows.iter().map(|r| r.partition))),
            ("carrier", optional_text(rows.iter().map(|r| r.carrier.as_deref()))),
            ("warehouse", optional_text(rows.iter().map(|r| r.warehouse.as_deref()))),
            ("first_scan_at", utc_millis(rows.iter().map(|r| r.first_scan_at))),
            ("last_scan_at", utc_millis(rows.iter().map(|r| r.last_scan_at))),
            ("picked_up_at", optional_utc_millis(rows.iter().map(|r| r.picked_up_at))),
            ("delivered_at", optional_utc_millis(rows.iter().map(|r| r.delivered_at))),
            ("closed_reason", text(rows.iter().map(|r| r.closed_reason.as_str()))),
            ("closed_at_watermark", utc_millis(rows.iter().map(|r| r.closed_at_watermark))),
        ])
    }
}
