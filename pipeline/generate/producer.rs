//! Sending generated traffic: encoding (including the broken bytes of malformed messages),
//! the `--events-file` ground truth, pacing by `--rate` and `--speed`, and producing to Kafka.

use super::{Generated, Generator, Injection, MalformedKind};
use crate::codec::{
    WireFormat, bundled_writer_schema_id, encode_avro_datum, encode_confluent, encode_json, reader_schema,
    reader_schema_text,
};
use crate::config::TopicNames;
use crate::event::{Event, Stream};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A failure while producing generated traffic.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// librdkafka refused the configuration or a send.
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// An event did not fit its Avro schema (a bug).
    #[error("Avro encoding: {0}")]
    Avro(#[from] apache_avro::Error),
    /// JSON encoding failed (a bug).
    #[error("JSON encoding: {0}")]
    Json(#[from] serde_json::Error),
    /// The events file could not be written.
    #[error("events file {path}: {source}")]
    EventsFile {
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Registering schemas failed.
    #[error("schema registry: {0}")]
    Registry(String),
    /// Messages were not acknowledged by the broker.
    #[error("{0} messages were not delivered")]
    Undelivered(u64),
}

/// Encodes generated messages in one wire format.
#[derive(Debug, Clone)]
pub struct Encoder {
    format: WireFormat,
    schema_ids: [u32; 3],
}

impl Encoder {
    /// An encoder using the bundled schema ids (1, 2, 3).
    pub fn new(format: WireFormat) -> Self {
        Encoder { format, schema_ids: Stream::ALL.map(bundled_writer_schema_id) }
    }

    /// An encoder that registers the bundled schemas as `{topic}-value` subjects and uses the
    /// ids the registry returns.
    ///
    /// # Errors
    /// [`ProduceError::Registry`] when registration fails.
    pub fn with_registry(format: WireFormat, url: &str, topics: &TopicNames) -> Result<Self, ProduceError> {
        let mut ids = [0; 3];
        for (i, stream) in Stream::ALL.into_iter().enumerate() {
            let subject = format!("{}-value", topics.of(stream));
            ids[i] = crate::codec::register_schema(url, &subject, reader_schema_text(stream))
                .map_err(ProduceError::Registry)?;
        }
        Ok(Encoder { format, schema_ids: ids })
    }

    /// The value bytes of `g` (broken ones for malformed messages).
    ///
    /// # Errors
    /// Only on encoding bugs.
    pub fn encode(&self, g: &Generated) -> Result<Vec<u8>, ProduceError> {
        match (g.injected, g.malformed_kind) {
            (Some(Injection::Malformed), Some(kind)) => self.encode_malformed(g, kind),
            _ => self.encode_event(&g.event),
        }
    }

    fn encode_event(&self, event: &Event) -> Result<Vec<u8>, ProduceError> {
        let stream = event.stream();
        Ok(match self.format {
            WireFormat::Confluent => encode_confluent(event, reader_schema(stream), self.schema_ids[stream as usize])?,
            WireFormat::AvroDatum => encode_avro_datum(event, reader_schema(stream))?,
            WireFormat::Json => encode_json(event)?,
        })
    }

    fn encode_malformed(&self, g: &Generated, kind: MalformedKind) -> Result<Vec<u8>, ProduceError> {
        let avro = self.format != WireFormat::Json;
        Ok(match kind {
            MalformedKind::Garbage => {
                let mut bytes = g.garbage.clone();
                if let Some(first) = bytes.first_mut() {
                    // Never a Confluent magic byte, never the start of a JSON object.
                    *first |= 0x80;
                }
                bytes
            }
            MalformedKind::WrongMagicByte => {
                let mut bytes = self.encode_event(&g.event)?;
                if avro {
                    bytes[0] = 0x01;
                } else {
                    bytes.insert(0, 0x00);
                }
                bytes
            }
            MalformedKind::UnknownSchemaId if self.format == WireFormat::Confluent => {
                let mut bytes = self.encode_event(&g.event)?;
                bytes[1..5].copy_from_slice(&0x7fff_fff0u32.to_be_bytes());
                bytes
            }
            MalformedKind::Truncated => {
                let bytes = self.encode_event(&g.event)?;
                let header = if self.format == WireFormat::Confluent { 5 } else { 0 };
                bytes[..header + (bytes.len() - header) / 2].to_vec()
            }
            MalformedKind::MissingField | MalformedKind::UnknownSchemaId => {
                if avro {
                    self.encode_event(&without_key(&g.event))?
                } else {
                    let mut value = serde_json::to_value(&g.event)?;
                    if let Some(object) = value.as_object_mut() {
                        object.remove(key_field(g.stream));
                    }
                    serde_json::to_vec(&value)?
                }
            }
            MalformedKind::NegativeMoney => self.encode_event(&with_negative_money(&g.event))?,
        })
    }
}

fn key_field(stream: Stream) -> &'static str {
    match stream {
        Stream::Clickstream => "visitor_id",
        Stream::Orders | Stream::Logistics => "order_id",
    }
}

fn without_key(event: &Event) -> Event {
    let mut event = event.clone();
    match &mut event {
        Event::Click(e) => e.visitor_id.clear(),
        Event::Order(e) => e.order_id.clear(),
        Event::Shipment(e) => e.order_id.clear(),
    }
    event
}

fn with_negative_money(event: &Event) -> Event {
    let mut event = event.clone();
    match &mut event {
        Event::Click(e) => e.price_minor = Some(-e.price_minor.unwrap_or(100).abs().max(1)),
        Event::Order(e) => e.discount_minor = -e.discount_minor.abs().max(1),
        // Shipments carry no money: the nearest contract break is a missing id.
        Event::Shipment(e) => e.shipment_id.clear(),
    }
    event
}

/// One line of the `--events-file`: every message sent, in order, with the fault it carries.
#[derive(Serialize)]
struct EventsFileLine<'a> {
    seq: u64,
    topic: &'a str,
    key: &'a str,
    injected: Option<Injection>,
    malformed_kind: Option<MalformedKind>,
    event: &'a Event,
}

