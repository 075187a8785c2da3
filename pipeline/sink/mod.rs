//! Sinks: Parquet tables for data teams, the Prometheus gauges and endpoint for SREs, and the
//! optional dead-letter topic.

#![deny(clippy::too_many_lines)]

pub mod compact;
pub mod dead_letter;
pub mod http;
pub mod parquet;
pub mod prometheus;
pub mod storage;
