//! Parquet tables in Hive-style hour partitions, `TABLE/dt=YYYY-MM-DD/hour=HH/part-….parquet`.
//! A checkpoint writes one zstd-compressed file per table and hour it has rows for. Each file is
//! written whole under `_staging/` and renamed into its partition only after the checkpoint that
//! lists it is committed, so a reader never sees a partial or uncommitted file.

use crate::operators::{
    FulfillmentRow, FunnelRow, LatencySketch, OrderFact, OrdersRow, OrphanShipment, SessionRow, Step, channel_label,
    device_label,
};
use crate::sink::storage::{Storage, StorageError};
use crate::telemetry::window_label;
use arrow_array::{
    ArrayRef, BinaryArray, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use std::sync::Arc;

/// A failed Parquet write. The rows stay buffered and the write is retried at the next flush.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Storing or publishing a file failed (disk full, permissions, object store down, ...).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The Parquet or Arrow library refused the data (a bug).
    #[error("Parquet encoding of table {table}: {message}")]
    Encode {
        /// Table name.
        table: &'static str,
        /// Library error.
        message: String,
    },
}

/// A row type with a table name and a columnar conversion.
pub trait TableRow {
    /// Directory name of the table.
    const TABLE: &'static str;
    /// The UTC ms that picks the row's hour partition (documented per table in docs/tables.md).
    fn partition_time(&self) -> i64;
    /// Converts rows into a record batch (column order = documented order).
    ///
    /// # Errors
    /// Arrow errors, which mean a bug in the conversion.
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, arrow_schema::ArrowError>
    where
        Self: Sized;
}

fn utc_millis(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from_iter_values(values).with_timezone("UTC"))
}

fn int64(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(values))
}

fn int32(values: impl Iterator<Item = i32>) -> ArrayRef {
    Arc::new(Int32Array::from_iter_values(values))
}

fn text<T: AsRef<str>>(values: impl Iterator<Item = T>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn optional_text<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(values.collect::<StringArray>())
}

fn flags(values: impl Iterator<Item = bool>) -> ArrayRef {
    Arc::new(values.map(Some).collect::<BooleanArray>())
}

fn optional_utc_millis(values: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(values.collect::<TimestampMillisecondArray>().with_timezone("UTC"))
}

fn optional_int64(values: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(values.collect::<Int64Array>())
}

fn optional_flags(values: impl Iterator<Item = Option<bool>>) -> ArrayRef {
    Arc::new(values.collect::<BooleanArray>())
}

/// Count, sum and p50/p90/p99 columns of a latency sketch, named `{prefix}_count` and so on.
fn latency_columns<R>(rows: &[R], prefix: &str, sketch: impl Fn(&R) -> &LatencySketch) -> Vec<(String, ArrayRef)> {
    let mut columns = vec![
        (format!("{prefix}_count"), int64(rows.iter().map(|r| count(sketch(r).count())))),
        (format!("{prefix}_sum_ms"), int64(rows.iter().map(|r| sketch(r).sum_ms()))),
    ];
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        columns.push((format!("{prefix}_{name}_ms"), optional_int64(rows.iter().map(|r| sketch(r).quantile(q)))));
    }
    columns
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl TableRow for FunnelRow {
    const TABLE: &'static str = "funnel";
    fn partition_time(&self) -> i64 {
        self.window_start
    }
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let step = |step: Step| int64(rows.iter().map(move |r| count(r.counts.visitors_at(step))));
        RecordBatch::try_from_iter([
            ("window_size", text(rows.iter().map(|r| window_label(r.window_ms)))),
            ("window_start", utc_millis(rows.iter().map(|r| r.window_start))),
            ("window_end", utc_millis(rows.iter().map(FunnelRow::window_end))),
            ("source_partition", int32(rows.iter().map(|r| r.partition))),
            ("channel", text(rows.iter().map(|r| channel_label(r.channel)))),
            ("device", text(rows.iter().map(|r| device_label(r.device)))),
            ("events", int64(rows.iter().map(|r| count(r.counts.events)))),
            ("visitors", int64(rows.iter().map(|r| count(r.counts.visitors)))),
            ("page_views", int64(rows.iter().map(|r| count(r.counts.page_views)))),
            ("product_view_visitors", step(Step::ProductView)),
            ("add_to_cart_visitors", step(Step::AddToCart)),
            ("begin_checkout_visitors", step(Step::BeginCheckout)),
            ("purchasing_visitors", step(Step::Purchase)),
        ])
    }
}

