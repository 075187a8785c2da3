//! Configuration: the TOML file's serde structs ([`RawConfig`]) and the validated runtime
//! settings ([`Settings`]) they convert into. Cross-field checks live in one place,
//! `TryFrom<RawConfig> for Settings`; every error names the offending key.

use crate::codec::{ValidationRules, WireFormat};
use crate::event::Stream;
use crate::operators::Retention;
use crate::sink::storage::Location;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An invalid configuration: which key, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("config file {path}: {message}")]
    Parse {
        /// The path given.
        path: PathBuf,
        /// The TOML error, which names the key and line.
        message: String,
    },
    /// A key has a value that cannot work.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// Dotted key path, e.g. `time.window_secs`.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

/// The configuration file as written (TOML).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Kafka connection and consumer group.
    #[serde(default)]
    pub kafka: RawKafka,
    /// Topic names.
    #[serde(default)]
    pub topics: RawTopics,
    /// Message format and writer schemas.
    #[serde(default)]
    pub codec: RawCodec,
    /// Bounds every event must satisfy.
    #[serde(default)]
    pub validation: RawValidation,
    /// Event-time windowing.
    #[serde(default)]
    pub time: RawTime,
    /// Order lifecycle state.
    #[serde(default)]
    pub orders: RawOrders,
    /// Parquet output.
    #[serde(default)]
    pub output: RawOutput,
    /// Checkpoints and shutdown.
    #[serde(default)]
    pub checkpoint: RawCheckpoint,
    /// Prometheus endpoint.
    #[serde(default)]
    pub metrics: RawMetrics,
}

/// `[kafka]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafka {
    /// Bootstrap servers, comma separated `host:port`.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Consumer group id; instances with the same id share the partitions.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// librdkafka settings passed through as they are (security.protocol, sasl.*, ssl.*, ...).
    /// A value `env:NAME` is read from the environment, `file:PATH` from a file; values are never logged.
    #[serde(default)]
    pub client: BTreeMap<String, String>,
}

impl Default for RawKafka {
    fn default() -> Self {
        RawKafka { brokers: default_brokers(), group_id: default_group_id(), client: BTreeMap::new() }
    }
}

fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}
fn default_group_id() -> String {
    "storepulse".into()
}

/// `[topics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTopics {
    /// Clickstream topic (key visitor_id).
    #[serde(default = "default_clickstream")]
    pub clickstream: String,
    /// Orders topic (key order_id).
    #[serde(default = "default_orders")]
    pub orders: String,
    /// Logistics topic (key order_id, same partition count as orders).
    #[serde(default = "default_logistics")]
    pub logistics: String,
    /// Optional dead-letter topic; rejected messages are also produced here, raw, with headers.
    #[serde(default)]
    pub dead_letter: Option<String>,
}

impl Default for RawTopics {
    fn default() -> Self {
        RawTopics {
            clickstream: default_clickstream(),
            orders: default_orders(),
            logistics: default_logistics(),
            dead_letter: None,
        }
    }
}

fn default_clickstream() -> String {
    "clickstream".into()
}
fn default_orders() -> String {
    "orders".into()
}
fn default_logistics() -> String {
    "logistics".into()
}

/// `[codec]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCodec {
    /// `confluent` (Avro, Confluent wire format), `avro-datum` or `json`.
    #[serde(default = "default_format")]
    pub format: WireFormat,
    /// Confluent-compatible schema registry base URL; when set, writer schemas come from it.
    #[serde(default)]
    pub schema_registry_url: Option<String>,
    /// Directory of writer schemas named `<id>.avsc` or `<id>-<name>.avsc`, used without a registry.
    #[serde(default)]
    pub writer_schemas_dir: Option<PathBuf>,
}

impl Default for RawCodec {
    fn default() -> Self {
        RawCodec { format: default_format(), schema_registry_url: None, writer_schemas_dir: None }
    }
}

fn default_format() -> WireFormat {
    WireFormat::Confluent
}

/// `[validation]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawValidation {
    /// Earliest accepted event time, RFC 3339.
    #[serde(default = "default_min_event_time")]
    pub min_event_time: String,
    /// How far ahead of the wall clock an event time may be, seconds.
    #[serde(default = "default_max_future_skew_secs")]
    pub max_future_skew_secs: u64,
}

