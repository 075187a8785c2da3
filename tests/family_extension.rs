//! A metric family added the way `docs/architecture.md` says: one new file (this one holds
//! what `pipeline/operators/product_views.rs` would) and one registration line. It runs through
//! the whole pipeline on librdkafka's mock cluster: Kafka → its operator → its own Parquet table,
//! read back and checked against the events sent; and its state survives a checkpoint.

use arrow_array::{Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::ArrowError;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use storepulse::codec::{bundled_writer_schema_id, encode_confluent, reader_schema};
use storepulse::config::{RawConfig, Settings};
use storepulse::event::{ClickEventType, Event, Stream};
use storepulse::generate::{Generator, GeneratorConfig};
use storepulse::labels::window_label;
use storepulse::operators::{Family, Operator, PartitionTask, TaskId, TaskKind, TaskOutput, builtin};
use storepulse::runtime::Control;
use storepulse::service::{StartOptions, start};
use storepulse::sink::delta::DeltaLake;
use storepulse::sink::storage::{Location, Storage};
use storepulse::table::columns::{int32, int64, text, utc_millis};
use storepulse::table::{TableRow, TableSpec};
use storepulse::time::{ClosedWindow, Late, TimeSettings, TumblingWindows};

// ---- the new family: product views per window and product -----------------------------

/// The family's name: lateness is configured, and late events are counted, under it.
const PRODUCT_VIEWS: &str = "product_views";

/// One closed window of one partition and product.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProductViewsRow {
    window_ms: i64,
    window_start: i64,
    partition: i32,
    product_id: String,
    views: u64,
}

impl TableRow for ProductViewsRow {
    const TABLE: &'static str = "product_views";
    const PARTITION_BY: &'static str = "window_start";
    fn partition_time(&self) -> i64 {
        self.window_start
    }
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError> {
        RecordBatch::try_from_iter([
            ("window_size", text(rows.iter().map(|r| window_label(r.window_ms)))),
            ("window_start", utc_millis(rows.iter().map(|r| r.window_start))),
            ("source_partition", int32(rows.iter().map(|r| r.partition))),
            ("product_id", text(rows.iter().map(|r| r.product_id.as_str()))),
            ("views", int64(rows.iter().map(|r| r.views as i64))),
        ])
    }
}

/// The operator: `product_view` clicks counted per window and product.
#[derive(Debug, Serialize, Deserialize)]
struct ProductViews {
    partition: i32,
    windows: TumblingWindows<BTreeMap<String, u64>>,
}

impl ProductViews {
    fn rows(&self, closed: Vec<ClosedWindow<BTreeMap<String, u64>>>, out: &mut TaskOutput) {
        for window in closed {
            out.rows.extend(window.state.into_iter().map(|(product_id, views)| ProductViewsRow {
                window_ms: window.size_ms,
                window_start: window.start,
                partition: self.partition,
                product_id,
                views,
            }));
        }
    }
}

impl Operator for ProductViews {
    fn record(&mut self, event: &Event, out: &mut TaskOutput) {
        let Event::Click(click) = event else { return };
        let (ClickEventType::ProductView, Some(product)) = (click.event_type, &click.product_id) else { return };
        let result: Result<(), Late> =
            self.windows.record(click.event_time, |views| *views.entry(product.clone()).or_default() += 1);
        out.late_for(PRODUCT_VIEWS, event, result);
    }

    fn on_watermark(&mut self, clocks: &storepulse::operators::Clocks, out: &mut TaskOutput) {
        if let Some(watermark) = clocks.watermark(Stream::Clickstream) {
            let closed = self.windows.advance(watermark);
            self.rows(closed, out);
        }
    }

    fn close_all(&mut self, _: &storepulse::operators::Clocks, out: &mut TaskOutput) {
        let closed = self.windows.close_all();
        self.rows(closed, out);
    }
}

impl Family for ProductViews {
    const NAME: &'static str = "product_views";
    const TASK: TaskKind = TaskKind::Clickstream;
    const FAMILIES: &'static [(&'static str, Stream)] = &[(PRODUCT_VIEWS, Stream::Clickstream)];
    const TABLES: &'static [TableSpec] = &[TableSpec::of::<ProductViewsRow>()];

    fn new(partition: i32, time: &TimeSettings) -> Self {
        ProductViews {
            partition,
            windows: TumblingWindows::new(&time.window_sizes_ms, time.lateness.of(PRODUCT_VIEWS)),
        }
    }
}

// ---- the checks --------------------------------------------------------------------------

/// Product views per product in the events, the base window's worth summed over all windows.
fn expected_views(events: &[Event]) -> BTreeMap<String, i64> {
    let mut views = BTreeMap::new();
    for event in events {
        if let Event::Click(c) = event
            && c.event_type == ClickEventType::ProductView
            && let Some(product) = &c.product_id
        {
            *views.entry(product.clone()).or_default() += 1;
        }
    }
    views
}

