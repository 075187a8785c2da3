//! Memory held per open order (and per open session): fills the state with realistic orders
//! (created, paid, label printed; about half picked up) and sessions, and prints the heap bytes
//! the process's resident set grew by per entry (allocator overhead and hash-table slack
//! included). Run with `cargo bench --bench open_state`.

mod fixtures;

use fixtures::{T0, order_event};
use storepulse::event::{Channel, ClickEvent, ClickEventType, Device, OrderEventType, ShipmentEvent, ShipmentStatus};
use storepulse::operators::{OrderBook, Retention, SessionOperator};

/// Resident set size, bytes: what the allocator really took from the OS, slack included.
fn live() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn scan(status: ShipmentStatus, i: u64, t: i64) -> ShipmentEvent {
    ShipmentEvent {
        event_id: format!("l-{i}-{}", status.as_str()),
        status,
        event_time: t,
        order_id: format!("ord-{i:010}"),
        shipment_id: format!("SF{i:012}"),
        carrier: ["sf", "zto", "jd", "yto"][(i % 4) as usize].into(),
        warehouse: ["WH-HZ1", "WH-SH2", "WH-GZ1", "WH-CD1"][(i % 4) as usize].into(),
        region: None,
        carrier_status_code: None,
        exception_reason: None,
    }
}

fn bytes_per_open_order(n: u64) -> f64 {
    let before = live();
    let retention =
        Retention { terminal_ttl_ms: i64::MAX / 4, open_timeout_ms: i64::MAX / 4, orphan_after_ms: i64::MAX / 4 };
    let mut book = OrderBook::new(0, retention);
    for i in 0..n {
        let t = T0 + i as i64 * 10;
        book.apply_order(&order_event(OrderEventType::Created, i, t));
        book.apply_order(&order_event(OrderEventType::Paid, i, t + 20_000));
        book.apply_scan(&scan(ShipmentStatus::LabelCreated, i, t + 2_400_000), true);
        if i % 2 == 0 {
            book.apply_scan(&scan(ShipmentStatus::PickedUp, i, t + 4 * 3_600_000), true);
        }
    }
    assert_eq!(book.open_orders() as u64, n);
    let bytes = (live() - before) as f64 / n as f64;
    drop(book);
    bytes
}

fn bytes_per_open_session(n: u64) -> f64 {
    let before = live();
    let mut sessions = SessionOperator::new(0, 1_800_000, 6 * 3_600_000, 60_000, 0);
    for i in 0..n {
        let t = T0 + i as i64;
        for (k, kind) in
            [ClickEventType::PageView, ClickEventType::ProductView, ClickEventType::AddToCart].into_iter().enumerate()
        {
            let mut click =
                ClickEvent::new(format!("c-{i}-{k}"), kind, t + k as i64 * 5_000, format!("v-{i:010}"), Device::App);
            click.session_id = Some(format!("s-{i:010}"));
            click.channel = Some(Channel::PaidSearch);
            click.page = Some("/p/123".into());
            let _ = sessions.record(&click);
        }
    }
    assert_eq!(sessions.open_sessions() as u64, n);
    let bytes = (live() - before) as f64 / n as f64;
    drop(sessions);
    bytes
}

/// Each figure comes from a fresh process: memory freed by one measurement would otherwise be
/// reused by the next and make it look smaller.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, kind, n] = &args[..]
        && let Ok(n) = n.parse::<u64>()
    {
        let bytes = if kind == "order" { bytes_per_open_order(n) } else { bytes_per_open_session(n) };
        println!("{bytes:.0}");
        return;
    }
    let measure = |kind: &str, n: u64| {
        let exe = std::env::current_exe().expect("the bench binary knows its path");
        let out =
            std::process::Command::new(exe).args([kind, &n.to_string()]).output().expect("the bench re-runs itself");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    println!("{:>12}  {:>22}  {:>24}", "open", "bytes per open order", "bytes per open session");
    for n in [250_000, 1_000_000, 2_000_000] {
        println!("{n:>12}  {:>22}  {:>24}", measure("order", n), measure("session", n));
    }
    println!(
        "(resident bytes per entry, allocator overhead and hash-table slack included; target: at most 256 per open order)"
    );
}
