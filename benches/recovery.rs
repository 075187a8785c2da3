//! Recovery time from a checkpoint holding one million open orders: builds a commerce task
//! with that many paid, unshipped orders, commits it to a checkpoint store on local disk, then
//! times what an instance does when the partition is assigned to it (read the catalog, read the
//! state, decode it, rebuild the order index). Prints the median of five restores. Run with
//! `cargo bench --bench recovery [-- ORDERS]`; the target is under 5 seconds for 1,000,000.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use storepulse::bench::memory::{T0, order_event};
use storepulse::checkpoint::{CheckpointStore, Manifest, TaskCheckpoint};
use storepulse::event::{Event, OrderEventType, Stream};
use storepulse::operators::{PartitionTask, TaskId, TaskOutput, builtin};
use storepulse::sink::storage::{Location, Storage};
use storepulse::time::TimeSettings;

fn order(kind: OrderEventType, i: u64, t: i64) -> Event {
    Event::Order(order_event(kind, i, t))
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn main() {
    let orders: u64 = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(1_000_000);
    let (registry, time) = (builtin(), TimeSettings::default());
    let mut task = PartitionTask::new(TaskId::of(Stream::Orders, 0), &registry, &time);
    let mut out = TaskOutput::default();
    for i in 0..orders {
        let t = T0 + i as i64;
        let offset = 2 * i as i64;
        task.process(&order(OrderEventType::Created, i, t), offset, &mut out).expect("an orders task");
        task.process(&order(OrderEventType::Paid, i, t + 1), offset + 1, &mut out).expect("an orders task");
        out = TaskOutput::default();
    }
    assert_eq!(task.report(false).open_orders as u64, orders);

    let dir = tempfile::tempdir().expect("a temporary directory");
    let storage = Storage::open(&Location::Local(dir.path().to_path_buf())).expect("local storage");
    let store = CheckpointStore::new(storage, 900_000);
    let started = Instant::now();
    let snapshot = task.snapshot(0).expect("the state encodes");
    let bytes = snapshot.len();
    let state = store.put_state("commerce-0", 1, snapshot).expect("state written");
    let manifest = Manifest {
        instance: "bench".into(),
        seq: 1,
        written_at_ms: 0,
        tasks: BTreeMap::from([(
            "commerce-0".to_owned(),
            TaskCheckpoint { epoch: 1, state, offsets: BTreeMap::from([("orders".to_owned(), 2 * orders as i64)]) },
        )]),
        files: Vec::new(),
        complete_through: BTreeMap::new(),
    };
    store.commit(&manifest).expect("manifest committed");
    let checkpoint = started.elapsed();

    let restores: Vec<Duration> = (0..5)
        .map(|_| {
            let started = Instant::now();
            let catalog = store.catalog().expect("catalog");
            let latest = catalog.latest("commerce-0").expect("the task's checkpoint");
            let bytes = store.load_state(latest).expect("state read");
            let restored = PartitionTask::restore(&bytes, &registry, &time).expect("decodes");
            assert_eq!(restored.report(false).open_orders as u64, orders);
            started.elapsed()
        })
        .collect();
    let restore = median(restores.clone());
    println!("open orders                 {orders:>12}");
    println!(
        "checkpoint state            {:>12.1} MB ({:.0} bytes per open order)",
        bytes as f64 / 1e6,
        bytes as f64 / orders as f64
    );
    println!("checkpoint (encode + write) {:>12.2} s", checkpoint.as_secs_f64());
    println!("restore, median of 5        {:>12.2} s (all: {:?})", restore.as_secs_f64(), restores);
    println!("target                      {:>12} s", "< 5.00");
}
