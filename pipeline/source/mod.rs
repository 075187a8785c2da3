//! The Kafka source: one consumer in the job's group over the three topics, manual offset
//! commits, librdkafka statistics for lag and broker health, and rebalance tracking.

use crate::config::Settings;
use crate::telemetry::{Health, Metrics};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// A topic-partition.
pub type TopicPartition = (String, i32);

/// Callbacks librdkafka runs on the polling thread: statistics, errors, rebalances.
pub struct SourceContext {
    health: Arc<Health>,
    metrics: Metrics,
    brokers: String,
    assignment: Mutex<BTreeSet<TopicPartition>>,
    assignment_version: AtomicU64,
    high_watermarks: Mutex<HashMap<TopicPartition, i64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded maps stay consistent even if a holder panicked; keep serving.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ClientContext for SourceContext {
    fn stats(&self, stats: Statistics) {
        let up = stats.brokers.values().any(|b| b.state == "UP");
        self.health.set_brokers_up(up);
        self.metrics.kafka_connected.set(i64::from(up));
        let assignment = lock(&self.assignment).clone();
        let mut highs = lock(&self.high_watermarks);
        for (topic_name, topic) in &stats.topics {
            for (partition, p) in &topic.partitions {
                let tp = (topic_name.clone(), *partition);
                if *partition < 0 || !assignment.contains(&tp) || p.hi_offset < 0 {
                    continue;
                }
                highs.insert(tp, p.hi_offset);
                let lag = if p.consumer_lag >= 0 { p.consumer_lag } else { p.hi_offset - p.lo_offset.max(0) };
                self.metrics.consumer_lag.with_label_values(&[topic_name.as_str(), &partition.to_string()]).set(lag);
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::AllBrokersDown)) {
            self.health.set_brokers_up(false);
            self.metrics.kafka_connected.set(0);
            tracing::warn!(brokers = %self.brokers, %reason, "all Kafka brokers are down; retrying");
        } else {
            tracing::warn!(brokers = %self.brokers, %error, %reason, "Kafka client error");
        }
    }
}

impl ConsumerContext for SourceContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut assignment = lock(&self.assignment);
        match rebalance {
            Rebalance::Assign(tpl) => {
                for e in tpl.elements() {
                    assignment.insert((e.topic().to_owned(), e.partition()));
                }
                tracing::info!(partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                for e in tpl.elements() {
                    let tp = (e.topic().to_owned(), e.partition());
                    let _ = self.metrics.consumer_lag.remove_label_values(&[tp.0.as_str(), &tp.1.to_string()]);
                    lock(&self.high_watermarks).remove(&tp);
                    assignment.remove(&tp);
                }
                tracing::info!(partitions = tpl.count(), "partitions revoked");
            }
            Rebalance::Error(error) => tracing::error!(%error, "rebalance failed"),
        }
        self.health.set_assigned(!assignment.is_empty());
        self.assignment_version.fetch_add(1, Ordering::Release);
    }
}

/// The job's consumer.
pub struct KafkaSource {
    consumer: BaseConsumer<SourceContext>,
}

impl KafkaSource {
    /// Creates the consumer and subscribes to the three input topics.
    ///
    /// # Errors
    /// When librdkafka refuses the configuration (the message names the setting).
    pub fn connect(settings: &Settings, metrics: Metrics, health: Arc<Health>) -> Result<Self, KafkaError> {
        let mut config = ClientConfig::new();
        config
            .set("client.id", "storepulse")
            // Range assignment gives co-partitioned orders/logistics partitions to one member.
            .set("partition.assignment.strategy", "range")
            .set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", "1000");
        for (key, value) in &settings.kafka_client {
            config.set(key, value);
        }
        config
            .set("bootstrap.servers", &settings.brokers)
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let context = SourceContext {
            health,
            metrics,
            brokers: settings.brokers.clone(),
            assignment: Mutex::new(BTreeSet::new()),
            assignment_version: AtomicU64::new(0),
            high_watermarks: Mutex::new(HashMap::new()),
        };
        let consumer: BaseConsumer<SourceContext> = config.create_with_context(context)?;
        let topics =
            [settings.topics.clickstream.as_str(), settings.topics.orders.as_str(), settings.topics.logistics.as_str()];
        consumer.subscribe(&topics)?;
        Ok(KafkaSource { consumer })
    }

    /// The underlying consumer, for polling.
    pub fn consumer(&self) -> &BaseConsumer<SourceContext> {
        &self.consumer
    }

    /// Partitions currently assigned to this instance.
    pub fn assignment(&self) -> BTreeSet<TopicPartition> {
        lock(&self.consumer.context().assignment).clone()
    }

    /// Increases on every rebalance.
    pub fn assignment_version(&self) -> u64 {
        self.consumer.context().assignment_version.load(Ordering::Acquire)
    }

    /// Latest known high watermark of each assigned partition (from statistics).
    pub fn high_watermarks(&self) -> HashMap<TopicPartition, i64> {
        lock(&self.consumer.context().high_watermarks).clone()
    }

    /// For each assigned partition, where consumption starts (committed offset, else the log
    /// start) and the current end of the log.
    ///
    /// # Errors
    /// When the broker does not answer within `timeout`.
    pub fn start_and_end_offsets(&self, timeout: Duration) -> Result<BTreeMap<TopicPartition, (i64, i64)>, KafkaError> {
        let committed = self.consumer.committed(timeout)?;
        let mut out = BTreeMap::new();
        for e in committed.elements() {
            let (low, high) = self.consumer.fetch_watermarks(e.topic(), e.partition(), timeout)?;
            let start = match e.offset() {
                Offset::Offset(o) => o.max(low),
                _ => low,
            };
            out.insert((e.topic().to_owned(), e.partition()), (start, high));
        }
        Ok(out)
    }

    /// Commits `positions` (next offset to consume per partition) synchronously.
    ///
    /// # Errors
    /// When the group coordinator refuses or cannot be reached; the caller retries later.
    pub fn commit(&self, positions: &BTreeMap<TopicPartition, i64>) -> Result<(), KafkaError> {
        if positions.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in positions {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        self.consumer.commit(&tpl, CommitMode::Sync)
    }
}
