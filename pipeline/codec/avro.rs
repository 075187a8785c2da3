//! Avro: the bundled reader schemas, writer-schema lookup by id (schema registry, a directory,
//! or the bundled ids), the Confluent wire format and plain datums.

use super::DecodeError;
use super::avro_direct::{self, SpareStrings};
use super::registry::{RegistryAuth, RegistryClient};
use crate::event::{ClickEvent, Event, OrderEvent, ShipmentEvent, Stream};
use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const CLICKSTREAM_AVSC: &str = include_str!("../../schemas/clickstream.avsc");
const ORDERS_AVSC: &str = include_str!("../../schemas/orders.avsc");
const LOGISTICS_AVSC: &str = include_str!("../../schemas/logistics.avsc");

/// Schema ids under which the bundled schemas are known when no registry is configured
/// (clickstream, orders, logistics). A writer-schema directory may override them.
pub const BUNDLED_SCHEMA_IDS: [(u32, Stream); 3] =
    [(1, Stream::Clickstream), (2, Stream::Orders), (3, Stream::Logistics)];

/// Confluent framing: magic byte plus 4-byte schema id.
const HEADER_LEN: usize = 5;
/// How long an unknown id is remembered before the source is asked again.
const NEGATIVE_CACHE_TTL: Duration = Duration::from_secs(30);
/// Registry fetch attempts per decode; the pipeline keeps retrying the message after that.
const REGISTRY_ATTEMPTS: u32 = 2;

/// The Avro text of the bundled (reader) schema of `stream`.
pub fn reader_schema_text(stream: Stream) -> &'static str {
    match stream {
        Stream::Clickstream => CLICKSTREAM_AVSC,
        Stream::Orders => ORDERS_AVSC,
        Stream::Logistics => LOGISTICS_AVSC,
    }
}

/// The parsed bundled (reader) schema of `stream`.
///
/// # Panics
/// Never in a released build: the bundled schemas are parsed by a unit test.
pub fn reader_schema(stream: Stream) -> &'static Schema {
    static SCHEMAS: OnceLock<[Schema; 3]> = OnceLock::new();
    let schemas = SCHEMAS.get_or_init(|| {
        Stream::ALL.map(|s| {
            #[expect(clippy::expect_used, reason = "bundled schemas are checked by unit tests")]
            Schema::parse_str(reader_schema_text(s)).expect("bundled schema parses")
        })
    });
    &schemas[stream as usize]
}

/// The id of the bundled writer schema of `stream`.
pub fn bundled_writer_schema_id(stream: Stream) -> u32 {
    BUNDLED_SCHEMA_IDS.iter().find(|(_, s)| *s == stream).map_or(0, |(id, _)| *id)
}

/// Where writer schemas come from, by id.
pub enum WriterSchemaSource {
    /// A Confluent-compatible schema registry (`GET {url}/schemas/ids/{id}`).
    Registry {
        /// Base URL, without trailing slash.
        url: String,
        /// HTTP client with timeouts and the registry's trusted roots.
        agent: ureq::Agent,
        /// The `Authorization` header, if the registry asks for credentials.
        authorization: Option<String>,
        /// Schemas fetched so far.
        cache: SchemaCache,
    },
    /// `<id>.avsc` or `<id>-<name>.avsc` files in a directory, then the bundled ids.
    Local {
        /// Directory searched first, if any.
        dir: Option<PathBuf>,
        /// Schemas loaded so far.
        cache: SchemaCache,
    },
}

/// How a writer schema reads as a stream's reader schema.
#[derive(Debug, Clone)]
struct Verdict {
    /// Why its record is not the topic's, if it is not: resolution ignores record names, so
    /// another stream's events would otherwise decode as this one's.
    foreign_record: Option<String>,
    /// Why it may not resolve, if the checker objects.
    incompatibility: Option<String>,
    /// Same Parsing Canonical Form as the bundled schema: datums decode directly.
    direct: bool,
}

/// Parsed writer schemas and per-stream compatibility verdicts.
#[derive(Default)]
pub struct SchemaCache {
    /// Per stream, writer record full names accepted besides the reader schema's own name
    /// and aliases.
    accepted_names: [Vec<String>; 3],
    schemas: HashMap<u32, Arc<Schema>>,
    verdicts: HashMap<(u32, Stream), Verdict>,
    unknown: HashMap<u32, Instant>,
    /// Per stream, the last writer schema id found to be its bundled schema: a message with
    /// it is decoded directly without the two lookups above.
    direct_id: [Option<u32>; 3],
}

