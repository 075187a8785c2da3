//! The optional dead-letter topic: rejected messages are produced there raw, with the reason
//! and their origin in headers. The dead-letter Parquet table is written regardless, so a
//! delivery failure here loses nothing; it is counted and logged.

use crate::table::DeadLetterRow;
use crate::telemetry::Metrics;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};

/// Counts and logs deliveries the dead-letter topic refused.
pub struct DeliveryReport {
    metrics: Metrics,
    topic: String,
}

impl ClientContext for DeliveryReport {}

impl ProducerContext for DeliveryReport {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            self.metrics.dead_letter_publish_errors.with_label_values(&[&self.topic]).inc();
            tracing::error!(topic = %self.topic, %error, "dead-letter topic refused a message; it is kept in the dead_letters table");
        }
    }
}

/// Producer for the dead-letter topic.
pub struct DeadLetterTopic {
    producer: ThreadedProducer<DeliveryReport>,
    topic: String,
}

/// Where a rejected message came from and why.
pub struct Rejected<'a> {
    /// Source topic.
    pub topic: &'a str,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Message key.
    pub key: Option<&'a [u8]>,
    /// Message value.
    pub payload: &'a [u8],
    /// Reason code.
    pub reason: &'static str,
}

impl Rejected<'_> {
    /// Its row of the `dead_letters` table: rejected at `rejected_at` (wall ms), with `detail`,
    /// keeping at most `keep_bytes` of the payload (with the whole one's length and hash), so
    /// that junk cannot fill memory while it waits for a checkpoint.
    pub fn row(&self, rejected_at: i64, detail: String, keep_bytes: usize) -> DeadLetterRow {
        let digest = openssl::sha::sha256(self.payload);
        DeadLetterRow {
            rejected_at,
            topic: self.topic.to_owned(),
            partition: self.partition,
            offset: self.offset,
            key: self.key.map(|key| key[..key.len().min(keep_bytes)].to_vec()),
            payload: self.payload[..self.payload.len().min(keep_bytes)].to_vec(),
            payload_length: self.payload.len(),
            payload_sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
            reason: self.reason,
            detail,
        }
    }
}

impl DeadLetterRow {
    /// Bytes it holds beyond its fixed size: what a flood of junk makes grow.
    pub fn held_bytes(&self) -> usize {
        self.payload.len() + self.key.as_ref().map_or(0, Vec::len) + self.detail.len() + self.topic.len()
    }
}

impl DeadLetterTopic {
    /// A producer for `topic` on `brokers`, with the job's pass-through client settings.
    ///
    /// # Errors
    /// When librdkafka refuses the configuration.
    pub fn new<'a>(
        brokers: &str,
        client: impl IntoIterator<Item = (&'a str, &'a str)>,
        topic: &str,
        metrics: Metrics,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let mut config = ClientConfig::new();
        for (k, v) in client {
            config.set(k, v);
        }
        config.set("bootstrap.servers", brokers).set("enable.idempotence", "true").set("linger.ms", "50");
        let producer = config.create_with_context(DeliveryReport { metrics, topic: topic.to_owned() })?;
        Ok(DeadLetterTopic { producer, topic: topic.to_owned() })
    }

    /// Queues one rejected message. A full local queue is counted as a publish error.
    pub fn send(&self, rejected: &Rejected<'_>, metrics: &Metrics) {
        let partition = rejected.partition.to_string();
        let offset = rejected.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header { key: "storepulse.reason", value: Some(rejected.reason) })
            .insert(Header { key: "storepulse.source.topic", value: Some(rejected.topic) })
            .insert(Header { key: "storepulse.source.partition", value: Some(&partition) })
            .insert(Header { key: "storepulse.source.offset", value: Some(&offset) });
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(&self.topic).payload(rejected.payload).headers(headers);
        if let Some(key) = rejected.key {
            record = record.key(key);
        }
        if let Err((error, _)) = self.producer.send(record) {
            metrics.dead_letter_publish_errors.with_label_values(&[&self.topic]).inc();
            tracing::error!(topic = %self.topic, %error, "cannot queue dead letter; it is kept in the dead_letters table");
        }
    }

    /// Waits up to `timeout` for queued dead letters to be delivered.
    pub fn flush(&self, timeout: std::time::Duration) {
        if let Err(error) = rdkafka::producer::Producer::flush(&self.producer, timeout) {
            tracing::warn!(topic = %self.topic, %error, "dead-letter topic flush incomplete");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_keeps_a_capped_payload_with_the_whole_ones_length_and_hash() {
        let payload = vec![7u8; 900_000];
        let rejected = Rejected {
            topic: "orders",
            partition: 1,
            offset: 42,
            key: Some(b"k"),
            payload: &payload,
            reason: "unframed_payload",
        };
        let row = rejected.row(0, "junk".into(), 65_536);
        assert_eq!((row.payload.len(), row.payload_length), (65_536, 900_000));
        // sha256sum of the whole payload, as `python3 -c "hashlib.sha256(bytes([7]) * 900000)"` gives it.
        assert_eq!(row.payload_sha256, "8ada33f4b53b335a6b4caabb0339cef62b25865941a4a7f3d713494f66a4ea1a");
        assert!(row.held_bytes() < 66_000, "what waits for a checkpoint is the kept part only");
        let small = Rejected { payload: b"{", ..rejected };
        assert_eq!(small.row(0, String::new(), 65_536).payload, b"{");
    }
}
