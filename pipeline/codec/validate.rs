//! Validation of decoded events: ids present, event time in bounds, money non-negative and
//! plausible, quantities and line counts plausible, currency shaped like ISO 4217.

use super::DecodeError;
use crate::event::Event;

/// Bounds that every event must satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidationRules {
    /// Earliest accepted event time (UTC ms).
    pub min_event_time_ms: i64,
    /// How far ahead of the wall clock an event time may be, in ms.
    pub max_future_skew_ms: i64,
    /// Largest money amount of any field, in minor units.
    pub max_amount_minor: i64,
    /// Largest quantity of one order line.
    pub max_line_quantity: i64,
    /// Most lines in one order.
    pub max_order_lines: usize,
}

impl Default for ValidationRules {
    fn default() -> Self {
        ValidationRules {
            // 2000-01-01T00:00:00Z: anything older is a broken client clock or a unit mix-up.
            min_event_time_ms: 946_684_800_000,
            max_future_skew_ms: 24 * 3600 * 1000,
            // Ten billion in major units: above any real order, and a window needs nine
            // million such orders before its sum leaves 64 bits.
            max_amount_minor: DEFAULT_MAX_AMOUNT_MINOR,
            max_line_quantity: DEFAULT_MAX_LINE_QUANTITY,
            max_order_lines: DEFAULT_MAX_ORDER_LINES,
        }
    }
}

/// Default of [`ValidationRules::max_amount_minor`].
pub const DEFAULT_MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000;
/// Default of [`ValidationRules::max_line_quantity`].
pub const DEFAULT_MAX_LINE_QUANTITY: i64 = 100_000;
/// Default of [`ValidationRules::max_order_lines`].
pub const DEFAULT_MAX_ORDER_LINES: usize = 1_000;

impl ValidationRules {
    /// Rules that accept any event time, for decoding recorded or test data.
    pub fn any_time() -> Self {
        ValidationRules { min_event_time_ms: 0, max_future_skew_ms: i64::MAX / 2, ..ValidationRules::default() }
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
        let at_most = |field: &'static str, value: i64, max: i64, key: &'static str| {
            if value > max { Err(DecodeError::Implausible { field, value, max, key }) } else { Ok(()) }
        };
        let money = |field: &'static str, value: i64| {
            non_negative(field, value)?;
            at_most(field, value, self.max_amount_minor, "max_amount_minor")
        };
        match event {
            Event::Click(e) => {
                require("visitor_id", &e.visitor_id)?;
                if let Some(price) = e.price_minor {
                    money("price_minor", price)?;
                }
                if let Some(quantity) = e.quantity {
                    non_negative("quantity", i64::from(quantity))?;
                    at_most("quantity", i64::from(quantity), self.max_line_quantity, "max_line_quantity")?;
                }
                if let Some(currency) = &e.currency {
                    check_currency(currency)?;
                }
            }
            Event::Order(e) => {
                require("order_id", &e.order_id)?;
                check_currency(&e.currency)?;
                money("items_subtotal_minor", e.items_subtotal_minor)?;
                money("discount_minor", e.discount_minor)?;
                money("shipping_minor", e.shipping_minor)?;
                money("paid_amount_minor", e.paid_amount_minor)?;
                if let Some(refund) = e.refund_amount_minor {
                    money("refund_amount_minor", refund)?;
                }
                let lines = i64::try_from(e.items.len()).unwrap_or(i64::MAX);
                let max_lines = i64::try_from(self.max_order_lines).unwrap_or(i64::MAX);
                at_most("items (lines)", lines, max_lines, "max_order_lines")?;
                for item in &e.items {
                    money("items.unit_price_minor", item.unit_price_minor)?;
                    non_negative("items.quantity", i64::from(item.quantity))?;
                    at_most("items.quantity", i64::from(item.quantity), self.max_line_quantity, "max_line_quantity")?;
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
    fn rejects_implausible_amounts_quantities_and_line_counts() {
        let rules = ValidationRules::default();
        let reason = |o: OrderEvent| rules.validate(&Event::Order(o), NOW).map_err(|e| e.reason());
        let mut o = order();
        o.paid_amount_minor = 4_000_000_000_000_000_000;
        assert_eq!(reason(o), Err("implausible_value"));
        let mut o = order();
        o.paid_amount_minor = rules.max_amount_minor;
        assert_eq!(reason(o), Ok(()), "the bound itself is plausible");
        let line =
            crate::event::OrderItem { sku: "s".into(), category_id: None, unit_price_minor: 100, quantity: i32::MAX };
        let mut o = order();
        o.items = vec![line.clone(); 3];
        assert_eq!(reason(o), Err("implausible_value"));
        let mut o = order();
        o.items = vec![crate::event::OrderItem { quantity: 2, ..line }; rules.max_order_lines + 1];
        let error = rules.validate(&Event::Order(o), NOW).expect_err("too many lines");
        assert!(error.to_string().contains("validation.max_order_lines"), "{error}");
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