impl TableRow for SessionRow {
    const TABLE: &'static str = "sessions";
    fn partition_time(&self) -> i64 {
        self.session_start
    }
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let reached = |step: Step| flags(rows.iter().map(move |r| r.reached[step as usize]));
        RecordBatch::try_from_iter([
            ("window_size", text(rows.iter().map(|r| window_label(r.window_ms)))),
            ("window_start", utc_millis(rows.iter().map(|r| r.window_start))),
            ("session_start", utc_millis(rows.iter().map(|r| r.session_start))),
            ("session_end", utc_millis(rows.iter().map(|r| r.session_end))),
            ("source_partition", int32(rows.iter().map(|r| r.partition))),
            ("visitor_id", text(rows.iter().map(|r| r.visitor_id.as_str()))),
            ("client_session_id", optional_text(rows.iter().map(|r| r.client_session_id.as_deref()))),
            ("channel", text(rows.iter().map(|r| r.channel.as_str()))),
            ("device", text(rows.iter().map(|r| r.device.as_str()))),
            ("landing_page", optional_text(rows.iter().map(|r| r.landing_page.as_deref()))),
            ("events", int64(rows.iter().map(|r| i64::from(r.events)))),
            ("page_views", int64(rows.iter().map(|r| i64::from(r.page_views)))),
            ("duration_ms", int64(rows.iter().map(SessionRow::duration_ms))),
            ("engaged", flags(rows.iter().map(SessionRow::engaged))),
            ("converted", flags(rows.iter().map(SessionRow::converted))),
            ("reached_product_view", reached(Step::ProductView)),
            ("reached_add_to_cart", reached(Step::AddToCart)),
            ("reached_begin_checkout", reached(Step::BeginCheckout)),
            ("reached_purchase", reached(Step::Purchase)),
            ("funnel_depth_in_order", int32(rows.iter().map(|r| i32::from(r.funnel_depth_in_order)))),
        ])
    }
}

impl TableRow for OrdersRow {
    const TABLE: &'static str = "orders";
    fn partition_time(&self) -> i64 {
        self.window_start
    }
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let mut columns: Vec<(String, ArrayRef)> = [
            ("window_size", text(rows.iter().map(|r| window_label(r.window_ms)))),
            ("window_start", utc_millis(rows.iter().map(|r| r.window_start))),
            ("window_end", utc_millis(rows.iter().map(OrdersRow::window_end))),
            ("source_partition", int32(rows.iter().map(|r| r.partition))),
            ("channel", text(rows.iter().map(|r| channel_label(r.channel)))),
            ("currency", text(rows.iter().map(|r| r.currency.as_str()))),
            ("orders_created", int64(rows.iter().map(|r| count(r.counts.created)))),
            ("orders_paid", int64(rows.iter().map(|r| count(r.counts.paid)))),
            ("paid_amount_minor", int64(rows.iter().map(|r| r.counts.paid_amount_minor))),
            ("paying_buyers", int64(rows.iter().map(|r| count(r.counts.paying_buyers())))),
            ("units", int64(rows.iter().map(|r| count(r.counts.units)))),
            ("cancellations", int64(rows.iter().map(|r| count(r.counts.cancellations)))),
            ("refunds", int64(rows.iter().map(|r| count(r.counts.refunds)))),
            ("refund_amount_minor", int64(rows.iter().map(|r| r.counts.refund_amount_minor))),
        ]
        .into_iter()
        .map(|(name, column)| (name.to_owned(), column))
        .collect();
        columns.extend(latency_columns(rows, "created_to_paid", |r| &r.counts.created_to_paid));
        RecordBatch::try_from_iter(columns)
    }
}