impl Default for RawValidation {
    fn default() -> Self {
        RawValidation { min_event_time: default_min_event_time(), max_future_skew_secs: default_max_future_skew_secs() }
    }
}

fn default_min_event_time() -> String {
    "2000-01-01T00:00:00Z".into()
}
fn default_max_future_skew_secs() -> u64 {
    86_400
}

/// `[time]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTime {
    /// Tumbling window sizes, seconds (one number or a list); the smallest is the base window
    /// lateness is decided on.
    #[serde(default = "default_window_secs")]
    pub window_secs: OneOrMany,
    /// Watermark = max event time seen on a partition minus this, seconds.
    #[serde(default = "default_out_of_orderness_secs")]
    pub allowed_out_of_orderness_secs: u64,
    /// A window closes when the watermark passes its end plus this, seconds (every family).
    #[serde(default)]
    pub allowed_lateness_secs: u64,
    /// Allowed lateness of the traffic and funnel family, seconds; default `allowed_lateness_secs`.
    #[serde(default)]
    pub traffic_lateness_secs: Option<u64>,
    /// Allowed lateness of the sessions family, seconds; default `allowed_lateness_secs`.
    #[serde(default)]
    pub sessions_lateness_secs: Option<u64>,
    /// Allowed lateness of the orders family, seconds; default `allowed_lateness_secs`.
    #[serde(default)]
    pub orders_lateness_secs: Option<u64>,
    /// Allowed lateness of the fulfillment family, seconds; default `allowed_lateness_secs`.
    #[serde(default)]
    pub fulfillment_lateness_secs: Option<u64>,
    /// A session ends after this much inactivity, seconds.
    #[serde(default = "default_session_gap_secs")]
    pub session_gap_secs: u64,
    /// A session is never longer than this; a later event starts a new one, seconds.
    #[serde(default = "default_session_max_length_secs")]
    pub session_max_length_secs: u64,
    /// A caught-up partition quiet for this long stops holding the instance watermark back, seconds.
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// Event ids are remembered at least this long (at most twice as long) of watermark progress
    /// to suppress duplicates, seconds.
    #[serde(default = "default_dedupe_horizon_secs")]
    pub dedupe_horizon_secs: u64,
    /// At most this many event ids are remembered per partition (10–20 bytes each); the oldest go first.
    #[serde(default = "default_dedupe_max_ids_per_partition")]
    pub dedupe_max_ids_per_partition: usize,
}

impl Default for RawTime {
    fn default() -> Self {
        RawTime {
            window_secs: default_window_secs(),
            allowed_out_of_orderness_secs: default_out_of_orderness_secs(),
            allowed_lateness_secs: 0,
            traffic_lateness_secs: None,
            sessions_lateness_secs: None,
            orders_lateness_secs: None,
            fulfillment_lateness_secs: None,
            session_gap_secs: default_session_gap_secs(),
            session_max_length_secs: default_session_max_length_secs(),
            idle_timeout_secs: default_idle_timeout_secs(),
            dedupe_horizon_secs: default_dedupe_horizon_secs(),
            dedupe_max_ids_per_partition: default_dedupe_max_ids_per_partition(),
        }
    }
}

/// `[orders]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOrders {
    /// An order stays in state this long after delivery, return or cancellation, so refunds and
    /// late scans still reach its `order_facts` row, seconds.
    #[serde(default = "default_terminal_ttl_secs")]
    pub terminal_ttl_secs: u64,
    /// An order without any event for this long is written out as timed out, seconds.
    #[serde(default = "default_open_timeout_secs")]
    pub open_timeout_secs: u64,
    /// Scans whose order has not arrived after this much event time are orphans, seconds.
    #[serde(default = "default_orphan_after_secs")]
    pub orphan_after_secs: u64,
}

impl Default for RawOrders {
    fn default() -> Self {
        RawOrders {
            terminal_ttl_secs: default_terminal_ttl_secs(),
            open_timeout_secs: default_open_timeout_secs(),
            orphan_after_secs: default_orphan_after_secs(),
        }
    }
}

fn default_terminal_ttl_secs() -> u64 {
    7 * 86_400
}
fn default_open_timeout_secs() -> u64 {
    30 * 86_400
}
fn default_orphan_after_secs() -> u64 {
    3_600
}