/// Writes the ground-truth events file.
pub struct EventsFile {
    path: PathBuf,
    out: BufWriter<std::fs::File>,
}

impl EventsFile {
    /// Creates (truncates) the file.
    ///
    /// # Errors
    /// When the file cannot be created.
    pub fn create(path: &Path) -> Result<Self, ProduceError> {
        let file =
            std::fs::File::create(path).map_err(|source| ProduceError::EventsFile { path: path.into(), source })?;
        Ok(EventsFile { path: path.into(), out: BufWriter::with_capacity(1 << 20, file) })
    }

    /// Appends one message.
    ///
    /// # Errors
    /// On write failure.
    pub fn write(&mut self, g: &Generated, topic: &str) -> Result<(), ProduceError> {
        let line = EventsFileLine {
            seq: g.seq,
            topic,
            key: g.event.key(),
            injected: g.injected,
            malformed_kind: g.malformed_kind,
            event: &g.event,
        };
        let io = |source| ProduceError::EventsFile { path: self.path.clone(), source };
        serde_json::to_writer(&mut self.out, &line)?;
        self.out.write_all(b"\n").map_err(io)
    }

    /// Flushes buffered lines.
    ///
    /// # Errors
    /// On write failure.
    pub fn finish(mut self) -> Result<(), ProduceError> {
        self.out.flush().map_err(|source| ProduceError::EventsFile { path: self.path.clone(), source })
    }
}

/// Paces sending: at most `rate` messages per second and at most `speed` event-seconds per
/// wall-clock second, whichever is slower. Neither set means as fast as possible.
pub struct Pacer {
    rate: Option<f64>,
    speed: Option<f64>,
    started: Instant,
    start_event_ms: i64,
}

impl Pacer {
    /// A pacer starting now at event time `start_event_ms`.
    pub fn new(rate: Option<f64>, speed: Option<f64>, start_event_ms: i64) -> Self {
        Pacer { rate, speed, started: Instant::now(), start_event_ms }
    }

    /// How long to wait before sending message number `sent` whose event time is `event_ms`.
    pub fn delay(&self, sent: u64, event_ms: i64) -> Duration {
        let by_rate = self.rate.map_or(0.0, |r| sent as f64 / r.max(1e-9));
        let by_speed =
            self.speed.map_or(0.0, |s| (event_ms - self.start_event_ms).max(0) as f64 / 1000.0 / s.max(1e-9));
        let due = Duration::from_secs_f64(by_rate.max(by_speed));
        due.saturating_sub(self.started.elapsed())
    }
}

/// Counts deliveries the broker refused.
#[derive(Default)]
pub struct DeliveryCounter {
    failed: AtomicU64,
}

impl ClientContext for DeliveryCounter {}
impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result
            && self.failed.fetch_add(1, Ordering::Relaxed) < 5
        {
            tracing::error!(%error, "message not delivered");
        }
    }
}

/// Where and how to send generated traffic.
#[derive(Debug, Clone)]
pub struct ProduceOptions {
    /// Bootstrap servers.
    pub brokers: String,
    /// Topic names.
    pub topics: TopicNames,
    /// Value encoding.
    pub encoder: Encoder,
    /// Pacing: messages per second.
    pub rate: Option<f64>,
    /// Pacing: event-seconds per second.
    pub speed: Option<f64>,
    /// Ground-truth file.
    pub events_file: Option<PathBuf>,
    /// librdkafka pass-through settings.
    pub client: BTreeMap<String, String>,
}

/// What was sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProduceReport {
    /// Messages acknowledged by the broker.
    pub sent: u64,
    /// Event time of the last message, UTC ms.
    pub last_event_ms: i64,
}

