//! How dimension values are written where users meet them: the same text in a Parquet column
//! and in a Prometheus label, so that a query and an alert name a value alike.

use crate::event::{Channel, Device};

/// The value of a dimension in its exact subtotal row or series: every channel, every device,
/// every carrier or every warehouse together.
pub const TOTAL: &str = "all";

/// The value an over-budget or unknown data-driven label folds into.
pub const OTHER: &str = "other";

/// The label of a row's channel: the channel symbol, or [`TOTAL`].
pub fn channel_label(channel: Option<Channel>) -> &'static str {
    channel.map_or(TOTAL, Channel::as_str)
}

/// The label of a row's device: the device symbol, or [`TOTAL`].
pub fn device_label(device: Option<Device>) -> &'static str {
    device.map_or(TOTAL, Device::as_str)
}

/// A data-driven dimension (carrier, warehouse) of a row: its value, or [`TOTAL`].
pub fn value_or_total(value: Option<&str>) -> &str {
    value.unwrap_or(TOTAL)
}

/// Carriers exported to Prometheus by name; others fold into [`OTHER`] to bound the label set.
pub const CARRIER_LABELS: &[&str] = &["sf", "jd", "zto", "yto", "yunda", "sto", "ems", "best", "deppon", "cainiao"];

/// The `carrier` label of a carrier code.
pub fn carrier_label(carrier: &str) -> &str {
    CARRIER_LABELS.iter().find(|c| **c == carrier).copied().unwrap_or(OTHER)
}

/// The `window` labels of several window sizes.
pub fn window_labels(sizes_ms: &[i64]) -> Vec<String> {
    sizes_ms.iter().map(|ms| window_label(*ms)).collect()
}

/// The `window` label of a window size: `1m`, `1h`, otherwise seconds (`90s`).
pub fn window_label(window_ms: i64) -> String {
    let secs = window_ms / 1000;
    if secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_and_window_sizes_read_as_in_tables_and_alerts() {
        assert_eq!(channel_label(None), "all");
        assert_eq!(channel_label(Some(Channel::LiveStream)), "live_stream");
        assert_eq!(device_label(None), TOTAL);
        assert_eq!(value_or_total(Some("WH-1")), "WH-1");
        assert_eq!(carrier_label("sf"), "sf");
        assert_eq!(carrier_label("a-new-carrier"), OTHER);
        assert_eq!(window_labels(&[60_000, 3_600_000, 90_000, 7_000]), ["1m", "1h", "90s", "7s"]);
    }
}