fn default_window_secs() -> OneOrMany {
    OneOrMany::Many(vec![60, 3_600])
}

/// A setting given as one value or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// `key = 60`
    One(u64),
    /// `key = [60, 3600]`
    Many(Vec<u64>),
}

impl OneOrMany {
    fn values(&self) -> &[u64] {
        match self {
            OneOrMany::One(v) => std::slice::from_ref(v),
            OneOrMany::Many(v) => v,
        }
    }
}
fn default_session_gap_secs() -> u64 {
    1_800
}
fn default_session_max_length_secs() -> u64 {
    6 * 3_600
}
fn default_out_of_orderness_secs() -> u64 {
    5
}
fn default_idle_timeout_secs() -> u64 {
    30
}
fn default_dedupe_horizon_secs() -> u64 {
    600
}
fn default_dedupe_max_ids_per_partition() -> usize {
    2_000_000
}

/// `[output]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutput {
    /// Root of the Parquet tables: a directory, or `s3://bucket/prefix` (endpoint and
    /// credentials from the `AWS_*` environment variables).
    #[serde(default = "default_output_dir")]
    pub dir: String,
}

impl Default for RawOutput {
    fn default() -> Self {
        RawOutput { dir: default_output_dir() }
    }
}

fn default_output_dir() -> String {
    "./storepulse-data".to_owned()
}

/// `[checkpoint]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheckpoint {
    /// Seconds between checkpoints. Each one publishes at most one Parquet file per table and
    /// hour, so larger means fewer, bigger files and more to replay after a crash.
    #[serde(default = "default_checkpoint_interval_secs")]
    pub interval_secs: u64,
    /// On SIGTERM or SIGINT, seconds allowed for the final checkpoint before exiting anyway
    /// (nothing is lost: the last committed checkpoint is replayed).
    #[serde(default = "default_shutdown_deadline_secs")]
    pub shutdown_deadline_secs: u64,
    /// Rows waiting for the next checkpoint beyond which consumption pauses (a slow or failing
    /// storage applies backpressure instead of growing memory).
    #[serde(default = "default_max_buffered_rows")]
    pub max_buffered_rows: usize,
    /// Seconds before staged files and state that no checkpoint lists (left by a crash) are
    /// removed; must exceed the time one checkpoint takes.
    #[serde(default = "default_debris_grace_secs")]
    pub debris_grace_secs: u64,
}

impl Default for RawCheckpoint {
    fn default() -> Self {
        RawCheckpoint {
            interval_secs: default_checkpoint_interval_secs(),
            shutdown_deadline_secs: default_shutdown_deadline_secs(),
            max_buffered_rows: default_max_buffered_rows(),
            debris_grace_secs: default_debris_grace_secs(),
        }
    }
}

fn default_checkpoint_interval_secs() -> u64 {
    60
}
fn default_shutdown_deadline_secs() -> u64 {
    25
}
fn default_max_buffered_rows() -> usize {
    1_000_000
}
fn default_debris_grace_secs() -> u64 {
    900
}

/// Checkpoint settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointSettings {
    /// Time between checkpoints.
    pub interval: Duration,
    /// Time allowed for the final checkpoint on shutdown.
    pub shutdown_deadline: Duration,
    /// Buffered rows beyond which consumption pauses.
    pub max_buffered_rows: usize,
    /// Age after which unreferenced checkpoint debris is removed, milliseconds.
    pub debris_grace_ms: i64,
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[serde(default = "default_listen_addr")]
    pub listen_addr: String,
    /// Series budget: distinct values a data-driven label (warehouse, carrier) may take before
    /// new values fold into `other`.
    #[serde(default = "default_max_values_per_label")]
    pub max_values_per_label: usize,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics { listen_addr: default_listen_addr(), max_values_per_label: default_max_values_per_label() }
    }
}

fn default_max_values_per_label() -> usize {
    crate::telemetry::DEFAULT_MAX_VALUES_PER_LABEL
}

fn default_listen_addr() -> String {
    "127.0.0.1:9464".into()
}

