//! `storepulse bench`: how fast storepulse is on this machine and broker, for sizing.
//!
//! One run pre-produces the generator's events (Avro, Confluent framing) to fresh topics, then
//! measures, each from its first event to its last:
//! 1. the ceiling: a consumer in its own group that only polls and decodes every message;
//! 2. the full pipeline (`storepulse run` in-process: every operator, Parquet, the metrics
//!    endpoint, checkpoints) in another group over the same messages;
//! 3. processing only: decode and operators over the same messages already in memory.
//!
//! Then, unless disabled: latency from an event's sending to its window's gauge at a fixed,
//! sub-saturation rate in real time; bytes per open order and session (each in a fresh
//! process); and resident memory over a soak. CPU time is the whole process's (librdkafka's
//! threads included) from `/proc`, so figures per CPU-second stay honest on a shared machine.

pub mod memory;
pub mod probe;
mod report;
pub mod stats;

use crate::codec::{Decoder, WireFormat, WriterSchemaSource, decode_confluent_general_path};
use crate::config::{RawConfig, Settings, TopicNames};
use crate::event::{Event, Stream};
use crate::generate::producer::{Encoder, ProduceOptions, produce};
use crate::generate::{Generator, GeneratorConfig, Profile};
use crate::labels::window_labels;
use crate::operators::{PartitionTask, Registry, TaskId, TaskOutput};
use crate::runtime::{Control, RunReport};
use crate::service::{self, StartOptions};
use crate::sink::storage::Location;
use crate::source::{KafkaSource, Polled};
use crate::telemetry::{Health, Metrics};
use crate::time::{FamilyLateness, Retention, TimeSettings, system_time_ms};
use anyhow::{Context, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;
use stats::PhaseFigures;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// What to measure, and against which broker.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Bootstrap servers; `None` runs librdkafka's embedded mock cluster (no network).
    pub brokers: Option<String>,
    /// Events to pre-produce for phases 1 to 3.
    pub events: u64,
    /// Partitions per topic.
    pub partitions: i32,
    /// Checkpoint interval of the full pipeline.
    pub checkpoint_interval: Duration,
    /// Length of the latency run (zero skips it).
    pub latency_for: Duration,
    /// Visitors per second of the latency and soak runs (sets their message rate).
    pub visitors_per_sec: f64,
    /// Length of the soak whose resident set is judged (zero skips the soak).
    pub soak: Duration,
    /// Traffic before the judged soak: its intervals are printed but not judged.
    pub soak_warm_up: Duration,
    /// Open orders and sessions for the memory figures (zero skips them).
    pub memory_entries: u64,
    /// Where the pipeline writes Parquet and checkpoints; a fresh temporary directory (removed
    /// afterwards) by default.
    pub out: Option<PathBuf>,
}

/// Latency figures of the paced run.
#[derive(Debug, Clone, Default)]
pub struct LatencyFigures {
    /// Messages per second sent.
    pub rate: f64,
    /// Events whose window was published (after warm-up).
    pub events: usize,
    /// Send → gauge, ms: p50, p99.
    pub event_p50_ms: f64,
    /// See `event_p50_ms`.
    pub event_p99_ms: f64,
    /// Window end → gauge, ms: p50, p99 (the pipeline's own delay once a window can close).
    pub close_p50_ms: f64,
    /// See `close_p50_ms`.
    pub close_p99_ms: f64,
}

/// One interval of the soak.
#[derive(Debug, Clone, Copy)]
pub struct SoakSample {
    /// Since the start of the soak, at the end of the interval.
    pub at: Duration,
    /// Highest resident set read in the interval (every [`RSS_READ_EVERY`]), bytes: what a
    /// memory limit must allow.
    pub rss: u64,
    /// Lowest resident set read in the interval, bytes.
    pub rss_floor: u64,
    /// Messages consumed so far.
    pub consumed: u64,
    /// Open orders and sessions held.
    pub open_orders: i64,
    /// See `open_orders`.
    pub open_sessions: i64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Default)]
