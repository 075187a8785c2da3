//! Consumer lag, measured on a thread of its own: the high watermark of each assigned partition,
//! asked of the broker every second, minus the next offset the processing loop will handle.
//! Apart from the loop, the figure keeps rising when the loop stops consuming (paused on a
//! schema-registry outage, wedged), which is when an SRE needs it; librdkafka's statistics
//! arrive only while the loop polls.

use super::{SourceContext, TopicPartition, lock};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often lag is measured.
const EVERY: Duration = Duration::from_secs(1);

/// The measuring thread; stopped and joined on drop.
pub(super) struct LagWatcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LagWatcher {
    /// Starts measuring the partitions `context` has assigned, with a client of `config`
    /// (it never subscribes, so it never joins the group).
    pub(super) fn start(
        config: &ClientConfig,
        context: Arc<SourceContext>,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let client: BaseConsumer = config.create()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("consumer-lag".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    measure(&client, &context, &stopping);
                    while started.elapsed() < EVERY && !stopping.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
            .map_err(|e| rdkafka::error::KafkaError::ClientCreation(e.to_string()))?;
        Ok(LagWatcher { stop, thread: Some(thread) })
    }
}

impl Drop for LagWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One round: ends of the log first (network, no lock held), then the gauges of partitions
/// still assigned, under the assignment's lock so that a revoked partition's series stays gone.
/// A stop ends the round between partitions: with the broker gone each one waits out its
/// timeout, and a shutdown should not wait for all of them.
fn measure(client: &BaseConsumer, context: &SourceContext, stop: &AtomicBool) {
    let assigned: Vec<TopicPartition> = lock(&context.assignment).iter().cloned().collect();
    let mut bounds: HashMap<TopicPartition, (i64, i64)> = HashMap::new();
    for (topic, partition) in assigned {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(low_high) = client.fetch_watermarks(&topic, partition, EVERY) {
            bounds.insert((topic, partition), low_high);
        }
    }
    let assignment = lock(&context.assignment);
    let positions = lock(&context.positions);
    for (tp, (low, high)) in bounds.iter().filter(|(tp, _)| assignment.contains(*tp)) {
        let position = positions.get(tp).copied().unwrap_or(*low);
        let labels = [tp.0.as_str(), &tp.1.to_string()];
        context.metrics.consumer_lag.with_label_values(&labels).set((high - position).max(0));
    }
}