impl WriterSchemaSource {
    /// Looks writer schemas up in a schema registry at `url`, plain HTTP or HTTPS with the
    /// system's roots, without credentials.
    pub fn registry(url: &str) -> Self {
        WriterSchemaSource::Registry {
            url: url.trim_end_matches('/').to_owned(),
            agent: super::registry::agent_trusting(ureq::tls::RootCerts::PlatformVerifier),
            authorization: None,
            cache: SchemaCache::default(),
        }
    }

    /// Looks writer schemas up in the schema registry `client` describes.
    ///
    /// # Errors
    /// A message when its extra roots are not PEM certificates.
    pub fn registry_with(client: &RegistryClient) -> Result<Self, String> {
        Ok(WriterSchemaSource::Registry {
            url: client.url.clone(),
            agent: client.agent()?,
            authorization: client.auth.as_ref().map(RegistryAuth::header),
            cache: SchemaCache::default(),
        })
    }

    /// Looks writer schemas up in `dir` (if given), then among the bundled ids.
    pub fn local(dir: Option<&Path>) -> Self {
        WriterSchemaSource::Local { dir: dir.map(Path::to_path_buf), cache: SchemaCache::default() }
    }

    /// Also accepts writer records named `names` (full names) for `stream`.
    #[must_use]
    pub fn accepting(mut self, stream: Stream, names: &[String]) -> Self {
        self.cache_mut().accepted_names[stream.index()] = names.to_vec();
        self
    }

    /// The writer schema with `id`, and why it may not resolve against the reader schema of
    /// `stream`. The verdict only explains a failed resolution: apache-avro's checker is
    /// stricter than the Avro spec (it refuses new enum symbols that the reader's enum default
    /// covers), so resolution itself decides.
    fn resolve(&mut self, id: u32, stream: Stream) -> Result<(Arc<Schema>, Verdict), DecodeError> {
        let schema = self.fetch(id)?;
        let cache = self.cache_mut();
        let accepted = &cache.accepted_names[stream.index()];
        let verdict = cache.verdicts.entry((id, stream)).or_insert_with(|| {
            let reader = reader_schema(stream);
            Verdict {
                foreign_record: foreign_record(&schema, reader, accepted, stream),
                incompatibility: SchemaCompatibility::can_read(&schema, reader).err().map(|e| e.to_string()),
                direct: schema.canonical_form() == reader.canonical_form(),
            }
        });
        let verdict = verdict.clone();
        if verdict.direct {
            cache.direct_id[stream.index()] = Some(id);
        }
        Ok((schema, verdict))
    }

    /// Whether `id` is known to be the bundled schema of `stream` (without a lookup).
    fn known_direct(&self, id: u32, stream: Stream) -> bool {
        let (WriterSchemaSource::Registry { cache, .. } | WriterSchemaSource::Local { cache, .. }) = self;
        cache.direct_id[stream.index()] == Some(id)
    }

    fn cache_mut(&mut self) -> &mut SchemaCache {
        match self {
            WriterSchemaSource::Registry { cache, .. } | WriterSchemaSource::Local { cache, .. } => cache,
        }
    }

    fn fetch(&mut self, id: u32) -> Result<Arc<Schema>, DecodeError> {
        let cache = self.cache_mut();
        if let Some(schema) = cache.schemas.get(&id) {
            return Ok(Arc::clone(schema));
        }
        if cache.unknown.get(&id).is_some_and(|at| at.elapsed() < NEGATIVE_CACHE_TTL) {
            return Err(DecodeError::UnknownSchemaId(id));
        }
        let text = match self {
            WriterSchemaSource::Registry { url, agent, authorization, .. } => {
                fetch_from_registry(agent, url, authorization.as_deref(), id)?
            }
            WriterSchemaSource::Local { dir, .. } => load_local(dir.as_deref(), id),
        };
        let cache = self.cache_mut();
        let Some(text) = text else {
            cache.unknown.insert(id, Instant::now());
            return Err(DecodeError::UnknownSchemaId(id));
        };
        let schema = Schema::parse_str(&text).map_err(|e| DecodeError::IncompatibleWriterSchema {
            id,
            stream: "any",
            message: format!("writer schema does not parse: {e}"),
        })?;
        let schema = Arc::new(schema);
        cache.schemas.insert(id, Arc::clone(&schema));
        Ok(schema)
    }
}

