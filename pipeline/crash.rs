//! Crash and stall points: named places where the process can be made to die at once, as by
//! `kill -9`, or to hang for a while, as on a call that does not return, so that the
//! end-to-end tests can act exactly between two writes whose order the recovery depends on (a
//! kill at a random moment rarely lands there), or wedge the processing loop.
//!
//! `STOREPULSE_CRASH_AT=<name>` aborts the process the first time it reaches point `<name>`;
//! `STOREPULSE_STALL_AT=<name>:<seconds>[:<nth>]` sleeps there that long, once: the first time
//! the point is reached, or the nth (a loop that runs healthy for a while before it wedges).
//! Unset, a point costs two loads of cached values.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The variable naming the point to die at.
pub const VARIABLE: &str = "STOREPULSE_CRASH_AT";

/// The variable naming the point to hang at, and for how long.
pub const STALL_VARIABLE: &str = "STOREPULSE_STALL_AT";

/// Dies here if `STOREPULSE_CRASH_AT` names `point`; hangs here once if `STOREPULSE_STALL_AT`
/// does.
pub fn point(point: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    static STALL: OnceLock<Option<Stall>> = OnceLock::new();
    static REACHED: AtomicU32 = AtomicU32::new(0);
    if AT.get_or_init(|| std::env::var(VARIABLE).ok()).as_deref() == Some(point) {
        eprintln!("storepulse: crashing at {point} ({VARIABLE})");
        std::process::abort();
    }
    let stall = STALL.get_or_init(|| Stall::parse(&std::env::var(STALL_VARIABLE).ok()?));
    if let Some(stall) = stall
        && stall.point == point
        && REACHED.fetch_add(1, Ordering::Relaxed) == stall.nth - 1
    {
        eprintln!("storepulse: stalling {} s at {point} ({STALL_VARIABLE})", stall.duration.as_secs());
        std::thread::sleep(stall.duration);
    }
}

/// A parsed `STOREPULSE_STALL_AT`.
#[derive(Debug, PartialEq)]
struct Stall {
    point: String,
    duration: Duration,
    /// Which arrival at the point stalls, from 1.
    nth: u32,
}

impl Stall {
    /// `<name>:<seconds>[:<nth>]`; anything else stalls nowhere.
    fn parse(value: &str) -> Option<Stall> {
        let mut parts = value.split(':');
        let point = parts.next()?.to_owned();
        let duration = Duration::from_secs(parts.next()?.parse().ok()?);
        let nth = parts.next().map_or(Some(1), |n| n.parse().ok().filter(|&n| n > 0))?;
        parts.next().is_none().then_some(Stall { point, duration, nth })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_names_its_point_duration_and_arrival() {
        let stall =
            |point: &str, secs, nth| Some(Stall { point: point.into(), duration: Duration::from_secs(secs), nth });
        assert_eq!(Stall::parse("checkpoint-committed:25"), stall("checkpoint-committed", 25, 1));
        assert_eq!(Stall::parse("checkpoint-committed:90:2"), stall("checkpoint-committed", 90, 2));
        for bad in ["checkpoint-committed", "a:b", "a:5:0", "a:5:x", "a:5:2:1", ""] {
            assert_eq!(Stall::parse(bad), None, "{bad}");
        }
    }
}
