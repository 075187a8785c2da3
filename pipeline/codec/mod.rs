//! Decoding and encoding of the three event streams: Avro in the Confluent wire format, plain
//! Avro datums and JSON, plus validation of decoded events.
//!
//! Every failure is a [`DecodeError`] whose [`DecodeError::reason`] is a short, stable code used
//! as the dead-letter reason and as a metric label.

mod avro;
mod avro_direct;
mod json;
mod registry;
mod validate;

pub use avro::{
    BUNDLED_SCHEMA_IDS, WriterSchemaSource, bundled_writer_schema_id, encode_avro_datum, encode_confluent,
    reader_schema, reader_schema_text, register_schema,
};
pub use registry::{RegistryAuth, RegistryClient};
pub use validate::{DEFAULT_MAX_AMOUNT_MINOR, DEFAULT_MAX_LINE_QUANTITY, DEFAULT_MAX_ORDER_LINES, ValidationRules};

use crate::event::{Event, Stream};
use avro_direct::SpareStrings;
use serde::{Deserialize, Serialize};

/// The byte format of message values on the input topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum WireFormat {
    /// Avro with the Confluent framing: magic byte 0, 4-byte big-endian schema id, datum.
    Confluent,
    /// A bare Avro datum written with the bundled schema (no framing).
    AvroDatum,
    /// One JSON object per message, field names as in the Avro schemas, times in epoch ms.
    Json,
}

/// Why a message could not become an event. Each variant is bad data, except
/// [`DecodeError::SchemaRegistryUnavailable`], which is an outage of an external system.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    /// The message has no value bytes.
    #[error("empty message value")]
    EmptyPayload,
    /// Shorter than the 5-byte Confluent header.
    #[error("message of {len} bytes is shorter than the 5-byte Confluent header")]
    TruncatedHeader {
        /// Payload length in bytes.
        len: usize,
    },
    /// A framing byte other than 0 that looks like a framing version.
    #[error("unsupported Confluent magic byte {0:#04x} (expected 0x00)")]
    UnsupportedMagicByte(u8),
    /// The payload does not start like a Confluent-framed message at all.
    #[error("payload is not Confluent-framed (first byte {0:#04x}); is the producer writing plain Avro or JSON?")]
    UnframedPayload(u8),
    /// No writer schema is known under the id in the header.
    #[error("unknown writer schema id {0}")]
    UnknownSchemaId(u32),
    /// The schema registry could not be reached after retries.
    #[error("schema registry unavailable while fetching schema id {id}: {message}")]
    SchemaRegistryUnavailable {
        /// Schema id being fetched.
        id: u32,
        /// Last error.
        message: String,
    },
    /// The writer schema cannot be resolved against the reader schema of the stream.
    #[error("writer schema id {id} is incompatible with the {stream} reader schema: {message}")]
    IncompatibleWriterSchema {
        /// Writer schema id.
        id: u32,
        /// Stream whose reader schema was used.
        stream: &'static str,
        /// What the compatibility check said.
        message: String,
    },
    /// The Avro datum ended before the schema was satisfied.
    #[error("Avro datum is truncated: {0}")]
    TruncatedDatum(String),
    /// The Avro datum is not valid for its writer schema.
    #[error("Avro datum is malformed: {0}")]
    MalformedDatum(String),
    /// Bytes remain after the datum was fully read: written with a different schema.
    #[error("{0} bytes left after the Avro datum; wrong writer schema?")]
    TrailingBytes(usize),
    /// The resolved Avro record does not fit the event type.
    #[error("Avro record does not match the event type: {0}")]
    SchemaMismatch(String),
    /// Not syntactically valid JSON.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// Valid JSON, but a field is missing or of the wrong type.
    #[error("JSON does not match the event contract: {0}")]
    JsonSchemaMismatch(String),
    /// A required id is empty.
    #[error("required id `{0}` is empty")]
    MissingId(&'static str),
    /// Event time outside the configured bounds.
    #[error("event_time {event_time_ms} is outside [{min_ms}, {max_ms}]")]
    EventTimeOutOfBounds {
        /// The event's time.
        event_time_ms: i64,
        /// Lower bound.
        min_ms: i64,
        /// Upper bound.
        max_ms: i64,
    },
    /// A money or quantity field is negative.
    #[error("`{field}` is negative ({value})")]
    NegativeMoney {
        /// Field name.
        field: &'static str,
        /// The value.
        value: i64,
    },
    /// A money amount, quantity or line count above its plausibility bound: valid in form, but
    /// a producer's bug or an attack, and enough to swamp a window's sum.
    #[error("`{field}` is {value}, above the plausible maximum {max} (validation.{key})")]
    Implausible {
        /// Field name.
        field: &'static str,
        /// The value.
        value: i64,
        /// The bound.
        max: i64,
        /// The setting that holds the bound, under `[validation]`.
        key: &'static str,
    },
    /// The currency is not three upper-case ASCII letters.
    #[error("currency {0:?} is not an ISO 4217 code (three upper-case letters)")]
    BadCurrency(String),
}