pub struct BenchReport {
    /// The machine, one line.
    pub machine: String,
    /// Huge pages and allocator options, one line.
    pub memory_settings: String,
    /// The broker, as given or "embedded mock cluster".
    pub broker: String,
    /// Messages pre-produced, and how long that took.
    pub produced: u64,
    /// See `produced`.
    pub produce_time: Duration,
    /// Phase 1: consume + decode.
    pub ceiling: Option<PhaseFigures>,
    /// Phase 2: the full pipeline.
    pub pipeline: Option<PhaseFigures>,
    /// What the full pipeline counted (to show it did the work).
    pub pipeline_report: RunReport,
    /// Phase 3: decode + operators in memory, in a fresh process; the median round.
    pub processing: Option<PhaseFigures>,
    /// Events per CPU-second of phase 3's slowest and fastest round.
    pub processing_range: Option<(f64, f64)>,
    /// Phase 3 again in the bench's own process, after phases 1 and 2.
    pub processing_here: Option<PhaseFigures>,
    /// Decoding alone, events per CPU-second: the direct path, and apache-avro's general path,
    /// over the same messages.
    pub decode: Option<(f64, f64)>,
    /// The paced latency run.
    pub latency: Option<LatencyFigures>,
    /// Bytes per open order and per open session.
    pub memory: Option<(f64, f64)>,
    /// Soak samples, and the warm-up left out of the flatness figure.
    pub soak: Vec<SoakSample>,
    /// See `soak`.
    pub soak_warm_up: Duration,
}

