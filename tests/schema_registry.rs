use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use storepulse::codec::{
    Decoder, ValidationRules, WireFormat, WriterSchemaSource, encode_confluent, reader_schema, reader_schema_text,
    register_schema,
};
use storepulse::event::{Event, Stream};
use storepulse::generate::{Generator, GeneratorConfig};

/// The subset of the Confluent Schema Registry API storepulse uses, on a local port.
#[derive(Default)]
struct Registry {
    schemas: Mutex<HashMap<u32, String>>,
    lookups: AtomicUsize,
}

async fn schema_by_id(State(registry): State<Arc<Registry>>, Path(id): Path<u32>) -> (StatusCode, String) {
    registry.lookups.fetch_add(1, Ordering::SeqCst);
    let schemas = registry.schemas.lock().expect("lock");
    match schemas.get(&id) {
        Some(schema) => (StatusCode::OK, serde_json::json!({ "schema": schema }).to_string()),
        None => (StatusCode::NOT_FOUND, r#"{"error_code":40403,"message":"Schema not found"}"#.to_owned()),
    }
}

async fn register(State(registry): State<Arc<Registry>>, body: String) -> String {
    let request: serde_json::Value = serde_json::from_str(&body).expect("json body");
    let schema = request["schema"].as_str().expect("schema string").to_owned();
    let mut schemas = registry.schemas.lock().expect("lock");
    let id = 1000 + schemas.len() as u32 + 1;
    schemas.insert(id, schema);
    serde_json::json!({ "id": id }).to_string()
}

fn start_registry(runtime: &tokio::runtime::Runtime) -> (String, Arc<Registry>) {
    let registry = Arc::new(Registry::default());
    let app = Router::new()
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/subjects/{subject}/versions", post(register))
        .with_state(Arc::clone(&registry));
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    runtime.spawn(async move { axum::serve(listener, app).await });
    (url, registry)
}

#[test]
fn writer_schemas_come_from_the_registry_and_are_cached() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let (url, registry) = start_registry(&runtime);
    let id = register_schema(&url, "clickstream-value", reader_schema_text(Stream::Clickstream)).expect("registered");
    assert_eq!(id, 1001);

    let click = Generator::new(GeneratorConfig { count: Some(1), ..GeneratorConfig::default() })
        .map(|g| g.event)
        .find(|e| e.stream() == Stream::Clickstream)
        .expect("a click");
    let mut decoder =
        Decoder::new(WireFormat::Confluent, WriterSchemaSource::registry(&url), ValidationRules::default());
    let payload = encode_confluent(&click, reader_schema(Stream::Clickstream), id).expect("encodes");
    for _ in 0..3 {
        let decoded: Event = decoder.decode(Stream::Clickstream, &payload, click.event_time()).expect("decodes");
        assert_eq!(decoded, click);
    }
    assert_eq!(registry.lookups.load(Ordering::SeqCst), 1, "the schema is fetched once and cached");

    let unknown = encode_confluent(&click, reader_schema(Stream::Clickstream), 4242).expect("encodes");
    let error = decoder.decode(Stream::Clickstream, &unknown, click.event_time()).expect_err("unknown id");
    assert_eq!(error.reason(), "unknown_schema_id");
}

#[test]
fn an_unreachable_registry_is_reported_as_an_outage_not_bad_data() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let mut decoder = Decoder::new(
        WireFormat::Confluent,
        WriterSchemaSource::registry(&format!("http://127.0.0.1:{port}")),
        ValidationRules::default(),
    );
    let error = decoder.decode(Stream::Orders, &[0, 0, 0, 0, 7, 1, 2], 0).expect_err("no registry");
    assert_eq!(error.reason(), "schema_registry_unavailable");
    assert!(error.is_retryable());
}