/// Validated runtime settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Bootstrap servers.
    pub brokers: String,
    /// Consumer group id.
    pub group_id: String,
    /// librdkafka pass-through settings with secrets resolved.
    pub kafka_client: BTreeMap<String, String>,
    /// Topic of each stream.
    pub topics: TopicNames,
    /// Optional dead-letter topic.
    pub dead_letter_topic: Option<String>,
    /// Input wire format.
    pub format: WireFormat,
    /// Schema registry URL, if any.
    pub schema_registry_url: Option<String>,
    /// Writer schema directory, if any.
    pub writer_schemas_dir: Option<PathBuf>,
    /// Event validation bounds.
    pub validation: ValidationRules,
    /// Window, watermark and lateness settings.
    pub time: TimeSettings,
    /// Root of the Parquet tables.
    pub output: Location,
    /// Checkpoint interval, shutdown deadline, backpressure.
    pub checkpoint: CheckpointSettings,
    /// Metrics endpoint address.
    pub metrics_addr: SocketAddr,
    /// Series budget per data-driven label.
    pub max_values_per_label: usize,
}

/// Topic names of the three streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicNames {
    /// Clickstream topic.
    pub clickstream: String,
    /// Orders topic.
    pub orders: String,
    /// Logistics topic.
    pub logistics: String,
}

impl TopicNames {
    /// The topic of `stream`.
    pub fn of(&self, stream: Stream) -> &str {
        match stream {
            Stream::Clickstream => &self.clickstream,
            Stream::Orders => &self.orders,
            Stream::Logistics => &self.logistics,
        }
    }

    /// The stream a topic carries, if it is one of ours.
    pub fn stream_of(&self, topic: &str) -> Option<Stream> {
        Stream::ALL.into_iter().find(|s| self.of(*s) == topic)
    }
}

impl Default for TopicNames {
    fn default() -> Self {
        TopicNames { clickstream: default_clickstream(), orders: default_orders(), logistics: default_logistics() }
    }
}

/// Event-time settings in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeSettings {
    /// Tumbling window sizes, ascending; the first is the base window.
    pub window_sizes_ms: Vec<i64>,
    /// Allowed out-of-orderness.
    pub out_of_orderness_ms: i64,
    /// Allowed lateness per metric family.
    pub lateness: FamilyLateness,
    /// Session inactivity gap.
    pub session_gap_ms: i64,
    /// Session length guard.
    pub session_max_length_ms: i64,
    /// Idle timeout.
    pub idle_timeout_ms: i64,
    /// Duplicate-suppression horizon.
    pub dedupe_horizon_ms: i64,
    /// Duplicate-suppression memory cap, ids per partition.
    pub dedupe_max_ids: usize,
    /// How long order lifecycle state is kept.
    pub retention: Retention,
}

/// Allowed lateness of each metric family, ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FamilyLateness {
    /// Traffic and funnel.
    pub traffic_ms: i64,
    /// Sessions.
    pub sessions_ms: i64,
    /// Orders.
    pub orders_ms: i64,
    /// Fulfillment.
    pub fulfillment_ms: i64,
}

impl FamilyLateness {
    /// The same lateness for every family.
    pub fn uniform(ms: i64) -> Self {
        FamilyLateness { traffic_ms: ms, sessions_ms: ms, orders_ms: ms, fulfillment_ms: ms }
    }
}

impl TimeSettings {
    /// The smallest window size: lateness and session attribution use it.
    pub fn base_window_ms(&self) -> i64 {
        self.window_sizes_ms[0]
    }
}

impl Default for TimeSettings {
    fn default() -> Self {
        TimeSettings {
            window_sizes_ms: vec![60_000, 3_600_000],
            out_of_orderness_ms: 5_000,
            lateness: FamilyLateness::default(),
            session_gap_ms: 1_800_000,
            session_max_length_ms: 6 * 3_600_000,
            idle_timeout_ms: 30_000,
            dedupe_horizon_ms: 600_000,
            dedupe_max_ids: 2_000_000,
            retention: Retention {
                terminal_ttl_ms: 7 * 86_400_000,
                open_timeout_ms: 30 * 86_400_000,
                orphan_after_ms: 3_600_000,
            },
        }
    }
}

/// librdkafka keys storepulse owns: overriding them would break offset management.
const RESERVED_CLIENT_KEYS: &[&str] =
    &["enable.auto.commit", "enable.auto.offset.store", "group.id", "bootstrap.servers"];

impl RawConfig {
    /// Reads and parses a TOML config file.
    ///
    /// # Errors
    /// [`ConfigError::Read`] or [`ConfigError::Parse`], naming the file (and key, for parse errors).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })
    }
}

