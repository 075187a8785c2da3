//! Configuration: the TOML file's serde structs ([`RawConfig`]) and the validated runtime
//! settings ([`Settings`]) they convert into. Cross-field checks live in one place,
//! `TryFrom<RawConfig> for Settings` (one function per section, in [`settings`]); every error
//! names the offending key.

mod settings;

pub use settings::{CheckpointSettings, ClientProperties, Settings, TopicNames};

use crate::codec::WireFormat;
use crate::sink::TableFormat;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    /// Confluent-compatible schema registry base URL (`http://` or `https://`); when set,
    /// writer schemas come from it.
    #[serde(default)]
    pub schema_registry_url: Option<String>,
    /// PEM file of certificate authorities trusted for the registry besides the system's.
    #[serde(default)]
    pub schema_registry_ca_file: Option<PathBuf>,
    /// Basic authentication user (API key) for the registry.
    #[serde(default)]
    pub schema_registry_username: Option<String>,
    /// Basic authentication password (API secret); `env:NAME` or `file:PATH`.
    #[serde(default)]
    pub schema_registry_password: Option<String>,
    /// Bearer token for the registry instead of basic authentication; `env:NAME` or `file:PATH`.
    #[serde(default)]
    pub schema_registry_bearer_token: Option<String>,
    /// Directory of writer schemas named `<id>.avsc` or `<id>-<name>.avsc`, used without a registry.
    #[serde(default)]
    pub writer_schemas_dir: Option<PathBuf>,
    /// Per topic, writer record full names accepted besides the bundled schema's own.
    #[serde(default)]
    pub accepted_record_names: RawRecordNames,
}

impl Default for RawCodec {
    fn default() -> Self {
        RawCodec {
            format: default_format(),
            schema_registry_url: None,
            schema_registry_ca_file: None,
            schema_registry_username: None,
            schema_registry_password: None,
            schema_registry_bearer_token: None,
            writer_schemas_dir: None,
            accepted_record_names: RawRecordNames::default(),
        }
    }
}

/// `[codec.accepted_record_names]`: Avro full names, per topic.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecordNames {
    /// Accepted on the clickstream topic.
    #[serde(default)]
    pub clickstream: Vec<String>,
    /// Accepted on the orders topic.
    #[serde(default)]
    pub orders: Vec<String>,
    /// Accepted on the logistics topic.
    #[serde(default)]
    pub logistics: Vec<String>,
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
    /// Largest money amount of any field, minor units.
    #[serde(default = "default_max_amount_minor")]
    pub max_amount_minor: i64,
    /// Largest quantity of one order line.
    #[serde(default = "default_max_line_quantity")]
    pub max_line_quantity: i64,
    /// Most lines in one order.
    #[serde(default = "default_max_order_lines")]
    pub max_order_lines: usize,
}

impl Default for RawValidation {
    fn default() -> Self {
        RawValidation {
            min_event_time: default_min_event_time(),
            max_future_skew_secs: default_max_future_skew_secs(),
            max_amount_minor: default_max_amount_minor(),
            max_line_quantity: default_max_line_quantity(),
            max_order_lines: default_max_order_lines(),
        }
    }
}

