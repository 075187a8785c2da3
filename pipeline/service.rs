//! Starting a pipeline as a service: its metrics, health flags and HTTP endpoint, and the
//! processing loop on a thread of its own. Every command that runs the pipeline (`run`, `demo`,
//! `bench`) starts it here.

use crate::config::Settings;
use crate::operators::Registry;
use crate::runtime::{Control, ControlHandle, Options, Pipeline, RunReport, RuntimeError};
use crate::sink::http;
use crate::source::KafkaSource;
use crate::telemetry::{Health, Metrics};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Why a pipeline did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The metric families could not be registered (a bug).
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The async runtime or the pipeline thread could not be created.
    #[error("starting threads: {0}")]
    Threads(#[source] std::io::Error),
    /// The metrics address cannot be listened on.
    #[error("cannot listen on {addr} (metrics address): {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// How to start.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// What the loop does first: run until stopped, or drain what is there and return.
    pub control: Control,
    /// Print closed windows and throughput to the terminal (the demo) instead of logging them.
    pub progress: bool,
    /// The operators to run.
    pub registry: Registry,
}

impl StartOptions {
    /// The built-in operators, logging, starting with `control`.
    pub fn new(control: Control) -> Self {
        StartOptions { control, progress: false, registry: crate::operators::builtin() }
    }
}

/// A started pipeline.
pub struct Running {
    /// Its metrics (also served at `/metrics`).
    pub metrics: Metrics,
    /// Its readiness flags.
    pub health: Arc<Health>,
    /// Asks it to drain or stop.
    pub control: ControlHandle,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (the port bound, if 0 was asked).
    pub metrics_addr: SocketAddr,
    pipeline: JoinHandle<Result<RunReport, RuntimeError>>,
    /// Stops the endpoint when dropped.
    _stop_http: tokio::sync::oneshot::Sender<()>,
    /// Serves the endpoint; dropped last.
    runtime: tokio::runtime::Runtime,
}

/// Starts a pipeline for `settings`: registers its metrics, serves the endpoint on
/// `settings.metrics_addr` and runs the processing loop on a thread of its own.
///
/// # Errors
/// [`StartError`] when the endpoint cannot listen or threads cannot start.
pub fn start(settings: Settings, options: StartOptions) -> Result<Running, StartError> {
    let families: Vec<_> = options.registry.families().collect();
    let metrics = Metrics::new(&families)?;
    let health = Health::new();
    health.set_liveness_timeout(settings.liveness_timeout);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(StartError::Threads)?;
    let addr = settings.metrics_addr;
    let (metrics_addr, stop_http) = http::spawn(&runtime, addr, metrics.clone(), Arc::clone(&health))
        .map_err(|source| StartError::Listen { addr, source })?;
    let control = ControlHandle::new(options.control);
    let pipeline_options = Options { progress: options.progress, registry: options.registry };
    let pipeline = spawn(settings, metrics.clone(), Arc::clone(&health), control.clone(), pipeline_options)
        .map_err(StartError::Threads)?;
    Ok(Running { metrics, health, control, metrics_addr, pipeline, _stop_http: stop_http, runtime })
}

/// Runs a pipeline on a thread of its own: connects the Kafka source, builds the pipeline and
/// runs it until `control` says stop (or a drain completes).
fn spawn(
    settings: Settings,
    metrics: Metrics,
    health: Arc<Health>,
    control: ControlHandle,
    options: Options,
) -> std::io::Result<JoinHandle<Result<RunReport, RuntimeError>>> {
    std::thread::Builder::new().name("pipeline".into()).spawn(move || {
        let mut source =
            KafkaSource::connect(&settings, metrics.clone(), Arc::clone(&health)).map_err(RuntimeError::Source)?;
        Pipeline::new(settings, metrics, health, options)?.run(&mut source, &control)
    })
}

impl Running {
    /// Whether the loop has returned.
    pub fn is_finished(&self) -> bool {
        self.pipeline.is_finished()
    }

    /// The runtime serving the endpoint, for tasks beside it (a signal handler).
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }

    /// Waits for the loop to return, then stops the endpoint.
    ///
    /// # Errors
    /// What the loop returned, or [`RuntimeError::Thread`] when it panicked.
    pub fn join(self) -> Result<RunReport, RuntimeError> {
        self.pipeline.join().map_err(|_| RuntimeError::Thread("panicked".into()))?
    }
}