impl TableRow for FulfillmentRow {
    const TABLE: &'static str = "fulfillment";
    fn partition_time(&self) -> i64 {
        self.window_start
    }
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let counted = |f: fn(&FulfillmentRow) -> u64| int64(rows.iter().map(move |r| count(f(r))));
        let backlog = |f: fn(&crate::operators::Backlog) -> u64| {
            optional_int64(rows.iter().map(move |r| r.backlog.as_ref().map(|b| count(f(b)))))
        };
        let mut columns: Vec<(String, ArrayRef)> = [
            ("window_size", text(rows.iter().map(|r| window_label(r.window_ms)))),
            ("window_start", utc_millis(rows.iter().map(|r| r.window_start))),
            ("window_end", utc_millis(rows.iter().map(FulfillmentRow::window_end))),
            ("source_partition", int32(rows.iter().map(|r| r.partition))),
            ("carrier", text(rows.iter().map(|r| r.carrier.as_deref().unwrap_or("all")))),
            ("warehouse", text(rows.iter().map(|r| r.warehouse.as_deref().unwrap_or("all")))),
            ("picked_up", counted(|r| r.counts.picked_up)),
            ("delivered", counted(|r| r.counts.delivered)),
            ("failed_attempts", counted(|r| r.counts.failed_attempts)),
            ("exceptions", counted(|r| r.counts.exceptions)),
            ("returns", counted(|r| r.counts.returns)),
            ("ship_promised", counted(|r| r.counts.ship_promised)),
            ("shipped_on_time", counted(|r| r.counts.shipped_on_time)),
            ("deliver_promised", counted(|r| r.counts.deliver_promised)),
            ("delivered_on_time", counted(|r| r.counts.delivered_on_time)),
            ("backlog_orders", backlog(|b| b.orders)),
            ("backlog_past_ship_by", backlog(|b| b.past_ship_by)),
            (
                "oldest_unshipped_age_ms",
                optional_int64(
                    rows.iter()
                        .map(|r| r.backlog.as_ref().and_then(|b| b.oldest_paid_at).map(|paid| r.window_end() - paid)),
                ),
            ),
        ]
        .into_iter()
        .map(|(name, column)| (name.to_owned(), column))
        .collect();
        columns.extend(latency_columns(rows, "paid_to_pickup", |r| &r.counts.paid_to_pickup));
        columns.extend(latency_columns(rows, "pickup_to_delivery", |r| &r.counts.pickup_to_delivery));
        RecordBatch::try_from_iter(columns)
    }
}

