//! The validated runtime settings, converted from the raw file one section at a time.

use super::{
    ConfigError, RawCheckpoint, RawCodec, RawConfig, RawKafka, RawMetrics, RawOrders, RawTime, RawTopics,
    RawValidation, default_clickstream, default_logistics, default_orders, invalid,
};
use crate::codec::{RegistryAuth, RegistryClient, ValidationRules, WireFormat};
use crate::event::Stream;
use crate::operators::{FULFILLMENT, ORDERS, SESSIONS, TRAFFIC};
use crate::sink::TableFormat;
use crate::sink::storage::Location;
use crate::time::{FamilyLateness, JumpGuard, Retention, TimeSettings, system_time_ms};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Validated runtime settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Bootstrap servers.
    pub brokers: String,
    /// Consumer group id.
    pub group_id: String,
    /// librdkafka pass-through settings with secrets resolved (redacted when printed).
    pub kafka_client: ClientProperties,
    /// Topic of each stream.
    pub topics: TopicNames,
    /// Optional dead-letter topic.
    pub dead_letter_topic: Option<String>,
    /// Input wire format.
    pub format: WireFormat,
    /// The schema registry and how to reach it, if any.
    pub schema_registry: Option<RegistryClient>,
    /// Writer schema directory, if any.
    pub writer_schemas_dir: Option<PathBuf>,
    /// Per stream (indexed as [`Stream::ALL`]), writer record names accepted besides the
    /// bundled schema's.
    pub accepted_record_names: [Vec<String>; 3],
    /// Event validation bounds.
    pub validation: ValidationRules,
    /// Window, watermark and lateness settings.
    pub time: TimeSettings,
    /// Root of the Parquet tables.
    pub output: Location,
    /// How the tables are laid out.
    pub output_format: TableFormat,
    /// Bytes of a rejected message's value kept in the `dead_letters` table.
    pub dead_letter_payload_bytes: usize,
    /// Checkpoint interval, shutdown deadline, backpressure.
    pub checkpoint: CheckpointSettings,
    /// Metrics endpoint address.
    pub metrics_addr: SocketAddr,
    /// Series budget per data-driven label.
    pub max_values_per_label: usize,
    /// How long the processing loop may go without coming round before `/healthz` fails.
    pub liveness_timeout: Duration,
}

impl Settings {
    /// Loads and validates a config file, with the `STOREPULSE_<SECTION>__<KEY>` environment
    /// variables over it.
    ///
    /// # Errors
    /// Any [`ConfigError`], naming the key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let env = std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        Settings::try_from(RawConfig::from_file(path, env)?)
    }
}

impl TryFrom<RawConfig> for Settings {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        // Sections in file order, so that the first error reported is the first in the file.
        let (brokers, group_id, kafka_client) = kafka(raw.kafka)?;
        let (topics, dead_letter_topic) = topics(raw.topics)?;
        let accepted_record_names = codec(&raw.codec)?;
        let schema_registry = schema_registry(&raw.codec)?;
        let validation = validation(&raw.validation)?;
        let time = time(&raw.time, &raw.orders)?;
        let output = Location::parse(&raw.output.dir).map_err(|e| invalid("output.dir", e))?;
        let checkpoint = checkpoint(&raw.checkpoint)?;
        let (metrics_addr, max_values_per_label, liveness_timeout) = metrics(&raw.metrics)?;
        Ok(Settings {
            brokers,
            group_id,
            kafka_client,
            topics,
            dead_letter_topic,
            format: raw.codec.format,
            schema_registry,
            writer_schemas_dir: raw.codec.writer_schemas_dir,
            accepted_record_names,
            validation,
            time,
            output,
            output_format: raw.output.format,
            dead_letter_payload_bytes: raw.output.dead_letter_payload_bytes,
            checkpoint,
            metrics_addr,
            max_values_per_label,
            liveness_timeout,
        })
    }
}

/// librdkafka keys storepulse owns: overriding them would break offset management.
const RESERVED_CLIENT_KEYS: &[&str] =
    &["enable.auto.commit", "enable.auto.offset.store", "group.id", "bootstrap.servers"];

