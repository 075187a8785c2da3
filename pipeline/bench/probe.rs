//! What the process costs: CPU time from `getrusage` (all threads, so librdkafka's fetcher
//! threads count too; or the calling thread alone), resident set and its peak from Linux's
//! `/proc`.

use nix::sys::resource::{UsageWho, getrusage};

/// User + system CPU seconds of `who`, to the microsecond. (`/proc/*/stat` counts in 10 ms
/// ticks, which a short phase can round to nothing.)
fn cpu_seconds_of(who: UsageWho) -> f64 {
    let Ok(usage) = getrusage(who) else { return 0.0 };
    [usage.user_time(), usage.system_time()].iter().map(|t| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6).sum()
}

/// CPU seconds (user + system) of the whole process so far, including its ended threads.
pub fn process_cpu_seconds() -> f64 {
    cpu_seconds_of(UsageWho::RUSAGE_SELF)
}

/// CPU seconds (user + system) of the calling thread so far.
pub fn thread_cpu_seconds() -> f64 {
    cpu_seconds_of(UsageWho::RUSAGE_THREAD)
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// Resident set size, bytes: what the allocator really took from the OS, slack included.
pub fn rss_bytes() -> u64 {
    status_kib("VmRSS:") * 1024
}

/// Peak resident set size since start or the last [`reset_peak_rss`], bytes.
pub fn peak_rss_bytes() -> u64 {
    status_kib("VmHWM:") * 1024
}

/// Restarts the peak at the current resident set, so each phase reports its own peak.
/// Returns false where the kernel does not allow it (the peak then spans earlier phases).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// One line about the machine: CPU model, cores, memory.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|v| v.split_once(':')).map(|(_, m)| m.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    format!("{model}, {cores} cores available, {:.1} GiB memory", mem_kib as f64 / (1024.0 * 1024.0))
}

/// The memory settings the figures depend on, one line: the machine's transparent huge pages
/// mode, how long the allocator keeps freed memory (storepulse's default or the environment's)
/// and any other `MIMALLOC_*` options from the environment. Huge pages and the delay before
/// freed pages go back to the OS trade CPU against resident memory (docs/bench-log.md).
pub fn memory_settings() -> String {
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    describe_memory_settings(&thp, crate::allocator::purge_delay_ms(), std::env::vars())
}

fn describe_memory_settings(
    thp_file: &str,
    purge_delay_ms: i64,
    vars: impl Iterator<Item = (String, String)>,
) -> String {
    // The file lists every mode and brackets the one in force: `always [madvise] never`.
    let thp = thp_file
        .split_whitespace()
        .find_map(|mode| mode.strip_prefix('[').and_then(|m| m.strip_suffix(']')))
        .unwrap_or("unknown");
    let returned = match purge_delay_ms {
        i64::MIN..=-1 => "never returned".to_owned(),
        0 => "returned at once".to_owned(),
        ms if ms % 1000 == 0 => format!("returned after {} s", ms / 1000),
        ms => format!("returned after {ms} ms"),
    };
    let mut options: Vec<String> =
        vars.filter(|(name, _)| name.starts_with("MIMALLOC_")).map(|(name, value)| format!("{name}={value}")).collect();
    options.sort();
    let environment = if options.is_empty() { String::new() } else { format!(" (environment: {})", options.join(" ")) };
    format!("transparent huge pages {thp}; allocator mimalloc, freed memory {returned}{environment}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work_and_memory_is_reported() {
        let before = thread_cpu_seconds();
        let mut x = 0u64;
        let started = std::time::Instant::now();
        // Spin until this thread has 0.1 s of CPU; on a loaded machine that takes longer than
        // 0.1 s, so the deadline is generous. Broken accounting never gets there.
        while thread_cpu_seconds() - before < 0.1 && started.elapsed() < std::time::Duration::from_secs(20) {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            }
        }
        assert_ne!(x, 1);
        assert!(thread_cpu_seconds() - before >= 0.1, "spinning shows as CPU time");
        // The process's time includes this thread's, read a moment earlier.
        assert!(process_cpu_seconds() >= thread_cpu_seconds() - 0.001);
        // Fine-grained: the first change seen is far below a 10 ms tick.
        for read in [thread_cpu_seconds, process_cpu_seconds] {
            let start = read();
            let mut now = start;
            while now == start {
                now = read();
            }
            assert!(now - start < 0.005, "CPU time moved by {} s at once", now - start);
        }
        assert!(rss_bytes() > 0 && peak_rss_bytes() > 0);
    }

    #[test]
    fn memory_settings_name_the_huge_page_mode_and_the_allocator_options() {
        let vars = |pairs: &[(&str, &str)]| {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<Vec<_>>().into_iter()
        };
        assert_eq!(
            describe_memory_settings("always [madvise] never\n", 120_000, vars(&[("HOME", "/root")])),
            "transparent huge pages madvise; allocator mimalloc, freed memory returned after 120 s"
        );
        assert_eq!(
            describe_memory_settings("", 0, vars(&[("MIMALLOC_PURGE_DELAY", "0"), ("MIMALLOC_ALLOW_THP", "0")])),
            "transparent huge pages unknown; allocator mimalloc, freed memory returned at once \
             (environment: MIMALLOC_ALLOW_THP=0 MIMALLOC_PURGE_DELAY=0)"
        );
        assert!(describe_memory_settings("", -1, vars(&[])).ends_with("freed memory never returned"));
        assert!(describe_memory_settings("", 250, vars(&[])).ends_with("freed memory returned after 250 ms"));
    }
}
