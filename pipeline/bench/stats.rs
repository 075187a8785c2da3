//! Pure arithmetic of the benchmark: rates, percentiles, event latencies from window
//! publication times, soak flatness.

use std::collections::BTreeMap;
use std::time::Duration;

/// Cost of one phase over a measured span.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhaseFigures {
    /// Events handled in the span.
    pub events: u64,
    /// Wall time of the span.
    pub wall: Duration,
    /// CPU seconds spent in the span.
    pub cpu_seconds: f64,
    /// Peak resident set during the phase, bytes.
    pub peak_rss: u64,
}

impl PhaseFigures {
    /// Events per wall-clock second.
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// CPU seconds per million events.
    pub fn cpu_seconds_per_million(&self) -> f64 {
        self.cpu_seconds / (self.events as f64 / 1e6).max(1e-9)
    }

    /// Events per CPU second.
    pub fn events_per_cpu_second(&self) -> f64 {
        self.events as f64 / self.cpu_seconds.max(1e-9)
    }
}

/// The `q` quantile (0..=1) of `values` by nearest rank; `None` when empty.
pub fn quantile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = (q * values.len() as f64).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

/// When each window's gauge showed it, from samples of the `window_end` gauge: windows are
/// published in order, so a sample showing end `e` at `t` means every window ending at or
/// before `e` not seen earlier was published by `t` (a sampler can miss values in between).
pub fn publication_times(samples: &[(i64, i64)], window_ms: i64, first_end: i64) -> BTreeMap<i64, i64> {
    let mut published = BTreeMap::new();
    let mut next_end = first_end;
    for &(end, at) in samples {
        while next_end <= end {
            published.insert(next_end, at);
            next_end += window_ms;
        }
    }
    published
}

/// Latency of each event (ms) from its send time (its event time: the traffic is paced in
/// real time) to the publication of its window's gauge; events of unpublished windows or
/// before `from_ms` (warm-up) are left out.
pub fn event_latencies(event_times: &[i64], published: &BTreeMap<i64, i64>, window_ms: i64, from_ms: i64) -> Vec<f64> {
    event_times
        .iter()
        .filter(|t| **t >= from_ms)
        .filter_map(|t| {
            let end = t.div_euclid(window_ms) * window_ms + window_ms;
            published.get(&end).map(|at| (at - t) as f64)
        })
        .collect()
}

/// Largest relative spread `(max - min) / min` of the samples; `None` when empty.
pub fn spread(values: &[u64]) -> Option<f64> {
    let min = *values.iter().min()?;
    let max = *values.iter().max()?;
    Some((max - min) as f64 / (min.max(1)) as f64)
}

/// Relative change from the mean of the first third of the samples to the mean of the last
/// third; `None` with fewer than three samples.
pub fn trend(values: &[u64]) -> Option<f64> {
    let third = values.len() / 3;
    if third == 0 {
        return None;
    }
    let mean = |part: &[u64]| part.iter().map(|v| *v as f64).sum::<f64>() / part.len() as f64;
    let (first, last) = (mean(&values[..third]), mean(&values[values.len() - third..]));
    Some((last - first) / first.max(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trend_compares_the_last_third_with_the_first() {
        assert_eq!(trend(&[100, 100]), None);
        assert_eq!(trend(&[100, 0, 110]), Some(0.1));
        assert_eq!(trend(&[100, 120, 90, 110, 100, 100]), Some(-0.090_909_090_909_090_91));
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut v, 0.5), Some(50.0));
        assert_eq!(quantile(&mut v, 0.99), Some(99.0));
        assert_eq!(quantile(&mut v, 1.0), Some(100.0));
        assert_eq!(quantile(&mut [7.0], 0.99), Some(7.0));
        assert_eq!(quantile(&mut [], 0.5), None);
    }

    #[test]
    fn a_sample_publishes_every_window_up_to_the_end_it_shows() {
        // Sampled at 1_500 (end 2_000), then missed 3_000 and saw 4_000 at 4_300.
        let published = publication_times(&[(2_000, 2_100), (2_000, 2_600), (4_000, 4_300)], 1_000, 1_000);
        assert_eq!(
            published.into_iter().collect::<Vec<_>>(),
            vec![(1_000, 2_100), (2_000, 2_100), (3_000, 4_300), (4_000, 4_300)]
        );
    }

    #[test]
    fn each_event_waits_for_its_window() {
        let published = BTreeMap::from([(2_000, 2_250), (3_000, 3_400)]);
        let latencies = event_latencies(&[999, 1_000, 1_999, 2_500, 3_100], &published, 1_000, 1_000);
        assert_eq!(latencies, vec![1_250.0, 251.0, 900.0], "999 is warm-up; 3_100's window is unpublished");
    }

    #[test]
    fn spread_and_rates() {
        assert_eq!(spread(&[100, 110, 105]), Some(0.1));
        assert_eq!(spread(&[]), None);
        let f = PhaseFigures { events: 2_000_000, wall: Duration::from_secs(4), cpu_seconds: 5.0, peak_rss: 0 };
        assert_eq!(f.events_per_sec(), 500_000.0);
        assert_eq!(f.cpu_seconds_per_million(), 2.5);
        assert_eq!(f.events_per_cpu_second(), 400_000.0);
    }
}
