//! What the process costs, read from Linux's `/proc`: CPU time (all threads, so librdkafka's
//! fetcher threads count too; or the calling thread alone), resident set and its peak.

/// `USER_HZ`: the unit of the CPU times in `/proc/*/stat`, 100 on every Linux architecture
/// storepulse runs on.
const TICKS_PER_SECOND: f64 = 100.0;

fn cpu_seconds_of(stat_path: &str) -> f64 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc(5); `fields[0]` is field 3.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / TICKS_PER_SECOND
}

/// CPU seconds (user + system) of the whole process so far.
pub fn process_cpu_seconds() -> f64 {
    cpu_seconds_of("/proc/self/stat")
}

/// CPU seconds (user + system) of the calling thread so far.
pub fn thread_cpu_seconds() -> f64 {
    cpu_seconds_of("/proc/thread-self/stat")
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
/// mode and the allocator's options from the environment (mimalloc reads `MIMALLOC_*` at
/// start). Huge pages and the delay before freed pages go back to the OS trade CPU against
/// resident memory (BENCHMARKS.md, eighth round).
pub fn memory_settings() -> String {
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    describe_memory_settings(&thp, std::env::vars())
}

fn describe_memory_settings(thp_file: &str, vars: impl Iterator<Item = (String, String)>) -> String {
    // The file lists every mode and brackets the one in force: `always [madvise] never`.
    let thp = thp_file
        .split_whitespace()
        .find_map(|mode| mode.strip_prefix('[').and_then(|m| m.strip_suffix(']')))
        .unwrap_or("unknown");
    let mut options: Vec<String> =
        vars.filter(|(name, _)| name.starts_with("MIMALLOC_")).map(|(name, value)| format!("{name}={value}")).collect();
    options.sort();
    let allocator = if options.is_empty() {
        "mimalloc defaults (huge pages allowed, freed pages returned after 1 s)".to_owned()
    } else {
        format!("mimalloc with {}", options.join(" "))
    };
    format!("transparent huge pages {thp}; allocator {allocator}")
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
        // Both are in clock ticks, each rounded on its own, and other test threads allocate
        // between two reads: compare with a tick's slack, and only require figures.
        assert!(process_cpu_seconds() + 0.05 >= thread_cpu_seconds());
        assert!(rss_bytes() > 0 && peak_rss_bytes() > 0);
    }

    #[test]
    fn memory_settings_name_the_huge_page_mode_and_the_allocator_options() {
        let vars = |pairs: &[(&str, &str)]| {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<Vec<_>>().into_iter()
        };
        assert_eq!(
            describe_memory_settings("always [madvise] never\n", vars(&[("HOME", "/root")])),
            "transparent huge pages madvise; allocator mimalloc defaults (huge pages allowed, freed pages returned after 1 s)"
        );
        assert_eq!(
            describe_memory_settings("", vars(&[("MIMALLOC_PURGE_DELAY", "0"), ("MIMALLOC_ALLOW_THP", "0")])),
            "transparent huge pages unknown; allocator mimalloc with MIMALLOC_ALLOW_THP=0 MIMALLOC_PURGE_DELAY=0"
        );
    }
}
