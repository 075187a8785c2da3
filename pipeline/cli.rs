//! The command line: `run` (production), `demo` (everything embedded), `generate`,
//! `compact`, `bench` and `broker` (an embedded broker on a local port). Thin: parsing and
//! wiring only.

use crate::bench::{self, BenchOptions};
use crate::checkpoint::{CHECKPOINTS, publish_committed};
use crate::codec::WireFormat;
use crate::config::{RawConfig, Settings, TopicNames};
use crate::event::{Channel, Stream};
use crate::generate::producer::{Encoder, ProduceOptions, ProduceReport, produce};
use crate::generate::{ConversionDrop, Generator, GeneratorConfig, Injections, Profile};
use crate::runtime::{Control, RunReport};
use crate::service::{self, StartOptions};
use crate::sink::TableFormat;
use crate::sink::compact::compact;
use crate::sink::parquet::STAGING;
use crate::sink::storage::{Location, Storage};
use crate::table::TableSpec;
use crate::time::{rfc3339_ms, system_time_ms};
use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// storepulse: real-time e-commerce funnel, sales and fulfillment metrics from Kafka to
/// Parquet and Prometheus.
#[derive(Debug, Parser)]
#[command(name = "storepulse", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log lines as text (colour only on a terminal) or as one JSON object per line, for a log
    /// collector.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "STOREPULSE_LOG_FORMAT")]
    pub log_format: LogFormat,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `time level target: message key=value`.
    Text,
    /// One JSON object per line, fields as keys.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume the clickstream, orders and logistics topics and write metrics (production).
    Run(RunArgs),
    /// Run an embedded Kafka cluster, the traffic generator and the pipeline in one process.
    Demo(DemoArgs),
    /// Produce synthetic storefront traffic to a Kafka-protocol broker.
    Generate(GenerateArgs),
    /// Merge the files of each closed hour partition into one and mark it `_SUCCESS`.
    Compact(CompactArgs),
    /// Measure throughput, CPU per event, latency and memory on this machine and broker.
    Bench(BenchArgs),
    /// Serve librdkafka's mock cluster on a local port until stopped: a Kafka-protocol broker
    /// for trying `run` and `generate` without Kafka (in memory, gone when it stops).
    Broker(BrokerArgs),
}

/// `storepulse broker`
#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Topics to create, each NAME or NAME:PARTITIONS.
    #[arg(long = "topic", value_parser = parse_topic, default_values = ["clickstream", "orders", "logistics"])]
    pub topics: Vec<(String, Option<i32>)>,
    /// Partitions of a topic given without a count.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
}

/// `NAME` or `NAME:PARTITIONS`; without a count, `--partitions` applies.
fn parse_topic(value: &str) -> Result<(String, Option<i32>), String> {
    let (name, partitions) = match value.split_once(':') {
        Some((name, count)) => {
            let count: i32 = count.parse().map_err(|_| format!("{count:?} is not a partition count"))?;
            if count < 1 {
                return Err("a topic needs at least one partition".into());
            }
            (name, Some(count))
        }
        None => (value, None),
    };
    if name.is_empty() {
        return Err("empty topic name".into());
    }
    Ok((name.to_owned(), partitions))
}

