//! Bytes held per open order and per open session: fills an order book with realistic orders
//! (created, paid, label printed; about half picked up) or the session operator with sessions,
//! and divides the growth of the resident set by the entries (allocator overhead and
//! hash-table slack included). Each figure needs a fresh process: memory freed by one
//! measurement would otherwise be reused by the next and make it look smaller.

use super::probe::rss_bytes;
use crate::event::{
    Channel, ClickEvent, ClickEventType, Device, OrderEvent, OrderEventType, OrderItem, PaymentMethod, ShipmentEvent,
    ShipmentStatus,
};
use crate::operators::{OrderBook, SessionOperator};
use crate::time::Retention;

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

fn scan(status: ShipmentStatus, i: u64, t: i64) -> ShipmentEvent {
    ShipmentEvent {
        event_id: format!("l-{i}-{}", status.as_str()),
        status,
        event_time: t,
        order_id: format!("ord-{i:010}"),
        shipment_id: format!("SF{i:012}"),
        carrier: ["sf", "zto", "jd", "yto"][(i % 4) as usize].into(),
        warehouse: ["WH-HZ1", "WH-SH2", "WH-GZ1", "WH-CD1"][(i % 4) as usize].into(),
        region: None,
        carrier_status_code: None,
        exception_reason: None,
    }
}

/// Resident bytes per open order, with `n` orders open.
pub fn bytes_per_open_order(n: u64) -> f64 {
    let before = rss_bytes();
    let retention =
        Retention { terminal_ttl_ms: i64::MAX / 4, open_timeout_ms: i64::MAX / 4, orphan_after_ms: i64::MAX / 4 };
    let mut book = OrderBook::new(0, retention);
    for i in 0..n {
        let t = T0 + i as i64 * 10;
        book.apply_order(&order_event(OrderEventType::Created, i, t), i64::MIN);
        book.apply_order(&order_event(OrderEventType::Paid, i, t + 20_000), i64::MIN);
        book.apply_scan(&scan(ShipmentStatus::LabelCreated, i, t + 2_400_000), true, i64::MIN);
        if i % 2 == 0 {
            book.apply_scan(&scan(ShipmentStatus::PickedUp, i, t + 4 * 3_600_000), true, i64::MIN);
        }
    }
    assert_eq!(book.open_orders() as u64, n, "every order stays open");
    (rss_bytes().saturating_sub(before)) as f64 / n.max(1) as f64
}

/// Resident bytes per open session, with `n` sessions open.
pub fn bytes_per_open_session(n: u64) -> f64 {
    let before = rss_bytes();
    let mut sessions = SessionOperator::new(0, 1_800_000, 6 * 3_600_000, 60_000, 0);
    for i in 0..n {
        let t = T0 + i as i64;
        for (k, kind) in
            [ClickEventType::PageView, ClickEventType::ProductView, ClickEventType::AddToCart].into_iter().enumerate()
        {
            let mut click =
                ClickEvent::new(format!("c-{i}-{k}"), kind, t + k as i64 * 5_000, format!("v-{i:010}"), Device::App);
            click.session_id = Some(format!("s-{i:010}"));
            click.channel = Some(Channel::PaidSearch);
            click.page = Some("/p/123".into());
            let _ = sessions.record(&click);
        }
    }
    assert_eq!(sessions.open_sessions() as u64, n, "every session stays open");
    (rss_bytes().saturating_sub(before)) as f64 / n.max(1) as f64
}