/// Why `writer` is not a record of the topic whose reader schema is `reader`, unless its full
/// name is the reader's, one of the reader's aliases, or in `accepted`.
fn foreign_record(writer: &Schema, reader: &Schema, accepted: &[String], stream: Stream) -> Option<String> {
    let stream = stream.as_str();
    let expected = reader.name().map_or_else(String::new, |name| name.fullname(None));
    let Some(name) = writer.name() else {
        return Some(format!("writer schema is not a record; the {stream} topic carries {expected}"));
    };
    let written = name.fullname(None);
    let alias_of_reader =
        reader.aliases().is_some_and(|aliases| aliases.iter().any(|a| a.fullname(reader.namespace()) == written));
    if written == expected || alias_of_reader || accepted.contains(&written) {
        return None;
    }
    Some(format!(
        "writer record {written} is not {expected}, the {stream} topic's record \
         (codec.accepted_record_names.{stream} can accept it)"
    ))
}

fn load_local(dir: Option<&Path>, id: u32) -> Option<String> {
    if let Some(dir) = dir
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        let exact = format!("{id}.avsc");
        let prefix = format!("{id}-");
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name == exact || (name.starts_with(&prefix) && name.ends_with(".avsc")) {
                return std::fs::read_to_string(entry.path()).ok();
            }
        }
    }
    BUNDLED_SCHEMA_IDS
        .iter()
        .find(|(bundled, _)| *bundled == id)
        .map(|(_, stream)| reader_schema_text(*stream).to_owned())
}

fn fetch_from_registry(
    agent: &ureq::Agent,
    url: &str,
    authorization: Option<&str>,
    id: u32,
) -> Result<Option<String>, DecodeError> {
    let endpoint = format!("{url}/schemas/ids/{id}");
    let mut last_error = String::new();
    for attempt in 0..REGISTRY_ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200 << attempt));
        }
        let request = agent.get(&endpoint);
        let request = match authorization {
            Some(value) => request.header("Authorization", value),
            None => request,
        };
        match request.call() {
            Ok(mut response) if response.status().is_success() => {
                let body = response.body_mut().read_to_string().map_err(|e| e.to_string());
                let parsed = body.and_then(|b| {
                    serde_json::from_str::<RegistrySchema>(&b).map_err(|e| format!("unexpected registry answer: {e}"))
                });
                match parsed {
                    Ok(answer) if answer.schema_type.as_deref().unwrap_or("AVRO") == "AVRO" => {
                        return Ok(Some(answer.schema));
                    }
                    Ok(answer) => {
                        return Err(DecodeError::IncompatibleWriterSchema {
                            id,
                            stream: "any",
                            message: format!("registry schema type is {:?}, not AVRO", answer.schema_type),
                        });
                    }
                    Err(e) => last_error = e,
                }
            }
            Ok(response) if response.status().as_u16() == 404 => return Ok(None),
            Ok(response) => last_error = format!("HTTP {}", response.status()),
            Err(e) => last_error = e.to_string(),
        }
        tracing::warn!(registry = %url, schema_id = id, attempt, error = %last_error, "schema registry request failed");
    }
    Err(DecodeError::SchemaRegistryUnavailable { id, message: last_error })
}

#[derive(serde::Deserialize)]
struct RegistrySchema {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
}

/// Registers `schema_text` under `subject` in a Confluent-compatible registry; returns its id.
///
/// # Errors
/// A message when the registry cannot be reached or refuses the schema.
pub fn register_schema(url: &str, subject: &str, schema_text: &str) -> Result<u32, String> {
    #[derive(serde::Deserialize)]
    struct Registered {
        id: u32,
    }
    let endpoint = format!("{}/subjects/{subject}/versions", url.trim_end_matches('/'));
    let body = serde_json::json!({ "schema": schema_text }).to_string();
    let mut response = ureq::post(&endpoint)
        .header("Content-Type", "application/vnd.schemaregistry.v1+json")
        .send(body.as_bytes())
        .map_err(|e| format!("POST {endpoint}: {e}"))?;
    let text = response.body_mut().read_to_string().map_err(|e| e.to_string())?;
    serde_json::from_str::<Registered>(&text).map(|r| r.id).map_err(|e| format!("POST {endpoint}: {e}: {text}"))
}