fn default_max_amount_minor() -> i64 {
    crate::codec::DEFAULT_MAX_AMOUNT_MINOR
}
fn default_max_line_quantity() -> i64 {
    crate::codec::DEFAULT_MAX_LINE_QUANTITY
}
fn default_max_order_lines() -> usize {
    crate::codec::DEFAULT_MAX_ORDER_LINES
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
    /// An event more than this far past its partition's largest event time does not move the
    /// watermark alone, seconds; 0 turns the guard off.
    #[serde(default = "default_max_watermark_jump_secs")]
    pub max_watermark_jump_secs: u64,
    /// How many such events in a row move it (a real jump); fewer are quarantined.
    #[serde(default = "default_watermark_corroborating_events")]
    pub watermark_corroborating_events: usize,
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
            max_watermark_jump_secs: default_max_watermark_jump_secs(),
            watermark_corroborating_events: default_watermark_corroborating_events(),
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
fn default_max_watermark_jump_secs() -> u64 {
    600
}
fn default_watermark_corroborating_events() -> usize {
    5
}

/// `[output]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutput {
    /// Root of the Parquet tables: a directory, or `s3://bucket/prefix` (endpoint and
    /// credentials from the `AWS_*` environment variables).
    #[serde(default = "default_output_dir")]
    pub dir: String,
    /// `delta` (Delta Lake tables: each checkpoint's files appear in one commit per table) or
    /// `parquet` (plain Hive-partitioned Parquet, for readers that glob files).
    #[serde(default)]
    pub format: TableFormat,
    /// Bytes of a rejected message's value kept in the `dead_letters` table; its full length
    /// and SHA-256 are kept beside them (the dead-letter topic gets it whole).
    #[serde(default = "default_dead_letter_payload_bytes")]
    pub dead_letter_payload_bytes: usize,
}

impl Default for RawOutput {
    fn default() -> Self {
        RawOutput {
            dir: default_output_dir(),
            format: TableFormat::default(),
            dead_letter_payload_bytes: default_dead_letter_payload_bytes(),
        }
    }
}

fn default_dead_letter_payload_bytes() -> usize {
    65_536
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
    /// Bytes of rejected messages (kept payloads, keys, details) waiting for the next
    /// checkpoint beyond which consumption pauses: other rows are small and counted by rows.
    #[serde(default = "default_max_buffered_bytes")]
    pub max_buffered_bytes: usize,
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
            max_buffered_bytes: default_max_buffered_bytes(),
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
fn default_max_buffered_bytes() -> usize {
    64 << 20
}
fn default_debris_grace_secs() -> u64 {
    900
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
    /// `/healthz` fails once the processing loop has not come round for this long, seconds.
    #[serde(default = "default_liveness_timeout_secs")]
    pub liveness_timeout_secs: u64,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            listen_addr: default_listen_addr(),
            max_values_per_label: default_max_values_per_label(),
            liveness_timeout_secs: default_liveness_timeout_secs(),
        }
    }
}

fn default_liveness_timeout_secs() -> u64 {
    120
}

fn default_max_values_per_label() -> usize {
    crate::telemetry::DEFAULT_MAX_VALUES_PER_LABEL
}

fn default_listen_addr() -> String {
    "127.0.0.1:9464".into()
}

/// Environment variables that set a config key: `STOREPULSE_<SECTION>__<KEY>`, as a container
/// is usually configured (`STOREPULSE_KAFKA__BROKERS=kafka:9092`). Keys with dots in their name
/// (librdkafka's) are not reachable this way; use an `env:NAME` reference in the file for them.
pub const ENV_PREFIX: &str = "STOREPULSE_";

impl RawConfig {
    /// Reads and parses a TOML config file, then applies the `STOREPULSE_<SECTION>__<KEY>`
    /// variables of `env` over it.
    ///
    /// # Errors
    /// [`ConfigError::Read`] or [`ConfigError::Parse`], naming the file (and key, for parse
    /// errors) or the variable.
    pub fn from_file(path: &Path, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::from_text(&text, env).map_err(|message| ConfigError::Parse { path: path.into(), message })
    }

    /// Parses `text` with the overrides of `env`; the error is a message.
    fn from_text(text: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, String> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| parse_error(text, &e))?;
        let mut overridden = Vec::new();
        for (name, value) in env {
            let Some(path) = name.strip_prefix(ENV_PREFIX).filter(|rest| rest.contains("__")) else { continue };
            let keys: Vec<String> = path.split("__").map(str::to_lowercase).collect();
            if keys.iter().any(String::is_empty) {
                return Err(format!("environment variable {name}: expected {ENV_PREFIX}<SECTION>__<KEY>"));
            }
            set_key(&mut table, &keys, env_value(&value)).map_err(|e| format!("environment variable {name}: {e}"))?;
            overridden.push(name);
        }
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let message = e.inner().message().trim_end().to_owned();
            match overridden.is_empty() {
                true => format!("key `{key}`: {message}"),
                false => format!("key `{key}`: {message} (with {} from the environment)", overridden.join(", ")),
            }
        })
    }
}

