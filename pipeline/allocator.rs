//! The allocator's settings, made once at start-up before any thread exists.
//!
//! The binary's allocator is mimalloc, which by default hands freed memory back to the OS about
//! a second after it was freed. The pipeline frees a burst once a minute (the closing windows'
//! Parquet files) and allocates it again a minute later, so with that default its resident set
//! saws up and down by 15–45 % in a steady soak, and every burst is faulted in afresh. A two
//! minute delay still varied 16 %. storepulse therefore keeps freed memory for reuse and never
//! returns it: the resident set is the high-water mark, flat once the state has settled, and a
//! leak still shows as growth because leaked memory is never reused (measurements in
//! docs/bench-log.md). `MIMALLOC_PURGE_DELAY` in the environment overrides this, as mimalloc documents:
//! `MIMALLOC_PURGE_DELAY=1000` gives memory back after a sale's peak, at a saw-toothed RSS.

use std::ffi::{c_int, c_long};

/// How long freed memory stays with the process before it is returned to the OS, in
/// milliseconds; negative is never.
pub const PURGE_DELAY_MS: c_long = -1;

/// `mi_option_purge_delay` in mimalloc 3's option enum (libmimalloc-sys names only the stable
/// options). A test checks the numbering against options with known defaults.
const PURGE_DELAY_OPTION: c_int = 15;

/// The variables mimalloc reads the purge delay from (the second is its older name). It
/// matches environment names without regard to case.
const PURGE_DELAY_VARIABLES: [&str; 2] = ["MIMALLOC_PURGE_DELAY", "MIMALLOC_RESET_DELAY"];

/// Sets storepulse's purge delay unless the environment sets one. Call it first thing in
/// `main`, before any other thread starts: mimalloc's option setter is not thread-safe.
#[allow(unsafe_code)]
pub fn keep_freed_memory_for_reuse() {
    if purge_delay_set_by(std::env::vars_os().map(|(name, _)| name)) {
        return;
    }
    // SAFETY: a plain store into mimalloc's option table, which exists from process start;
    // the caller runs it before other threads exist, so nothing reads the option concurrently.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY_OPTION, PURGE_DELAY_MS) }
}

/// The purge delay in force, in milliseconds (negative: freed memory is never returned).
#[allow(unsafe_code)]
#[allow(clippy::useless_conversion)] // `c_long` is `i64` only on some platforms.
pub fn purge_delay_ms() -> i64 {
    // SAFETY: reads mimalloc's option table; reading an option is always valid.
    i64::from(unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY_OPTION) })
}

fn purge_delay_set_by(names: impl Iterator<Item = std::ffi::OsString>) -> bool {
    names
        .filter_map(|name| name.into_string().ok())
        .any(|name| PURGE_DELAY_VARIABLES.iter().any(|variable| name.eq_ignore_ascii_case(variable)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(unsafe_code)]
    fn option(number: c_int) -> c_long {
        // SAFETY: as in `purge_delay_ms`.
        unsafe { libmimalloc_sys::mi_option_get(number) }
    }

    #[test]
    fn the_option_number_is_mimallocs_purge_delay() {
        // Neighbours with documented defaults pin the enum's numbering: `os_tag` (100) and
        // `max_errors` (32) follow the purge delay at 18 and 19. A renumbered enum moves them.
        assert_eq!((option(PURGE_DELAY_OPTION + 3), option(PURGE_DELAY_OPTION + 4)), (100, 32));
        // Unless this test process was started with the variable, the delay is mimalloc's
        // default (this crate's tests never call the setter).
        if !purge_delay_set_by(std::env::vars_os().map(|(name, _)| name)) {
            assert_eq!(purge_delay_ms(), 1000);
        }
    }

    #[test]
    fn an_explicit_setting_in_any_case_wins() {
        let names = |list: &[&str]| list.iter().map(std::ffi::OsString::from).collect::<Vec<_>>().into_iter();
        assert!(purge_delay_set_by(names(&["HOME", "MIMALLOC_PURGE_DELAY"])));
        assert!(purge_delay_set_by(names(&["mimalloc_reset_delay"])));
        assert!(!purge_delay_set_by(names(&["HOME", "MIMALLOC_ALLOW_THP", "MIMALLOC_PURGE_DELAY_X"])));
    }
}
