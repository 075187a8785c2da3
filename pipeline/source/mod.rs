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
//!
//! Messages leave the source as [`Record`]s, after [`resume`] has checked that a resumed
//! partition starts at its checkpointed offset.

mod lag;
mod resume;

pub use resume::{RESUME_SILENCE, Resumes, Verdict};

use crate::config::Settings;
use crate::telemetry::{Health, LogLimit, Metrics};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// A topic-partition.
pub type TopicPartition = (String, i32);

/// The orders and logistics topics have different partition counts: the shipments of order
/// partition *p* would reach another task, and the facts joined from them would be wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "topics {orders:?} ({orders_partitions} partitions) and {logistics:?} ({logistics_partitions} partitions) \
     must have equally many partitions: shipments are joined to their orders partition by partition"
)]
pub struct NotCoPartitioned {
    /// The orders topic.
    pub orders: String,
    /// Its partitions.
    pub orders_partitions: usize,
    /// The logistics topic.
    pub logistics: String,
    /// Its partitions.
    pub logistics_partitions: usize,
}

/// Whether topics `orders` and `logistics` with these partition counts (`None`: unknown yet)
/// are co-partitioned as far as is known.
pub fn co_partitioned(
    (orders, orders_partitions): (&str, Option<usize>),
    (logistics, logistics_partitions): (&str, Option<usize>),
) -> Result<(), NotCoPartitioned> {
    match (orders_partitions, logistics_partitions) {
        (Some(orders_partitions), Some(logistics_partitions)) if orders_partitions != logistics_partitions => {
            Err(NotCoPartitioned {
                orders: orders.to_owned(),
                orders_partitions,
                logistics: logistics.to_owned(),
                logistics_partitions,
            })
        }
        _ => Ok(()),
    }
}

/// Callbacks librdkafka runs on the polling thread: statistics, errors, rebalances.
pub struct SourceContext {
    health: Arc<Health>,
    metrics: Metrics,
    brokers: String,
    assignment: Mutex<BTreeSet<TopicPartition>>,
    assignment_version: AtomicU64,
    high_watermarks: Mutex<HashMap<TopicPartition, i64>>,
    /// The next offset the processing loop will handle, per partition it has handled one of.
    positions: Mutex<HashMap<TopicPartition, i64>>,
    /// Rebalances waiting for the processing loop.
    pending: Mutex<VecDeque<PendingRebalance>>,
    /// Whether rebalances wait for the loop; off while the consumer closes, so closing applies
    /// them at once.
    defer: AtomicBool,
    /// Client errors repeat at every reconnect attempt during an outage: one line per kind.
    error_logs: Mutex<Vec<(Option<RDKafkaErrorCode>, LogLimit)>>,
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
                // Offsets are committed at checkpoints: this one is a sawtooth, kept for what a
                // restart would reprocess. [`lag`] exports the lag from the loop's position.
                let committed = if p.consumer_lag >= 0 { p.consumer_lag } else { p.hi_offset - p.lo_offset.max(0) };
                let labels = [topic_name.as_str(), &partition.to_string()];
                self.metrics.consumer_lag_committed.with_label_values(&labels).set(committed);
                self.metrics.fetch_queue_messages.with_label_values(&labels).set(p.fetchq_cnt);
                let queued_bytes = i64::try_from(p.fetchq_size).unwrap_or(i64::MAX);
                self.metrics.fetch_queue_bytes.with_label_values(&labels).set(queued_bytes);
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        let all_down = code == Some(RDKafkaErrorCode::AllBrokersDown);
        if all_down {
            self.health.set_brokers_up(false);
            self.metrics.kafka_connected.set(0);
        }
        let suppressed = {
            let mut logs = lock(&self.error_logs);
            let index = logs.iter().position(|(seen, _)| *seen == code).unwrap_or_else(|| {
                logs.push((code, LogLimit::default()));
                logs.len() - 1
            });
            logs[index].1.allow()
        };
        let Some(suppressed) = suppressed else { return };
        if all_down {
            tracing::warn!(brokers = %self.brokers, %reason, suppressed, "all Kafka brokers are down; retrying");
        } else {
            tracing::warn!(brokers = %self.brokers, %error, %reason, suppressed, "Kafka client error");
        }
    }
}

