//! storepulse: a streaming pipeline that turns e-commerce clickstream, order and logistics
//! events on Kafka into funnel, sales and fulfillment metrics over event-time windows, written
//! to Parquet for data teams and exposed as Prometheus gauges for SREs.
//!
//! An event's path, one module per stage (`docs/architecture.md` follows one event through
//! them and shows how to add a metric family):
//!
//! | stage | module | what it holds |
//! |---|---|---|
//! | configuration | [`config`] | TOML file → validated [`config::Settings`] |
//! | domain | [`event`] | `ClickEvent`, `OrderEvent`, `ShipmentEvent`, their enums, money |
//! | source | [`source`] | Kafka consumer group, manual offsets, exact resume, lag and broker health |
//! | decode | [`codec`] | Confluent-framed Avro, plain Avro, JSON; validation |
//! | time | [`time`] | windows, watermarks, lateness, dedupe and their settings (pure) |
//! | operators | [`operators`] | per-partition metric families behind one interface, and their registry (pure) |
//! | tables | [`table`] | each output table's rows, schema and partition time |
//! | labels | [`labels`] | how dimension values read in tables and metrics (`all`, window sizes) |
//! | state format | [`snapshot`] | how task state becomes checkpoint bytes and back |
//! | checkpoints | [`checkpoint`] | rows, state, offsets and staged files committed in one manifest |
//! | sinks | [`sink`] | Parquet tables, the Prometheus gauges and endpoint, dead-letter topic |
//! | telemetry | [`telemetry`] | every exported metric name, readiness flags, outcome events |
//! | loop | [`runtime`], [`control`] | the processing loop: polls, hands events to tasks, routes their output |
//! | ownership | [`assignment`] | the tasks of the partitions this instance owns; restore on assignment |
//! | service | [`service`] | starts metrics, endpoint and loop together for every command |
//! | traffic | [`generate`] | deterministic synthetic traffic with fault injection |
//! | benchmark | [`bench`] | `storepulse bench`: throughput, CPU per event, latency, memory |
//! | allocator | [`allocator`] | how long freed memory is kept before the OS gets it back |
//! | command line | [`cli`] | `run`, `demo`, `generate`, `compact`, `bench`, `broker` |
//! | crash points | [`crash`] | where the end-to-end tests make the process die |
//!
//! Errors are typed per boundary below the command line; `anyhow` is used only by the
//! commands ([`cli`], [`bench`]) and `main`.

pub mod allocator;
pub mod assignment;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod codec;
pub mod config;
pub mod control;
pub mod crash;
pub mod event;
pub mod generate;
pub mod labels;
pub mod operators;
pub mod preflight;
pub mod runtime;
pub mod service;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod table;
pub mod telemetry;
pub mod time;