/// `[kafka]`: brokers, group and the pass-through client settings.
fn kafka(raw: RawKafka) -> Result<(String, String, ClientProperties), ConfigError> {
    if raw.brokers.trim().is_empty() {
        return Err(invalid("kafka.brokers", "must list at least one host:port"));
    }
    for broker in raw.brokers.split(',').map(str::trim) {
        if !is_broker_address(broker) {
            return Err(invalid(
                "kafka.brokers",
                format!("{broker:?} is not host:port; list brokers as \"kafka-0:9092,kafka-1:9092\""),
            ));
        }
    }
    if raw.group_id.trim().is_empty() {
        return Err(invalid("kafka.group_id", "must not be empty"));
    }
    let mut client = ClientProperties::default();
    for (key, value) in raw.client {
        let full_key = format!("kafka.client.\"{key}\"");
        if RESERVED_CLIENT_KEYS.contains(&key.as_str()) {
            return Err(invalid(full_key, "is managed by storepulse; use kafka.brokers / kafka.group_id or remove it"));
        }
        let referenced = value.starts_with("env:") || value.starts_with("file:");
        let resolved = resolve_secret(&full_key, &value)?;
        client.insert(key, resolved, referenced);
    }
    Ok((raw.brokers, raw.group_id, client))
}

/// `host`, `host:port` or `[v6]:port`, optionally after `scheme://`, as librdkafka reads them.
fn is_broker_address(entry: &str) -> bool {
    let address = entry.split_once("://").map_or(entry, |(_, rest)| rest);
    let (host, port) = match address.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, after)) => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return false,
            },
            None => return false,
        },
        None => match address.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (address, None),
        },
    };
    !host.is_empty()
        && !host.contains(|c: char| c.is_whitespace() || c == '/')
        && port.is_none_or(|port| port.parse::<u16>().is_ok_and(|port| port > 0))
}

/// `[topics]`: three distinct input topics and an optional dead-letter topic.
fn topics(raw: RawTopics) -> Result<(TopicNames, Option<String>), ConfigError> {
    let topics = TopicNames { clickstream: raw.clickstream, orders: raw.orders, logistics: raw.logistics };
    for stream in Stream::ALL {
        if topics.of(stream).trim().is_empty() {
            return Err(invalid(format!("topics.{}", stream.as_str()), "must not be empty"));
        }
    }
    let distinct: BTreeSet<&str> = Stream::ALL.iter().map(|s| topics.of(*s)).collect();
    if distinct.len() != Stream::ALL.len() {
        return Err(invalid("topics", "clickstream, orders and logistics must be three different topics"));
    }
    if let Some(dlq) = &raw.dead_letter
        && distinct.contains(dlq.as_str())
    {
        return Err(invalid("topics.dead_letter", "must differ from the input topics"));
    }
    Ok((topics, raw.dead_letter.filter(|t| !t.trim().is_empty())))
}

/// `[codec]`: where writer schemas come from, and the record names each topic accepts.
fn codec(raw: &RawCodec) -> Result<[Vec<String>; 3], ConfigError> {
    if let Some(dir) = &raw.writer_schemas_dir
        && !dir.is_dir()
    {
        return Err(invalid("codec.writer_schemas_dir", format!("{} is not a directory", dir.display())));
    }
    let names = &raw.accepted_record_names;
    let accepted = [&names.clickstream, &names.orders, &names.logistics];
    for (stream, names) in Stream::ALL.iter().zip(accepted) {
        if let Some(bad) = names.iter().find(|name| apache_avro::schema::Name::new(name).is_err() || name.is_empty()) {
            let key = format!("codec.accepted_record_names.{}", stream.as_str());
            return Err(invalid(key, format!("{bad:?} is not an Avro full name")));
        }
    }
    Ok(accepted.map(Clone::clone))
}

