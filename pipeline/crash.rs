//! Crash points: named places where the process can be made to die at once, as by `kill -9`,
//! so that the end-to-end tests can stop it exactly between two writes whose order the
//! recovery depends on (a kill at a random moment rarely lands there).
//!
//! `STOREPULSE_CRASH_AT=<name>` aborts the process the first time it reaches point `<name>`;
//! unset, a point costs one load of a cached value.

use std::sync::OnceLock;

/// The variable naming the point to die at.
pub const VARIABLE: &str = "STOREPULSE_CRASH_AT";

/// Dies here if `STOREPULSE_CRASH_AT` names `point`.
pub fn point(point: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    if AT.get_or_init(|| std::env::var(VARIABLE).ok()).as_deref() == Some(point) {
        eprintln!("storepulse: crashing at {point} ({VARIABLE})");
        std::process::abort();
    }
}
