//! Instance-wide windows (gauges, progress lines) against partitions that stop delivering, on
//! librdkafka's mock cluster: a quiet partition that is caught up does not stall them; a
//! partition that is behind (its leader unreachable) holds them back until it catches up. And
//! consumer lag is measured from what was processed, not from the last checkpoint's commit.

use rdkafka::ClientConfig;
use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use storepulse::codec::{RegistryClient, bundled_writer_schema_id, encode_confluent, reader_schema};
use storepulse::config::{RawConfig, Settings};
use storepulse::event::{Channel, ClickEvent, ClickEventType, Device, Event, Stream};
use storepulse::operators::builtin;
use storepulse::runtime::{Control, ControlHandle, Options, Pipeline, RunReport};
use storepulse::source::KafkaSource;
use storepulse::telemetry::{Health, Metrics};
use storepulse::time::system_time_ms;

const MIN: i64 = 60_000;
type Cluster = MockCluster<'static, DefaultProducerContext>;

/// A cluster of two brokers: clickstream partition 0 led by broker 1, partition 1 by broker 2,
/// the group coordinator on broker 1.
fn cluster(group: &str) -> Cluster {
    let cluster = MockCluster::new(2).expect("mock cluster");
    cluster.create_topic("clickstream", 2, 1).expect("topic");
    cluster.create_topic("orders", 1, 1).expect("topic");
    cluster.create_topic("logistics", 1, 1).expect("topic");
    cluster.partition_leader("clickstream", 0, Some(1)).expect("leader");
    cluster.partition_leader("clickstream", 1, Some(2)).expect("leader");
    cluster.partition_leader("orders", 0, Some(1)).expect("leader");
    cluster.partition_leader("logistics", 0, Some(1)).expect("leader");
    cluster.coordinator(MockCoordinator::Group(group.into()), 1).expect("coordinator");
    cluster
}

/// Sends clicks to the mock cluster.
struct Clicks {
    producer: BaseProducer,
    sent: usize,
    schema_id: u32,
}

impl Clicks {
    fn new(cluster: &Cluster) -> Self {
        let producer =
            ClientConfig::new().set("bootstrap.servers", cluster.bootstrap_servers()).create().expect("producer");
        Clicks { producer, sent: 0, schema_id: bundled_writer_schema_id(Stream::Clickstream) }
    }

    /// Clicks every 10 s of event time from `from` to `to`, into one partition.
    fn send(&mut self, partition: i32, from: i64, to: i64) {
        for t in (from..=to).step_by(10_000) {
            self.sent += 1;
            let id = format!("p{partition}-{}", self.sent);
            let visitor = format!("p{partition}-v{}", self.sent % 7);
            let click = ClickEvent {
                channel: Some(Channel::Direct),
                ..ClickEvent::new(id, ClickEventType::PageView, t, visitor, Device::App)
            };
            let payload = encode_confluent(&Event::Click(click), reader_schema(Stream::Clickstream), self.schema_id)
                .expect("encodes");
            self.producer
                .send(BaseRecord::<str, [u8]>::to("clickstream").partition(partition).key("k").payload(&payload))
                .expect("queued");
        }
        self.producer.flush(Duration::from_secs(10)).expect("flushed");
    }
}

/// Partition 0 stays busy: each call sends the next 30 s of event time.
fn keep_busy(clicks: &mut Clicks, next: &mut i64) {
    clicks.send(0, *next, *next + 20_000);
    *next += 30_000;
}

/// Runs the pipeline until `done(latest released window end)` or `within` passes; returns the
/// latest window end the gauges showed and the run's report.
fn run_until(
    cluster: &Cluster,
    group: &str,
    within: Duration,
    during: impl FnMut(Duration, f64),
    done: impl Fn(f64) -> bool,
) -> (f64, RunReport) {
    let metrics = Metrics::new(&[]).expect("metrics");
    run_with(
        cluster,
        group,
        &|settings| settings.checkpoint.interval = Duration::from_secs(1),
        &metrics,
        within,
        during,
        done,
    )
}

/// [`run_until`] with settings changed by `configure` and metrics of its own.
fn run_with(
    cluster: &Cluster,
    group: &str,
    configure: &dyn Fn(&mut Settings),
    metrics: &Metrics,
    within: Duration,
    mut during: impl FnMut(Duration, f64),
    done: impl Fn(f64) -> bool,
) -> (f64, RunReport) {
    let out = tempfile::tempdir().expect("tempdir");
    let mut settings = Settings::try_from(RawConfig::default()).expect("defaults");
    settings.brokers = cluster.bootstrap_servers();
    settings.group_id = group.to_owned();
    settings.output = storepulse::sink::storage::Location::Local(out.path().to_path_buf());
    settings.time.idle_timeout_ms = 1_000;
    configure(&mut settings);
    let window_end = metrics.window_end.with_label_values(&["1m"]);
    let health = Health::new();
    let control = ControlHandle::new(Control::Run);
    std::thread::scope(|scope| {
        let runner = scope.spawn(|| {
            let mut source = KafkaSource::connect(&settings, metrics.clone(), Arc::clone(&health)).expect("consumer");
            let options = Options { progress: false, registry: builtin() };
            let pipeline =
                Pipeline::new(settings.clone(), metrics.clone(), Arc::clone(&health), options).expect("pipeline");
            pipeline.run(&mut source, &control).expect("run")
        });
        let started = Instant::now();
        while started.elapsed() < within && !done(window_end.get()) {
            during(started.elapsed(), window_end.get());
            std::thread::sleep(Duration::from_millis(200));
        }
        let reached = window_end.get();
        control.stop();
        (reached, runner.join().expect("pipeline thread"))
    })
}

fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// Event times an hour ago, so that validation accepts them.
fn start_time() -> i64 {
    let now = system_time_ms(SystemTime::now());
    now - now.rem_euclid(3_600_000) - 3_600_000
}

#[test]
fn a_quiet_partition_that_is_caught_up_does_not_stall_windows() {
    let group = "quiet-partition";
    let cluster = cluster(group);
    let mut clicks = Clicks::new(&cluster);
    let t0 = start_time();
    clicks.send(1, t0, t0 + 10_000);
    let mut next = t0;
    let target = secs(t0 + 5 * MIN);
    let (reached, report) = run_until(
        &cluster,
        group,
        Duration::from_secs(60),
        |_, _| keep_busy(&mut clicks, &mut next),
        |end| end >= target,
    );
    assert!(reached >= target, "windows stalled at {reached} behind the quiet partition (wanted {target})");
    assert_eq!(report.late, 0);
}

#[test]
fn a_partition_that_is_behind_holds_windows_back_until_it_catches_up() {
    let group = "lagging-partition";
    let cluster = cluster(group);
    let mut clicks = Clicks::new(&cluster);
    let t0 = start_time();
    clicks.send(1, t0, t0 + 3 * MIN);
    let mut next = t0;
    // Partition 1's leader becomes unreachable: its messages exist but cannot be fetched.
    cluster.broker_down(2).expect("broker down");
    let mut released_while_behind = 0.0f64;
    let mut broker_back = false;
    let target = secs(t0 + 5 * MIN);
    let (reached, report) = run_until(
        &cluster,
        group,
        Duration::from_secs(90),
        |elapsed, end| {
            keep_busy(&mut clicks, &mut next);
            if !broker_back && elapsed >= Duration::from_secs(8) {
                broker_back = true;
                cluster.broker_up(2).expect("broker up");
            }
            if !broker_back {
                released_while_behind = released_while_behind.max(end);
            }
        },
        |end| end >= target,
    );
    assert_eq!(released_while_behind, 0.0, "a window was released while partition 1 had not been read");
    assert!(next > t0 + 8 * MIN, "partition 0 ran ahead meanwhile");
    assert!(reached >= target, "windows never moved after partition 1 caught up (at {reached})");
    assert_eq!(report.late, 0, "partition 1's older events were not late");
}

#[test]
fn lag_follows_processing_not_the_commits_of_checkpoints() {
    let group = "lag-from-position";
    let cluster = cluster(group);
    let mut clicks = Clicks::new(&cluster);
    let mut next = start_time();
    let metrics = Metrics::new(&[]).expect("metrics");
    let (lag, committed) = (
        metrics.consumer_lag.with_label_values(&["clickstream", "0"]),
        metrics.consumer_lag_committed.with_label_values(&["clickstream", "0"]),
    );
    let (mut max_lag, mut max_committed) = (0, 0);
    let mut fetch_queue_seen = false;
    // Partition 0 gets 15 messages a second; checkpoints (and commits) come every 12 s.
    run_with(
        &cluster,
        group,
        &|settings| settings.checkpoint.interval = Duration::from_secs(12),
        &metrics,
        Duration::from_secs(22),
        |elapsed, _| {
            keep_busy(&mut clicks, &mut next);
            if elapsed > Duration::from_secs(8) {
                max_lag = max_lag.max(lag.get());
                max_committed = max_committed.max(committed.get());
            }
            // Sizing series from librdkafka's statistics, while the partition is assigned.
            fetch_queue_seen = fetch_queue_seen || {
                let exported = metrics.render();
                ["storepulse_kafka_fetch_queue_messages", "storepulse_kafka_fetch_queue_bytes"]
                    .iter()
                    .all(|series| exported.contains(&format!("{series}{{partition=\"0\",topic=\"clickstream\"}} ")))
            };
        },
        |_| false,
    );
    println!("lag from the position at most {max_lag}; from the committed offset at most {max_committed}");
    assert!(max_committed > 100, "the committed offset fell behind between checkpoints ({max_committed})");
    assert!(max_lag < 50, "lag from the position stays near zero while keeping up ({max_lag})");
    assert!(fetch_queue_seen, "librdkafka's fetch-queue series are exported for an assigned partition");
}

#[test]
fn lag_keeps_rising_while_the_loop_is_paused_on_a_registry_outage() {
    let group = "lag-during-outage";
    let cluster = cluster(group);
    let mut clicks = Clicks::new(&cluster);
    // A schema id only a registry knows, and a registry nothing listens on: the loop pauses on
    // the first message and retries it.
    clicks.schema_id = 4242;
    let unreachable = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let mut next = start_time();
    let metrics = Metrics::new(&[]).expect("metrics");
    let lag = metrics.consumer_lag.with_label_values(&["clickstream", "0"]);
    let mut max_lag = 0;
    let (_, report) = run_with(
        &cluster,
        group,
        &|settings| settings.schema_registry = Some(RegistryClient::plain(&format!("http://{unreachable}"))),
        &metrics,
        Duration::from_secs(15),
        |_, _| {
            keep_busy(&mut clicks, &mut next);
            max_lag = max_lag.max(lag.get());
        },
        |_| false,
    );
    let sent = clicks.sent as i64;
    println!("{sent} clicks sent to a paused loop; lag rose to {max_lag}");
    assert_eq!(report.decoded, 0, "nothing decodes without the registry");
    assert!(max_lag >= sent / 2, "lag must rise while nothing is processed ({max_lag} of {sent} sent)");
}