/// Decodes a Confluent-framed message of `stream`.
pub(super) fn decode_confluent(
    stream: Stream,
    payload: &[u8],
    schemas: &mut WriterSchemaSource,
    event: &mut Event,
    spare: &mut SpareStrings,
) -> Result<(), DecodeError> {
    match payload.first() {
        Some(0) => {}
        Some(&b) if b < 0x10 => return Err(DecodeError::UnsupportedMagicByte(b)),
        Some(&b) => return Err(DecodeError::UnframedPayload(b)),
        None => return Err(DecodeError::EmptyPayload),
    }
    let Some((header, datum)) = payload.split_at_checked(HEADER_LEN) else {
        return Err(DecodeError::TruncatedHeader { len: payload.len() });
    };
    let id = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if schemas.known_direct(id, stream) && avro_direct::decode_into(stream, datum, event, spare) {
        return Ok(());
    }
    let (writer, verdict) = schemas.resolve(id, stream)?;
    if let Some(message) = verdict.foreign_record {
        return Err(DecodeError::IncompatibleWriterSchema { id, stream: stream.as_str(), message });
    }
    if verdict.direct && avro_direct::decode_into(stream, datum, event, spare) {
        return Ok(());
    }
    *event = decode_general(stream, &writer, datum).map_err(|error| match (error, verdict.incompatibility) {
        (DecodeError::SchemaMismatch(_), Some(message)) => {
            DecodeError::IncompatibleWriterSchema { id, stream: stream.as_str(), message }
        }
        (error, _) => error,
    })?;
    Ok(())
}

/// Decodes a bare datum written with the bundled schema of `stream`.
pub(super) fn decode_plain_datum(
    stream: Stream,
    payload: &[u8],
    event: &mut Event,
    spare: &mut SpareStrings,
) -> Result<(), DecodeError> {
    if !avro_direct::decode_into(stream, payload, event, spare) {
        *event = decode_general(stream, reader_schema(stream), payload)?;
    }
    Ok(())
}

/// A reader over a datum that remembers whether the decoder tried to read past its end.
///
/// apache-avro decodes a union whose index is cut off by the end of input as `null`, so a
/// datum truncated at a union boundary would otherwise decode "successfully" with nulls.
struct EndAwareReader<'a> {
    rest: &'a [u8],
    read_past_end: bool,
}

impl std::io::Read for EndAwareReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.rest.is_empty() && !buf.is_empty() {
            self.read_past_end = true;
        }
        self.rest.read(buf)
    }
}

/// The general path: any writer schema that resolves to the reader schema, and the errors.
pub(super) fn decode_general(stream: Stream, writer: &Schema, datum: &[u8]) -> Result<Event, DecodeError> {
    let mut reader = EndAwareReader { rest: datum, read_past_end: false };
    let value = apache_avro::from_avro_datum(writer, &mut reader, None).map_err(classify_avro_error)?;
    if reader.read_past_end {
        return Err(DecodeError::TruncatedDatum("datum ended inside the record".into()));
    }
    if !reader.rest.is_empty() {
        return Err(DecodeError::TrailingBytes(reader.rest.len()));
    }
    let value = value.resolve(reader_schema(stream)).map_err(|e| DecodeError::SchemaMismatch(e.to_string()))?;
    let mismatch = |e: apache_avro::Error| DecodeError::SchemaMismatch(e.to_string());
    Ok(match stream {
        Stream::Clickstream => Event::Click(apache_avro::from_value::<ClickEvent>(&value).map_err(mismatch)?),
        Stream::Orders => Event::Order(apache_avro::from_value::<OrderEvent>(&value).map_err(mismatch)?),
        Stream::Logistics => Event::Shipment(apache_avro::from_value::<ShipmentEvent>(&value).map_err(mismatch)?),
    })
}

fn classify_avro_error(error: apache_avro::Error) -> DecodeError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == ErrorKind::UnexpectedEof
        {
            return DecodeError::TruncatedDatum(error.to_string());
        }
        source = e.source();
    }
    DecodeError::MalformedDatum(error.to_string())
}

/// Encodes `event` as a datum of `schema` (the bundled schema, or an older/newer writer schema).
///
/// # Errors
/// When the event does not fit the schema.
pub fn encode_avro_datum(event: &Event, schema: &Schema) -> Result<Vec<u8>, apache_avro::Error> {
    let value = match event {
        Event::Click(e) => apache_avro::to_value(e)?,
        Event::Order(e) => apache_avro::to_value(e)?,
        Event::Shipment(e) => apache_avro::to_value(e)?,
    };
    apache_avro::to_avro_datum(schema, value.resolve(schema)?)
}

/// Encodes `event` in the Confluent wire format under `schema_id`.
///
/// # Errors
/// When the event does not fit the schema.
pub fn encode_confluent(event: &Event, schema: &Schema, schema_id: u32) -> Result<Vec<u8>, apache_avro::Error> {
    let datum = encode_avro_datum(event, schema)?;
    let mut out = Vec::with_capacity(HEADER_LEN + datum.len());
    out.push(0);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(&datum);
    Ok(out)
}
