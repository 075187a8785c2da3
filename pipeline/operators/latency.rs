//! A mergeable latency sketch with a relative error bound (the DDSketch idea): values fall in
//! logarithmic buckets `(γ^(i-1), γ^i]` with `γ = (1 + α) / (1 − α)`, so any quantile it returns
//! is within `α` (1 %) of the true value at that rank. Sketches of partitions and windows merge
//! by adding bucket counts, which plain percentiles cannot do.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Relative accuracy of every quantile: the returned value is within 1 % of the exact one.
pub const RELATIVE_ACCURACY: f64 = 0.01;

fn gamma_ln() -> f64 {
    ((1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)).ln()
}

/// Durations in milliseconds; count and sum are exact, quantiles within [`RELATIVE_ACCURACY`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySketch {
    /// Values ≤ 0 ms (a clock skew between systems makes some negative; they count as zero).
    zero: u64,
    buckets: BTreeMap<i32, u64>,
    count: u64,
    sum_ms: i64,
}

impl LatencySketch {
    /// Adds one duration.
    pub fn record(&mut self, ms: i64) {
        self.count += 1;
        self.sum_ms = self.sum_ms.saturating_add(ms);
        if ms <= 0 {
            self.zero += 1;
        } else {
            let index = ((ms as f64).ln() / gamma_ln()).ceil() as i32;
            *self.buckets.entry(index).or_default() += 1;
        }
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &LatencySketch) {
        self.zero += other.zero;
        self.count += other.count;
        self.sum_ms = self.sum_ms.saturating_add(other.sum_ms);
        for (index, n) in &other.buckets {
            *self.buckets.entry(*index).or_default() += n;
        }
    }

    /// Number of values.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Exact sum of the values, ms.
    pub fn sum_ms(&self) -> i64 {
        self.sum_ms
    }

    /// The value at rank `floor(q × (count − 1))` (0-based, ascending), within 1 %;
    /// `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<i64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * (self.count - 1) as f64).floor() as u64;
        if rank < self.zero {
            return Some(0);
        }
        let mut seen = self.zero;
        for (index, n) in &self.buckets {
            seen += n;
            if seen > rank {
                // The point of the bucket whose relative distance to both edges is α.
                let gamma = gamma_ln().exp();
                return Some((2.0 * gamma.powi(*index) / (gamma + 1.0)).round() as i64);
            }
        }
        None
    }
}

/// Which latency histogram an observation belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyMetric {
    /// Order created to paid, labelled by channel.
    CreatedToPaid,
    /// Payment to carrier pickup, labelled by warehouse.
    PaidToPickup,
    /// Pickup to delivery, labelled by carrier.
    PickupToDelivery,
}

/// One duration recorded into a window, for the Prometheus histograms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyObservation {
    /// The histogram.
    pub metric: LatencyMetric,
    /// Its label value (channel, warehouse or carrier).
    pub label: String,
    /// The duration, ms.
    pub ms: i64,
}

/// Count, sum and p50/p90/p99 columns of a latency sketch, named `{prefix}_count` and so on.
pub(super) fn latency_columns<R>(
    rows: &[R],
    prefix: &str,
    sketch: impl Fn(&R) -> &LatencySketch,
) -> Vec<(String, arrow_array::ArrayRef)> {
    use crate::table::columns::{count, int64, optional_int64};
    let mut columns = vec![
        (format!("{prefix}_count"), int64(rows.iter().map(|r| count(sketch(r).count())))),
        (format!("{prefix}_sum_ms"), int64(rows.iter().map(|r| sketch(r).sum_ms()))),
    ];
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        columns.push((format!("{prefix}_{name}_ms"), optional_int64(rows.iter().map(|r| sketch(r).quantile(q)))));
    }
    columns
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn quantiles_are_within_the_stated_error_and_merging_equals_one_sketch(
            values in prop::collection::vec(0i64..400_000_000, 1..400),
            split in 0usize..400,
            q in 0.0f64..=1.0,
        ) {
            let mut whole = LatencySketch::default();
            let (mut left, mut right) = (LatencySketch::default(), LatencySketch::default());
            for (i, v) in values.iter().enumerate() {
                whole.record(*v);
                if i < split { left.record(*v) } else { right.record(*v) }
            }
            left.merge(&right);
            prop_assert_eq!(&left, &whole);
            let mut sorted = values.clone();
            sorted.sort_unstable();
            let exact = sorted[(q * (sorted.len() - 1) as f64).floor() as usize];
            let estimate = whole.quantile(q).expect("non-empty sketch");
            // One extra millisecond covers rounding the estimate to whole milliseconds.
            prop_assert!((estimate - exact).abs() as f64 <= RELATIVE_ACCURACY * exact as f64 + 1.0,
                "q {} exact {} estimate {}", q, exact, estimate);
            prop_assert_eq!(whole.sum_ms(), values.iter().sum::<i64>());
        }
    }

    #[test]
    fn empty_has_no_quantile_and_non_positive_values_count_as_zero() {
        let mut sketch = LatencySketch::default();
        assert_eq!(sketch.quantile(0.5), None);
        sketch.record(-5);
        sketch.record(0);
        sketch.record(1_000);
        assert_eq!(sketch.quantile(0.0), Some(0));
        assert_eq!(sketch.quantile(0.5), Some(0));
        assert!((sketch.quantile(1.0).expect("non-empty sketch") - 1_000).abs() <= 10);
    }
}