impl SourceContext {
    /// Counts and logs `count` offsets from `from` on that are gone from the log unprocessed.
    fn skipped(&self, topic: &str, partition: i32, from: i64, count: i64) {
        self.metrics
            .offsets_skipped
            .with_label_values(&[topic, &partition.to_string()])
            .inc_by(u64::try_from(count).unwrap_or(0));
        tracing::error!(
            topic,
            partition,
            from,
            to = from + count,
            skipped = count,
            "offsets removed from the log before they were processed: their events are lost to storepulse; \
             replay them from elsewhere or accept the gap"
        );
    }

    fn record_assign(&self, partitions: &[TopicPartition]) {
        for (topic, partition) in partitions {
            // Exported at zero, so that a first skip is an increase.
            self.metrics.offsets_skipped.with_label_values(&[topic.as_str(), &partition.to_string()]);
        }
        let mut assignment = lock(&self.assignment);
        assignment.extend(partitions.iter().cloned());
        tracing::info!(partitions = partitions.len(), "partitions assigned");
        self.health.set_assigned(!assignment.is_empty());
        self.assignment_version.fetch_add(1, Ordering::Release);
    }

    fn record_revoke(&self, partitions: &[TopicPartition]) {
        let mut assignment = lock(&self.assignment);
        for tp in partitions {
            let labels = [tp.0.as_str(), &tp.1.to_string()];
            let _ = self.metrics.consumer_lag.remove_label_values(&labels);
            let _ = self.metrics.consumer_lag_committed.remove_label_values(&labels);
            let _ = self.metrics.fetch_queue_messages.remove_label_values(&labels);
            let _ = self.metrics.fetch_queue_bytes.remove_label_values(&labels);
            lock(&self.high_watermarks).remove(tp);
            lock(&self.positions).remove(tp);
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
                tracing::error!(error = %RDKafkaErrorCode::from(other), "rebalance failed; releasing the assignment");
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
    resumes: Resumes,
    _lag: lag::LagWatcher,
}

/// One consumed message.
pub struct Record<'a>(BorrowedMessage<'a>);

impl Record<'_> {
    /// Its topic.
    pub fn topic(&self) -> &str {
        self.0.topic()
    }
    /// Its partition.
    pub fn partition(&self) -> i32 {
        self.0.partition()
    }
    /// Its offset.
    pub fn offset(&self) -> i64 {
        self.0.offset()
    }
    /// Its key, if any.
    pub fn key(&self) -> Option<&[u8]> {
        self.0.key()
    }
    /// Its value; empty when it has none.
    pub fn payload(&self) -> &[u8] {
        self.0.payload().unwrap_or_default()
    }
}

/// What one poll gave.
pub enum Polled<'a> {
    /// A message to handle.
    Message(Record<'a>),
    /// A consumer error, already retried by librdkafka (logged by the caller).
    Error(KafkaError),
    /// Nothing within the timeout, or a message dropped to resume a partition exactly.
    Nothing,
}

/// The consumer's librdkafka configuration: storepulse's defaults, the pass-through client
/// settings over them, and the keys storepulse owns over those.
pub fn client_config(settings: &Settings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("client.id", "storepulse")
        // Range assignment gives co-partitioned orders/logistics partitions to one member.
        .set("partition.assignment.strategy", "range")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "1000");
    for (key, value) in settings.kafka_client.iter() {
        config.set(key, value);
    }
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    config
}

