//! Events for operator tests: one order and its shipment, with fields set as the generator does.

use crate::event::{Channel, Device, OrderEvent, OrderEventType, OrderItem, ShipmentEvent, ShipmentStatus};

pub const HOUR: i64 = 3_600_000;

/// An order event of `order_id` by buyer `user`, 100.00 CNY, 3 units; `paid` events carry a
/// 48 h ship-by and 5 d deliver-by promise from `t`.
pub fn order(kind: OrderEventType, t: i64, order_id: &str, user: &str) -> OrderEvent {
    OrderEvent {
        event_id: format!("{order_id}-{}-{t}", kind.as_str()),
        event_type: kind,
        event_time: t,
        order_id: order_id.into(),
        visitor_id: Some(format!("v-{user}")),
        user_id: Some(user.into()),
        channel: Channel::LiveStream,
        device: Device::App,
        region: Some("ZJ".into()),
        currency: "CNY".into(),
        items_subtotal_minor: 10_000,
        discount_minor: 0,
        shipping_minor: 0,
        paid_amount_minor: if kind == OrderEventType::Created { 0 } else { 10_000 },
        refund_amount_minor: (kind == OrderEventType::Refunded).then_some(2_500),
        items: vec![OrderItem { sku: "s".into(), category_id: None, quantity: 3, unit_price_minor: 3_333 }],
        payment_method: None,
        warehouse: Some("WH-HZ1".into()),
        promised_ship_by: (kind == OrderEventType::Paid).then_some(t + 48 * HOUR),
        promised_deliver_by: (kind == OrderEventType::Paid).then_some(t + 120 * HOUR),
    }
}

/// A scan of `order_id` by carrier `sf` from warehouse `WH-HZ1`.
pub fn scan(status: ShipmentStatus, t: i64, order_id: &str) -> ShipmentEvent {
    ShipmentEvent {
        event_id: format!("{order_id}-{}-{t}", status.as_str()),
        status,
        event_time: t,
        order_id: order_id.into(),
        shipment_id: format!("SF{order_id}"),
        carrier: "sf".into(),
        warehouse: "WH-HZ1".into(),
        region: Some("ZJ".into()),
        carrier_status_code: None,
        exception_reason: None,
    }
}

/// What a commerce task closed, table by table, for comparing two runs.
pub fn commerce_rows(
    out: &super::TaskOutput,
) -> (Vec<super::OrdersRow>, Vec<super::FulfillmentRow>, Vec<super::OrderFact>) {
    (out.rows.of().to_vec(), out.rows.of().to_vec(), out.rows.of().to_vec())
}
