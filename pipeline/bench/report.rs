//! The benchmark's printed table.

use super::stats::{PhaseFigures, spread, trend};
use super::{BenchReport, PROCESSING_ROUNDS};
use std::fmt::Write as _;

const MB: f64 = 1024.0 * 1024.0;

fn phase_row(out: &mut String, name: &str, figures: Option<&PhaseFigures>) {
    let Some(f) = figures else { return };
    let _ = writeln!(
        out,
        "{name:<34} {:>12.0} {:>14.2} {:>16.0} {:>12.0}",
        f.events_per_sec(),
        f.cpu_seconds_per_million(),
        f.events_per_cpu_second(),
        f.peak_rss as f64 / MB
    );
}

/// A throughput phase shorter than this is dominated by the consumer's start-up (joining the
/// group, first fetches), so its ratio says little.
const SHORTEST_MEANINGFUL_PHASE: std::time::Duration = std::time::Duration::from_secs(2);

impl BenchReport {
    /// The figures as a table, with the targets beside them.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "machine: {}", self.machine);
        let _ = writeln!(out, "memory:  {}", self.memory_settings);
        let _ = writeln!(out, "broker:  {}", self.broker);
        let _ = writeln!(
            out,
            "events:  {} pre-produced (Avro, Confluent framing, Double 11 mix) in {:.1} s\n",
            self.produced,
            self.produce_time.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "{:<34} {:>12} {:>14} {:>16} {:>12}",
            "phase", "events/s", "CPU-s per M", "events per CPU-s", "peak RSS MB"
        );
        phase_row(&mut out, "1 ceiling: consume + decode", self.ceiling.as_ref());
        phase_row(&mut out, "2 full pipeline", self.pipeline.as_ref());
        phase_row(&mut out, "3 processing only (in memory)", self.processing.as_ref());
        if let (Some(full), Some(ceiling)) = (&self.pipeline, &self.ceiling) {
            let _ = writeln!(
                out,
                "\nfull pipeline / ceiling: {:.1} % of events/s (target >= 90 %), {:.2}x the CPU per event",
                100.0 * full.events_per_sec() / ceiling.events_per_sec(),
                full.cpu_seconds_per_million() / ceiling.cpu_seconds_per_million()
            );
            if ceiling.wall < SHORTEST_MEANINGFUL_PHASE {
                let _ = writeln!(
                    out,
                    "  (the ceiling took {:.1} s: phases this short measure start-up, not throughput; use --events 1000000 or more, with --brokers)",
                    ceiling.wall.as_secs_f64()
                );
            }
            let r = &self.pipeline_report;
            let _ = writeln!(
                out,
                "full pipeline did: {} events, {} windows closed, {} Parquet files, {} checkpoints",
                r.decoded, r.windows_closed, r.files, r.checkpoints
            );
        }
        if let Some(p) = &self.processing {
            let _ = writeln!(
                out,
                "processing only: {:.0} events per CPU-second in a fresh process (target >= 1,000,000)",
                p.events_per_cpu_second()
            );
        }
        if let Some((slowest, fastest)) = self.processing_range {
            let _ = writeln!(
                out,
                "  the median of {PROCESSING_ROUNDS} rounds over the same events; slowest {slowest:.0}, fastest {fastest:.0}"
            );
        }
        if let Some(here) = &self.processing_here {
            let _ = writeln!(
                out,
                "  the same in this process after phases 1-2: {:.0} events per CPU-second",
                here.events_per_cpu_second()
            );
        }
        if let Some((direct, general)) = self.decode {
            let _ = writeln!(
                out,
                "decode only: {direct:.0} events per CPU-second direct (with validation), {general:.0} through apache-avro's Value path ({:.1}x)",
                direct / general.max(1e-9)
            );
        }
        if let Some(l) = &self.latency {
            let _ = writeln!(
                out,
                "\nlatency at {:.0} messages/s in real time (1 s windows, no lateness; {} events after warm-up):",
                l.rate, l.events
            );
            let _ = writeln!(
                out,
                "  sent -> its window's gauge    p50 {:>7.0} ms   p99 {:>7.0} ms (includes waiting for the window to end)",
                l.event_p50_ms, l.event_p99_ms
            );
            let _ = writeln!(
                out,
                "  window end -> gauge           p50 {:>7.0} ms   p99 {:>7.0} ms",
                l.close_p50_ms, l.close_p99_ms
            );
        }
        if let Some((order, session)) = self.memory {
            let _ = writeln!(
                out,
                "\nmemory: {order:.0} bytes per open order (target <= 256), {session:.0} bytes per open session"
            );
        }
        if !self.soak.is_empty() {
            let _ = writeln!(out, "\nsoak: resident set over time (peak and floor of each interval)");
            let _ = writeln!(
                out,
                "{:>8} {:>12} {:>13} {:>12} {:>12} {:>14}",
                "at s", "RSS peak MB", "RSS floor MB", "consumed", "open orders", "open sessions"
            );
            for s in &self.soak {
                let _ = writeln!(
                    out,
                    "{:>8.0} {:>12.1} {:>13.1} {:>12} {:>12} {:>14}",
                    s.at.as_secs_f64(),
                    s.rss as f64 / MB,
                    s.rss_floor as f64 / MB,
                    s.consumed,
                    s.open_orders,
                    s.open_sessions
                );
            }
            // Intervals that end after the warm-up.
            let settled: Vec<&super::SoakSample> = self.soak.iter().filter(|s| s.at > self.soak_warm_up).collect();
            let rss: Vec<u64> = settled.iter().map(|s| s.rss).collect();
            let floors: Vec<u64> = settled.iter().map(|s| s.rss_floor).collect();
            if let (Some(peaks), Some(floors)) = (spread(&rss), spread(&floors)) {
                let _ = writeln!(
                    out,
                    "RSS after the first {:.0} s: the interval peaks vary by {:.1} % (target: within 10 %), the floors by {:.1} %",
                    self.soak_warm_up.as_secs_f64(),
                    100.0 * peaks,
                    100.0 * floors
                );
            }
            // The spread includes the swing of state closing in batches; the trend is what a leak moves.
            if let Some(trend) = trend(&rss) {
                let _ = writeln!(
                    out,
                    "RSS trend after warm-up: the last third's mean peak is {:+.1} % from the first third's",
                    100.0 * trend
                );
            }
            // Set the growth of the resident set against what the state opened meanwhile costs.
            if let (Some(first), Some(last), Some((per_order, per_session))) =
                (settled.first(), settled.last(), self.memory)
            {
                let state = (last.open_orders - first.open_orders) as f64 * per_order
                    + (last.open_sessions - first.open_sessions) as f64 * per_session;
                let _ = writeln!(
                    out,
                    "RSS grew {:.1} MB after warm-up; the state opened meanwhile accounts for {:.1} MB",
                    (last.rss as f64 - first.rss as f64) / MB,
                    state / MB
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_table_shows_each_phase_and_the_ratio() {
        let phase = |events_per_sec: u64, cpu: f64| PhaseFigures {
            events: events_per_sec * 2,
            wall: Duration::from_secs(2),
            cpu_seconds: cpu,
            peak_rss: 64 << 20,
        };
        let report = BenchReport {
            ceiling: Some(phase(500_000, 1.0)),
            pipeline: Some(phase(450_000, 1.5)),
            processing: Some(phase(2_000_000, 2.0)),
            processing_range: Some((1_900_000.0, 2_150_000.4)),
            memory: Some((231.4, 480.0)),
            ..BenchReport::default()
        };
        let text = report.render();
        assert!(text.contains("full pipeline / ceiling: 90.0 %"), "{text}");
        assert!(text.contains("1.67x the CPU per event"), "{text}");
        assert!(text.contains("processing only: 2000000 events per CPU-second"), "{text}");
        assert!(text.contains("median of 5 rounds over the same events; slowest 1900000, fastest 2150000"), "{text}");
        assert!(text.contains("231 bytes per open order"), "{text}");
        assert!(!text.contains("phases this short"), "two-second phases are long enough: {text}");
        let short = BenchReport {
            ceiling: Some(PhaseFigures { wall: Duration::from_millis(400), ..phase(500_000, 1.0) }),
            ..report
        };
        assert!(short.render().contains("the ceiling took 0.4 s: phases this short"), "{}", short.render());
    }
}