impl TableRow for OrderFact {
    const TABLE: &'static str = "order_facts";
    fn partition_time(&self) -> i64 {
        self.closed_at_watermark
    }
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let time = |f: fn(&OrderFact) -> Option<i64>| optional_utc_millis(rows.iter().map(f));
        let name = |f: fn(&OrderFact) -> Option<&str>| optional_text(rows.iter().map(f));
        RecordBatch::try_from_iter([
            ("order_id", text(rows.iter().map(|r| r.order_id.as_str()))),
            ("buyer_id", name(|r| r.buyer_id.as_deref())),
            ("source_partition", int32(rows.iter().map(|r| r.partition))),
            ("channel", text(rows.iter().map(|r| r.channel.as_str()))),
            ("device", text(rows.iter().map(|r| r.device.as_str()))),
            ("region", name(|r| r.region.as_deref())),
            ("currency", name(|r| r.currency.as_deref())),
            ("payment_method", name(|r| r.payment_method.map(|p| p.as_str()))),
            ("warehouse", name(|r| r.warehouse.as_deref())),
            ("carrier", name(|r| r.carrier.as_deref())),
            ("items_subtotal_minor", int64(rows.iter().map(|r| r.items_subtotal_minor))),
            ("discount_minor", int64(rows.iter().map(|r| r.discount_minor))),
            ("shipping_minor", int64(rows.iter().map(|r| r.shipping_minor))),
            ("paid_amount_minor", int64(rows.iter().map(|r| r.paid_amount_minor))),
            ("refunded_amount_minor", int64(rows.iter().map(|r| r.refunded_amount_minor))),
            ("units", int64(rows.iter().map(|r| i64::from(r.units)))),
            ("created_at", time(|r| r.created_at)),
            ("paid_at", time(|r| r.paid_at)),
            ("cancelled_at", time(|r| r.cancelled_at)),
            ("label_created_at", time(|r| r.label_created_at)),
            ("picked_up_at", time(|r| r.picked_up_at)),
            ("delivered_at", time(|r| r.delivered_at)),
            ("returned_at", time(|r| r.returned_at)),
            ("first_exception_at", time(|r| r.first_exception_at)),
            ("last_refund_at", time(|r| r.last_refund_at)),
            ("promised_ship_by", time(|r| r.promised_ship_by)),
            ("promised_deliver_by", time(|r| r.promised_deliver_by)),
            ("failed_attempts", int32(rows.iter().map(|r| i32::from(r.failed_attempts)))),
            ("exceptions", int32(rows.iter().map(|r| i32::from(r.exceptions)))),
            ("shipped_on_time", optional_flags(rows.iter().map(|r| r.shipped_on_time))),
            ("delivered_on_time", optional_flags(rows.iter().map(|r| r.delivered_on_time))),
            ("final_state", text(rows.iter().map(|r| r.final_state))),
            ("closed_reason", text(rows.iter().map(|r| r.closed_reason.as_str()))),
            ("closed_at_watermark", utc_millis(rows.iter().map(|r| r.closed_at_watermark))),
        ])
    }
}

impl TableRow for OrphanShipment {
    const TABLE: &'static str = "orphan_shipments";
    fn partition_time(&self) -> i64 {
        self.closed_at_watermark
    }
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, arrow_schema::ArrowError> {
        RecordBatch::try_from_iter([
            ("order_id", text(rows.iter().map(|r| r.order_id.as_str()))),
            ("source_partition", int32(rows.iter().map(|r| r.partition))),
            ("carrier", optional_text(rows.iter().map(|r| r.carrier.as_deref()))),
            ("warehouse", optional_text(rows.iter().map(|r| r.warehouse.as_deref()))),
            ("first_scan_at", utc_millis(rows.iter().map(|r| r.first_scan_at))),
            ("last_scan_at", utc_millis(rows.iter().map(|r| r.last_scan_at))),
            ("picked_up_at", optional_utc_millis(rows.iter().map(|r| r.picked_up_at))),
            ("delivered_at", optional_utc_millis(rows.iter().map(|r| r.delivered_at))),
            ("closed_reason", text(rows.iter().map(|r| r.closed_reason.as_str()))),
            ("closed_at_watermark", utc_millis(rows.iter().map(|r| r.closed_at_watermark))),
        ])
    }
}

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
    fn partition_time(&self) -> i64 {
        self.event_time + self.behind_watermark_ms
    }
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, arrow_schema::ArrowError> {
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
    /// Message value bytes, as received.
    pub payload: Vec<u8>,
    /// Stable reason code (see `DecodeError::reason`).
    pub reason: &'static str,
    /// Human-readable detail.
    pub detail: String,
}