/// Runs every phase.
///
/// # Errors
/// When the broker cannot be reached, topics cannot be created, a phase stalls, or the
/// pipeline fails.
pub fn run(options: &BenchOptions) -> anyhow::Result<BenchReport> {
    let mut report =
        BenchReport { machine: probe::machine(), memory_settings: probe::memory_settings(), ..BenchReport::default() };
    // The memory figures come first and from fresh processes, before this one holds anything.
    if options.memory_entries > 0 {
        eprintln!("measuring bytes per open order and session ({} each, fresh processes)", options.memory_entries);
        report.memory = Some((
            memory_in_child("order", options.memory_entries)?,
            memory_in_child("session", options.memory_entries)?,
        ));
    }
    let broker = match &options.brokers {
        Some(brokers) => Broker::External(brokers.clone()),
        None => Broker::Embedded(rdkafka::mocking::MockCluster::new(1).context("starting the embedded Kafka cluster")?),
    };
    let brokers = broker.bootstrap_servers();
    report.broker = match &broker {
        Broker::External(brokers) => brokers.clone(),
        Broker::Embedded(_) => format!("embedded mock cluster at {brokers} (use --brokers for a real broker)"),
    };
    let run_id = system_time_ms(SystemTime::now());
    let scratch = Scratch::new(options.out.clone(), run_id)?;
    let base = base_settings(&brokers, options)?;
    // Each run its own output: checkpoints name partitions, not topics.
    let output = |run: &str| Location::Local(scratch.dir.join(run));

    let topics = topic_names(run_id, "load");
    broker.create_topics(&topics, options.partitions)?;
    let traffic = load_traffic(options.events);
    eprintln!("producing {} events to {brokers} ({} partitions per topic)", options.events, options.partitions);
    let started = Instant::now();
    let produce_options = ProduceOptions {
        brokers: brokers.clone(),
        topics: topics.clone(),
        encoder: Encoder::new(WireFormat::Confluent),
        rate: None,
        speed: None,
        events_file: None,
        client: Default::default(),
    };
    let produced =
        produce(Generator::new(traffic.clone()), &produce_options, &AtomicBool::new(false), &AtomicU64::new(0))?;
    report.produced = produced.sent;
    report.produce_time = started.elapsed();

    let settings = |group: &str| Settings {
        topics: topics.clone(),
        group_id: format!("bench-{run_id}-{group}"),
        output: output(group),
        ..base.clone()
    };
    eprintln!("phase 1: consume + decode");
    report.ceiling = Some(ceiling(&settings("ceiling"), report.produced)?);
    eprintln!("phase 2: full pipeline");
    let (figures, run_report) = full_pipeline(settings("pipeline"), report.produced)?;
    report.pipeline = Some(figures);
    report.pipeline_report = run_report;
    eprintln!("phase 3: processing only, in a fresh process and then in this one");
    let processing = processing_in_child(options.events, options.partitions)?;
    report.processing = Some(processing.median);
    report.processing_range = Some(processing.range);
    report.decode = Some(processing.decode);
    report.processing_here = Some(processing_only(&traffic, options.partitions, &base.time).median);

    if !options.latency_for.is_zero() {
        eprintln!("latency: paced real-time traffic for {}", humantime::format_duration(options.latency_for));
        let topics = topic_names(run_id, "latency");
        broker.create_topics(&topics, options.partitions)?;
        let mut time = base.time.clone();
        // One-second windows and no allowed lateness: what remains is the pipeline's own delay.
        time.window_sizes_ms = vec![1_000];
        time.out_of_orderness_ms = 0;
        time.lateness = FamilyLateness::uniform(0);
        time.idle_timeout_ms = 1_000;
        let settings = Settings {
            topics,
            group_id: format!("bench-{run_id}-latency"),
            output: output("latency"),
            time,
            ..base.clone()
        };
        let paced = paced_run(settings, options.visitors_per_sec, options.latency_for, None)?;
        report.latency = Some(paced.latency(Duration::from_secs(5)));
    }
    if !options.soak.is_zero() {
        let total = options.soak_warm_up + options.soak;
        eprintln!(
            "soak: paced real-time traffic for {} ({} warm-up, then {} judged)",
            humantime::format_duration(total),
            humantime::format_duration(options.soak_warm_up),
            humantime::format_duration(options.soak)
        );
        let topics = topic_names(run_id, "soak");
        broker.create_topics(&topics, options.partitions)?;
        let settings = Settings {
            topics,
            group_id: format!("bench-{run_id}-soak"),
            output: output("soak"),
            time: steady_within_minutes(&base.time),
            ..base.clone()
        };
        // An interval spans at least one cycle of what comes in bursts (a minute's windows
        // closing, six checkpoints), so its peak and floor compare like with like.
        let interval = (options.soak / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        report.soak = paced_run(settings, options.visitors_per_sec, total, Some(interval))?.soak;
        // Open orders level off about 5 minutes in (kept 2-3 minutes after their last event,
        // which comes minutes after they open), but the tables holding the state take longer:
        // hashbrown doubles a table more than half full once removals have used up its free
        // slots, as the funnel's visitor table does about 6.5 minutes into a soak.
        report.soak_warm_up = options.soak_warm_up;
    }
    drop(broker);
    Ok(report)
}

/// The output directory of the pipeline phases; removed afterwards when it was made here.
struct Scratch {
    dir: PathBuf,
    remove: bool,
}

impl Scratch {
    fn new(out: Option<PathBuf>, run_id: i64) -> anyhow::Result<Self> {
        let (dir, remove) = match out {
            Some(dir) => (dir, false),
            None => (std::env::temp_dir().join(format!("storepulse-bench-{run_id}-{}", std::process::id())), true),
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch { dir, remove })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn topic_names(run_id: i64, purpose: &str) -> TopicNames {
    let name = |stream: &str| format!("bench-{run_id}-{purpose}-{stream}");
    TopicNames { clickstream: name("clickstream"), orders: name("orders"), logistics: name("logistics") }
}

/// The production defaults, pointed at the bench's broker and scratch directory.
fn base_settings(brokers: &str, options: &BenchOptions) -> anyhow::Result<Settings> {
    let mut settings = Settings::try_from(RawConfig::default())?;
    settings.brokers = brokers.to_owned();
    settings.format = WireFormat::Confluent;
    settings.metrics_addr = "127.0.0.1:0".parse().context("a loopback address")?;
    settings.checkpoint.interval = options.checkpoint_interval;
    Ok(settings)
}

/// The soak's time settings: every kind of state is let go within a few minutes of its last
/// event (1-minute windows and session gap, 1-minute dedupe horizon, orders kept two minutes
/// after they finish or three after they go quiet; retention must outlast a window). After
/// that warm-up the state is steady, so a resident set still growing is a leak. Production
/// horizons (1 h windows, 30 min sessions, orders kept for days) would keep state growing
/// through any soak shorter than days.
fn steady_within_minutes(time: &TimeSettings) -> TimeSettings {
    const MINUTE: i64 = 60_000;
    TimeSettings {
        window_sizes_ms: vec![MINUTE],
        session_gap_ms: MINUTE,
        session_max_length_ms: 10 * MINUTE,
        dedupe_horizon_ms: MINUTE,
        retention: Retention { terminal_ttl_ms: 2 * MINUTE, open_timeout_ms: 3 * MINUTE, orphan_after_ms: 2 * MINUTE },
        ..time.clone()
    }
}

/// The broker measured against.
enum Broker {
    External(String),
    Embedded(rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>),
}

impl Broker {
    fn bootstrap_servers(&self) -> String {
        match self {
            Broker::External(brokers) => brokers.clone(),
            Broker::Embedded(cluster) => cluster.bootstrap_servers(),
        }
    }

    fn create_topics(&self, topics: &TopicNames, partitions: i32) -> anyhow::Result<()> {
        let names = [&topics.clickstream, &topics.orders, &topics.logistics];
        let brokers = match self {
            Broker::Embedded(cluster) => {
                for name in names {
                    cluster.create_topic(name, partitions, 1).with_context(|| format!("creating topic {name}"))?;
                }
                return Ok(());
            }
            Broker::External(brokers) => brokers,
        };
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .context("creating the Kafka admin client")?;
        let new: Vec<NewTopic<'_>> =
            names.iter().map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(1))).collect();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = runtime.block_on(admin.create_topics(&new, &options)).context("creating the bench topics")?;
        for result in results {
            if let Err((name, code)) = result
                && code != RDKafkaErrorCode::TopicAlreadyExists
            {
                bail!("creating topic {name}: {code}");
            }
        }
        Ok(())
    }
}

/// Measures from the first event to the last: wall, process CPU, and the phase's peak RSS.
struct Meter {
    started: Option<(Instant, f64)>,
}

impl Meter {
    fn new() -> Self {
        probe::reset_peak_rss();
        Meter { started: None }
    }

    fn start(&mut self) {
        self.started.get_or_insert_with(|| (Instant::now(), probe::process_cpu_seconds()));
    }

    fn stop(&self, events: u64) -> PhaseFigures {
        let (at, cpu) = self.started.unwrap_or_else(|| (Instant::now(), probe::process_cpu_seconds()));
        PhaseFigures {
            events,
            wall: at.elapsed(),
            cpu_seconds: probe::process_cpu_seconds() - cpu,
            peak_rss: probe::peak_rss_bytes(),
        }
    }
}

/// Waits at most this long for a phase's next message before calling it stalled.
const STALL: Duration = Duration::from_secs(120);

/// Phase 1: poll and decode every message, nothing else.
fn ceiling(settings: &Settings, expected: u64) -> anyhow::Result<PhaseFigures> {
    let metrics = Metrics::new(&[])?;
    let mut source = KafkaSource::connect(settings, metrics, Health::new()).context("creating the Kafka consumer")?;
    let mut decoder = Decoder::new(settings.format, WriterSchemaSource::local(None), settings.validation);
    let mut meter = Meter::new();
    let (mut seen, mut decoded) = (0u64, 0u64);
    // Decoded in place, as the pipeline does.
    let mut events = Stream::ALL.map(Event::placeholder);
    let mut last = Instant::now();
    while seen < expected {
        match source.poll(Duration::from_millis(100)) {
            Polled::Message(message) => {
                meter.start();
                seen += 1;
                last = Instant::now();
                let Some(stream) = settings.topics.stream_of(message.topic()) else { continue };
                let now_ms = system_time_ms(SystemTime::now());
                let payload = message.payload();
                decoded += u64::from(decoder.decode_into(stream, payload, now_ms, &mut events[stream.index()]).is_ok());
            }
            Polled::Error(error) => tracing::warn!(%error, "Kafka consume error"),
            Polled::Nothing if last.elapsed() > STALL => bail!("phase 1 stalled after {seen} of {expected} messages"),
            Polled::Nothing => {}
        }
    }
    let figures = meter.stop(seen);
    if decoded != seen {
        bail!("phase 1 decoded {decoded} of {seen} messages; the generator's events must all decode");
    }
    Ok(figures)
}

fn consumed(metrics: &Metrics, topics: &TopicNames) -> u64 {
    Stream::ALL.iter().map(|s| metrics.messages_consumed.with_label_values(&[topics.of(*s)]).get()).sum()
}

/// Phase 2: the whole pipeline, draining to the end of the pre-produced messages.
fn full_pipeline(settings: Settings, expected: u64) -> anyhow::Result<(PhaseFigures, RunReport)> {
    let topics = settings.topics.clone();
    let running = service::start(settings, StartOptions::new(Control::Drain))?;
    let addr = running.metrics_addr;
    let mut meter = Meter::new();
    let mut figures = None;
    let (mut last_count, mut last_change, mut last_scrape) = (0, Instant::now(), Instant::now());
    while !running.is_finished() {
        std::thread::sleep(Duration::from_millis(2));
        let count = consumed(&running.metrics, &topics);
        if count > 0 {
            meter.start();
        }
        if count != last_count {
            (last_count, last_change) = (count, Instant::now());
        }
        if figures.is_none() && count >= expected {
            figures = Some(meter.stop(count));
        }
        // Prometheus scrapes too: rendering every family is part of the pipeline's cost.
        if last_scrape.elapsed() >= Duration::from_secs(5) {
            last_scrape = Instant::now();
            let _ = ureq::get(&format!("http://{addr}/metrics")).call();
        }
        if last_change.elapsed() > STALL {
            running.control.stop();
        }
    }
    let report = running.join()?;
    match figures {
        Some(figures) if report.decoded == expected => Ok((figures, report)),
        _ => bail!("phase 2 consumed {} and decoded {} of {expected} messages", report.consumed, report.decoded),
    }
}

/// FNV-1a of the key, for spreading in-memory events over partitions as a producer would.
fn partition_of(key: &str, partitions: i32) -> i32 {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    (hash % partitions.max(1) as u64) as i32
}

/// Rounds of phase 3 over the same messages, each from an empty state. On a shared machine a
/// round's CPU time moves by 10–20 % from one round to the next: the table shows the median
/// round, and the range beside it.
pub const PROCESSING_ROUNDS: usize = 5;

/// What phase 3 measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Processing {
    /// The round with the median CPU time.
    pub median: PhaseFigures,
    /// Events per CPU-second of the slowest and the fastest round.
    pub range: (f64, f64),
    /// Decoding alone, events per CPU-second: the direct path, and apache-avro's general path.
    pub decode: (f64, f64),
}