/// `storepulse bench`
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Bootstrap servers of the broker to measure against (default: librdkafka's embedded
    /// mock cluster, which says nothing about a real broker). Topics named bench-* are created.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Events to pre-produce and consume in the throughput phases [default: 1000000 with
    /// --brokers; 25000 per partition on the embedded cluster, which keeps about 5 MB per
    /// partition and drops older messages].
    #[arg(long)]
    pub events: Option<u64>,
    /// Partitions per topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Seconds between the full pipeline's checkpoints.
    #[arg(long, default_value_t = 10)]
    pub checkpoint_interval_secs: u64,
    /// Length of the latency run at a fixed real-time rate (0s skips it).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub latency_for: Duration,
    /// Visitors per second in the latency and soak runs (about 6 messages each).
    #[arg(long, default_value_t = 200.0)]
    pub visitors_per_sec: f64,
    /// Length of the resident-memory soak whose flatness is judged (e.g. 10m; 0s skips it),
    /// with state let go within minutes so that it reaches steady state.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub soak: Duration,
    /// Real-time traffic before the judged soak, for the state and its tables to reach their
    /// size (about 7 minutes at the soak's traffic).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "8m")]
    pub soak_warm_up: Duration,
    /// Open orders and sessions for the bytes-per-entry figures (0 skips them).
    #[arg(long, default_value_t = 1_000_000)]
    pub memory_entries: u64,
    /// Directory for the pipeline's Parquet and checkpoints (default: a temporary one, removed).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Internal: print the bytes per open `order` or `session` with N open, in this process.
    #[arg(long, num_args = 2, value_names = ["KIND", "N"], hide = true)]
    pub memory_probe: Option<Vec<String>>,
    /// Internal: run phase 3 over EVENTS events and PARTITIONS partitions, in this process,
    /// and print its figures on one line.
    #[arg(long, num_args = 2, value_names = ["EVENTS", "PARTITIONS"], hide = true)]
    pub processing_probe: Option<Vec<u64>>,
}

/// `storepulse compact`
#[derive(Debug, Args)]
pub struct CompactArgs {
    /// Root of the tables: a directory or s3://bucket/prefix (as `output.dir`).
    #[arg(long, value_parser = Location::parse, default_value = "./storepulse-data")]
    pub out: Location,
    /// Only these tables (repeatable); all by default.
    #[arg(long = "table", value_parser = parse_table)]
    pub tables: Vec<String>,
    /// Delta tables: files removed (by a merge) or never committed longer ago than this are
    /// deleted. Choose more than the longest query: a reader of an older version needs them.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    pub retention: Duration,
    /// Checkpoint state and staged files no checkpoint lists are removed once this old (as
    /// `checkpoint.debris_grace_secs`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "15m")]
    pub debris_grace: Duration,
}

