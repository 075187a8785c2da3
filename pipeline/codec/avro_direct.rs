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

/// Decodes a datum of `stream` written with the bundled schema into `event`. When `event`
/// already holds an event of `stream` (the previous one), its strings' buffers are reused, and
/// optional strings absent from one event leave theirs in `spare` for the next one present, so
/// the hot path stops allocating once the buffers have grown. `false` when the datum is not
/// complete and valid; `event` is then partly written.
pub fn decode_into(stream: Stream, datum: &[u8], event: &mut Event, spare: &mut SpareStrings) -> bool {
    let mut d = Datum { rest: datum, spare };
    let read = match (stream, &mut *event) {
        (Stream::Clickstream, Event::Click(e)) => d.click(e),
        (Stream::Orders, Event::Order(e)) => d.order(e),
        (Stream::Logistics, Event::Shipment(e)) => d.shipment(e),
        _ => {
            *event = Event::placeholder(stream);
            return decode_into(stream, datum, event, spare);
        }
    };
    read.is_some() && d.rest.is_empty()
}

/// Buffers of optional strings between one event that has them and the next: without them,
/// each optional field that comes and goes from one event to the next (a third of a click's
/// nine) cost a free and an allocation.
#[derive(Debug, Default)]
pub struct SpareStrings(Vec<String>);

impl SpareStrings {
    /// More than any event's optional strings: the pool never grows past what one event frees.
    const MAX: usize = 16;

    fn take(&mut self) -> String {
        self.0.pop().unwrap_or_default()
    }

    fn keep(&mut self, mut buffer: String) {
        if self.0.len() < Self::MAX {
            buffer.clear();
            self.0.push(buffer);
        }
    }
}

struct Datum<'a, 's> {
    rest: &'a [u8],
    spare: &'s mut SpareStrings,
}

