//! Validation of decoded events: ids present, event time in bounds, money non-negative,
//! currency shaped like ISO 4217.

use super::DecodeError;
use crate::event::Event;

/// Bounds that every event must satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidationRules {
    /// Earliest accepted event time (UTC ms).
    pub min_event_time_ms: i64,
    /// How far ahead of the wall clock an event time may be, in ms.
    pub max_future_skew_ms: i64,
}

impl Default for ValidationRules {
    fn default() -> Self {
        ValidationRules {
            // 2000-01-01T00:00:00Z: anything older is a broken client clock or a unit mix-up.
            min_event_time_ms: 946_684_800_000,
            max_future_skew_ms: 24 * 3600 * 1000,
        }
    }
}

impl ValidationRules {
    /// Checks `event` against the rules; `now_ms` is the wall clock.
    ///
    /// # Errors
    /// The first rule the event breaks.
    pub fn validate(&self, event: &Event, now_ms: i64) -> Result<(), DecodeError> {
        let require = |name: &'static str, value: &str| {
            if value.trim().is_empty() { Err(DecodeError::MissingId(name)) } else { Ok(()) }
        };
        require("event_id", event.event_id())?;
        let max_ms = now_ms.saturating_add(self.max_future_skew_ms);
        let t = event.event_time();
        if t < self.min_event_time_ms || t > max_ms {
            return Err(DecodeError::EventTimeOutOfBounds { event_time_ms: t, min_ms: self.min_event_time_ms, max_ms });
        }
        let non_negative = |field: &'static str, value: i64| {
            if value < 0 { Err(DecodeError::NegativeMoney { field, value }) } else { Ok(()) }
        };
        match event {
            Event::Click(e) => {
                require("visitor_id", &e.visitor_id)?;
                if let Some(price) = e.price_minor {
                    non_negative("price_minor", price)?;
                }
                if let Some(currency) = &e.currency {
                    check_currency(currency)?;
                }
            }
            Event::Order(e) => {
                require("order_id", &e.order_id)?;
                check_currency(&e.currency)?;
                non_negative("items_subtotal_minor", e.items_subtotal_minor)?;
                non_negative("discount_minor", e.discount_minor)?;
                non_negative("shipping_minor", e.shipping_minor)?;
                non_negative("paid_amount_minor", e.paid_amount_minor)?;
                if let Some(refund) = e.refund_amount_minor {
                    non_negative("refund_amount_minor", refund)?;
                }
                for item in &e.items {
                    non_negative("items.unit_price_minor", item.unit_price_minor)?;
                    non_negative("items.quantity", i64::from(item.quantity))?;
                }
            }
            Event::Shipment(e) => {
                require("order_id", &e.order_id)?;
                require("shipment_id", &e.shipment_id)?;
            }
        }
        Ok(())
    }
}

fn check_currency(code: &str) -> Result<(), DecodeError> {
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(DecodeError::BadCurrency(code.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Channel, Device, OrderEvent, OrderEventType};

    fn order() -> OrderEvent {
        OrderEvent {
            event_id: "e1".into(),
            event_type: OrderEventType::Paid,
            event_time: 1_700_000_000_000,
            order_id: "o1".into(),
            visitor_id: None,
            user_id: None,
            channel: Channel::Direct,
            device: Device::App,
            region: None,
            currency: "CNY".into(),
            items_subtotal_minor: 1000,
            discount_minor: 0,
            shipping_minor: 0,
            paid_amount_minor: 1000,
            refund_amount_minor: None,
            items: vec![],
            payment_method: None,
            warehouse: None,
            promised_ship_by: None,
            promised_deliver_by: None,
        }
    }

    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn accepts_a_valid_order() {
        ValidationRules::default().validate(&Event::Order(order()), NOW).expect("valid");
    }

    #[test]
    fn rejects_negative_paid_amount() {
        let mut o = order();
        o.paid_amount_minor = -5;
        let err = ValidationRules::default().validate(&Event::Order(o), NOW).expect_err("negative");
        assert_eq!(err, DecodeError::NegativeMoney { field: "paid_amount_minor", value: -5 });
    }

    #[test]
    fn rejects_lower_case_currency_and_empty_order_id() {
        let mut o = order();
        o.currency = "cny".into();
        assert_eq!(
            ValidationRules::default().validate(&Event::Order(o), NOW).map_err(|e| e.reason()),
            Err("bad_currency")
        );
        let mut o = order();
        o.order_id = " ".into();
        assert_eq!(ValidationRules::default().validate(&Event::Order(o), NOW), Err(DecodeError::MissingId("order_id")));
    }

    #[test]
    fn rejects_event_times_outside_bounds() {
        let rules = ValidationRules::default();
        let mut o = order();
        o.event_time = NOW + rules.max_future_skew_ms + 1;
        assert_eq!(rules.validate(&Event::Order(o), NOW).map_err(|e| e.reason()), Err("event_time_out_of_bounds"));
        let mut o = order();
        o.event_time = 1_000; // seconds mistaken for ms
        assert_eq!(rules.validate(&Event::Order(o), NOW).map_err(|e| e.reason()), Err("event_time_out_of_bounds"));
    }
}