/// Phase 3: decode and operators over the same events, encoded in memory; this thread's CPU,
/// [`PROCESSING_ROUNDS`] times. Then decoding alone, by the direct and the general path.
pub fn processing_only(traffic: &GeneratorConfig, partitions: i32, time: &TimeSettings) -> Processing {
    let encoder = Encoder::new(WireFormat::Confluent);
    // The messages lie back to back in one buffer, as in a fetched Kafka batch.
    let mut buffer = Vec::new();
    let mut spans: Vec<(Stream, i32, std::ops::Range<usize>)> = Vec::new();
    for g in Generator::new(traffic.clone()) {
        if let Ok(payload) = encoder.encode(&g) {
            let at = buffer.len();
            buffer.extend_from_slice(&payload);
            spans.push((g.stream, partition_of(g.event.key(), partitions), at..buffer.len()));
        }
    }
    let messages: Vec<(Stream, i32, &[u8])> = spans.into_iter().map(|(s, p, span)| (s, p, &buffer[span])).collect();
    let registry = crate::operators::builtin();
    let mut rounds: Vec<PhaseFigures> =
        (0..PROCESSING_ROUNDS).map(|_| processing_round(&messages, &registry, time)).collect();
    rounds.sort_by(|a, b| a.cpu_seconds.total_cmp(&b.cpu_seconds));
    let range = (rounds[rounds.len() - 1].events_per_cpu_second(), rounds[0].events_per_cpu_second());

    // The general path is slow: a sample of the same messages is enough to compare.
    let sample = &messages[..messages.len().min(200_000)];
    let events_per_cpu_second = |decode: &mut dyn FnMut(Stream, &[u8]) -> bool| {
        let cpu = probe::thread_cpu_seconds();
        let decoded = sample.iter().filter(|(stream, _, payload)| decode(*stream, payload)).count();
        decoded as f64 / (probe::thread_cpu_seconds() - cpu).max(1e-9)
    };
    let now_ms = system_time_ms(SystemTime::now());
    let mut decoder = Decoder::new(WireFormat::Confluent, WriterSchemaSource::local(None), Default::default());
    let mut decoded = Stream::ALL.map(Event::placeholder);
    let direct = events_per_cpu_second(&mut |stream, payload| {
        decoder.decode_into(stream, payload, now_ms, &mut decoded[stream.index()]).is_ok()
    });
    let general = events_per_cpu_second(&mut |stream, payload| decode_confluent_general_path(stream, payload).is_ok());
    Processing { median: rounds[rounds.len() / 2], range, decode: (direct, general) }
}

