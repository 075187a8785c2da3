//! Tables: what a row of each output table is, its Arrow schema, which time picks its hour
//! partition, and where it is documented. A metric family declares its tables here by
//! implementing [`TableRow`] for its row types; the Parquet sink, compaction and the docs check
//! read them through [`TableSpec`], so no list of tables is kept anywhere else.
//!
//! Three tables belong to the pipeline rather than to a family: [`LateEventRow`],
//! [`QuarantinedEventRow`] and [`DeadLetterRow`], where events that no metric counted are kept.

pub mod columns;
mod rows;

pub use rows::{RowBuffer, Rows};

use crate::labels::window_label;
use arrow_array::{BinaryArray, RecordBatch, StringArray};
use arrow_schema::{ArrowError, Field, Schema, SchemaRef};
use columns::{int32, int64, text, utc_millis};
use std::sync::Arc;

/// A row type of one output table.
pub trait TableRow: Send + Sized + 'static {
    /// The table's name: its directory under the output root and its heading in
    /// `docs/tables.md`.
    const TABLE: &'static str;
    /// The column (or expression) whose UTC time picks the row's hour partition, as documented.
    const PARTITION_BY: &'static str;

    /// The UTC ms that picks the row's hour partition ([`TableRow::PARTITION_BY`]).
    fn partition_time(&self) -> i64;

    /// Converts rows into a record batch, columns in their documented order.
    ///
    /// # Errors
    /// Arrow errors, which mean a bug in the conversion.
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError>;

    /// The partition time before which the table gets no more rows once the pipeline has got
    /// this far: every hour partition ending at or before it is complete. By default rows are
    /// partitioned by a watermark they were made at (`None` before there is one).
    fn complete_through(progress: &Progress<'_>) -> Option<i64> {
        progress.low_watermark.map(floor_hour)
    }
}

/// How far the pipeline has got, for deciding which hours of a table are complete.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// The lowest watermark over the instance's partitions (idle, caught-up ones skipped).
    pub low_watermark: Option<i64>,
    /// The wall clock, UTC ms.
    pub now_ms: i64,
    /// Window sizes, lateness and sessions.
    pub time: &'a crate::time::TimeSettings,
}

/// The start of the UTC hour holding `ms`.
pub fn floor_hour(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS) * HOUR_MS
}

const HOUR_MS: i64 = 3_600_000;

/// The end of the last complete hour of a table of windows of `sizes_ms` kept open `lateness_ms`
/// past their end, at watermark `watermark`: every window starting in an hour ending at or
/// before it has closed.
pub fn windows_complete_through(watermark: i64, sizes_ms: &[i64], lateness_ms: i64) -> i64 {
    let closed = |end: i64| {
        sizes_ms.iter().all(|&size| {
            // The last window of this size starting before `end`.
            let last_start = (end - 1).div_euclid(size) * size;
            last_start + size + lateness_ms <= watermark
        })
    };
    let mut end = floor_hour(watermark - lateness_ms);
    // Windows of a day hold back the hours of their day: a few dozen steps at most.
    while !closed(end) && end > i64::MIN / 2 {
        end -= HOUR_MS;
    }
    end
}

/// What the pipeline knows of a table without holding any of its rows.
#[derive(Clone, Copy)]
pub struct TableSpec {
    /// The table's name ([`TableRow::TABLE`]).
    pub name: &'static str,
    /// What picks its hour partition ([`TableRow::PARTITION_BY`]).
    pub partition_by: &'static str,
    schema: fn() -> Result<SchemaRef, ArrowError>,
    complete_through: fn(&Progress<'_>) -> Option<i64>,
}

impl TableSpec {
    /// The table of rows of type `R`.
    pub const fn of<R: TableRow>() -> Self {
        TableSpec {
            name: R::TABLE,
            partition_by: R::PARTITION_BY,
            schema: schema_of::<R>,
            complete_through: R::complete_through,
        }
    }

