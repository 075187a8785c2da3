//! The `storepulse` binary: parses the command line and runs it.

use clap::Parser;
use std::io::IsTerminal;
use std::process::ExitCode;
use storepulse::cli::{Cli, LogFormat, run};
use storepulse::config::ConfigError;
use storepulse::runtime::RuntimeError;

// The pipeline allocates and frees a few short strings per event; mimalloc does that in about
// half the CPU of glibc's allocator. Built with `override`, it also serves the C libraries'
// malloc (librdkafka, zstd), whose freed memory glibc's per-thread arenas would keep resident.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // First, while this is the only thread.
    storepulse::allocator::keep_freed_memory_for_reuse();
    let cli = Cli::parse();
    // Dependencies (librdkafka, delta-rs's kernel) log routine work at info.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,storepulse=info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.downcast_ref::<ConfigError>().is_some() => {
            eprintln!("storepulse: invalid configuration: {error}");
            ExitCode::from(2)
        }
        // Topics that contradict the job's contract: a restart cannot help, so not 1.
        Err(error) if matches!(error.downcast_ref::<RuntimeError>(), Some(RuntimeError::NotCoPartitioned(_))) => {
            eprintln!("storepulse: refusing to run: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("storepulse: {error:#}");
            ExitCode::FAILURE
        }
    }
}
