//! The JSON wire format: one object per message, the Avro field names, times in epoch ms.

use super::DecodeError;
use crate::event::{ClickEvent, Event, OrderEvent, ShipmentEvent, Stream};
use serde_json::error::Category;

pub(super) fn decode(stream: Stream, payload: &[u8]) -> Result<Event, DecodeError> {
    let result = match stream {
        Stream::Clickstream => serde_json::from_slice::<ClickEvent>(payload).map(Event::Click),
        Stream::Orders => serde_json::from_slice::<OrderEvent>(payload).map(Event::Order),
        Stream::Logistics => serde_json::from_slice::<ShipmentEvent>(payload).map(Event::Shipment),
    };
    result.map_err(|error| match error.classify() {
        Category::Data => DecodeError::JsonSchemaMismatch(error.to_string()),
        Category::Syntax | Category::Eof | Category::Io => DecodeError::MalformedJson(error.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_field_is_a_schema_mismatch_naming_the_field() {
        let err =
            decode(Stream::Clickstream, br#"{"event_id":"e1","event_type":"page_view","event_time":1,"device":"app"}"#)
                .expect_err("visitor_id is required");
        assert_eq!(err.reason(), "json_schema_mismatch");
        assert!(err.to_string().contains("visitor_id"), "{err}");
    }

    #[test]
    fn broken_json_is_malformed() {
        let err = decode(Stream::Orders, b"{\"event_id\": ").expect_err("truncated JSON");
        assert_eq!(err.reason(), "malformed_json");
    }

    #[test]
    fn unknown_enum_symbol_decodes_to_catch_all() {
        let event = decode(
            Stream::Logistics,
            br#"{"event_id":"e","status":"teleported","event_time":5,"order_id":"o","shipment_id":"s","carrier":"sf","warehouse":"w"}"#,
        )
        .expect("unknown symbols are tolerated");
        match event {
            Event::Shipment(s) => assert_eq!(s.status, crate::event::ShipmentStatus::Unknown),
            other => panic!("unexpected {other:?}"),
        }
    }
}
