//! Parquet tables. Rows are buffered per table and written as one zstd-compressed file per
//! flush; each file is written under `_staging/` and renamed into its table directory, so a
//! reader never sees a partial file.

use crate::operators::{
    FulfillmentRow, FunnelRow, LatencySketch, OrderFact, OrdersRow, OrphanShipment, SessionRow, Step, channel_label,
    device_label,
};
use crate::telemetry::window_label;
use arrow_array::{
    ArrayRef, BinaryArray, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A failed Parquet write. The rows stay buffered and the write is retried at the next flush.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Creating, writing, syncing or renaming a file failed (disk full, permissions, ...).
    #[error("Parquet I/O on {path}: {source}")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
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

/// Writes Parquet files under a root directory.
pub struct ParquetWriter {
    root: PathBuf,
    /// Distinguishes files of this process from those of earlier runs.
    run_id: String,
    seq: u64,
}

/// What one published file holds.
#[derive(Debug, Clone)]
pub struct Published {
    /// Table name.
    pub table: &'static str,
    /// Final path.
    pub path: PathBuf,
    /// Size in bytes.
    pub bytes: u64,
    /// Rows written.
    pub rows: usize,
}

impl ParquetWriter {
    /// A writer publishing under `root`.
    pub fn new(root: &Path) -> Self {
        let run_id = format!("{}-{}", crate::config::system_time_ms(std::time::SystemTime::now()), std::process::id());
        ParquetWriter { root: root.to_path_buf(), run_id, seq: 0 }
    }

    /// Writes `rows` as one file of table `R::TABLE` and publishes it atomically.
    /// Nothing is written for no rows.
    ///
    /// # Errors
    /// [`SinkError`] when the file cannot be written or published; nothing is published then.
    pub fn write<R: TableRow>(&mut self, rows: &[R]) -> Result<Option<Published>, SinkError> {
        if rows.is_empty() {
            return Ok(None);
        }
        let encode = |message: String| SinkError::Encode { table: R::TABLE, message };
        let batch = R::to_batch(rows).map_err(|e| encode(e.to_string()))?;
        let staging_dir = self.root.join("_staging");
        let table_dir = self.root.join(R::TABLE);
        for dir in [&staging_dir, &table_dir] {
            std::fs::create_dir_all(dir).map_err(|source| SinkError::Io { path: dir.clone(), source })?;
        }
        self.seq += 1;
        let name = format!("part-{}-{:06}.parquet", self.run_id, self.seq);
        let staged = staging_dir.join(format!("{}-{name}", R::TABLE));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SinkError::Io { path, source }
        };
        let file = File::create(&staged).map_err(io(&staged))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).map_err(|e| encode(e.to_string()))?))
            .build();
        let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(|e| encode(e.to_string()))?;
        writer.write(&batch).map_err(|e| encode(e.to_string()))?;
        let file = writer.into_inner().map_err(|e| encode(e.to_string()))?;
        file.sync_all().map_err(io(&staged))?;
        let bytes = file.metadata().map_err(io(&staged))?.len();
        drop(file);
        let path = table_dir.join(name);
        std::fs::rename(&staged, &path).map_err(io(&path))?;
        Ok(Some(Published { table: R::TABLE, path, bytes, rows: rows.len() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Channel;
    use crate::operators::FunnelCounts;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    #[test]
    fn writes_a_readable_file_and_leaves_no_staging_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut writer = ParquetWriter::new(dir.path());
        let rows = vec![FunnelRow {
            window_ms: 60_000,
            window_start: 0,
            partition: 1,
            channel: Some(Channel::Social),
            device: None,
            counts: FunnelCounts { events: 9, visitors: 7, page_views: 4, step_visitors: [5, 4, 3, 2] },
        }];
        let published = writer.write(&rows).expect("write").expect("non-empty");
        assert_eq!(published.rows, 1);
        let file = File::open(&published.path).expect("published file");
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).expect("parquet").build().expect("reader");
        let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().expect("batches");
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);
        let staging: Vec<_> = std::fs::read_dir(dir.path().join("_staging")).expect("staging dir").collect();
        assert!(staging.is_empty(), "staging must be empty after publish");
    }
}
