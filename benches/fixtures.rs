//! Realistic events shared by the benchmarks.

use storepulse::event::{Channel, Device, OrderEvent, OrderEventType, OrderItem, PaymentMethod};

/// 2026-11-10 15:00 UTC (23:00 Beijing time, an hour before Double 11), Unix milliseconds.
pub const T0: i64 = 1_794_322_800_000;

/// Event `kind` of order `i` at `t`: a live-stream app order of one item, paid by Alipay.
pub fn order_event(kind: OrderEventType, i: u64, t: i64) -> OrderEvent {
    OrderEvent {
        event_id: format!("o-{i}-{}", kind.as_str()),
        event_type: kind,
        event_time: t,
        order_id: format!("ord-{i:010}"),
        visitor_id: Some(format!("v-{:08}", i * 7 % 5_000_000)),
        user_id: Some(format!("u-{:08}", i * 7 % 3_000_000)),
        channel: Channel::LiveStream,
        device: Device::App,
        region: Some(["ZJ", "SH", "GD", "BJ", "SC"][(i % 5) as usize].into()),
        currency: "CNY".into(),
        items_subtotal_minor: 29_900,
        discount_minor: 5_000,
        shipping_minor: 0,
        paid_amount_minor: 24_900,
        refund_amount_minor: None,
        items: vec![OrderItem { sku: "p-1".into(), category_id: None, quantity: 1, unit_price_minor: 29_900 }],
        payment_method: Some(PaymentMethod::Alipay),
        warehouse: Some(["WH-HZ1", "WH-SH2", "WH-GZ1", "WH-CD1"][(i % 4) as usize].into()),
        promised_ship_by: Some(t + 72 * 3_600_000),
        promised_deliver_by: Some(t + 7 * 86_400_000),
    }
}