/// One round of phase 3: a fresh decoder and fresh tasks through every message, then every
/// window closed.
fn processing_round(messages: &[(Stream, i32, &[u8])], registry: &Registry, time: &TimeSettings) -> PhaseFigures {
    probe::reset_peak_rss();
    let (started, cpu) = (Instant::now(), probe::thread_cpu_seconds());
    let mut decoder = Decoder::new(WireFormat::Confluent, WriterSchemaSource::local(None), Default::default());
    // Keyed as the runtime keys its tasks, so the lookup per event costs what it costs there.
    let mut tasks: BTreeMap<TaskId, PartitionTask> = BTreeMap::new();
    let mut out = TaskOutput::default();
    let mut decoded = Stream::ALL.map(Event::placeholder);
    let mut rows = 0usize;
    for (offset, (stream, partition, payload)) in (0i64..).zip(messages) {
        let now_ms = system_time_ms(SystemTime::now());
        let event = &mut decoded[stream.index()];
        if decoder.decode_into(*stream, payload, now_ms, event).is_err() {
            continue;
        }
        let id = TaskId::of(*stream, *partition);
        let task = tasks.entry(id).or_insert_with(|| PartitionTask::new(id, registry, time));
        if task.process(event, offset, &mut out).is_err() {
            continue;
        }
        rows += out.pending();
        out.clear();
    }
    // Rows are counted and dropped task by task, as the loop above does event by event (the
    // pipeline routes them to its buffers after each call).
    for task in tasks.values_mut() {
        task.close_all(&mut out);
        rows += out.pending();
        out.clear();
    }
    let figures = PhaseFigures {
        events: messages.len() as u64,
        wall: started.elapsed(),
        cpu_seconds: probe::thread_cpu_seconds() - cpu,
        peak_rss: probe::peak_rss_bytes(),
    };
    tracing::debug!(rows, "processing only: rows produced");
    figures
}