/// The `codec.schema_registry_*` keys: where the registry is, which CAs it may be signed by,
/// and its credentials (`env:` / `file:` references resolved).
fn schema_registry(raw: &RawCodec) -> Result<Option<RegistryClient>, ConfigError> {
    let Some(url) = &raw.schema_registry_url else {
        for (key, set) in [
            ("codec.schema_registry_ca_file", raw.schema_registry_ca_file.is_some()),
            ("codec.schema_registry_username", raw.schema_registry_username.is_some()),
            ("codec.schema_registry_password", raw.schema_registry_password.is_some()),
            ("codec.schema_registry_bearer_token", raw.schema_registry_bearer_token.is_some()),
        ] {
            if set {
                return Err(invalid(key, "needs codec.schema_registry_url"));
            }
        }
        return Ok(None);
    };
    let https = url.starts_with("https://");
    if !https && !url.starts_with("http://") {
        return Err(invalid("codec.schema_registry_url", "must be an http:// or https:// URL"));
    }
    let extra_roots_pem = match &raw.schema_registry_ca_file {
        None => None,
        Some(_) if !https => {
            return Err(invalid("codec.schema_registry_ca_file", "needs an https:// codec.schema_registry_url"));
        }
        Some(path) => {
            let key = "codec.schema_registry_ca_file";
            let pem = std::fs::read(path).map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
            RegistryClient::certificates(&pem).map_err(|e| invalid(key, format!("{}: {e}", path.display())))?;
            Some(pem)
        }
    };
    let secret = |key: &str, value: &Option<String>| value.as_deref().map(|v| resolve_secret(key, v)).transpose();
    let password = secret("codec.schema_registry_password", &raw.schema_registry_password)?;
    let token = secret("codec.schema_registry_bearer_token", &raw.schema_registry_bearer_token)?;
    let auth = match (raw.schema_registry_username.clone(), password, token) {
        (None, None, None) => None,
        (Some(username), Some(password), None) => Some(RegistryAuth::Basic { username, password }),
        (None, None, Some(token)) => Some(RegistryAuth::Bearer(token)),
        (Some(_), None, _) => return Err(invalid("codec.schema_registry_password", "needs to be set with a username")),
        (None, Some(_), _) => return Err(invalid("codec.schema_registry_username", "needs to be set with a password")),
        (Some(_), Some(_), Some(_)) => {
            return Err(invalid("codec.schema_registry_bearer_token", "is an alternative to username and password"));
        }
    };
    if auth.is_some() && !https {
        return Err(invalid(
            "codec.schema_registry_url",
            "must be https:// when credentials are set: they would travel in clear",
        ));
    }
    Ok(Some(RegistryClient { url: url.trim_end_matches('/').to_owned(), extra_roots_pem, auth }))
}

/// `[validation]`: the bounds every event must satisfy.
fn validation(raw: &RawValidation) -> Result<ValidationRules, ConfigError> {
    let min_event_time = humantime::parse_rfc3339_weak(&raw.min_event_time)
        .map_err(|e| invalid("validation.min_event_time", format!("not an RFC 3339 time: {e}")))?;
    if raw.max_amount_minor < 1 {
        return Err(invalid("validation.max_amount_minor", "must be at least 1"));
    }
    if raw.max_line_quantity < 1 {
        return Err(invalid("validation.max_line_quantity", "must be at least 1"));
    }
    if raw.max_order_lines == 0 {
        return Err(invalid("validation.max_order_lines", "must be at least 1"));
    }
    // An order's units are kept in 32 bits: the bounds must not let them wrap.
    let max_units = u64::try_from(raw.max_line_quantity).unwrap_or(u64::MAX).saturating_mul(raw.max_order_lines as u64);
    if max_units > u64::from(u32::MAX) {
        return Err(invalid(
            "validation.max_order_lines",
            format!("times validation.max_line_quantity allows {max_units} units per order, above {}", u32::MAX),
        ));
    }
    Ok(ValidationRules {
        min_event_time_ms: system_time_ms(min_event_time),
        max_future_skew_ms: secs_to_ms("validation.max_future_skew_secs", raw.max_future_skew_secs)?,
        max_amount_minor: raw.max_amount_minor,
        max_line_quantity: raw.max_line_quantity,
        max_order_lines: raw.max_order_lines,
    })
}

/// `[time]` and `[orders]`: windows, watermarks, lateness per family, sessions, dedupe, and
/// how long order state is kept.
fn time(raw: &RawTime, orders: &RawOrders) -> Result<TimeSettings, ConfigError> {
    if raw.session_gap_secs == 0 {
        return Err(invalid("time.session_gap_secs", "must be at least 1"));
    }
    if raw.session_max_length_secs < raw.session_gap_secs {
        return Err(invalid("time.session_max_length_secs", "must be at least time.session_gap_secs"));
    }
    if raw.dedupe_max_ids_per_partition == 0 {
        return Err(invalid("time.dedupe_max_ids_per_partition", "must be at least 1"));
    }
    let time = TimeSettings {
        window_sizes_ms: window_sizes(raw)?,
        out_of_orderness_ms: secs_to_ms("time.allowed_out_of_orderness_secs", raw.allowed_out_of_orderness_secs)?,
        lateness: lateness(raw)?,
        session_gap_ms: secs_to_ms("time.session_gap_secs", raw.session_gap_secs)?,
        session_max_length_ms: secs_to_ms("time.session_max_length_secs", raw.session_max_length_secs)?,
        idle_timeout_ms: secs_to_ms("time.idle_timeout_secs", raw.idle_timeout_secs)?,
        dedupe_horizon_ms: secs_to_ms("time.dedupe_horizon_secs", raw.dedupe_horizon_secs)?,
        dedupe_max_ids: raw.dedupe_max_ids_per_partition,
        retention: Retention {
            terminal_ttl_ms: secs_to_ms("orders.terminal_ttl_secs", orders.terminal_ttl_secs)?,
            open_timeout_ms: secs_to_ms("orders.open_timeout_secs", orders.open_timeout_secs)?,
            orphan_after_ms: secs_to_ms("orders.orphan_after_secs", orders.orphan_after_secs)?,
        },
        jump_guard: jump_guard(raw)?,
    };
    retention_outlasts_windows(&time)?;
    Ok(time)
}

