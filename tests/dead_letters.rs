use arrow_array::{Array, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use storepulse::codec::{WireFormat, bundled_writer_schema_id, encode_confluent, encode_json, reader_schema};
use storepulse::config::{RawConfig, Settings};
use storepulse::event::{Event, Stream};
use storepulse::generate::{Generator, GeneratorConfig};
use storepulse::operators::builtin;
use storepulse::runtime::{Control, ControlHandle, Options, Pipeline, RunReport};
use storepulse::source::KafkaSource;
use storepulse::telemetry::{Health, Metrics};

fn run_pipeline(
    cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    format: WireFormat,
    out: &Path,
    dead_letter_topic: Option<&str>,
) -> RunReport {
    let mut settings = Settings::try_from(RawConfig::default()).expect("defaults");
    settings.brokers = cluster.bootstrap_servers();
    settings.group_id = format!("dead-letters-{format:?}");
    settings.dead_letter_topic = dead_letter_topic.map(str::to_owned);
    settings.format = format;
    settings.output = storepulse::sink::storage::Location::Local(out.to_path_buf());
    settings.validation.min_event_time_ms = 0;
    let metrics = Metrics::new(&[]).expect("metrics");
    let health = Health::new();
    let mut source = KafkaSource::connect(&settings, metrics.clone(), Arc::clone(&health)).expect("consumer");
    let options = Options { progress: false, registry: builtin() };
    let pipeline = Pipeline::new(settings, metrics, health, options).expect("pipeline");
    pipeline.run(&mut source, &ControlHandle::new(Control::Drain)).expect("drain")
}

fn produce(cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>, messages: &[(Stream, Vec<u8>)]) {
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", cluster.bootstrap_servers()).create().expect("producer");
    for (stream, payload) in messages {
        producer.send(BaseRecord::<str, [u8]>::to(stream.as_str()).key("k").payload(payload)).expect("queued");
    }
    producer.flush(Duration::from_secs(10)).expect("flushed");
}

/// Every Parquet file under a table directory (its hour partitions).
fn parquet_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("table directory") {
        let path = entry.expect("entry").path();
        if path.is_dir() && !path.ends_with("_delta_log") {
            files.extend(parquet_files(&path));
        } else if path.extension().is_some_and(|e| e == "parquet") {
            files.push(path);
        }
    }
    files
}

fn reasons(out: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for path in parquet_files(&out.join("dead_letters")) {
        let file = std::fs::File::open(path).expect("file");
        for batch in ParquetRecordBatchReaderBuilder::try_new(file).expect("parquet").build().expect("reader") {
            let batch = batch.expect("batch");
            let column = batch.column_by_name("reason").expect("reason column");
            let reasons = column.as_any().downcast_ref::<StringArray>().expect("strings");
            for i in 0..reasons.len() {
                *counts.entry(reasons.value(i).to_owned()).or_default() += 1;
            }
        }
    }
    counts
}

fn valid_events(n: u64) -> Vec<Event> {
    Generator::new(GeneratorConfig { count: Some(n), ..GeneratorConfig::default() }).map(|g| g.event).collect()
}

#[test]
fn every_malformed_kind_lands_in_dead_letters_with_its_own_reason_and_the_run_continues() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    for stream in Stream::ALL {
        cluster.create_topic(stream.as_str(), 2, 1).expect("topic");
    }
    cluster.create_topic("storepulse.dead-letters", 1, 1).expect("dead-letter topic");
    let events = valid_events(2_000);
    let encode = |e: &Event| {
        encode_confluent(e, reader_schema(e.stream()), bundled_writer_schema_id(e.stream())).expect("encodes")
    };
    let click = events.iter().find(|e| e.stream() == Stream::Clickstream).expect("a click");
    let order = events.iter().find(|e| e.stream() == Stream::Orders).expect("an order");
    let mut wrong_magic = encode(click);
    wrong_magic[0] = 1;
    let mut unknown_id = encode(click);
    unknown_id[1..5].copy_from_slice(&9_999u32.to_be_bytes());
    let truncated = encode(order)[..20].to_vec();
    let mut negative = order.clone();
    if let Event::Order(o) = &mut negative {
        o.paid_amount_minor = -100;
    }
    let malformed = vec![
        (Stream::Clickstream, b"\xde\xad\xbe\xef not avro".to_vec()),
        (Stream::Clickstream, wrong_magic),
        (Stream::Clickstream, unknown_id),
        (Stream::Orders, truncated),
        (Stream::Orders, encode(&negative)),
    ];
    // Malformed messages first: the valid ones after them must still be processed.
    let mut messages = malformed.clone();
    messages.extend(events.iter().map(|e| (e.stream(), encode(e))));
    produce(&cluster, &messages);

    let out = tempfile::tempdir().expect("tempdir");
    let report = run_pipeline(&cluster, WireFormat::Confluent, out.path(), Some("storepulse.dead-letters"));
    assert_eq!(report.consumed, messages.len() as u64);
    assert_eq!(report.decoded, events.len() as u64);
    assert_eq!(report.rejected, malformed.len() as u64);
    let expected: BTreeMap<String, usize> =
        ["unframed_payload", "unsupported_magic_byte", "unknown_schema_id", "truncated_datum", "negative_money"]
            .into_iter()
            .map(|r| (r.to_owned(), 1))
            .collect();
    assert_eq!(reasons(out.path()), expected);
    assert!(!parquet_files(&out.path().join("funnel")).is_empty());

    // The dead-letter topic carries the raw payloads with the reason and origin in headers.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", "dlq-reader")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("storepulse.dead-letters", 0, Offset::Beginning).expect("tpl");
    consumer.assign(&tpl).expect("assign");
    let mut topic_reasons = BTreeMap::new();
    let mut payloads = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while topic_reasons.values().sum::<usize>() < malformed.len() && std::time::Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
        let message = message.expect("dead letter");
        let headers = message.headers().expect("headers");
        let reason = headers
            .iter()
            .find(|h| h.key == "storepulse.reason")
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .expect("reason header");
        assert!(headers.iter().any(|h| h.key == "storepulse.source.offset"));
        *topic_reasons.entry(reason).or_insert(0) += 1;
        payloads.push(message.payload().expect("payload").to_vec());
    }
    assert_eq!(topic_reasons, expected);
    assert!(malformed.iter().all(|(_, bytes)| payloads.contains(bytes)), "raw bytes are kept");
}

#[test]
fn json_with_missing_fields_is_a_dead_letter_naming_the_field() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    for stream in Stream::ALL {
        cluster.create_topic(stream.as_str(), 1, 1).expect("topic");
    }
    let events = valid_events(300);
    let mut messages: Vec<(Stream, Vec<u8>)> =
        events.iter().map(|e| (e.stream(), encode_json(e).expect("json"))).collect();
    messages.insert(
        10,
        (
            Stream::Clickstream,
            br#"{"event_id":"x","event_type":"page_view","event_time":1794326400000,"device":"app"}"#.to_vec(),
        ),
    );
    messages.insert(20, (Stream::Orders, b"{not json".to_vec()));
    produce(&cluster, &messages);

    let out = tempfile::tempdir().expect("tempdir");
    let report = run_pipeline(&cluster, WireFormat::Json, out.path(), None);
    assert_eq!(report.decoded, events.len() as u64);
    let expected: BTreeMap<String, usize> =
        [("json_schema_mismatch".to_owned(), 1), ("malformed_json".to_owned(), 1)].into();
    assert_eq!(reasons(out.path()), expected);
}
