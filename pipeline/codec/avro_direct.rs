//! Direct decoding of datums written with exactly the bundled schemas (the common case):
//! Avro binary straight into the event structs, field by field in schema order.
//!
//! apache-avro's general path builds a `Value` tree (a heap string per field name and value),
//! rebuilds its schema name table for every datum, resolves the tree against the reader schema
//! (a second tree) and then deserializes it: most of storepulse's CPU per event. This path
//! allocates only the event's own strings. It answers `None` for anything it does not accept
//! (truncated, trailing bytes, bad UTF-8, out-of-range index): the caller then runs the
//! general path, which classifies the error exactly as before. Tests check that both paths
//! agree on every generated event.

use crate::event::{
    Channel, ClickEvent, ClickEventType, Device, Event, OrderEvent, OrderEventType, OrderItem, PaymentMethod,
    ShipmentEvent, ShipmentStatus, Stream,
};

/// Decodes a datum of `stream` written with the bundled schema; `None` when it is not a
/// complete, valid datum of that schema.
pub fn decode(stream: Stream, datum: &[u8]) -> Option<Event> {
    let mut d = Datum { rest: datum };
    let event = match stream {
        Stream::Clickstream => Event::Click(d.click()?),
        Stream::Orders => Event::Order(d.order()?),
        Stream::Logistics => Event::Shipment(d.shipment()?),
    };
    d.rest.is_empty().then_some(event)
}

struct Datum<'a> {
    rest: &'a [u8],
}