/// `time.max_watermark_jump_secs` and `time.watermark_corroborating_events`.
fn jump_guard(raw: &RawTime) -> Result<Option<JumpGuard>, ConfigError> {
    if raw.max_watermark_jump_secs == 0 {
        return Ok(None);
    }
    if raw.watermark_corroborating_events < 2 {
        return Err(invalid(
            "time.watermark_corroborating_events",
            "must be at least 2 (one event alone would move the watermark); \
             set time.max_watermark_jump_secs = 0 to turn the guard off",
        ));
    }
    Ok(Some(JumpGuard {
        max_jump_ms: secs_to_ms("time.max_watermark_jump_secs", raw.max_watermark_jump_secs)?,
        corroborating_events: raw.watermark_corroborating_events,
    }))
}

/// `time.window_secs`: sizes that divide a day, so windows align to UTC; ascending.
fn window_sizes(raw: &RawTime) -> Result<Vec<i64>, ConfigError> {
    let mut sizes = Vec::new();
    for &secs in raw.window_secs.values() {
        if secs == 0 || 86_400 % secs != 0 {
            return Err(invalid(
                "time.window_secs",
                format!("{secs} does not divide a day evenly; use sizes like 60, 300, 3600 so windows align to UTC"),
            ));
        }
        sizes.push(secs_to_ms("time.window_secs", secs)?);
    }
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.is_empty() {
        return Err(invalid("time.window_secs", "needs at least one window size, e.g. [60, 3600]"));
    }
    Ok(sizes)
}

/// `time.allowed_lateness_secs` for every family, and each family's own key.
fn lateness(raw: &RawTime) -> Result<FamilyLateness, ConfigError> {
    let mut lateness = FamilyLateness::uniform(secs_to_ms("time.allowed_lateness_secs", raw.allowed_lateness_secs)?);
    for (family, key, secs) in [
        (TRAFFIC, "time.traffic_lateness_secs", raw.traffic_lateness_secs),
        (SESSIONS, "time.sessions_lateness_secs", raw.sessions_lateness_secs),
        (ORDERS, "time.orders_lateness_secs", raw.orders_lateness_secs),
        (FULFILLMENT, "time.fulfillment_lateness_secs", raw.fulfillment_lateness_secs),
    ] {
        if let Some(secs) = secs {
            lateness = lateness.with(family, secs_to_ms(key, secs)?);
        }
    }
    Ok(lateness)
}

/// The backlog at a window's end is read from state when the window closes: an order must not
/// leave the state before every window it could be backlog in has closed.
fn retention_outlasts_windows(time: &TimeSettings) -> Result<(), ConfigError> {
    let longest_wait = time.window_sizes_ms.last().copied().unwrap_or_default()
        + time.lateness.of(ORDERS).max(time.lateness.of(FULFILLMENT))
        + time.out_of_orderness_ms;
    let retention = &time.retention;
    if retention.terminal_ttl_ms <= longest_wait {
        return Err(invalid(
            "orders.terminal_ttl_secs",
            format!("must exceed the largest window plus lateness and out-of-orderness ({} s)", longest_wait / 1000),
        ));
    }
    if retention.open_timeout_ms <= retention.terminal_ttl_ms {
        return Err(invalid("orders.open_timeout_secs", "must exceed orders.terminal_ttl_secs"));
    }
    if retention.orphan_after_ms <= time.out_of_orderness_ms {
        return Err(invalid("orders.orphan_after_secs", "must exceed time.allowed_out_of_orderness_secs"));
    }
    Ok(())
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
    /// Buffered bytes of rejected messages beyond which consumption pauses.
    pub max_buffered_bytes: usize,
    /// Age after which unreferenced checkpoint debris is removed, milliseconds.
    pub debris_grace_ms: i64,
}

