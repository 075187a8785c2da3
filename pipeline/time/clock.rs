//! Reading the wall clock on the hot path: one monotonic reading per message serves both the
//! loop's timers and the message's wall time.

use super::system_time_ms;
use std::time::{Instant, SystemTime};

/// The wall clock derived from a monotonic reading, so that the loop reads one clock per
/// message for its timers and the message's wall time. Read again every tick, so it follows
/// steps of the system clock within 200 ms.
pub struct WallClock {
    at: Instant,
    ms: i64,
}

impl WallClock {
    /// Reads both clocks now.
    pub fn read() -> Self {
        WallClock { at: Instant::now(), ms: system_time_ms(SystemTime::now()) }
    }

    /// Wall-clock ms at `instant`, taken at or after this reading.
    pub fn ms_at(&self, instant: Instant) -> i64 {
        let since = instant.saturating_duration_since(self.at).as_millis();
        self.ms.saturating_add(i64::try_from(since).unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_wall_clock_follows_the_monotonic_reading_from_its_anchor() {
        let clock = WallClock::read();
        assert!((clock.ms - system_time_ms(SystemTime::now())).abs() < 1_000, "anchored to the system clock");
        assert_eq!(clock.ms_at(clock.at + Duration::from_millis(1_500)), clock.ms + 1_500);
        // A reading from before the anchor (a message polled just before a tick) is the anchor.
        let earlier = clock.at.checked_sub(Duration::from_millis(5)).unwrap_or(clock.at);
        assert_eq!(clock.ms_at(earlier), clock.ms);
    }
}
