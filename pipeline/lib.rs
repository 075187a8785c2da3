//! storepulse: a streaming pipeline that turns e-commerce clickstream, order and logistics
//! events on Kafka into funnel, sales and fulfillment metrics over event-time windows, written
//! to Parquet for data teams and exposed as Prometheus gauges for SREs.
//!
//! An event's path, one module per stage:
//!
//! | stage | module | what it holds |
//! |---|---|---|
//! | configuration | [`config`] | TOML file → validated [`config::Settings`] |
//! | domain | [`event`] | `ClickEvent`, `OrderEvent`, `ShipmentEvent` and their enums |
//! | source | [`source`] | Kafka consumer group, manual offsets, lag and broker health |
//! | decode | [`codec`] | Confluent-framed Avro, plain Avro, JSON; validation |
//! | time | [`time`] | windows, watermarks, lateness (pure) |
//! | operators | [`operators`] | per-partition metric state machines (pure) |
//! | summaries | [`summary`] | instance-wide totals of closed windows (pure) |
//! | sinks | [`sink`] | Parquet tables, `/metrics` endpoint, dead-letter topic |
//! | telemetry | [`telemetry`] | every exported metric name, readiness flags |
//! | checkpoints | [`checkpoint`] | state, offsets and staged files committed in one manifest |
//! | wiring | [`runtime`] | the processing loop |
//! | traffic | [`generate`] | deterministic synthetic traffic with fault injection |
//! | benchmark | [`bench`] | `storepulse bench`: throughput, CPU per event, latency, memory |
//! | allocator | [`allocator`] | how long freed memory is kept before the OS gets it back |
//! | command line | [`cli`] | `run`, `demo`, `generate`, `compact`, `bench` |

pub mod allocator;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod codec;
pub mod config;
pub mod event;
pub mod generate;
pub mod operators;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod summary;
pub mod telemetry;
pub mod time;