impl Datum<'_> {
    /// `long`: zigzag varint, at most 10 bytes.
    fn long(&mut self) -> Option<i64> {
        let mut v = 0u64;
        for (i, byte) in self.rest.iter().enumerate().take(10) {
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.rest = &self.rest[i + 1..];
                return Some(((v >> 1) as i64) ^ -((v & 1) as i64));
            }
        }
        None
    }

    fn int(&mut self) -> Option<i32> {
        i32::try_from(self.long()?).ok()
    }

    fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.long()?).ok()?;
        let bytes = self.rest.get(..len)?;
        self.rest = &self.rest[len..];
        std::str::from_utf8(bytes).ok().map(str::to_owned)
    }

    /// An enum: the symbol's index into `all` (schema order, as the enums declare them).
    fn symbol<T: Copy>(&mut self, all: &[T]) -> Option<T> {
        all.get(usize::try_from(self.long()?).ok()?).copied()
    }

    /// A `["null", T]` union.
    fn nullable<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        match self.long()? {
            0 => Some(None),
            1 => read(self).map(Some),
            _ => None,
        }
    }

    fn opt_string(&mut self) -> Option<Option<String>> {
        self.nullable(Self::string)
    }

    fn opt_long(&mut self) -> Option<Option<i64>> {
        self.nullable(Self::long)
    }

    fn click(&mut self) -> Option<ClickEvent> {
        Some(ClickEvent {
            event_id: self.string()?,
            event_type: self.symbol(ClickEventType::ALL)?,
            event_time: self.long()?,
            visitor_id: self.string()?,
            user_id: self.opt_string()?,
            session_id: self.opt_string()?,
            channel: self.nullable(|d| d.symbol(Channel::ALL))?,
            utm_source: self.opt_string()?,
            utm_medium: self.opt_string()?,
            utm_campaign: self.opt_string()?,
            referrer: self.opt_string()?,
            device: self.symbol(Device::ALL)?,
            page: self.opt_string()?,
            product_id: self.opt_string()?,
            category_id: self.opt_string()?,
            price_minor: self.opt_long()?,
            currency: self.opt_string()?,
            quantity: self.nullable(Self::int)?,
            order_id: self.opt_string()?,
            region: self.opt_string()?,
        })
    }

    fn order(&mut self) -> Option<OrderEvent> {
        Some(OrderEvent {
            event_id: self.string()?,
            event_type: self.symbol(OrderEventType::ALL)?,
            event_time: self.long()?,
            order_id: self.string()?,
            visitor_id: self.opt_string()?,
            user_id: self.opt_string()?,
            channel: self.symbol(Channel::ALL)?,
            device: self.symbol(Device::ALL)?,
            region: self.opt_string()?,
            currency: self.string()?,
            items_subtotal_minor: self.long()?,
            discount_minor: self.long()?,
            shipping_minor: self.long()?,
            paid_amount_minor: self.long()?,
            refund_amount_minor: self.opt_long()?,
            items: self.items()?,
            payment_method: self.nullable(|d| d.symbol(PaymentMethod::ALL))?,
            warehouse: self.opt_string()?,
            promised_ship_by: self.opt_long()?,
            promised_deliver_by: self.opt_long()?,
        })
    }

    /// An array: blocks of items, each led by its count (negative: followed by its byte size),
    /// ended by a zero count.
    fn items(&mut self) -> Option<Vec<OrderItem>> {
        let mut items = Vec::new();
        loop {
            let count = match self.long()? {
                0 => return Some(items),
                n if n < 0 => {
                    self.long()?;
                    n.checked_neg()?
                }
                n => n,
            };
            // Every item takes at least 4 bytes: a corrupt count cannot reserve unbounded memory.
            items.reserve(usize::try_from(count).ok()?.min(self.rest.len() / 4));
            for _ in 0..count {
                items.push(OrderItem {
                    sku: self.string()?,
                    category_id: self.opt_string()?,
                    quantity: self.int()?,
                    unit_price_minor: self.long()?,
                });
            }
        }
    }

    fn shipment(&mut self) -> Option<ShipmentEvent> {
        Some(ShipmentEvent {
            event_id: self.string()?,
            status: self.symbol(ShipmentStatus::ALL)?,
            event_time: self.long()?,
            order_id: self.string()?,
            shipment_id: self.string()?,
            carrier: self.string()?,
            warehouse: self.string()?,
            region: self.opt_string()?,
            carrier_status_code: self.opt_string()?,
            exception_reason: self.opt_string()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::avro::{decode_general, encode_avro_datum, reader_schema};
    use crate::generate::{Generator, GeneratorConfig};
    use proptest::prelude::*;

    /// Shipments come hours after their orders in generated traffic: these cover the stream,
    /// with every optional field absent and present.
    fn shipments() -> Vec<Event> {
        let scan = |status: ShipmentStatus, extra: bool| ShipmentEvent {
            event_id: format!("l-{}", status.as_str()),
            status,
            event_time: 1_794_322_800_000,
            order_id: "ord-1".into(),
            shipment_id: "SF1".into(),
            carrier: "sf".into(),
            warehouse: "WH-HZ1".into(),
            region: extra.then(|| "ZJ".into()),
            carrier_status_code: extra.then(|| "E42".into()),
            exception_reason: extra.then(|| "地址不详".into()),
        };
        ShipmentStatus::ALL.iter().flat_map(|s| [scan(*s, false), scan(*s, true)]).map(Event::Shipment).collect()
    }

    fn generated(count: u64) -> Vec<(Stream, Vec<u8>)> {
        let events = Generator::new(GeneratorConfig { count: Some(count), ..GeneratorConfig::default() })
            .map(|g| g.event)
            .chain(shipments());
        events
            .map(|e| {
                let stream = match &e {
                    Event::Click(_) => Stream::Clickstream,
                    Event::Order(_) => Stream::Orders,
                    Event::Shipment(_) => Stream::Logistics,
                };
                (stream, encode_avro_datum(&e, reader_schema(stream)).expect("encodes"))
            })
            .collect()
    }

    #[test]
    fn direct_and_general_paths_agree_on_generated_events() {
        let events = generated(5_000);
        for stream in Stream::ALL {
            assert!(events.iter().any(|(s, _)| *s == stream), "the mix has {stream:?} events");
        }
        for (stream, datum) in &events {
            let direct = decode(*stream, datum).expect("a datum of the bundled schema decodes directly");
            assert_eq!(Ok(direct), decode_general(*stream, reader_schema(*stream), datum));
        }
    }

    proptest! {
        /// Corrupted datums: the direct path either declines or agrees with the general one.
        #[test]
        fn a_corrupted_datum_is_declined_or_decoded_the_same(
            pick in 0usize..400,
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            thread_local!(static EVENTS: Vec<(Stream, Vec<u8>)> = generated(400));
            let (stream, mut datum) = EVENTS.with(|e| e[pick % e.len()].clone());
            for (at, byte) in flips {
                let i = at.index(datum.len());
                datum[i] = byte;
            }
            if truncate {
                datum.truncate(cut.index(datum.len()));
            }
            if let Some(direct) = decode(stream, &datum) {
                prop_assert_eq!(Ok(direct), decode_general(stream, reader_schema(stream), &datum));
            }
        }
    }
}