/// `[checkpoint]`
fn checkpoint(c: &RawCheckpoint) -> Result<CheckpointSettings, ConfigError> {
    if c.interval_secs == 0 {
        return Err(invalid("checkpoint.interval_secs", "must be at least 1"));
    }
    if c.shutdown_deadline_secs == 0 {
        return Err(invalid("checkpoint.shutdown_deadline_secs", "must be at least 1"));
    }
    if c.max_buffered_rows == 0 {
        return Err(invalid("checkpoint.max_buffered_rows", "must be at least 1"));
    }
    if c.max_buffered_bytes < 1 << 20 {
        return Err(invalid("checkpoint.max_buffered_bytes", "must be at least 1048576 (1 MiB)"));
    }
    if c.debris_grace_secs < 2 * c.interval_secs {
        return Err(invalid("checkpoint.debris_grace_secs", "must be at least twice checkpoint.interval_secs"));
    }
    Ok(CheckpointSettings {
        interval: Duration::from_secs(c.interval_secs),
        shutdown_deadline: Duration::from_secs(c.shutdown_deadline_secs),
        max_buffered_rows: c.max_buffered_rows,
        max_buffered_bytes: c.max_buffered_bytes,
        debris_grace_ms: secs_to_ms("checkpoint.debris_grace_secs", c.debris_grace_secs)?,
    })
}

/// `[metrics]`: the endpoint's address, the series budget and the liveness timeout.
fn metrics(raw: &RawMetrics) -> Result<(SocketAddr, usize, Duration), ConfigError> {
    let addr = raw.listen_addr.parse::<SocketAddr>().map_err(|e| {
        invalid("metrics.listen_addr", format!("{:?} is not host:port ({e}); e.g. 0.0.0.0:9464", raw.listen_addr))
    })?;
    if raw.max_values_per_label == 0 {
        return Err(invalid("metrics.max_values_per_label", "must be at least 1"));
    }
    if raw.liveness_timeout_secs < 10 {
        return Err(invalid("metrics.liveness_timeout_secs", "must be at least 10 (a checkpoint takes seconds)"));
    }
    Ok((addr, raw.max_values_per_label, Duration::from_secs(raw.liveness_timeout_secs)))
}

fn secs_to_ms(key: &str, secs: u64) -> Result<i64, ConfigError> {
    i64::try_from(secs).ok().and_then(|s| s.checked_mul(1000)).ok_or_else(|| invalid(key, "is too large"))
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

/// librdkafka pass-through settings. Values that came from an `env:` or `file:` reference, or
/// whose key names a secret (password, secret, key, token, credentials), print as `<redacted>`:
/// settings are logged and shown in errors, secrets never are.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientProperties(BTreeMap<String, (String, bool)>);

/// Parts of librdkafka keys that hold secrets (`sasl.password`, `ssl.key.password`,
/// `sasl.oauthbearer.client.secret`, `ssl.keystore.password`, ...).
const SECRET_KEY_PARTS: [&str; 5] = ["password", "secret", "key", "token", "credentials"];

impl ClientProperties {
    /// Sets `key`; `secret` marks a value that must never be shown.
    pub fn insert(&mut self, key: String, value: String, secret: bool) {
        let secret = secret || SECRET_KEY_PARTS.iter().any(|part| key.contains(part));
        self.0.insert(key, (value, secret));
    }

    /// Every setting, with its real value, for the Kafka client.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, (v, _))| (k.as_str(), v.as_str()))
    }
}

impl std::fmt::Debug for ClientProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, (v, secret))| (k, if *secret { "<redacted>" } else { v.as_str() })))
            .finish()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print_but_reach_the_client() {
        let mut client = ClientProperties::default();
        client.insert("security.protocol".into(), "SASL_SSL".into(), false);
        client.insert("sasl.password".into(), "hunter2".into(), false);
        client.insert("sasl.username".into(), "from-a-file".into(), true);
        let printed = format!("{client:?}");
        assert!(printed.contains("SASL_SSL") && !printed.contains("hunter2") && !printed.contains("from-a-file"));
        assert!(client.iter().any(|(k, v)| k == "sasl.password" && v == "hunter2"));
    }
}
