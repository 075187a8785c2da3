//! Sinks: Parquet tables for data teams, the Prometheus endpoint for SREs, and the optional
//! dead-letter topic.

pub mod dead_letter;
pub mod http;
pub mod parquet;