/// A table this build writes.
fn parse_table(name: &str) -> Result<String, String> {
    let tables = crate::operators::builtin().tables();
    if tables.iter().any(|t| t.name == name) {
        return Ok(name.to_owned());
    }
    Err(format!("no table {name:?}; one of {}", tables.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")))
}

/// `storepulse run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML configuration file (see deploy/storepulse.toml for every key).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Consume up to the end offsets seen at start, close every window, write, commit and exit
    /// (a bounded replay) instead of running until SIGTERM.
    #[arg(long)]
    pub bounded: bool,
    /// Validate the configuration file and exit (0 when valid; 2 naming the bad key otherwise).
    #[arg(long)]
    pub check: bool,
}

/// Traffic model and fault injection, shared by `demo` and `generate`.
#[derive(Debug, Clone, Args)]
pub struct TrafficArgs {
    /// Random seed; the same seed, start and count give the same events.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Event time of the first event (RFC 3339).
    #[arg(long, default_value = "2026-11-10T15:00:00Z")]
    pub start: String,
    /// Stop after this many model events (injected extras come on top). Default: unbounded.
    #[arg(long)]
    pub count: Option<u64>,
    /// Traffic shape.
    #[arg(long, value_enum, default_value_t = Profile::Double11)]
    pub profile: Profile,
    /// Base visitor arrival rate, visitors per event-time second.
    #[arg(long, default_value_t = 10.0)]
    pub visitors_per_sec: f64,
    /// Pace sending to at most this many messages per second.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Pace sending to this many event-time seconds per wall-clock second.
    #[arg(long)]
    pub speed: Option<f64>,
    /// Write every message sent, as one JSON line with its topic, to this file (ground truth).
    #[arg(long)]
    pub events_file: Option<PathBuf>,
    /// Inject a conversion drop for this channel (e.g. live_stream).
    #[arg(long, value_parser = parse_channel)]
    pub drop_channel: Option<Channel>,
    /// Conversion drop starts this long after --start (e.g. 20m).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20m")]
    pub drop_after: Duration,
    /// Conversion drop lasts this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20m")]
    pub drop_for: Duration,
    /// Purchase probability multiplier during the drop (0.2 = 80 % fewer purchases).
    #[arg(long, default_value_t = 0.2)]
    pub drop_factor: f64,
    /// Fraction of events sent late (after their window closed).
    #[arg(long, default_value_t = 0.0)]
    pub late_fraction: f64,
    /// How late a late event is sent, in event time.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    pub late_by: Duration,
    /// Fraction of events sent twice with the same event_id.
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_fraction: f64,
    /// Fraction of events sent out of order (within --out-of-order-max).
    #[arg(long, default_value_t = 0.0)]
    pub out_of_order_fraction: f64,
    /// Largest out-of-order delay; keep it under the pipeline's allowed out-of-orderness.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    pub out_of_order_max: Duration,
    /// Fraction of model events followed by a malformed message.
    #[arg(long, default_value_t = 0.0)]
    pub malformed_fraction: f64,
}

fn parse_channel(s: &str) -> Result<Channel, String> {
    Channel::ALL.iter().copied().find(|c| c.as_str() == s).ok_or_else(|| {
        format!(
            "unknown channel {s:?}; one of {}",
            Channel::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")
        )
    })
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl TrafficArgs {
    /// The generator configuration these flags describe.
    ///
    /// # Errors
    /// When `--start` is not RFC 3339 or a fraction is outside [0, 1].
    pub fn generator_config(&self) -> anyhow::Result<GeneratorConfig> {
        let start = humantime::parse_rfc3339_weak(&self.start)
            .with_context(|| format!("--start {:?} is not RFC 3339", self.start))?;
        let start_ms = system_time_ms(start);
        for (flag, value) in [
            ("--late-fraction", self.late_fraction),
            ("--duplicate-fraction", self.duplicate_fraction),
            ("--out-of-order-fraction", self.out_of_order_fraction),
            ("--malformed-fraction", self.malformed_fraction),
            ("--drop-factor", self.drop_factor),
        ] {
            if !(0.0..=1.0).contains(&value) {
                bail!("{flag} must be between 0 and 1, got {value}");
            }
        }
        if self.visitors_per_sec <= 0.0 {
            bail!("--visitors-per-sec must be positive");
        }
        Ok(GeneratorConfig {
            seed: self.seed,
            start_ms,
            count: self.count,
            profile: self.profile,
            visitors_per_sec: self.visitors_per_sec,
            injections: Injections {
                conversion_drop: self.drop_channel.map(|channel| ConversionDrop {
                    channel,
                    from_ms: start_ms + duration_ms(self.drop_after),
                    until_ms: start_ms + duration_ms(self.drop_after) + duration_ms(self.drop_for),
                    factor: self.drop_factor,
                }),
                late_fraction: self.late_fraction,
                late_by_ms: duration_ms(self.late_by),
                duplicate_fraction: self.duplicate_fraction,
                out_of_order_fraction: self.out_of_order_fraction,
                out_of_order_max_ms: duration_ms(self.out_of_order_max),
                malformed_fraction: self.malformed_fraction,
            },
        })
    }
}

/// `storepulse demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Stop after this long (e.g. 60s, 5m); Ctrl-C stops earlier. Either way the demo drains
    /// what was produced, closes every window and writes it.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub duration: Duration,
    /// Root of the Parquet tables: a directory or s3://bucket/prefix.
    #[arg(long, value_parser = Location::parse, default_value = "./storepulse-data")]
    pub out: Location,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,
    /// Partitions per topic in the embedded cluster.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Wire format the generator writes and the pipeline reads.
    #[arg(long, value_enum, default_value_t = WireFormat::Confluent)]
    pub format: WireFormat,
    /// Seconds between checkpoints (each publishes the Parquet rows produced since the last).
    #[arg(long, default_value_t = 10)]
    pub checkpoint_interval_secs: u64,
    /// Table format: delta (Delta Lake tables) or parquet (plain Hive-partitioned files).
    #[arg(long, default_value_t = TableFormat::Delta)]
    pub table_format: TableFormat,
    /// Empty `--out` first. Without it the demo refuses an `--out` that holds tables or
    /// checkpoints of an earlier run: its rows would add to this run's.
    #[arg(long)]
    pub fresh: bool,
    /// Traffic.
    #[command(flatten)]
    pub traffic: TrafficArgs,
}

/// `storepulse generate`
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Bootstrap servers of the target broker.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Wire format of the messages.
    #[arg(long, value_enum, default_value_t = WireFormat::Confluent)]
    pub format: WireFormat,
    /// Register the schemas in this Confluent-compatible registry and use its ids
    /// (otherwise the bundled ids 1, 2, 3).
    #[arg(long)]
    pub schema_registry_url: Option<String>,
    /// Clickstream topic.
    #[arg(long, default_value = "clickstream")]
    pub clickstream_topic: String,
    /// Orders topic.
    #[arg(long, default_value = "orders")]
    pub orders_topic: String,
    /// Logistics topic.
    #[arg(long, default_value = "logistics")]
    pub logistics_topic: String,
    /// Traffic.
    #[command(flatten)]
    pub traffic: TrafficArgs,
}