impl TableRow for DeadLetterRow {
    const TABLE: &'static str = "dead_letters";
    fn partition_time(&self) -> i64 {
        self.rejected_at
    }
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, arrow_schema::ArrowError> {
        RecordBatch::try_from_iter([
            ("rejected_at", utc_millis(rows.iter().map(|r| r.rejected_at))),
            ("topic", text(rows.iter().map(|r| r.topic.as_str()))),
            ("source_partition", int32(rows.iter().map(|r| r.partition))),
            ("source_offset", int64(rows.iter().map(|r| r.offset))),
            ("key", Arc::new(rows.iter().map(|r| r.key.as_deref()).collect::<BinaryArray>())),
            ("payload", Arc::new(BinaryArray::from_iter_values(rows.iter().map(|r| r.payload.as_slice())))),
            ("reason", Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.reason)))),
            ("detail", Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.detail.as_str())))),
        ])
    }
}

/// The Hive partition directory of a UTC ms: `dt=YYYY-MM-DD/hour=HH`.
pub fn hour_partition(ms: i64) -> String {
    let stamp =
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64))
            .to_string();
    format!("dt={}/hour={}", &stamp[..10], &stamp[11..13])
}

/// Start of the UTC hour containing `ms`.
pub fn hour_start(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS) * HOUR_MS
}

const HOUR_MS: i64 = 3_600_000;

/// Staged files wait here, outside every table directory, until they are renamed into place.
pub const STAGING: &str = "_staging";

/// Encoding settings shared by the pipeline and compaction: zstd, statistics per page (min/max
/// for pruning), row groups big enough for scans, and no dictionary for [`UNIQUE_COLUMNS`].
pub fn writer_properties() -> WriterProperties {
    UNIQUE_COLUMNS
        .iter()
        .fold(WriterProperties::builder(), |builder, column| {
            builder.set_column_dictionary_enabled(ColumnPath::from(*column), false)
        })
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(concat!("storepulse ", env!("CARGO_PKG_VERSION")).to_owned())
        .build()
}

/// Columns whose values rarely repeat within a file. Their dictionary would hold every value,
/// as plain encoding does, plus an index per row, and the writer would keep them all in a hash
/// table until the file is done (or until 1 MiB, when it falls back to plain encoding): bytes
/// and memory for nothing. zstd still compresses what the ids share.
const UNIQUE_COLUMNS: [&str; 6] = ["visitor_id", "client_session_id", "order_id", "buyer_id", "event_id", "payload"];

/// Rows per row group: pruning works per row group, so not everything in one, but big enough
/// that metadata stays small.
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Encodes batches (of one schema) as one Parquet file in memory.
///
/// # Errors
/// Arrow or Parquet errors (a bug, or batches of different schemas).
pub fn encode(batches: &[RecordBatch]) -> Result<Vec<u8>, ParquetError> {
    encode_each(batches.iter().cloned().map(Ok))
}

/// Rows converted to Arrow per chunk: bounds the columns held at once, whatever a checkpoint
/// holds, and the file is the same (row groups are cut by [`ROW_GROUP_ROWS`], not by batch).
const ENCODE_CHUNK_ROWS: usize = 8 * 1024;

/// Encodes `rows` as one Parquet file in memory, converting them to Arrow a chunk at a time.
fn encode_rows<R: TableRow>(rows: &[R]) -> Result<Vec<u8>, ParquetError> {
    encode_each(
        rows.chunks(ENCODE_CHUNK_ROWS)
            .map(|chunk| R::to_batch(chunk).and_then(all_nullable).map_err(|e| ParquetError::General(e.to_string()))),
    )
}

/// Writes batches, made as they are needed, into one Parquet file in memory.
fn encode_each(batches: impl Iterator<Item = Result<RecordBatch, ParquetError>>) -> Result<Vec<u8>, ParquetError> {
    let mut writer: Option<ArrowWriter<Vec<u8>>> = None;
    for batch in batches {
        let batch = batch?;
        let writer = match &mut writer {
            Some(writer) => writer,
            None => writer.insert(ArrowWriter::try_new(Vec::new(), batch.schema(), Some(writer_properties()))?),
        };
        writer.write(&batch)?;
    }
    let mut writer = writer.ok_or_else(|| ParquetError::General("no batches to encode".into()))?;
    // The file is written into this buffer at the end: size it once rather than by doublings.
    let expected = writer.in_progress_size();
    writer.inner_mut().reserve(expected + expected / 8 + 4096);
    writer.into_inner()
}

