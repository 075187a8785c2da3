//! Phase 3 of `storepulse bench` on its own, no broker needed: decode and every operator over
//! generator events already encoded in memory, on one thread, then decoding alone by both paths.
//! The entry point for profiling the operators, e.g.
//! `perf record --call-graph dwarf target/release/deps/processing-*`. Run with
//! `cargo bench --bench processing [-- EVENTS]` (default 1,000,000); the target is 1,000,000
//! events per CPU-second.

use storepulse::bench::{PROCESSING_ROUNDS, load_traffic, processing_only};
use storepulse::config::{RawConfig, Settings};

// The binary's allocator, so that the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let events: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(1_000_000);
    let traffic = load_traffic(events);
    // The default configuration's windows and lateness, as `storepulse bench` uses.
    let settings = Settings::try_from(RawConfig::default()).expect("the default configuration is valid");
    let processing = processing_only(&traffic, 4, &settings.time);
    let (figures, (slowest, fastest), (direct, general)) = (processing.median, processing.range, processing.decode);
    println!(
        "processing only: {} events in {:.2} CPU-s, {:.0} events per CPU-second (target >= 1,000,000), peak RSS {} MB",
        figures.events,
        figures.cpu_seconds,
        figures.events_per_cpu_second(),
        figures.peak_rss >> 20
    );
    println!(
        "  the median of {PROCESSING_ROUNDS} rounds; slowest {slowest:.0}, fastest {fastest:.0} events per CPU-second"
    );
    println!("decode only: {direct:.0} events per CPU-second direct, {general:.0} through apache-avro's Value path");
}
