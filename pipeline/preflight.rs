//! What `run` needs from its surroundings, checked before it starts and by `run --check`: that
//! librdkafka takes the client settings, that the metrics address can be bound and that the
//! output location can be written. A configuration `--check` passes does not then stop `run`.

use crate::config::{ConfigError, Settings};
use crate::sink::storage::{Location, Storage};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::BaseProducer;
use std::path::Path;

/// Checks `settings` against librdkafka, the network and the output location.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the key that cannot work here.
pub fn check(settings: &Settings) -> Result<(), ConfigError> {
    client_settings(settings)?;
    std::net::TcpListener::bind(settings.metrics_addr)
        .map_err(|e| invalid("metrics.listen_addr", format!("cannot listen on {}: {e}", settings.metrics_addr)))?;
    output_writable(&settings.output)
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.to_owned(), message: message.into() }
}

/// Creates (and drops) a consumer and, with a dead-letter topic, a producer from the client
/// settings: librdkafka refuses unknown properties and bad values only when a client is made.
fn client_settings(settings: &Settings) -> Result<(), ConfigError> {
    let refused = |e: rdkafka::error::KafkaError| invalid("kafka.client", format!("librdkafka refuses it: {e}"));
    crate::source::client_config(settings).create::<BaseConsumer>().map_err(refused)?;
    if settings.dead_letter_topic.is_some() {
        let mut config = ClientConfig::new();
        for (key, value) in settings.kafka_client.iter() {
            config.set(key, value);
        }
        config.set("bootstrap.servers", &settings.brokers).create::<BaseProducer>().map_err(refused)?;
    }
    Ok(())
}

/// A local directory (or the nearest existing one above it, which `run` would create it in)
/// takes a file; an S3 prefix takes an object. The probe is removed at once.
fn output_writable(location: &Location) -> Result<(), ConfigError> {
    let probe = format!(".storepulse-write-check-{}", std::process::id());
    let cannot = |e: String| invalid("output.dir", format!("cannot write to {location}: {e}"));
    match location {
        Location::Local(dir) => {
            let existing = dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("."));
            if !existing.is_dir() {
                return Err(cannot(format!("{} is not a directory", existing.display())));
            }
            let file = existing.join(probe);
            std::fs::write(&file, b"").map_err(|e| cannot(e.to_string()))?;
            std::fs::remove_file(&file).map_err(|e| cannot(e.to_string()))
        }
        Location::S3 { .. } => {
            let storage = Storage::open(location).map_err(|e| cannot(e.to_string()))?;
            storage.put(&probe, Vec::new()).map_err(|e| cannot(e.to_string()))?;
            storage.delete(&probe).map_err(|e| cannot(e.to_string()))
        }
    }
}