impl TryFrom<RawConfig> for Settings {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        if raw.kafka.brokers.trim().is_empty() {
            return Err(invalid("kafka.brokers", "must list at least one host:port"));
        }
        if raw.kafka.group_id.trim().is_empty() {
            return Err(invalid("kafka.group_id", "must not be empty"));
        }
        let mut kafka_client = BTreeMap::new();
        for (key, value) in raw.kafka.client {
            let full_key = format!("kafka.client.\"{key}\"");
            if RESERVED_CLIENT_KEYS.contains(&key.as_str()) {
                return Err(invalid(
                    full_key,
                    "is managed by storepulse; use kafka.brokers / kafka.group_id or remove it",
                ));
            }
            kafka_client.insert(key, resolve_secret(&full_key, &value)?);
        }
        let topics = TopicNames {
            clickstream: raw.topics.clickstream,
            orders: raw.topics.orders,
            logistics: raw.topics.logistics,
        };
        for stream in Stream::ALL {
            if topics.of(stream).trim().is_empty() {
                return Err(invalid(format!("topics.{}", stream.as_str()), "must not be empty"));
            }
        }
        let distinct: std::collections::BTreeSet<&str> = Stream::ALL.iter().map(|s| topics.of(*s)).collect();
        if distinct.len() != 3 {
            return Err(invalid("topics", "clickstream, orders and logistics must be three different topics"));
        }
        if let Some(dlq) = &raw.topics.dead_letter
            && distinct.contains(dlq.as_str())
        {
            return Err(invalid("topics.dead_letter", "must differ from the input topics"));
        }
        if let Some(url) = &raw.codec.schema_registry_url
            && !(url.starts_with("http://"))
        {
            return Err(invalid("codec.schema_registry_url", "must be an http:// URL (https is not supported yet)"));
        }
        if let Some(dir) = &raw.codec.writer_schemas_dir
            && !dir.is_dir()
        {
            return Err(invalid("codec.writer_schemas_dir", format!("{} is not a directory", dir.display())));
        }
        let min_event_time = humantime::parse_rfc3339_weak(&raw.validation.min_event_time)
            .map_err(|e| invalid("validation.min_event_time", format!("not an RFC 3339 time: {e}")))?;
        let min_event_time_ms = system_time_ms(min_event_time);
        let validation = ValidationRules {
            min_event_time_ms,
            max_future_skew_ms: secs_to_ms("validation.max_future_skew_secs", raw.validation.max_future_skew_secs)?,
        };
        let mut window_sizes_ms = Vec::new();
        for &secs in raw.time.window_secs.values() {
            if secs == 0 || 86_400 % secs != 0 {
                return Err(invalid(
                    "time.window_secs",
                    format!(
                        "{secs} does not divide a day evenly; use sizes like 60, 300, 3600 so windows align to UTC"
                    ),
                ));
            }
            window_sizes_ms.push(secs_to_ms("time.window_secs", secs)?);
        }
        window_sizes_ms.sort_unstable();
        window_sizes_ms.dedup();
        if window_sizes_ms.is_empty() {
            return Err(invalid("time.window_secs", "needs at least one window size, e.g. [60, 3600]"));
        }
        let lateness_default = raw.time.allowed_lateness_secs;
        let lateness = FamilyLateness {
            traffic_ms: secs_to_ms(
                "time.traffic_lateness_secs",
                raw.time.traffic_lateness_secs.unwrap_or(lateness_default),
            )?,
            sessions_ms: secs_to_ms(
                "time.sessions_lateness_secs",
                raw.time.sessions_lateness_secs.unwrap_or(lateness_default),
            )?,
            orders_ms: secs_to_ms(
                "time.orders_lateness_secs",
                raw.time.orders_lateness_secs.unwrap_or(lateness_default),
            )?,
            fulfillment_ms: secs_to_ms(
                "time.fulfillment_lateness_secs",
                raw.time.fulfillment_lateness_secs.unwrap_or(lateness_default),
            )?,
        };
        if raw.time.session_gap_secs == 0 {
            return Err(invalid("time.session_gap_secs", "must be at least 1"));
        }
        if raw.time.session_max_length_secs < raw.time.session_gap_secs {
            return Err(invalid("time.session_max_length_secs", "must be at least time.session_gap_secs"));
        }
        let time = TimeSettings {
            window_sizes_ms,
            out_of_orderness_ms: secs_to_ms(
                "time.allowed_out_of_orderness_secs",
                raw.time.allowed_out_of_orderness_secs,
            )?,
            lateness,
            session_gap_ms: secs_to_ms("time.session_gap_secs", raw.time.session_gap_secs)?,
            session_max_length_ms: secs_to_ms("time.session_max_length_secs", raw.time.session_max_length_secs)?,
            idle_timeout_ms: secs_to_ms("time.idle_timeout_secs", raw.time.idle_timeout_secs)?,
            dedupe_horizon_ms: secs_to_ms("time.dedupe_horizon_secs", raw.time.dedupe_horizon_secs)?,
            dedupe_max_ids: raw.time.dedupe_max_ids_per_partition,
            retention: Retention {
                terminal_ttl_ms: secs_to_ms("orders.terminal_ttl_secs", raw.orders.terminal_ttl_secs)?,
                open_timeout_ms: secs_to_ms("orders.open_timeout_secs", raw.orders.open_timeout_secs)?,
                orphan_after_ms: secs_to_ms("orders.orphan_after_secs", raw.orders.orphan_after_secs)?,
            },
        };
        // The backlog at a window's end is read from state when the window closes: an order
        // must not leave the state before every window it could be backlog in has closed.
        let longest_wait = time.window_sizes_ms.last().copied().unwrap_or_default()
            + [time.lateness.orders_ms, time.lateness.fulfillment_ms].into_iter().max().unwrap_or_default()
            + time.out_of_orderness_ms;
        if time.retention.terminal_ttl_ms <= longest_wait {
            return Err(invalid(
                "orders.terminal_ttl_secs",
                format!(
                    "must exceed the largest window plus lateness and out-of-orderness ({} s)",
                    longest_wait / 1000
                ),
            ));
        }
        if time.retention.open_timeout_ms <= time.retention.terminal_ttl_ms {
            return Err(invalid("orders.open_timeout_secs", "must exceed orders.terminal_ttl_secs"));
        }
        if time.retention.orphan_after_ms <= time.out_of_orderness_ms {
            return Err(invalid("orders.orphan_after_secs", "must exceed time.allowed_out_of_orderness_secs"));
        }
        if time.dedupe_max_ids == 0 {
            return Err(invalid("time.dedupe_max_ids_per_partition", "must be at least 1"));
        }
        let output = Location::parse(&raw.output.dir).map_err(|e| invalid("output.dir", e))?;
        let c = &raw.checkpoint;
        if c.interval_secs == 0 {
            return Err(invalid("checkpoint.interval_secs", "must be at least 1"));
        }
        if c.shutdown_deadline_secs == 0 {
            return Err(invalid("checkpoint.shutdown_deadline_secs", "must be at least 1"));
        }
        if c.max_buffered_rows == 0 {
            return Err(invalid("checkpoint.max_buffered_rows", "must be at least 1"));
        }
        if c.debris_grace_secs < 2 * c.interval_secs {
            return Err(invalid("checkpoint.debris_grace_secs", "must be at least twice checkpoint.interval_secs"));
        }
        let checkpoint = CheckpointSettings {
            interval: Duration::from_secs(c.interval_secs),
            shutdown_deadline: Duration::from_secs(c.shutdown_deadline_secs),
            max_buffered_rows: c.max_buffered_rows,
            debris_grace_ms: (c.debris_grace_secs as i64).saturating_mul(1000),
        };
        let metrics_addr = raw.metrics.listen_addr.parse::<SocketAddr>().map_err(|e| {
            invalid(
                "metrics.listen_addr",
                format!("{:?} is not host:port ({e}); e.g. 0.0.0.0:9464", raw.metrics.listen_addr),
            )
        })?;
        if raw.metrics.max_values_per_label == 0 {
            return Err(invalid("metrics.max_values_per_label", "must be at least 1"));
        }
        Ok(Settings {
            brokers: raw.kafka.brokers,
            group_id: raw.kafka.group_id,
            kafka_client,
            topics,
            dead_letter_topic: raw.topics.dead_letter.filter(|t| !t.trim().is_empty()),
            format: raw.codec.format,
            schema_registry_url: raw.codec.schema_registry_url,
            writer_schemas_dir: raw.codec.writer_schemas_dir,
            validation,
            time,
            output,
            checkpoint,
            metrics_addr,
            max_values_per_label: raw.metrics.max_values_per_label,
        })
    }
}