/// Views per product in the table's 1-minute rows, read from the files its Delta log holds.
fn table_views(out: &Path) -> BTreeMap<String, i64> {
    let storage = Storage::open(&Location::Local(out.to_path_buf())).expect("storage");
    let mut lake = DeltaLake::new(storage);
    let live = lake.live_files(&TableSpec::of::<ProductViewsRow>()).expect("the table's log");
    let mut views = BTreeMap::new();
    for path in live.values().flatten().map(|f| out.join("product_views").join(&f.path)) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).expect("file"))
            .expect("parquet")
            .build()
            .expect("reader");
        for batch in reader {
            let batch = batch.expect("batch");
            let column = |name| batch.column_by_name(name).expect("column");
            let sizes = column("window_size").as_any().downcast_ref::<StringArray>().expect("strings").clone();
            let products = column("product_id").as_any().downcast_ref::<StringArray>().expect("strings").clone();
            let counts = column("views").as_any().downcast_ref::<Int64Array>().expect("int64").clone();
            for i in (0..batch.num_rows()).filter(|i| sizes.value(*i) == "1m") {
                *views.entry(products.value(i).to_owned()).or_default() += counts.value(i);
            }
        }
    }
    views
}

#[test]
fn a_family_registered_in_one_line_writes_its_own_table_through_the_whole_pipeline() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    for stream in Stream::ALL {
        cluster.create_topic(stream.as_str(), 2, 1).expect("topic");
    }
    let events: Vec<Event> =
        Generator::new(GeneratorConfig { count: Some(3_000), ..GeneratorConfig::default() }).map(|g| g.event).collect();
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", cluster.bootstrap_servers()).create().expect("producer");
    for event in &events {
        let payload = encode_confluent(event, reader_schema(event.stream()), bundled_writer_schema_id(event.stream()))
            .expect("encodes");
        let record = BaseRecord::<str, [u8]>::to(event.stream().as_str()).key(event.key()).payload(&payload);
        producer.send(record).expect("queued");
    }
    producer.flush(Duration::from_secs(10)).expect("flushed");

    let out = tempfile::tempdir().expect("tempdir");
    let mut settings = Settings::try_from(RawConfig::default()).expect("defaults");
    settings.brokers = cluster.bootstrap_servers();
    settings.group_id = "family-extension".into();
    settings.output = storepulse::sink::storage::Location::Local(out.path().to_path_buf());
    settings.metrics_addr = "127.0.0.1:0".parse().expect("an address");
    settings.validation.min_event_time_ms = 0;
    // The registration line.
    let registry = builtin().with::<ProductViews>();
    assert!(registry.tables().iter().any(|t| t.name == "product_views"));
    let running = start(settings, StartOptions { registry, ..StartOptions::new(Control::Drain) }).expect("starts");
    let late_series = "storepulse_events_late_total{family=\"product_views\",stream=\"clickstream\"} 0";
    assert!(running.metrics.render().contains(late_series), "its late events are counted from the first scrape");
    let report = running.join().expect("drains");
    assert_eq!(report.decoded, events.len() as u64);

    let expected = expected_views(&events);
    assert!(expected.len() > 10, "the traffic views many products");
    assert_eq!(table_views(out.path()), expected);
    assert!(out.path().join("funnel").is_dir(), "the built-in families run beside it");
}

#[test]
fn a_familys_state_rides_in_the_task_snapshot_and_a_build_without_it_refuses_the_snapshot() {
    let registry = builtin().with::<ProductViews>();
    let time = TimeSettings::default();
    let id = TaskId::of(Stream::Clickstream, 0);
    let mut task = PartitionTask::new(id, &registry, &time);
    let clicks: Vec<Event> = Generator::new(GeneratorConfig { count: Some(500), ..GeneratorConfig::default() })
        .map(|g| g.event)
        .filter(|e| e.stream() == Stream::Clickstream)
        .collect();
    let (first, second) = clicks.split_at(clicks.len() / 2);
    let mut out = TaskOutput::default();
    for event in first {
        task.process(event, 0, &mut out).expect("a click");
    }
    let bytes = task.snapshot(0).expect("encodes");
    let mut restored = PartitionTask::restore(&bytes, &registry, &time).expect("restores");
    let (mut a, mut b) = (TaskOutput::default(), TaskOutput::default());
    for event in second {
        task.process(event, 0, &mut a).expect("a click");
        restored.process(event, 0, &mut b).expect("a click");
    }
    task.close_all(&mut a);
    restored.close_all(&mut b);
    assert!(!a.rows.of::<ProductViewsRow>().is_empty());
    assert_eq!(a.rows.of::<ProductViewsRow>(), b.rows.of::<ProductViewsRow>());

    let error = PartitionTask::restore(&bytes, &builtin(), &time).expect_err("a build without the family");
    assert!(error.to_string().contains("\"product_views\""), "{error}");
    // A snapshot taken before the family existed restores with the family starting empty.
    let before = PartitionTask::new(id, &builtin(), &time).snapshot(0).expect("encodes");
    PartitionTask::restore(&before, &registry, &time).expect("the new family starts empty");
}