/// Marks every column nullable. Arrow infers nullability from whether a batch happens to hold
/// a null, which would give files of one table different schemas; every file gets the same one.
fn all_nullable(batch: RecordBatch) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let fields: Vec<arrow_schema::Field> =
        batch.schema().fields().iter().map(|field| field.as_ref().clone().with_nullable(true)).collect();
    RecordBatch::try_new(Arc::new(arrow_schema::Schema::new(fields)), batch.columns().to_vec())
}

/// Writes Parquet files to a [`Storage`]: staged first, published by [`publish`].
pub struct ParquetWriter {
    storage: Storage,
    /// Distinguishes files of this process from those of earlier runs and other instances.
    instance: String,
    seq: u64,
}

/// A file written whole under `_staging/` and the partition key it is published to. Checkpoint
/// manifests list these: publishing is a rename, repeated safely after a crash.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StagedFile {
    /// Table name.
    pub table: String,
    /// Where the file waits, under `_staging/`.
    pub staged: String,
    /// Where readers find it once published.
    pub key: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Rows written.
    pub rows: u64,
}

/// The files a flush of one table staged, and the first failure, if any. Rows of failed hours
/// are left in the caller's buffer.
#[derive(Debug, Default)]
pub struct StageOutcome {
    /// Files written under `_staging/`, not yet visible to readers.
    pub staged: Vec<StagedFile>,
    /// Why some rows are still buffered.
    pub error: Option<SinkError>,
}

impl ParquetWriter {
    /// A writer staging into `storage` under a name unique to this process.
    pub fn new(storage: Storage) -> Self {
        let instance =
            format!("{}-{}", crate::config::system_time_ms(std::time::SystemTime::now()), std::process::id());
        Self::with_instance(storage, instance)
    }

    /// A writer whose file names carry `instance`.
    pub fn with_instance(storage: Storage, instance: String) -> Self {
        ParquetWriter { storage, instance, seq: 0 }
    }

    /// Where files go.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Writes the buffered `rows` of table `R::TABLE` under `_staging/INSTANCE/CHECKPOINT/`, one
    /// file per hour partition. Written rows leave `rows`; rows whose file failed stay.
    ///
    /// The rows are encoded where they lie, a chunk at a time, rather than copied per hour and
    /// converted to Arrow all at once: sessions close once a window, so one checkpoint may stage
    /// a whole window's worth, and those copies were a third of that checkpoint's memory peak.
    pub fn stage<R: TableRow>(&mut self, rows: &mut Vec<R>, checkpoint: u64) -> StageOutcome {
        let hour_of = |row: &R| hour_start(row.partition_time());
        // Usually every row is of one hour; across an hour's end, group them (a stable sort keeps
        // each hour's rows in arrival order).
        if rows.windows(2).any(|pair| hour_of(&pair[0]) != hour_of(&pair[1])) {
            rows.sort_by_key(hour_of);
        }
        let mut outcome = StageOutcome::default();
        let mut failed_hours = Vec::new();
        let mut rest = &rows[..];
        while let Some(first) = rest.first() {
            let hour = hour_of(first);
            let (group, after) = rest.split_at(rest.partition_point(|row| hour_of(row) == hour));
            match self.stage_file(hour, group, checkpoint) {
                Ok(staged) => outcome.staged.push(staged),
                Err(error) => {
                    failed_hours.push(hour);
                    outcome.error.get_or_insert(error);
                }
            }
            rest = after;
        }
        rows.retain(|row| failed_hours.contains(&hour_of(row)));
        outcome
    }