/// What a paced run observed.
struct Paced {
    /// (window end, wall ms) of each sample of the base window's end gauge that changed.
    window_ends: Vec<(i64, i64)>,
    window_ms: i64,
    traffic: GeneratorConfig,
    sent: u64,
    duration: Duration,
    soak: Vec<SoakSample>,
}

impl Paced {
    fn latency(&self, warm_up: Duration) -> LatencyFigures {
        let events: Vec<i64> = Generator::new(GeneratorConfig { count: Some(self.sent), ..self.traffic.clone() })
            .map(|g| g.event.event_time())
            .collect();
        let first_end = (self.traffic.start_ms.div_euclid(self.window_ms) + 1) * self.window_ms;
        let published = stats::publication_times(&self.window_ends, self.window_ms, first_end);
        let from = self.traffic.start_ms + warm_up.as_millis() as i64;
        let mut latencies = stats::event_latencies(&events, &published, self.window_ms, from);
        let mut close: Vec<f64> =
            published.iter().filter(|(end, _)| **end > from).map(|(end, at)| (at - end) as f64).collect();
        LatencyFigures {
            rate: self.sent as f64 / self.duration.as_secs_f64(),
            events: latencies.len(),
            event_p50_ms: stats::quantile(&mut latencies, 0.5).unwrap_or(f64::NAN),
            event_p99_ms: stats::quantile(&mut latencies, 0.99).unwrap_or(f64::NAN),
            close_p50_ms: stats::quantile(&mut close, 0.5).unwrap_or(f64::NAN),
            close_p99_ms: stats::quantile(&mut close, 0.99).unwrap_or(f64::NAN),
        }
    }
}

/// How often the soak reads the resident set: often enough to catch the few seconds a burst
/// of closing windows holds.
const RSS_READ_EVERY: Duration = Duration::from_millis(200);

