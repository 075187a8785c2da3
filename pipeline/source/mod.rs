//! The Kafka source: one consumer in the job's group over the three topics, manual offset
//! commits, librdkafka statistics for lag and broker health, and rebalances handed to the
//! processing loop.
//!
//! A rebalance is not applied inside librdkafka's callback: the callback queues it, and the
//! loop checkpoints revoked partitions before [`KafkaSource::release`] and restores assigned
//! ones before [`KafkaSource::accept`] starts them at their checkpointed offsets. The group
//! waits for those calls. Orders and logistics are co-partitioned by `order_id`; the range
//! assignor gives partition *p* of both to the same member as long as they have equally many
//! partitions, so one instance holds both halves of each commerce task.

use crate::config::Settings;
use crate::telemetry::{Health, Metrics};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Rebalances waiting for the processing loop.
    pending: Mutex<VecDeque<PendingRebalance>>,
    /// Whether rebalances wait for the loop; off while the consumer closes, so closing applies
    /// them at once.
    defer: AtomicBool,
}

/// A rebalance the group is waiting for this member to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingRebalance {
    /// These partitions are now this member's (eager protocol: the whole new assignment).
    Assign(Vec<TopicPartition>),
    /// These partitions must be released.
    Revoke(Vec<TopicPartition>),
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

impl SourceContext {
    fn record_assign(&self, partitions: &[TopicPartition]) {
        let mut assignment = lock(&self.assignment);
        assignment.extend(partitions.iter().cloned());
        tracing::info!(partitions = partitions.len(), "partitions assigned");
        self.health.set_assigned(!assignment.is_empty());
        self.assignment_version.fetch_add(1, Ordering::Release);
    }

    fn record_revoke(&self, partitions: &[TopicPartition]) {
        let mut assignment = lock(&self.assignment);
        for tp in partitions {
            let _ = self.metrics.consumer_lag.remove_label_values(&[tp.0.as_str(), &tp.1.to_string()]);
            lock(&self.high_watermarks).remove(tp);
            assignment.remove(tp);
        }
        tracing::info!(partitions = partitions.len(), "partitions revoked");
        self.health.set_assigned(!assignment.is_empty());
        self.assignment_version.fetch_add(1, Ordering::Release);
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect()
}

impl ConsumerContext for SourceContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let partitions = partitions_of(tpl);
        let event = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => PendingRebalance::Assign(partitions),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => PendingRebalance::Revoke(partitions),
            other => {
                tracing::error!(error = ?other, "rebalance failed; releasing the assignment");
                PendingRebalance::Revoke(partitions)
            }
        };
        if self.defer.load(Ordering::Acquire) {
            lock(&self.pending).push_back(event);
            return;
        }
        let result = match &event {
            PendingRebalance::Assign(partitions) => consumer.assign(tpl).map(|()| self.record_assign(partitions)),
            PendingRebalance::Revoke(partitions) => consumer.unassign().map(|()| self.record_revoke(partitions)),
        };
        if let Err(error) = result {
            tracing::error!(%error, "applying a rebalance failed");
        }
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
            pending: Mutex::new(VecDeque::new()),
            defer: AtomicBool::new(false),
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

    /// From now on, rebalances wait in [`KafkaSource::next_rebalance`] until the caller applies
    /// them with [`KafkaSource::accept`] or [`KafkaSource::release`].
    pub fn defer_rebalances(&self) {
        self.consumer.context().defer.store(true, Ordering::Release);
    }

    /// The oldest rebalance waiting to be applied.
    pub fn next_rebalance(&self) -> Option<PendingRebalance> {
        lock(&self.consumer.context().pending).pop_front()
    }

    /// Applies an assignment, starting each partition at its offset in `start` (from a
    /// checkpoint) or, when absent, at the group's committed offset.
    ///
    /// # Errors
    /// When librdkafka refuses the assignment.
    pub fn accept(&self, partitions: &[TopicPartition], start: &BTreeMap<TopicPartition, i64>) -> KafkaResult<()> {
        let mut tpl = TopicPartitionList::new();
        for tp in partitions {
            let offset = start.get(tp).map_or(Offset::Stored, |o| Offset::Offset(*o));
            tpl.add_partition_offset(&tp.0, tp.1, offset)?;
        }
        self.consumer.assign(&tpl)?;
        self.consumer.context().record_assign(partitions);
        Ok(())
    }

    /// Moves the position of an assigned partition.
    ///
    /// # Errors
    /// When librdkafka refuses or the partition is not assigned.
    pub fn seek(&self, tp: &TopicPartition, offset: i64) -> KafkaResult<()> {
        self.consumer.seek(&tp.0, tp.1, Offset::Offset(offset), Duration::from_secs(5))
    }

    /// Releases revoked partitions.
    ///
    /// # Errors
    /// When librdkafka refuses.
    pub fn release(&self, partitions: &[TopicPartition]) -> KafkaResult<()> {
        self.consumer.unassign()?;
        self.consumer.context().record_revoke(partitions);
        Ok(())
    }

    /// Pauses (or resumes) fetching from every assigned partition; polling goes on serving
    /// rebalances and statistics.
    ///
    /// # Errors
    /// When librdkafka refuses.
    pub fn set_paused(&self, paused: bool) -> KafkaResult<()> {
        let assignment = self.consumer.assignment()?;
        if paused { self.consumer.pause(&assignment) } else { self.consumer.resume(&assignment) }
    }

    /// Whether the group took the assignment away without a revocation this member could act
    /// on (session timeout): another member may already own it, so nothing may be committed.
    pub fn assignment_lost(&self) -> bool {
        self.consumer.assignment_lost()
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

    /// Commits `positions` (next offset to consume per partition) synchronously. Only offsets a
    /// checkpoint covers are committed; they serve lag monitoring and tools.
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

impl Drop for KafkaSource {
    fn drop(&mut self) {
        // Closing the consumer revokes through the callback, which must then apply at once.
        self.consumer.context().defer.store(false, Ordering::Release);
        for event in std::iter::from_fn(|| self.next_rebalance()) {
            if let PendingRebalance::Revoke(partitions) = event {
                let _ = self.release(&partitions);
            }
        }
    }
}