impl Settings {
    /// Loads and validates a config file.
    ///
    /// # Errors
    /// Any [`ConfigError`], naming the key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Settings::try_from(RawConfig::from_file(path)?)
    }
}

fn secs_to_ms(key: &str, secs: u64) -> Result<i64, ConfigError> {
    i64::try_from(secs).ok().and_then(|s| s.checked_mul(1000)).ok_or_else(|| invalid(key, "is too large"))
}

/// Milliseconds since the epoch of a system time (negative before 1970).
pub fn system_time_ms(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// Resolves `env:NAME` and `file:PATH` secret references; other values are literal.
fn resolve_secret(key: &str, value: &str) -> Result<String, ConfigError> {
    if let Some(name) = value.strip_prefix("env:") {
        std::env::var(name).map_err(|_| invalid(key, format!("environment variable {name} is not set")))
    } else if let Some(path) = value.strip_prefix("file:") {
        std::fs::read_to_string(path)
            .map(|s| s.trim_end().to_owned())
            .map_err(|e| invalid(key, format!("cannot read secret file {path}: {e}")))
    } else {
        Ok(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: "t".into(), message: e.to_string() })?;
        Settings::try_from(raw)
    }

    #[test]
    fn example_config_in_deploy_is_valid() {
        let s = parse(include_str!("../../deploy/storepulse.toml")).expect("deploy/storepulse.toml is valid");
        assert_eq!(s.metrics_addr.port(), 9464);
    }

    #[test]
    fn empty_file_gives_defaults() {
        let s = parse("").expect("defaults are valid");
        assert_eq!(s.time, TimeSettings::default());
        assert_eq!(s.topics, TopicNames::default());
        assert_eq!(s.format, WireFormat::Confluent);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("[time]\nwindow_size = 60\n").expect_err("unknown key");
        assert!(err.to_string().contains("window_size"), "{err}");
    }

    #[test]
    fn zero_window_is_refused_with_key() {
        for bad in ["[0]", "[60, 7]", "[]", "7", "\"1m\""] {
            let err = parse(&format!("[time]\nwindow_secs = {bad}\n")).expect_err("bad window sizes");
            assert!(err.to_string().contains("window_secs"), "{bad}: {err}");
        }
        let err = parse("[time]\nsession_gap_secs = 600\nsession_max_length_secs = 60\n").expect_err("guard < gap");
        assert!(err.to_string().contains("time.session_max_length_secs"), "{err}");
        let s = parse("[time]\nwindow_secs = [3600, 60]\nallowed_lateness_secs = 5\norders_lateness_secs = 60\n")
            .expect("valid");
        assert_eq!(s.time.window_sizes_ms, vec![60_000, 3_600_000]);
        assert_eq!(parse("[time]\nwindow_secs = 300\n").expect("one size").time.window_sizes_ms, vec![300_000]);
        assert_eq!(
            s.time.lateness,
            FamilyLateness { traffic_ms: 5_000, sessions_ms: 5_000, orders_ms: 60_000, fulfillment_ms: 5_000 }
        );
    }

    #[test]
    fn reserved_client_key_is_refused() {
        let err = parse("[kafka.client]\n\"enable.auto.commit\" = \"true\"\n").expect_err("reserved");
        assert!(err.to_string().contains("enable.auto.commit"), "{err}");
    }

    #[test]
    fn secrets_resolve_from_environment_and_missing_ones_name_the_key() {
        let err = parse("[kafka.client]\n\"sasl.password\" = \"env:STOREPULSE_TEST_UNSET_VAR\"\n").expect_err("unset");
        assert!(
            err.to_string().contains("sasl.password") && err.to_string().contains("STOREPULSE_TEST_UNSET_VAR"),
            "{err}"
        );
    }

    #[test]
    fn bad_listen_addr_names_the_key() {
        let err = parse("[metrics]\nlisten_addr = \"nowhere\"\n").expect_err("bad addr");
        assert!(err.to_string().contains("metrics.listen_addr"), "{err}");
    }
}
