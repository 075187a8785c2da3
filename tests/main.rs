//! Integration tests of storepulse, compiled as one binary. End-to-end tests against a real
//! broker, Prometheus and the DuckDB oracle live in `tests/e2e/` (pytest), run by `tests/run.sh`.

/// Golden Avro payloads from older, newer and incompatible writer schemas (fastavro-encoded).
mod codec_fixtures;
/// Malformed messages through the whole pipeline on librdkafka's embedded mock cluster.
mod dead_letters;
/// A metric family added outside the built-in ones, through the whole pipeline.
mod family_extension;
/// Instance-wide windows with a quiet partition and with a partition that is behind.
mod partition_progress;
/// The writer-schema lookup against a server speaking the Confluent Schema Registry API.
mod schema_registry;
/// Property tests of watermarks, windows, sessions, lateness, dedupe and snapshots.
mod time_properties;