/// Runs the pipeline on real-time traffic (event time = wall clock) for `duration`, sampling
/// the base window's end gauge every millisecond and, with `soak_every`, the resident set's
/// peak and floor over each such interval.
fn paced_run(
    settings: Settings,
    visitors_per_sec: f64,
    duration: Duration,
    soak_every: Option<Duration>,
) -> anyhow::Result<Paced> {
    let window_ms = settings.time.window_sizes_ms[0];
    let window = window_labels(&[window_ms]).remove(0);
    let produce_options = ProduceOptions {
        brokers: settings.brokers.clone(),
        topics: settings.topics.clone(),
        encoder: Encoder::new(WireFormat::Confluent),
        rate: None,
        speed: Some(1.0),
        events_file: None,
        client: Default::default(),
    };
    let topics = settings.topics.clone();
    let running = service::start(settings, StartOptions::new(Control::Run))?;
    let metrics = running.metrics.clone();
    // Start the traffic once the pipeline owns its partitions, so the group join is not timed.
    let joining = Instant::now();
    while !running.health.assigned() && joining.elapsed() < STALL {
        std::thread::sleep(Duration::from_millis(20));
    }
    let traffic = GeneratorConfig {
        start_ms: system_time_ms(SystemTime::now()),
        profile: Profile::Steady,
        visitors_per_sec,
        ..GeneratorConfig::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let generator = if soak_every.is_some() {
        PacedTraffic::Process(generate_in_child(&produce_options, visitors_per_sec)?)
    } else {
        let (traffic, stop, sent) = (traffic.clone(), Arc::clone(&stop), Arc::clone(&sent));
        PacedTraffic::Thread(
            std::thread::Builder::new()
                .name("generator".into())
                .spawn(move || produce(Generator::new(traffic), &produce_options, &stop, &sent))?,
        )
    };
    let gauge = metrics.window_end.with_label_values(&[window.as_str()]);
    let started = Instant::now();
    let mut window_ends = Vec::new();
    let mut soak = Vec::new();
    let mut next_sample = started + soak_every.unwrap_or_default();
    let mut next_read = started;
    let (mut rss_peak, mut rss_floor) = (0, u64::MAX);
    // After the traffic stops, wait for its last windows to be published.
    let until = started + duration + Duration::from_secs(3);
    while Instant::now() < until && !running.is_finished() {
        if started.elapsed() >= duration {
            stop.store(true, Ordering::Relaxed);
        }
        let end_ms = (gauge.get() * 1000.0).round() as i64;
        if end_ms > 0 && window_ends.last().is_none_or(|(last, _)| *last != end_ms) {
            window_ends.push((end_ms, system_time_ms(SystemTime::now())));
        }
        if soak_every.is_some() && Instant::now() >= next_read {
            next_read += RSS_READ_EVERY;
            let rss = probe::rss_bytes();
            (rss_peak, rss_floor) = (rss_peak.max(rss), rss_floor.min(rss));
        }
        if let Some(every) = soak_every
            && Instant::now() >= next_sample
        {
            next_sample += every;
            let (rss, floor) = match (std::mem::take(&mut rss_peak), std::mem::replace(&mut rss_floor, u64::MAX)) {
                // No read fell in the interval (the loop stalled): read now.
                (0, _) => {
                    let rss = probe::rss_bytes();
                    (rss, rss)
                }
                read => read,
            };
            soak.push(SoakSample {
                at: started.elapsed(),
                rss,
                rss_floor: floor,
                consumed: consumed(&metrics, &topics),
                open_orders: metrics.orders_open.get(),
                open_sessions: metrics.sessions_open.get(),
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    let sent = match generator {
        PacedTraffic::Thread(thread) => {
            thread.join().map_err(|_| anyhow::anyhow!("the generator thread panicked"))??.sent
        }
        PacedTraffic::Process(mut child) => {
            // Stopping it mid-send is fine: only the pipeline's memory is measured.
            child.kill().context("stopping the soak's generator")?;
            child.wait().context("waiting for the soak's generator")?;
            0
        }
    };
    running.control.stop();
    running.join()?;
    Ok(Paced { window_ends, window_ms, traffic, sent, duration, soak })
}

/// Where a paced run's traffic comes from.
enum PacedTraffic {
    /// A thread of this process: the latency run counts what it sent.
    Thread(
        std::thread::JoinHandle<
            Result<crate::generate::producer::ProduceReport, crate::generate::producer::ProduceError>,
        >,
    ),
    /// `storepulse generate` in a child process, for the soak: the generator holds every
    /// order's future lifecycle events, which grow as long as it runs, and must not count
    /// toward the pipeline's resident set.
    Process(std::process::Child),
}

/// Starts `storepulse generate` sending real-time traffic to `options.topics`.
fn generate_in_child(options: &ProduceOptions, visitors_per_sec: f64) -> anyhow::Result<std::process::Child> {
    let exe = std::env::current_exe().context("finding this executable to run the soak's generator")?;
    let start = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    std::process::Command::new(exe)
        .arg("generate")
        .args(["--brokers", &options.brokers, "--profile", "steady", "--speed", "1", "--start", &start])
        .args(["--visitors-per-sec", &visitors_per_sec.to_string()])
        .args(["--clickstream-topic", &options.topics.clickstream, "--orders-topic", &options.topics.orders])
        .args(["--logistics-topic", &options.topics.logistics])
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting the soak's generator")
}

/// The pre-produced events of the throughput phases: the Double 11 mix.
pub fn load_traffic(events: u64) -> GeneratorConfig {
    GeneratorConfig { count: Some(events), profile: Profile::Double11, ..GeneratorConfig::default() }
}

/// Phase 3 in `storepulse bench --processing-probe EVENTS PARTITIONS`: a fresh process, as
/// `cargo bench --bench processing` is. In the bench's own process, after phases 1 and 2 have
/// allocated and freed hundreds of megabytes on other threads, the same work measures slower.
fn processing_in_child(events: u64, partitions: i32) -> anyhow::Result<Processing> {
    let exe = std::env::current_exe().context("finding this executable to measure processing in a fresh process")?;
    let out = std::process::Command::new(exe)
        .args(["bench", "--processing-probe", &events.to_string(), &partitions.to_string()])
        .output()
        .context("running the processing probe")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_processing_line(text.trim()).with_context(|| {
        format!("the processing probe printed {text:?} ({}): {}", out.status, String::from_utf8_lossy(&out.stderr))
    })
}

/// Runs phase 3 over `events` events in this process and prints one line for
/// [`parse_processing_line`].
///
/// # Errors
/// When the default configuration does not load.
pub fn processing_probe(events: u64, partitions: i32) -> anyhow::Result<String> {
    let time = Settings::try_from(RawConfig::default())?.time;
    Ok(processing_line(&processing_only(&load_traffic(events), partitions, &time)))
}

/// The median round's events, wall seconds, CPU seconds and peak RSS bytes; the slowest and
/// fastest rounds' events per CPU-second; the direct and general decode rates.
fn processing_line(p: &Processing) -> String {
    let f = &p.median;
    let ((slowest, fastest), (direct, general)) = (p.range, p.decode);
    format!(
        "{} {} {} {} {slowest} {fastest} {direct} {general}",
        f.events,
        f.wall.as_secs_f64(),
        f.cpu_seconds,
        f.peak_rss
    )
}

/// The figures of a [`processing_line`].
fn parse_processing_line(line: &str) -> anyhow::Result<Processing> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [events, wall, cpu, rss, slowest, fastest, direct, general] = fields[..] else {
        bail!("expected eight fields, got {}", fields.len());
    };
    let median = PhaseFigures {
        events: events.parse()?,
        wall: Duration::try_from_secs_f64(wall.parse()?)?,
        cpu_seconds: cpu.parse()?,
        peak_rss: rss.parse()?,
    };
    Ok(Processing { median, range: (slowest.parse()?, fastest.parse()?), decode: (direct.parse()?, general.parse()?) })
}

/// Runs `storepulse bench --memory-probe KIND N` and reads the figure it prints.
fn memory_in_child(kind: &str, entries: u64) -> anyhow::Result<f64> {
    let exe = std::env::current_exe().context("finding this executable to measure memory in a fresh process")?;
    let out = std::process::Command::new(exe)
        .args(["bench", "--memory-probe", kind, &entries.to_string()])
        // mimalloc returns freed memory (a hash table's array before it grew) to the OS about a
        // second later, or later still when nothing allocates: read right away, the resident set
        // would sometimes include it (630 instead of 466 bytes per session). Returned at once,
        // the reading is what the entries hold, the same every run.
        .env("MIMALLOC_PURGE_DELAY", "0")
        .output()
        .context("running the memory probe")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse::<f64>().with_context(|| {
        format!("the memory probe printed {text:?} ({}): {}", out.status, String::from_utf8_lossy(&out.stderr))
    })
}

/// The figure of `--memory-probe KIND N`: resident bytes per open `order` or `session`.
///
/// # Errors
/// When `kind` is neither.
pub fn memory_probe(kind: &str, entries: u64) -> anyhow::Result<f64> {
    match kind {
        "order" => Ok(memory::bytes_per_open_order(entries)),
        "session" => Ok(memory::bytes_per_open_session(entries)),
        other => bail!("--memory-probe takes order or session, not {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_processing_probe_line_reads_back_as_printed() {
        let processing = Processing {
            median: PhaseFigures {
                events: 1_000_000,
                wall: Duration::from_millis(1_234),
                cpu_seconds: 0.98,
                peak_rss: 371 << 20,
            },
            range: (950_000.25, 1_100_000.0),
            decode: (2_500_000.5, 150_000.0),
        };
        assert_eq!(parse_processing_line(&processing_line(&processing)).expect("parses"), processing);
        assert!(parse_processing_line("1 2 3").expect_err("three fields").to_string().contains("eight fields"));
    }
}