/// A TOML syntax error as line, column and message, without the offending line: it may hold a
/// secret (`sasl.password = "..."` with a missing quote).
fn parse_error(text: &str, error: &toml::de::Error) -> String {
    let Some(span) = error.span() else { return error.message().to_owned() };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}: {}", error.message().trim_end())
}

/// The TOML value an environment variable spells (`60`, `true`, `[60, 3600]`, `"x"`), or the
/// text itself as a string (`kafka:9092`).
fn env_value(text: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

/// Sets the dotted key `keys` of `table` to `value`, creating the sections on the way.
fn set_key(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    let (last, sections) = keys.split_last().ok_or("no key")?;
    let mut at = table;
    for section in sections {
        let entry = at.entry(section.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = entry.as_table_mut().ok_or_else(|| format!("`{section}` is not a section"))?;
    }
    at.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::TimeSettings;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        parse_with_env(text, &[])
    }

    fn parse_with_env(text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        let raw =
            RawConfig::from_text(text, env).map_err(|message| ConfigError::Parse { path: "t".into(), message })?;
        Settings::try_from(raw)
    }

    #[test]
    fn environment_variables_override_keys_of_the_file() {
        let env = [
            ("STOREPULSE_KAFKA__BROKERS", "kafka-0:9092,kafka-1:9092"),
            ("STOREPULSE_TIME__WINDOW_SECS", "[300, 60]"),
            ("STOREPULSE_CHECKPOINT__INTERVAL_SECS", "30"),
            ("STOREPULSE_LOG_FORMAT", "json"),
            ("PATH", "/bin"),
        ];
        let s = parse_with_env("[kafka]\nbrokers = \"file:9092\"\ngroup_id = \"g\"\n", &env).expect("valid");
        assert_eq!((s.brokers.as_str(), s.group_id.as_str()), ("kafka-0:9092,kafka-1:9092", "g"));
        assert_eq!(s.time.window_sizes_ms, vec![60_000, 300_000]);
        assert_eq!(s.checkpoint.interval, std::time::Duration::from_secs(30));
        let err = parse_with_env("", &[("STOREPULSE_KAFKA__BROKERZ", "x")]).expect_err("unknown key");
        assert!(err.to_string().contains("brokerz") && err.to_string().contains("STOREPULSE_KAFKA__BROKERZ"), "{err}");
        let err = parse_with_env("", &[("STOREPULSE_TIME__WINDOW_SECS", "7")]).expect_err("invalid value");
        assert!(err.to_string().contains("time.window_secs"), "{err}");
    }

    #[test]
    fn registry_keys_are_checked_and_secrets_resolved() {
        let https = "[codec]\nschema_registry_url = 'https://registry:8081/'\n";
        let s = parse(&format!("{https}schema_registry_username = 'key'\nschema_registry_password = 'secret'\n"))
            .expect("valid");
        let registry = s.schema_registry.expect("a registry");
        assert_eq!(registry.url, "https://registry:8081");
        assert_eq!(
            registry.auth,
            Some(crate::codec::RegistryAuth::Basic { username: "key".into(), password: "secret".into() })
        );
        for (extra, key) in [
            ("schema_registry_username = 'key'\n", "codec.schema_registry_password"),
            ("schema_registry_password = 'x'\n", "codec.schema_registry_username"),
            (
                "schema_registry_bearer_token = 'env:STOREPULSE_TEST_NO_SUCH_TOKEN'\n",
                "codec.schema_registry_bearer_token",
            ),
            ("schema_registry_ca_file = '/nonexistent.pem'\n", "codec.schema_registry_ca_file"),
            ("schema_registry_ca_file = 'Cargo.toml'\n", "codec.schema_registry_ca_file"),
        ] {
            let err = parse(&format!("{https}{extra}")).expect_err(extra);
            assert!(err.to_string().contains(key), "{extra}: {err}");
        }
        let plain = "[codec]\nschema_registry_url = 'http://registry'\nschema_registry_bearer_token = 't'\n";
        let err = parse(plain).expect_err("credentials over http");
        assert!(err.to_string().contains("codec.schema_registry_url") && !err.to_string().contains("'t'"), "{err}");
        let err = parse("[codec]\nschema_registry_username = 'key'\n").expect_err("no registry");
        assert!(err.to_string().contains("needs codec.schema_registry_url"), "{err}");
    }

    #[test]
    fn a_broker_list_is_host_port_pairs() {
        for good in
            ["kafka:9092", "a:1,b:2", "kafka", "10.0.0.1:9092", "[::1]:9092", "SASL_SSL://kafka-0:9093, kafka-1:9093"]
        {
            let settings = parse(&format!("[kafka]\nbrokers = \"{good}\"\n"));
            assert!(settings.is_ok(), "{good}: {settings:?}");
        }
        for bad in ["::::,,,", "kafka:9092,", "kafka:0", "kafka:99999", "kafka:port", "kafka 1:9092", "[::1", ":9092"] {
            let err = parse(&format!("[kafka]\nbrokers = \"{bad}\"\n")).expect_err(bad);
            assert!(err.to_string().contains("kafka.brokers"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_syntax_error_names_the_line_but_never_echoes_it() {
        let text = "[kafka.client]\n\"sasl.password\" = \"hunter2\n";
        let err = parse(text).expect_err("unterminated string");
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn example_config_in_deploy_lists_exactly_the_defaults() {
        let listed = parse(include_str!("../../deploy/storepulse.toml")).expect("deploy/storepulse.toml is valid");
        let defaults = parse("").expect("defaults are valid");
        // Settings hold no floats or maps with unordered iteration: equal settings print equally.
        assert_eq!(
            format!("{listed:#?}"),
            format!("{defaults:#?}"),
            "deploy/storepulse.toml says it lists every default"
        );
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
        let lateness = |family| s.time.lateness.of(family);
        assert_eq!(
            [lateness("traffic"), lateness("sessions"), lateness("orders"), lateness("fulfillment")],
            [5_000, 5_000, 60_000, 5_000]
        );
    }

    #[test]
    fn hostile_input_bounds_are_checked_and_named() {
        let s = parse("[codec.accepted_record_names]\nclickstream = [\"com.legacy.Click\"]\n").expect("valid");
        assert_eq!(s.accepted_record_names[0], vec!["com.legacy.Click".to_owned()]);
        let err = parse("[codec.accepted_record_names]\norders = [\"not a name\"]\n").expect_err("bad name");
        assert!(err.to_string().contains("codec.accepted_record_names.orders"), "{err}");
        let err = parse("[validation]\nmax_line_quantity = 10000000\nmax_order_lines = 1000\n").expect_err("wraps");
        assert!(err.to_string().contains("validation.max_order_lines"), "{err}");
        let err = parse("[validation]\nmax_amount_minor = 0\n").expect_err("zero");
        assert!(err.to_string().contains("validation.max_amount_minor"), "{err}");
        let err = parse("[checkpoint]\nmax_buffered_bytes = 1000\n").expect_err("too small");
        assert!(err.to_string().contains("checkpoint.max_buffered_bytes"), "{err}");
        let err = parse("[time]\nwatermark_corroborating_events = 1\n").expect_err("one event alone");
        assert!(err.to_string().contains("time.watermark_corroborating_events"), "{err}");
        let off = parse("[time]\nmax_watermark_jump_secs = 0\nwatermark_corroborating_events = 1\n").expect("valid");
        assert_eq!(off.time.jump_guard, None);
        assert_eq!(
            parse("").expect("defaults").time.jump_guard,
            Some(crate::time::JumpGuard { max_jump_ms: 600_000, corroborating_events: 5 })
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
