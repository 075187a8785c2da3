//! Crash and stall points: named places where the process can be made to die at once, as by
//! `kill -9`, or to hang for a while, as on a call that does not return, so that the
//! end-to-end tests can act exactly between two writes whose order the recovery depends on (a
//! kill at a random moment rarely lands there), or wedge the processing loop.
//!
//! `STOREPULSE_CRASH_AT=<name>` aborts the process the first time it reaches point `<name>`;
//! `STOREPULSE_STALL_AT=<name>:<seconds>` sleeps there that long, once. Unset, a point costs
//! two loads of cached values.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The variable naming the point to die at.
pub const VARIABLE: &str = "STOREPULSE_CRASH_AT";

/// The variable naming the point to hang at, and for how long.
pub const STALL_VARIABLE: &str = "STOREPULSE_STALL_AT";

/// Dies here if `STOREPULSE_CRASH_AT` names `point`; hangs here once if `STOREPULSE_STALL_AT`
/// does.
pub fn point(point: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    static STALL: OnceLock<Option<(String, Duration)>> = OnceLock::new();
    static STALLED: AtomicBool = AtomicBool::new(false);
    if AT.get_or_init(|| std::env::var(VARIABLE).ok()).as_deref() == Some(point) {
        eprintln!("storepulse: crashing at {point} ({VARIABLE})");
        std::process::abort();
    }
    let stall = STALL.get_or_init(|| {
        let value = std::env::var(STALL_VARIABLE).ok()?;
        let (name, secs) = value.rsplit_once(':')?;
        Some((name.to_owned(), Duration::from_secs(secs.parse().ok()?)))
    });
    if let Some((name, duration)) = stall
        && name == point
        && !STALLED.swap(true, Ordering::Relaxed)
    {
        eprintln!("storepulse: stalling {} s at {point} ({STALL_VARIABLE})", duration.as_secs());
        std::thread::sleep(*duration);
    }
}