    /// See [`TableRow::complete_through`].
    pub fn complete_through(&self, progress: &Progress<'_>) -> Option<i64> {
        (self.complete_through)(progress)
    }

    /// Its Arrow schema, as every file of the table has it.
    ///
    /// # Errors
    /// Arrow errors, which mean a bug in the table's conversion.
    pub fn schema(&self) -> Result<SchemaRef, ArrowError> {
        (self.schema)()
    }

    /// Where it is documented.
    pub fn docs(&self) -> String {
        format!("docs/tables.md#{}", self.name)
    }
}

impl std::fmt::Debug for TableSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableSpec").field("name", &self.name).field("partition_by", &self.partition_by).finish()
    }
}

/// A table's schema is the one its conversion gives an empty slice, every column nullable.
fn schema_of<R: TableRow>() -> Result<SchemaRef, ArrowError> {
    Ok(all_nullable(R::to_batch(&[])?)?.schema())
}

/// Marks every column nullable. Arrow infers nullability from whether a batch happens to hold
/// a null, which would give files of one table different schemas; every file gets the same one.
///
/// # Errors
/// Arrow errors, which mean a bug.
pub fn all_nullable(batch: RecordBatch) -> Result<RecordBatch, ArrowError> {
    let fields: Vec<Field> =
        batch.schema().fields().iter().map(|field| field.as_ref().clone().with_nullable(true)).collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), batch.columns().to_vec())
}

/// The tables every pipeline writes, whatever its families.
pub const PIPELINE_TABLES: [TableSpec; 3] =
    [TableSpec::of::<LateEventRow>(), TableSpec::of::<QuarantinedEventRow>(), TableSpec::of::<DeadLetterRow>()];

/// An event that arrived after its window closed, for one metric family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateEventRow {
    /// Stream name.
    pub stream: &'static str,
    /// Metric family whose window it missed.
    pub family: &'static str,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// The event's id.
    pub event_id: String,
    /// The event's time, UTC ms.
    pub event_time: i64,
    /// Size of the window it missed, ms.
    pub missed_window_ms: i64,
    /// Start of the window it missed, UTC ms.
    pub missed_window_start: i64,
    /// How far the partition watermark was past the event time, ms.
    pub behind_watermark_ms: i64,
}

impl TableRow for LateEventRow {
    const TABLE: &'static str = "late_events";
    const PARTITION_BY: &'static str = "event_time + behind_watermark_ms (the watermark it met)";
    fn partition_time(&self) -> i64 {
        self.event_time + self.behind_watermark_ms
    }
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError> {
        RecordBatch::try_from_iter([
            ("stream", text(rows.iter().map(|r| r.stream))),
            ("family", text(rows.iter().map(|r| r.family))),
            ("source_partition", int32(rows.iter().map(|r| r.partition))),
            ("source_offset", int64(rows.iter().map(|r| r.offset))),
            ("event_id", text(rows.iter().map(|r| r.event_id.as_str()))),
            ("event_time", utc_millis(rows.iter().map(|r| r.event_time))),
            ("missed_window_size", text(rows.iter().map(|r| window_label(r.missed_window_ms)))),
            ("missed_window_start", utc_millis(rows.iter().map(|r| r.missed_window_start))),
            ("behind_watermark_ms", int64(rows.iter().map(|r| r.behind_watermark_ms))),
        ])
    }
}

/// A valid event far ahead of its partition's time that no later events corroborated: kept
/// out of every metric, so that it could not make the partition's other events late.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedEventRow {
    /// Stream name.
    pub stream: &'static str,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// The event's id.
    pub event_id: String,
    /// The event's time, UTC ms.
    pub event_time: i64,
    /// The partition's largest event time when it arrived, UTC ms.
    pub partition_time: i64,
    /// Why it was quarantined.
    pub reason: &'static str,
}