impl KafkaSource {
    /// Creates the consumer and subscribes to the three input topics.
    ///
    /// # Errors
    /// When librdkafka refuses the configuration (the message names the setting).
    pub fn connect(settings: &Settings, metrics: Metrics, health: Arc<Health>) -> Result<Self, KafkaError> {
        let config = client_config(settings);
        let context = SourceContext {
            health,
            metrics,
            brokers: settings.brokers.clone(),
            assignment: Mutex::new(BTreeSet::new()),
            assignment_version: AtomicU64::new(0),
            high_watermarks: Mutex::new(HashMap::new()),
            positions: Mutex::new(HashMap::new()),
            pending: Mutex::new(VecDeque::new()),
            defer: AtomicBool::new(false),
            error_logs: Mutex::new(Vec::new()),
        };
        let consumer: BaseConsumer<SourceContext> = config.create_with_context(context)?;
        let lag = lag::LagWatcher::start(&config, Arc::clone(consumer.context()))?;
        let topics =
            [settings.topics.clickstream.as_str(), settings.topics.orders.as_str(), settings.topics.logistics.as_str()];
        consumer.subscribe(&topics)?;
        Ok(KafkaSource { consumer, resumes: Resumes::default(), _lag: lag })
    }

    /// Waits up to `timeout` for the next message; serves rebalances and statistics meanwhile.
    pub fn poll(&mut self, timeout: Duration) -> Polled<'_> {
        let message = match self.consumer.poll(timeout) {
            None => return Polled::Nothing,
            Some(Err(error)) => return Polled::Error(error),
            Some(Ok(message)) => message,
        };
        let (topic, partition) = (message.topic(), message.partition());
        match self.resumes.check(topic, partition, message.offset(), Instant::now()) {
            Verdict::Deliver => Polled::Message(Record(message)),
            Verdict::Skipped(missing) => {
                self.consumer.context().skipped(topic, partition, message.offset() - missing, missing);
                Polled::Message(Record(message))
            }
            Verdict::SeekBack(offset) => {
                let tp = (topic.to_owned(), partition);
                if Self::seek_back(&self.consumer, &tp, offset) {
                    Polled::Nothing
                } else {
                    self.resumes.give_up(&tp);
                    Polled::Message(Record(message))
                }
            }
        }
    }

    /// Sends back resumed partitions that stayed silent although they have messages; call it
    /// every tick.
    pub fn tick(&mut self) {
        let highs = self.high_watermarks();
        for (tp, offset) in self.resumes.silent(&highs, Instant::now()) {
            if !Self::seek_back(&self.consumer, &tp, offset) {
                self.resumes.give_up(&tp);
            }
        }
    }

    /// Seeks `tp` to `offset`; false when that failed and the partition continues from the
    /// broker's position.
    fn seek_back(consumer: &BaseConsumer<SourceContext>, tp: &TopicPartition, offset: i64) -> bool {
        match consumer.seek(&tp.0, tp.1, Offset::Offset(offset), Duration::from_secs(5)) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, topic = tp.0, partition = tp.1, "seeking back failed; continuing from the broker's position");
                false
            }
        }
    }

    /// Where `tp` can resume when its checkpoint says `next`: there, or at the start of its
    /// log if retention removed `next` already (those offsets are counted and logged as
    /// skipped). A broker that does not answer leaves `next`; the first message tells then.
    fn resume_point(&self, tp: &TopicPartition, next: i64) -> i64 {
        match self.consumer.fetch_watermarks(&tp.0, tp.1, Duration::from_secs(5)) {
            Ok((log_start, _)) if log_start > next => {
                self.consumer.context().skipped(&tp.0, tp.1, next, log_start - next);
                log_start
            }
            Ok(_) => next,
            Err(error) => {
                tracing::warn!(%error, topic = tp.0, partition = tp.1, "cannot read where the log starts; resuming at the checkpoint");
                next
            }
        }
    }

    /// Checks, from the broker's metadata, that `orders` and `logistics` have equally many
    /// partitions. A topic the broker does not describe within `timeout` passes: the next
    /// check asks again.
    ///
    /// # Errors
    /// [`NotCoPartitioned`], naming both topics and their counts.
    pub fn check_co_partitioned(
        &self,
        orders: &str,
        logistics: &str,
        timeout: Duration,
    ) -> Result<(), NotCoPartitioned> {
        let partitions = |topic: &str| {
            let metadata = self.consumer.fetch_metadata(Some(topic), timeout).ok()?;
            let described = metadata.topics().iter().find(|t| t.name() == topic && t.error().is_none())?;
            Some(described.partitions().len()).filter(|n| *n > 0)
        };
        co_partitioned((orders, partitions(orders)), (logistics, partitions(logistics)))
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
    /// checkpoint) or, when absent, at the group's committed offset; the partitions of `start`
    /// are checked to resume exactly there.
    ///
    /// # Errors
    /// When librdkafka refuses the assignment.
    pub fn accept(&mut self, partitions: &[TopicPartition], start: &BTreeMap<TopicPartition, i64>) -> KafkaResult<()> {
        let start: BTreeMap<TopicPartition, i64> =
            start.iter().map(|(tp, next)| (tp.clone(), self.resume_point(tp, *next))).collect();
        let start = &start;
        self.resumes.clear();
        self.resumes.expect(start.iter().map(|(tp, next)| (tp.clone(), *next)), Instant::now());
        let mut tpl = TopicPartitionList::new();
        for tp in partitions {
            let offset = start.get(tp).map_or(Offset::Stored, |o| Offset::Offset(*o));
            tpl.add_partition_offset(&tp.0, tp.1, offset)?;
        }
        self.consumer.assign(&tpl)?;
        self.consumer.context().record_assign(partitions);
        Ok(())
    }

    /// Releases revoked partitions.
    ///
    /// # Errors
    /// When librdkafka refuses.
    pub fn release(&mut self, partitions: &[TopicPartition]) -> KafkaResult<()> {
        self.resumes.clear();
        self.consumer.unassign()?;
        self.consumer.context().record_revoke(partitions);
        Ok(())
    }

    /// Pauses (or resumes) fetching from every assigned partition; polling goes on serving
    /// rebalances and statistics. Resumed partitions fetch from their position again, usually
    /// mid-batch, so they are checked to start at `positions` (what the tasks have seen) as
    /// after an assignment.
    ///
    /// # Errors
    /// When librdkafka refuses.
    pub fn set_paused(&mut self, paused: bool, positions: &BTreeMap<TopicPartition, i64>) -> KafkaResult<()> {
        let assignment = self.consumer.assignment()?;
        if paused {
            return self.consumer.pause(&assignment);
        }
        self.consumer.resume(&assignment)?;
        let assigned = self.assignment();
        let resumed = positions.iter().filter(|(tp, _)| assigned.contains(*tp)).map(|(tp, next)| (tp.clone(), *next));
        self.resumes.expect(resumed, Instant::now());
        Ok(())
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

    /// Records the next offset the loop will handle in each partition, for the lag.
    pub fn set_positions(&self, positions: &BTreeMap<TopicPartition, i64>) {
        let mut known = lock(&self.consumer.context().positions);
        known.clear();
        known.extend(positions.iter().map(|(tp, offset)| (tp.clone(), *offset)));
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

    /// Whether consumption reached a drain's `target` (from [`KafkaSource::start_and_end_offsets`]):
    /// every partition's position is at or past both the end offset read then and the high
    /// watermark of the latest fetch statistics. Both are needed because some Kafka-protocol
    /// brokers (tansu 0.6) answer ListOffsets with the last batch's base offset; the caller
    /// also waits for a quiet second.
    pub fn reached(
        &self,
        target: &BTreeMap<TopicPartition, (i64, i64)>,
        positions: &BTreeMap<TopicPartition, i64>,
    ) -> bool {
        let highs = self.high_watermarks();
        target.iter().all(|(tp, (start, end))| {
            let position = positions.get(tp).copied().unwrap_or(*start);
            position >= *end && highs.get(tp).is_none_or(|high| position >= *high)
        })
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
        while let Some(event) = self.next_rebalance() {
            if let PendingRebalance::Revoke(partitions) = event {
                let _ = self.release(&partitions);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_co_partitioned_unless_both_counts_are_known_and_differ() {
        assert_eq!(co_partitioned(("o", Some(4)), ("l", Some(4))), Ok(()));
        assert_eq!(co_partitioned(("o", Some(4)), ("l", None)), Ok(()), "an unknown topic is asked again later");
        let error = co_partitioned(("o", Some(4)), ("l", Some(2))).expect_err("4 and 2 partitions");
        assert!(error.to_string().contains(r#"topics "o" (4 partitions) and "l" (2 partitions)"#), "{error}");
    }
}
