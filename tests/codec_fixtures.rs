use std::path::{Path, PathBuf};
use storepulse::codec::{
    Decoder, ValidationRules, WireFormat, WriterSchemaSource, bundled_writer_schema_id, encode_confluent,
    reader_schema, reader_schema_text,
};
use storepulse::event::{ClickEvent, Event, OrderEvent, Stream};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[derive(serde::Deserialize)]
struct Expected {
    stream: Stream,
    event: Option<serde_json::Value>,
    error: Option<String>,
}

#[test]
fn writer_schema_evolution_fixtures_decode_as_expected() {
    let dir = fixtures();
    let mut decoder = Decoder::new(
        WireFormat::Confluent,
        WriterSchemaSource::local(Some(&dir.join("writer_schemas"))),
        ValidationRules::any_time(),
    );
    let mut cases = 0;
    for entry in std::fs::read_dir(dir.join("avro")).expect("fixtures dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "bin") {
            continue;
        }
        cases += 1;
        let payload = std::fs::read(&path).expect("payload");
        let expected_path = path.with_extension("expected.json");
        let expected: Expected =
            serde_json::from_slice(&std::fs::read(&expected_path).expect("expected")).expect("expected json");
        let decoded = decoder.decode(expected.stream, &payload, 0);
        match (expected.event, expected.error) {
            (Some(event), None) => {
                let want = match expected.stream {
                    Stream::Clickstream => Event::Click(serde_json::from_value::<ClickEvent>(event).expect("click")),
                    Stream::Orders => Event::Order(serde_json::from_value::<OrderEvent>(event).expect("order")),
                    Stream::Logistics => unreachable!("no logistics fixture"),
                };
                assert_eq!(decoded.as_ref(), Ok(&want), "{}", path.display());
            }
            (None, Some(reason)) => {
                let error = decoded.expect_err("must be rejected");
                assert_eq!(error.reason(), reason, "{}: {error}", path.display());
            }
            _ => panic!("{}: expected event or error", expected_path.display()),
        }
    }
    assert_eq!(cases, 4, "every fixture was checked");
}

/// The newest-schema order of the fixtures, as an event.
fn fixture_order() -> Event {
    let expected: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("avro/orders-v2-newer.expected.json")).expect("order fixture"),
    )
    .expect("expected json");
    Event::Order(serde_json::from_value::<OrderEvent>(expected["event"].clone()).expect("order"))
}

fn fixture_click() -> Event {
    let expected: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("avro/clickstream-v0-older.expected.json")).expect("click fixture"),
    )
    .expect("expected json");
    Event::Click(serde_json::from_value::<ClickEvent>(expected["event"].clone()).expect("click"))
}

#[test]
fn another_streams_record_on_a_topic_is_an_incompatible_writer_schema() {
    let order = fixture_order();
    let orders_id = bundled_writer_schema_id(Stream::Orders);
    let payload = encode_confluent(&order, reader_schema(Stream::Orders), orders_id).expect("encode");
    let mut decoder = Decoder::new(WireFormat::Confluent, WriterSchemaSource::local(None), ValidationRules::any_time());
    assert_eq!(decoder.decode(Stream::Orders, &payload, 0).as_ref(), Ok(&order));
    let error = decoder.decode(Stream::Clickstream, &payload, 0).expect_err("an order is not a click");
    assert_eq!(error.reason(), "incompatible_writer_schema", "{error}");
    assert!(error.to_string().contains("com.storepulse.events.OrderEvent"), "{error}");
}

#[test]
fn a_renamed_writer_record_decodes_only_when_its_name_is_accepted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let renamed = reader_schema_text(Stream::Clickstream)
        .replace("\"com.storepulse.events\"", "\"com.legacy\"")
        .replace("\"ClickEvent\"", "\"Click\"");
    assert!(renamed.contains("com.legacy"), "the bundled schema names its namespace");
    std::fs::write(dir.path().join("77-legacy-click.avsc"), &renamed).expect("write schema");
    let writer = apache_avro::Schema::parse_str(&renamed).expect("renamed schema parses");
    let click = fixture_click();
    let payload = encode_confluent(&click, &writer, 77).expect("encode");

    let mut strict =
        Decoder::new(WireFormat::Confluent, WriterSchemaSource::local(Some(dir.path())), ValidationRules::any_time());
    let error = strict.decode(Stream::Clickstream, &payload, 0).expect_err("an unknown record name");
    assert_eq!(error.reason(), "incompatible_writer_schema", "{error}");
    let accepting =
        WriterSchemaSource::local(Some(dir.path())).accepting(Stream::Clickstream, &["com.legacy.Click".into()]);
    let mut lenient = Decoder::new(WireFormat::Confluent, accepting, ValidationRules::any_time());
    assert_eq!(lenient.decode(Stream::Clickstream, &payload, 0).as_ref(), Ok(&click));
}