    /// Stages and at once publishes `rows` (no checkpoint protects them): for tools and tests.
    ///
    /// # Errors
    /// The first failure; rows of files not staged stay in `rows`.
    pub fn write<R: TableRow>(&mut self, rows: &mut Vec<R>) -> Result<Vec<StagedFile>, SinkError> {
        let outcome = self.stage(rows, 0);
        for file in &outcome.staged {
            publish(&self.storage, file)?;
        }
        match outcome.error {
            Some(error) => Err(error),
            None => Ok(outcome.staged),
        }
    }

    fn stage_file<R: TableRow>(&mut self, hour: i64, rows: &[R], checkpoint: u64) -> Result<StagedFile, SinkError> {
        let data = encode_rows(rows).map_err(|e| SinkError::Encode { table: R::TABLE, message: e.to_string() })?;
        let bytes = data.len() as u64;
        self.seq += 1;
        let name = format!("part-{}-{:06}.parquet", self.instance, self.seq);
        let staged = format!("{STAGING}/{}/{checkpoint:012}/{}-{name}", self.instance, R::TABLE);
        let key = format!("{}/{}/{name}", R::TABLE, hour_partition(hour));
        self.storage.put(&staged, data)?;
        Ok(StagedFile { table: R::TABLE.to_owned(), staged, key, bytes, rows: rows.len() as u64 })
    }
}