impl TableRow for QuarantinedEventRow {
    const TABLE: &'static str = "quarantined_events";
    const PARTITION_BY: &'static str = "partition_time (the partition's time it arrived at)";
    fn partition_time(&self) -> i64 {
        self.partition_time
    }
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError> {
        RecordBatch::try_from_iter([
            ("stream", text(rows.iter().map(|r| r.stream))),
            ("source_partition", int32(rows.iter().map(|r| r.partition))),
            ("source_offset", int64(rows.iter().map(|r| r.offset))),
            ("event_id", text(rows.iter().map(|r| r.event_id.as_str()))),
            ("event_time", utc_millis(rows.iter().map(|r| r.event_time))),
            ("partition_time", utc_millis(rows.iter().map(|r| r.partition_time))),
            ("ahead_ms", int64(rows.iter().map(|r| r.event_time - r.partition_time))),
            ("reason", text(rows.iter().map(|r| r.reason))),
        ])
    }
}

/// A message that could not be decoded or validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRow {
    /// When storepulse rejected it, UTC ms (wall clock).
    pub rejected_at: i64,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Message key bytes, if any.
    pub key: Option<Vec<u8>>,
    /// Message value bytes as received, cut to the configured length.
    pub payload: Vec<u8>,
    /// Length of the whole message value.
    pub payload_length: usize,
    /// SHA-256 of the whole message value, hex.
    pub payload_sha256: String,
    /// Stable reason code (see `DecodeError::reason`).
    pub reason: &'static str,
    /// Human-readable detail.
    pub detail: String,
}

impl TableRow for DeadLetterRow {
    const TABLE: &'static str = "dead_letters";
    const PARTITION_BY: &'static str = "rejected_at";
    fn partition_time(&self) -> i64 {
        self.rejected_at
    }
    /// Partitioned by the wall clock: an hour is complete once it has passed.
    fn complete_through(progress: &Progress<'_>) -> Option<i64> {
        Some(floor_hour(progress.now_ms))
    }
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError> {
        RecordBatch::try_from_iter([
            ("rejected_at", utc_millis(rows.iter().map(|r| r.rejected_at))),
            ("topic", text(rows.iter().map(|r| r.topic.as_str()))),
            ("source_partition", int32(rows.iter().map(|r| r.partition))),
            ("source_offset", int64(rows.iter().map(|r| r.offset))),
            ("key", Arc::new(rows.iter().map(|r| r.key.as_deref()).collect::<BinaryArray>())),
            ("payload", Arc::new(BinaryArray::from_iter_values(rows.iter().map(|r| r.payload.as_slice())))),
            ("payload_length", int64(rows.iter().map(|r| i64::try_from(r.payload_length).unwrap_or(i64::MAX)))),
            ("payload_sha256", Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.payload_sha256.as_str())))),
            ("reason", Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.reason)))),
            ("detail", Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.detail.as_str())))),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hour_of_windows_is_complete_once_its_last_window_of_every_size_closed() {
        const MIN: i64 = 60_000;
        let h = |hours: i64| hours * HOUR_MS;
        // 1 m and 1 h windows, 30 s lateness: hour 0 is complete once the watermark reaches
        // its end plus the lateness.
        assert_eq!(windows_complete_through(h(1) + 30_000 - 1, &[MIN, h(1)], 30_000), 0);
        assert_eq!(windows_complete_through(h(1) + 30_000, &[MIN, h(1)], 30_000), h(1));
        // A day window holds every hour of its day back until the day has closed.
        let day = h(24);
        assert_eq!(windows_complete_through(h(30), &[MIN, day], 0), day);
        assert_eq!(windows_complete_through(h(47), &[MIN, day], 0), day);
        assert_eq!(windows_complete_through(h(48), &[MIN, day], 0), h(48));
    }

    #[test]
    fn a_tables_schema_is_its_conversion_of_no_rows_with_every_column_nullable() {
        let schema = TableSpec::of::<DeadLetterRow>().schema().expect("schema");
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names[..3], ["rejected_at", "topic", "source_partition"]);
        assert!(schema.fields().iter().all(|f| f.is_nullable()));
        assert_eq!(TableSpec::of::<LateEventRow>().docs(), "docs/tables.md#late_events");
    }
}