impl<'a> Datum<'a, '_> {
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

    fn str(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.long()?).ok()?;
        let bytes = self.rest.get(..len)?;
        self.rest = &self.rest[len..];
        std::str::from_utf8(bytes).ok()
    }

    /// A `string` into `out`, reusing its buffer.
    fn string(&mut self, out: &mut String) -> Option<()> {
        let s = self.str()?;
        out.clear();
        out.push_str(s);
        Some(())
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

    /// A `["null", "string"]` union into `out`, reusing its buffer when both hold a string.
    fn opt_string(&mut self, out: &mut Option<String>) -> Option<()> {
        match self.long()? {
            0 => {
                if let Some(buffer) = out.take() {
                    self.spare.keep(buffer);
                }
            }
            1 => {
                let s = self.str()?;
                let buffer = out.get_or_insert_with(|| self.spare.take());
                buffer.clear();
                buffer.push_str(s);
            }
            _ => return None,
        }
        Some(())
    }

    fn opt_long(&mut self) -> Option<Option<i64>> {
        self.nullable(Self::long)
    }

    fn click(&mut self, e: &mut ClickEvent) -> Option<()> {
        self.string(&mut e.event_id)?;
        e.event_type = self.symbol(ClickEventType::ALL)?;
        e.event_time = self.long()?;
        self.string(&mut e.visitor_id)?;
        self.opt_string(&mut e.user_id)?;
        self.opt_string(&mut e.session_id)?;
        e.channel = self.nullable(|d| d.symbol(Channel::ALL))?;
        self.opt_string(&mut e.utm_source)?;
        self.opt_string(&mut e.utm_medium)?;
        self.opt_string(&mut e.utm_campaign)?;
        self.opt_string(&mut e.referrer)?;
        e.device = self.symbol(Device::ALL)?;
        self.opt_string(&mut e.page)?;
        self.opt_string(&mut e.product_id)?;
        self.opt_string(&mut e.category_id)?;
        e.price_minor = self.opt_long()?;
        self.opt_string(&mut e.currency)?;
        e.quantity = self.nullable(Self::int)?;
        self.opt_string(&mut e.order_id)?;
        self.opt_string(&mut e.region)
    }

    fn order(&mut self, e: &mut OrderEvent) -> Option<()> {
        self.string(&mut e.event_id)?;
        e.event_type = self.symbol(OrderEventType::ALL)?;
        e.event_time = self.long()?;
        self.string(&mut e.order_id)?;
        self.opt_string(&mut e.visitor_id)?;
        self.opt_string(&mut e.user_id)?;
        e.channel = self.symbol(Channel::ALL)?;
        e.device = self.symbol(Device::ALL)?;
        self.opt_string(&mut e.region)?;
        self.string(&mut e.currency)?;
        e.items_subtotal_minor = self.long()?;
        e.discount_minor = self.long()?;
        e.shipping_minor = self.long()?;
        e.paid_amount_minor = self.long()?;
        e.refund_amount_minor = self.opt_long()?;
        self.items(&mut e.items)?;
        e.payment_method = self.nullable(|d| d.symbol(PaymentMethod::ALL))?;
        self.opt_string(&mut e.warehouse)?;
        e.promised_ship_by = self.opt_long()?;
        e.promised_deliver_by = self.opt_long()?;
        Some(())
    }

    /// An array: blocks of items, each led by its count (negative: followed by its byte size),
    /// ended by a zero count. Items already in `items` are overwritten, the rest dropped.
    fn items(&mut self, items: &mut Vec<OrderItem>) -> Option<()> {
        let mut read = 0;
        loop {
            let count = match self.long()? {
                0 => {
                    items.truncate(read);
                    return Some(());
                }
                n if n < 0 => {
                    self.long()?;
                    n.checked_neg()?
                }
                n => n,
            };
            // Every item takes at least 4 bytes: a corrupt count cannot reserve unbounded memory.
            let count = usize::try_from(count).ok()?;
            items.reserve((read + count.min(self.rest.len() / 4)).saturating_sub(items.len()));
            for _ in 0..count {
                if read == items.len() {
                    items.push(OrderItem { sku: String::new(), category_id: None, quantity: 0, unit_price_minor: 0 });
                }
                let item = &mut items[read];
                self.string(&mut item.sku)?;
                self.opt_string(&mut item.category_id)?;
                item.quantity = self.int()?;
                item.unit_price_minor = self.long()?;
                read += 1;
            }
        }
    }

    fn shipment(&mut self, e: &mut ShipmentEvent) -> Option<()> {
        self.string(&mut e.event_id)?;
        e.status = self.symbol(ShipmentStatus::ALL)?;
        e.event_time = self.long()?;
        self.string(&mut e.order_id)?;
        self.string(&mut e.shipment_id)?;
        self.string(&mut e.carrier)?;
        self.string(&mut e.warehouse)?;
        self.opt_string(&mut e.region)?;
        self.opt_string(&mut e.carrier_status_code)?;
        self.opt_string(&mut e.exception_reason)
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

    fn decode(stream: Stream, datum: &[u8]) -> Option<Event> {
        let mut event = Event::placeholder(stream);
        decode_into(stream, datum, &mut event, &mut SpareStrings::default()).then_some(event)
    }

    #[test]
    fn decoding_into_the_previous_event_leaves_nothing_of_it_behind() {
        // One event per stream reused across the whole mix: optional fields come and go and
        // orders have fewer or more items than the one before.
        let mut reused = Stream::ALL.map(Event::placeholder);
        let mut last_of_any_stream = reused[0].clone();
        let mut spare = SpareStrings::default();
        for (stream, datum) in generated(5_000) {
            let event = &mut reused[stream.index()];
            assert!(decode_into(stream, &datum, event, &mut spare));
            assert_eq!(Ok(event.clone()), decode_general(stream, reader_schema(stream), &datum));
            // Into an event of another stream: replaced, not mixed.
            assert!(decode_into(stream, &datum, &mut last_of_any_stream, &mut spare));
            assert_eq!(&last_of_any_stream, event);
        }
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