/// Runs the parsed command.
///
/// # Errors
/// Any failure, with context for the user.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run_job(&args),
        Command::Demo(args) => run_demo(&args),
        Command::Generate(args) => run_generate(&args),
        Command::Compact(args) => run_compact(&args),
        Command::Bench(args) => run_bench(&args),
        Command::Broker(args) => run_broker(&args),
    }
}

fn run_broker(args: &BrokerArgs) -> anyhow::Result<()> {
    if args.partitions < 1 {
        bail!("--partitions must be at least 1");
    }
    let cluster = rdkafka::mocking::MockCluster::new(1).context("starting the embedded Kafka cluster")?;
    for (name, partitions) in &args.topics {
        cluster
            .create_topic(name, partitions.unwrap_or(args.partitions), 1)
            .with_context(|| format!("creating topic {name}"))?;
    }
    // The first line is the address, for scripts that start it and connect.
    println!("{}", cluster.bootstrap_servers());
    eprintln!(
        "storepulse broker: librdkafka's mock cluster at {} (in memory; Ctrl-C stops it)",
        cluster.bootstrap_servers()
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(shutdown_signal());
    drop(cluster);
    Ok(())
}

fn run_bench(args: &BenchArgs) -> anyhow::Result<()> {
    if let Some([kind, n]) = args.memory_probe.as_deref() {
        let n = n.parse().with_context(|| format!("--memory-probe: {n:?} is not a count"))?;
        println!("{:.1}", bench::memory_probe(kind, n)?);
        return Ok(());
    }
    if let Some([events, partitions]) = args.processing_probe.as_deref() {
        let partitions = i32::try_from(*partitions).context("--processing-probe: too many partitions")?;
        println!("{}", bench::processing_probe(*events, partitions)?);
        return Ok(());
    }
    if args.partitions < 1 {
        bail!("--partitions must be at least 1");
    }
    let events = bench_events(args.events, args.brokers.is_some(), args.partitions)?;
    if args.visitors_per_sec <= 0.0 {
        bail!("--visitors-per-sec must be positive");
    }
    let options = BenchOptions {
        brokers: args.brokers.clone(),
        events,
        partitions: args.partitions,
        checkpoint_interval: Duration::from_secs(args.checkpoint_interval_secs.max(1)),
        latency_for: args.latency_for,
        visitors_per_sec: args.visitors_per_sec,
        soak: args.soak,
        soak_warm_up: args.soak_warm_up,
        memory_entries: args.memory_entries,
        out: args.out.clone(),
    };
    let report = bench::run(&options)?;
    println!("{}", report.render());
    Ok(())
}

/// Events the embedded mock cluster holds per partition in the bench: librdkafka's mock keeps
/// 5 MB of batches per partition and drops the oldest beyond, and a generated event takes
/// about 150 bytes, most of them on clickstream.
const EMBEDDED_EVENTS_PER_PARTITION: u64 = 25_000;

/// The throughput phases' event count: as asked, or the default for the broker; refused at once
/// when the embedded cluster would drop events before phase 1 reads them.
fn bench_events(asked: Option<u64>, external_broker: bool, partitions: i32) -> anyhow::Result<u64> {
    let embedded_limit = EMBEDDED_EVENTS_PER_PARTITION * u64::try_from(partitions).unwrap_or(1);
    let events = asked.unwrap_or(if external_broker { 1_000_000 } else { embedded_limit });
    if events == 0 {
        bail!("--events must be at least 1");
    }
    if !external_broker && events > embedded_limit {
        bail!(
            "the embedded mock cluster keeps about 5 MB per partition and drops older messages, so {events} events in \
             {partitions} partitions would be gone before phase 1 reads them: pass --events {embedded_limit} or fewer, \
             more --partitions, or --brokers for a real broker"
        );
    }
    Ok(events)
}

fn run_generate(args: &GenerateArgs) -> anyhow::Result<()> {
    let topics = TopicNames {
        clickstream: args.clickstream_topic.clone(),
        orders: args.orders_topic.clone(),
        logistics: args.logistics_topic.clone(),
    };
    let encoder = match &args.schema_registry_url {
        Some(url) => Encoder::with_registry(args.format, url, &topics)?,
        None => Encoder::new(args.format),
    };
    let options = ProduceOptions {
        brokers: args.brokers.clone(),
        topics,
        encoder,
        rate: args.traffic.rate,
        speed: args.traffic.speed,
        events_file: args.traffic.events_file.clone(),
        client: Default::default(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let stop_on_signal = Arc::clone(&stop);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.spawn(async move {
        shutdown_signal().await;
        stop_on_signal.store(true, Ordering::Relaxed);
    });
    let started = Instant::now();
    let report = produce(Generator::new(args.traffic.generator_config()?), &options, &stop, &AtomicU64::new(0))?;
    eprintln!(
        "sent {} messages to {} in {:.1}s; last event time {}",
        report.sent,
        options.brokers,
        started.elapsed().as_secs_f64(),
        rfc3339_ms(report.last_event_ms)
    );
    Ok(())
}

fn run_compact(args: &CompactArgs) -> anyhow::Result<()> {
    if let Location::Local(dir) = &args.out
        && !dir.is_dir()
    {
        bail!("--out {}: no such directory (compact works on tables storepulse has written)", dir.display());
    }
    let storage = Storage::open(&args.out)?;
    let all = crate::operators::builtin().tables();
    // A wrong --out (the parent directory, a mistyped S3 prefix) would otherwise "compact"
    // nothing and exit 0 hour after hour. Checkpoints first: they are few, tables may be many.
    let mut holds_a_lake = false;
    for root in std::iter::once(CHECKPOINTS).chain(all.iter().map(|t| t.name)) {
        if !storage.list(root)?.is_empty() {
            holds_a_lake = true;
            break;
        }
    }
    if !holds_a_lake {
        bail!("--out {}: no storepulse tables or checkpoints there (it should be the pipeline's output.dir)", args.out);
    }
    let tables: Vec<TableSpec> =
        all.iter().filter(|t| args.tables.is_empty() || args.tables.iter().any(|n| n == t.name)).copied().collect();
    let format = TableFormat::of(&storage, &all)?;
    let now_ms = system_time_ms(std::time::SystemTime::now());
    let grace_ms = i64::try_from(args.debris_grace.as_millis()).unwrap_or(i64::MAX);
    // Every committed checkpoint's files first: only then does its completeness hold.
    let catalog = publish_committed(&storage, format, all, grace_ms, now_ms)
        .with_context(|| format!("publishing committed checkpoints under {}", args.out))?;
    let complete: BTreeMap<String, i64> =
        tables.iter().filter_map(|t| Some((t.name.to_owned(), catalog.complete_through(t.name)?))).collect();
    let report = compact(&storage, &tables, &complete, (args.retention, args.debris_grace))
        .with_context(|| format!("compacting {}", args.out))?;
    let through: Vec<String> = complete.iter().map(|(table, ms)| format!("{table} {}", rfc3339_ms(*ms))).collect();
    println!(
        "compacted {} ({format}): {} partitions merged ({} files into {}, {} rows), {} hours newly complete, {} not complete yet; complete through: {}{}{}",
        args.out,
        report.merged,
        report.files_before,
        report.merged,
        report.rows,
        report.marked,
        report.open,
        if through.is_empty() { "nothing yet".to_owned() } else { through.join(", ") },
        if report.vacuumed > 0 { format!("; {} files vacuumed", report.vacuumed) } else { String::new() },
        if report.recovered > 0 {
            format!("; {} interrupted merges finished", report.recovered)
        } else {
            String::new()
        }
    );
    Ok(())
}

fn run_job(args: &RunArgs) -> anyhow::Result<()> {
    let settings = Settings::load(&args.config)?;
    crate::preflight::check(&settings)?;
    if args.check {
        println!("{}: valid (brokers {}, output {})", args.config.display(), settings.brokers, settings.output);
        return Ok(());
    }
    tracing::info!(brokers = %settings.brokers, group = %settings.group_id, metrics = %settings.metrics_addr, output = %settings.output, "storepulse starting");
    let control = if args.bounded { Control::Drain } else { Control::Run };
    let running = service::start(settings, StartOptions::new(control))?;
    let stop = running.control.clone();
    running.runtime().spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested; stopping consumption and taking a final checkpoint");
        stop.stop();
    });
    let report = running.join()?;
    tracing::info!("{}", report_line(&report));
    Ok(())
}

fn report_line(r: &RunReport) -> String {
    format!(
        "consumed {} messages: {} events, {} dead letters, {} late, {} duplicates; {} windows closed; {} Parquet files written; {} checkpoints; {} partition tasks restored",
        r.consumed, r.decoded, r.rejected, r.late, r.duplicates, r.windows_closed, r.files, r.checkpoints, r.restored
    )
}

fn run_demo(args: &DemoArgs) -> anyhow::Result<()> {
    let cluster = rdkafka::mocking::MockCluster::new(1).context("starting the embedded Kafka cluster")?;
    let raw = RawConfig::default();
    let mut settings = Settings::try_from(raw)?;
    settings.brokers = cluster.bootstrap_servers();
    settings.group_id = "storepulse-demo".into();
    settings.format = args.format;
    settings.output = args.out.clone();
    settings.metrics_addr = args.metrics_addr;
    settings.checkpoint.interval = Duration::from_secs(args.checkpoint_interval_secs.max(1));
    settings.output_format = args.table_format;
    // The embedded cluster starts empty: an earlier run's tables and checkpoints would add to
    // this one's numbers, and its offsets name messages this cluster never had.
    let storage = Storage::open(&settings.output)?;
    let earlier = storage.list("")?;
    if !earlier.is_empty() && !args.fresh {
        bail!(
            "--out {} already holds {} files of an earlier run (tables or checkpoints); their rows would add to this \
             run's. Pass --fresh to empty it first, or choose another --out",
            settings.output,
            earlier.len()
        );
    }
    // What --fresh empties is a lake's, never a directory given by mistake.
    let lake_roots: Vec<&str> =
        crate::operators::builtin().tables().iter().map(|t| t.name).chain([CHECKPOINTS, STAGING]).collect();
    if let Some(foreign) = earlier.iter().find(|e| !lake_roots.contains(&e.key.split('/').next().unwrap_or_default())) {
        bail!(
            "--out {} holds {}, which storepulse did not write; refusing to empty it. Choose another --out",
            settings.output,
            foreign.key
        );
    }
    if !earlier.is_empty() {
        for entry in &earlier {
            storage.delete(&entry.key).with_context(|| format!("emptying {}", settings.output))?;
        }
        storage.remove_empty_directories("")?;
        println!("emptied {}: {} files of an earlier run removed", settings.output, earlier.len());
    }
    for stream in Stream::ALL {
        cluster
            .create_topic(settings.topics.of(stream), args.partitions, 1)
            .with_context(|| format!("creating topic {}", stream.as_str()))?;
    }
    let generator_config = args.traffic.generator_config()?;
    let (brokers, topics, output) = (settings.brokers.clone(), settings.topics.clone(), settings.output.clone());
    let running = service::start(settings, StartOptions { progress: true, ..StartOptions::new(Control::Run) })?;
    println!(
        "storepulse demo: embedded Kafka at {brokers}, Parquet under {output}, metrics at http://{}/metrics, for {}",
        running.metrics_addr,
        humantime::format_duration(args.duration)
    );

    let stop_generator = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let options = ProduceOptions {
        brokers,
        topics,
        encoder: Encoder::new(args.format),
        rate: args.traffic.rate,
        speed: Some(args.traffic.speed.unwrap_or(60.0)),
        events_file: args.traffic.events_file.clone(),
        client: Default::default(),
    };
    let generator = {
        let (stop, sent) = (Arc::clone(&stop_generator), Arc::clone(&sent));
        std::thread::Builder::new()
            .name("generator".into())
            .spawn(move || produce(Generator::new(generator_config), &options, &stop, &sent))?
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let (interrupted, control) = (Arc::clone(&interrupted), running.control.clone());
        running.runtime().spawn(async move {
            shutdown_signal().await;
            interrupted.store(true, Ordering::Relaxed);
            println!("stopping: draining what was produced (Ctrl-C again to stop at once)");
            shutdown_signal().await;
            control.stop();
        });
    }
    let deadline = Instant::now() + args.duration;
    while Instant::now() < deadline
        && !interrupted.load(Ordering::Relaxed)
        && !generator.is_finished()
        && !running.is_finished()
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop_generator.store(true, Ordering::Relaxed);
    let produced: ProduceReport = generator.join().map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
    running.control.drain();
    let report = running.join()?;
    println!("generator sent {} messages (event time up to {})", produced.sent, rfc3339_ms(produced.last_event_ms));
    eprintln!("{}", report_line(&report));
    let query = "SELECT window_start, channel, sum(visitors) AS visitors, sum(purchasing_visitors) AS purchasers \
                 FROM funnel WHERE window_size = '1m' AND device = 'all' AND NOT partial GROUP BY ALL ORDER BY ALL";
    match args.table_format {
        TableFormat::Delta => println!(
            "query it: python3 -c \"import duckdb, deltalake; funnel = deltalake.DeltaTable('{}/funnel').to_pyarrow_dataset(); duckdb.sql(\\\"{query}\\\").show()\"",
            args.out
        ),
        TableFormat::Parquet => println!(
            "query it: duckdb -c \"{}\"",
            query.replace("FROM funnel", &format!("FROM '{}/funnel/*/*/*.parquet'", args.out))
        ),
    }
    drop(cluster);
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_topic_is_a_name_with_an_optional_partition_count() {
        assert_eq!(parse_topic("orders"), Ok(("orders".to_owned(), None)));
        assert_eq!(parse_topic("orders:12"), Ok(("orders".to_owned(), Some(12))));
        assert!(parse_topic("orders:0").expect_err("no partitions").contains("at least one partition"));
        assert!(parse_topic("orders:many").expect_err("not a count").contains("\"many\""));
        assert!(parse_topic(":3").is_err());
    }

    #[test]
    fn bench_events_default_to_what_the_broker_keeps() {
        assert_eq!(bench_events(None, true, 4).expect("a real broker"), 1_000_000);
        assert_eq!(bench_events(None, false, 4).expect("embedded"), 100_000);
        assert_eq!(bench_events(Some(2_000_000), true, 4).expect("a real broker keeps them"), 2_000_000);
        let refused = bench_events(Some(1_000_000), false, 4).expect_err("more than the embedded cluster keeps");
        assert!(refused.to_string().contains("--events 100000 or fewer"), "{refused}");
        assert!(bench_events(Some(0), true, 4).is_err());
    }
}