impl DecodeError {
    /// Every reason code, for pre-registering counters at zero.
    pub const REASONS: &'static [&'static str] = &[
        "empty_payload",
        "truncated_header",
        "unsupported_magic_byte",
        "unframed_payload",
        "unknown_schema_id",
        "schema_registry_unavailable",
        "incompatible_writer_schema",
        "truncated_datum",
        "malformed_datum",
        "trailing_bytes",
        "schema_mismatch",
        "malformed_json",
        "json_schema_mismatch",
        "missing_id",
        "event_time_out_of_bounds",
        "negative_money",
        "implausible_value",
        "bad_currency",
    ];

    /// Stable short code: dead-letter `reason` column and metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::EmptyPayload => "empty_payload",
            DecodeError::TruncatedHeader { .. } => "truncated_header",
            DecodeError::UnsupportedMagicByte(_) => "unsupported_magic_byte",
            DecodeError::UnframedPayload(_) => "unframed_payload",
            DecodeError::UnknownSchemaId(_) => "unknown_schema_id",
            DecodeError::SchemaRegistryUnavailable { .. } => "schema_registry_unavailable",
            DecodeError::IncompatibleWriterSchema { .. } => "incompatible_writer_schema",
            DecodeError::TruncatedDatum(_) => "truncated_datum",
            DecodeError::MalformedDatum(_) => "malformed_datum",
            DecodeError::TrailingBytes(_) => "trailing_bytes",
            DecodeError::SchemaMismatch(_) => "schema_mismatch",
            DecodeError::MalformedJson(_) => "malformed_json",
            DecodeError::JsonSchemaMismatch(_) => "json_schema_mismatch",
            DecodeError::MissingId(_) => "missing_id",
            DecodeError::EventTimeOutOfBounds { .. } => "event_time_out_of_bounds",
            DecodeError::NegativeMoney { .. } => "negative_money",
            DecodeError::Implausible { .. } => "implausible_value",
            DecodeError::BadCurrency(_) => "bad_currency",
        }
    }

    /// True when retrying later could succeed (an outage, not bad data).
    pub fn is_retryable(&self) -> bool {
        matches!(self, DecodeError::SchemaRegistryUnavailable { .. })
    }
}

/// Turns message values into validated events.
pub struct Decoder {
    format: WireFormat,
    writer_schemas: WriterSchemaSource,
    rules: ValidationRules,
    spare: SpareStrings,
}

impl Decoder {
    /// A decoder for `format`, looking writer schemas up in `writer_schemas`.
    pub fn new(format: WireFormat, writer_schemas: WriterSchemaSource, rules: ValidationRules) -> Self {
        Decoder { format, writer_schemas, rules, spare: SpareStrings::default() }
    }

    /// Decodes and validates one message value of `stream`. `now_ms` is the wall clock, used
    /// only for the future-skew bound.
    ///
    /// # Errors
    /// A [`DecodeError`] naming why the message is not a valid event.
    pub fn decode(&mut self, stream: Stream, payload: &[u8], now_ms: i64) -> Result<Event, DecodeError> {
        let mut event = Event::placeholder(stream);
        self.decode_into(stream, payload, now_ms, &mut event)?;
        Ok(event)
    }

    /// Like [`Decoder::decode`], into `event`, reusing the buffers of its strings when it holds
    /// the previous event of `stream`: the processing loop keeps one per stream. After an error
    /// `event` is unspecified.
    ///
    /// # Errors
    /// As [`Decoder::decode`].
    pub fn decode_into(
        &mut self,
        stream: Stream,
        payload: &[u8],
        now_ms: i64,
        event: &mut Event,
    ) -> Result<(), DecodeError> {
        if payload.is_empty() {
            return Err(DecodeError::EmptyPayload);
        }
        match self.format {
            WireFormat::Confluent => {
                avro::decode_confluent(stream, payload, &mut self.writer_schemas, event, &mut self.spare)?
            }
            WireFormat::AvroDatum => avro::decode_plain_datum(stream, payload, event, &mut self.spare)?,
            WireFormat::Json => *event = json::decode(stream, payload)?,
        }
        self.rules.validate(event, now_ms)
    }
}

/// Decodes a Confluent-framed message written with a bundled schema through apache-avro's
/// general path only (`Value` tree, resolution, serde), which every message took before the
/// direct path existed: `storepulse bench` times both on the same messages.
///
/// # Errors
/// As [`Decoder::decode`], without validation.
pub fn decode_confluent_general_path(stream: Stream, payload: &[u8]) -> Result<Event, DecodeError> {
    let datum = payload.get(5..).ok_or(DecodeError::TruncatedHeader { len: payload.len() })?;
    avro::decode_general(stream, reader_schema(stream), datum)
}

/// Encodes an event as JSON bytes (the `json` wire format).
///
/// # Errors
/// Only if serde_json fails, which for these types means a bug.
pub fn encode_json(event: &Event) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(event)
}