/// Makes a staged file visible at its partition key. Idempotent: when the staged file is gone,
/// an earlier attempt published it (and compaction may since have merged it).
///
/// # Errors
/// When the store fails.
pub fn publish(storage: &Storage, file: &StagedFile) -> Result<(), StorageError> {
    match storage.rename(&file.staged, &file.key) {
        Ok(()) => Ok(()),
        Err(_) if !storage.exists(&file.staged)? => Ok(()),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Channel;
    use crate::operators::FunnelCounts;
    use crate::sink::storage::Location;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    #[test]
    fn writes_a_readable_file_and_leaves_no_staging_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(&Location::Local(dir.path().to_path_buf())).expect("storage");
        let mut writer = ParquetWriter::new(storage);
        let row = |window_start| FunnelRow {
            window_ms: 60_000,
            window_start,
            partition: 1,
            channel: Some(Channel::Social),
            device: None,
            counts: FunnelCounts { events: 9, visitors: 7, page_views: 4, step_visitors: [5, 4, 3, 2] },
        };
        // 2026-11-11 00:59 and 01:00 (UTC), and 00:30 again: two hour partitions.
        let (h0, h1) = (1_762_819_200_000, 1_762_822_800_000);
        let mut rows = vec![row(h1 - 60_000), row(h1), row(h0 + 1_800_000)];
        let outcome = writer.stage(&mut rows, 3);
        assert!(outcome.error.is_none() && rows.is_empty());
        assert!(outcome.staged.iter().all(|f| f.staged.starts_with(STAGING) && f.staged.contains("/000000000003/")));
        assert!(writer.storage().list("funnel").expect("list").is_empty(), "nothing visible before publication");
        for file in &outcome.staged {
            publish(writer.storage(), file).expect("publish");
            publish(writer.storage(), file).expect("publishing again is a no-op");
        }
        let keys: Vec<_> = outcome.staged.iter().map(|p| (p.key.rsplit_once('/').expect("dir").0, p.rows)).collect();
        assert_eq!(keys, [("funnel/dt=2025-11-11/hour=00", 2), ("funnel/dt=2025-11-11/hour=01", 1)]);
        for published in &outcome.staged {
            let file = std::fs::File::open(dir.path().join(&published.key)).expect("published file");
            let reader = ParquetRecordBatchReaderBuilder::try_new(file).expect("parquet").build().expect("reader");
            let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().expect("batches");
            assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>() as u64, published.rows);
        }
        assert!(writer.storage().list(STAGING).expect("list").is_empty(), "staging must be empty after publish");
    }

    #[test]
    fn rows_of_many_chunks_and_two_hours_keep_their_order_in_one_row_group_per_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(&Location::Local(dir.path().to_path_buf())).expect("storage");
        let mut writer = ParquetWriter::new(storage);
        let (h0, h1) = (1_762_819_200_000, 1_762_822_800_000);
        let n = 2 * ENCODE_CHUNK_ROWS + 5;
        // Hours interleaved; the partition column numbers the rows in arrival order.
        let mut rows: Vec<FunnelRow> = (0..n)
            .map(|i| FunnelRow {
                window_ms: 60_000,
                window_start: if i % 3 == 0 { h1 } else { h0 },
                partition: i32::try_from(i).expect("small"),
                channel: None,
                device: None,
                counts: FunnelCounts::default(),
            })
            .collect();
        let outcome = writer.stage(&mut rows, 1);
        assert!(outcome.error.is_none() && rows.is_empty());
        let mut seen = Vec::new();
        for file in &outcome.staged {
            let bytes = std::fs::read(dir.path().join(&file.staged)).expect("staged file");
            let builder = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes)).expect("parquet");
            assert_eq!(builder.metadata().num_row_groups(), 1, "chunks are not row groups");
            let mut partitions = Vec::new();
            for batch in builder.build().expect("reader") {
                let batch = batch.expect("batch");
                let column = batch.column_by_name("source_partition").expect("column");
                let values = column.as_any().downcast_ref::<Int32Array>().expect("int32");
                partitions.extend(values.values().iter().copied());
            }
            assert_eq!(partitions.len() as u64, file.rows);
            assert!(partitions.is_sorted(), "arrival order within the hour");
            seen.extend(partitions);
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..i32::try_from(n).expect("small")).collect::<Vec<_>>(), "every row once");
    }

    #[test]
    fn ids_are_written_without_a_dictionary_and_labels_with_one() {
        let rows: Vec<SessionRow> = (0..2_000)
            .map(|i| SessionRow {
                window_start: 0,
                window_ms: 60_000,
                session_start: i,
                session_end: i + 5_000,
                partition: 0,
                visitor_id: format!("v-{i:08}"),
                client_session_id: Some(format!("s-{i:08}")),
                channel: Channel::ALL[i as usize % Channel::ALL.len()],
                device: crate::event::Device::ALL[0],
                landing_page: None,
                events: 3,
                page_views: 2,
                reached: [true, false, false, false],
                funnel_depth_in_order: 1,
            })
            .collect();
        let bytes = bytes::Bytes::from(encode_rows(&rows).expect("encode"));
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).expect("parquet");
        let group = builder.metadata().row_group(0);
        let has_dictionary = |name: &str| {
            let column = group.columns().iter().find(|c| c.column_path().string() == name).expect("column");
            column.dictionary_page_offset().is_some()
        };
        assert!(!has_dictionary("visitor_id") && !has_dictionary("client_session_id"), "unique ids: plain");
        assert!(has_dictionary("channel"), "a label of few values keeps its dictionary");
        let read: usize = builder.build().expect("reader").map(|b| b.expect("batch").num_rows()).sum();
        assert_eq!(read, rows.len());
    }

    #[test]
    fn a_failed_write_keeps_the_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("lake");
        let mut writer = ParquetWriter::new(Storage::open(&Location::Local(root.clone())).expect("storage"));
        // A file where the staging directory should be: every put fails.
        std::fs::write(root.join(STAGING), b"not a directory").expect("blocker");
        let mut rows = vec![DeadLetterRow {
            rejected_at: 0,
            topic: "orders".into(),
            partition: 0,
            offset: 7,
            key: None,
            payload: b"{".to_vec(),
            reason: "malformed",
            detail: "eof".into(),
        }];
        let outcome = writer.stage(&mut rows, 1);
        assert!(outcome.staged.is_empty());
        assert!(outcome.error.expect("error").to_string().contains("_staging"));
        assert_eq!(rows.len(), 1, "rows stay buffered for the next flush");
    }
}
