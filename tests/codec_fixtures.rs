use std::path::{Path, PathBuf};
use storepulse::codec::{Decoder, ValidationRules, WireFormat, WriterSchemaSource};
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
        ValidationRules { min_event_time_ms: 0, max_future_skew_ms: i64::MAX / 2 },
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