/// Sends `generator`'s messages until it ends or `stop` is set; then flushes.
///
/// # Errors
/// [`ProduceError`] on configuration, encoding, file or delivery failures.
pub fn produce(
    generator: Generator,
    options: &ProduceOptions,
    stop: &AtomicBool,
    sent_counter: &AtomicU64,
) -> Result<ProduceReport, ProduceError> {
    let mut config = ClientConfig::new();
    for (k, v) in &options.client {
        config.set(k, v);
    }
    config
        .set("bootstrap.servers", &options.brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .set("compression.type", "lz4")
        .set("enable.idempotence", "true");
    let producer: BaseProducer<DeliveryCounter> = config.create_with_context(DeliveryCounter::default())?;
    let mut events_file = options.events_file.as_deref().map(EventsFile::create).transpose()?;
    let pacer = Pacer::new(options.rate, options.speed, generator.config.start_ms);
    let mut report = ProduceReport::default();
    for g in generator {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let wait = pacer.delay(report.sent, g.event.event_time());
        if !wait.is_zero() {
            producer.poll(wait);
            std::thread::sleep(pacer.delay(report.sent, g.event.event_time()));
        }
        let topic = options.topics.of(g.stream);
        let payload = options.encoder.encode(&g)?;
        let key = g.event.key().to_owned();
        let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).key(key.as_str()).payload(payload.as_slice());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    producer.poll(Duration::from_millis(50));
                }
                Err((error, _)) => return Err(error.into()),
            }
        }
        if let Some(file) = events_file.as_mut() {
            file.write(&g, topic)?;
        }
        report.sent += 1;
        report.last_event_ms = g.event.event_time();
        sent_counter.store(report.sent, Ordering::Relaxed);
        if report.sent % 1024 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    if let Some(file) = events_file {
        file.finish()?;
    }
    producer.flush(Duration::from_secs(60))?;
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(ProduceError::Undelivered(failed));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{DecodeError, Decoder, ValidationRules, WriterSchemaSource};
    use crate::generate::{GeneratorConfig, Injections};

    fn decode(format: WireFormat, g: &Generated, bytes: &[u8]) -> Result<Event, DecodeError> {
        let mut decoder = Decoder::new(format, WriterSchemaSource::local(None), ValidationRules::default());
        decoder.decode(g.stream, bytes, g.event.event_time())
    }

    #[test]
    fn every_format_round_trips_generated_events() {
        let events: Vec<Generated> =
            Generator::new(GeneratorConfig { count: Some(2_000), ..GeneratorConfig::default() }).collect();
        for format in [WireFormat::Confluent, WireFormat::AvroDatum, WireFormat::Json] {
            let encoder = Encoder::new(format);
            for g in &events {
                let bytes = encoder.encode(g).expect("encodes");
                assert_eq!(decode(format, g, &bytes).as_ref(), Ok(&g.event), "{format:?} seq {}", g.seq);
            }
        }
    }

    #[test]
    fn malformed_messages_are_rejected_with_the_reason_of_their_kind() {
        let cfg = GeneratorConfig {
            count: Some(20_000),
            injections: Injections { malformed_fraction: 0.05, ..Injections::default() },
            ..GeneratorConfig::default()
        };
        let encoder = Encoder::new(WireFormat::Confluent);
        let mut seen = std::collections::BTreeMap::new();
        for g in Generator::new(cfg).filter(|g| g.injected == Some(Injection::Malformed)) {
            let bytes = encoder.encode(&g).expect("encodes");
            let err = decode(WireFormat::Confluent, &g, &bytes).expect_err("malformed must be rejected");
            seen.entry(format!("{:?}", g.malformed_kind))
                .or_insert_with(std::collections::BTreeSet::new)
                .insert(err.reason());
        }
        let expect = |kind: &str, reasons: &[&str]| {
            let got = seen.get(kind).unwrap_or_else(|| panic!("{kind} never generated"));
            assert!(got.iter().all(|r| reasons.contains(r)), "{kind}: {got:?}");
        };
        expect("Some(Garbage)", &["unframed_payload"]);
        expect("Some(WrongMagicByte)", &["unsupported_magic_byte"]);
        expect("Some(UnknownSchemaId)", &["unknown_schema_id"]);
        expect("Some(Truncated)", &["truncated_datum"]);
        expect("Some(MissingField)", &["missing_id"]);
        expect("Some(NegativeMoney)", &["negative_money", "missing_id"]);
    }

    #[test]
    fn pacer_by_speed_waits_for_event_time() {
        let pacer = Pacer::new(None, Some(60.0), 0);
        assert!(pacer.delay(0, 120_000) > Duration::from_millis(1_900));
        assert_eq!(Pacer::new(None, None, 0).delay(1_000_000, 1 << 40), Duration::ZERO);
    }
}
