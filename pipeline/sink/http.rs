//! The HTTP endpoint: `/metrics` (Prometheus text format), `/healthz` (the processing loop
//! comes round) and `/readyz` (brokers reachable, partitions assigned, sinks writing).
//!
//! Connections are served by a loop of its own rather than `axum::serve`, so that a client
//! cannot hold one open without sending a request: headers must arrive within
//! [`HEADER_TIMEOUT`], a connection lives at most [`CONNECTION_LIFETIME`], and at most
//! [`MAX_CONNECTIONS`] are open at once (more are closed on accept).

use crate::telemetry::{Health, Metrics};
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// A request's headers must be complete this long after the connection opens or the last
/// response (slow clients dripping bytes are cut off).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is closed this long after it opened, idle or not (Prometheus reconnects).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// Connections open at once; one more is closed as soon as it is accepted.
pub const MAX_CONNECTIONS: usize = 64;

/// Binds `addr`; the returned listener is then served by [`serve`].
///
/// # Errors
/// When the address cannot be bound (in use, not local).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Binds `addr` and serves the endpoints on `runtime` in the background until the returned
/// sender is used or dropped; returns the bound address too (`addr` may ask for port 0).
///
/// # Errors
/// When the address cannot be bound.
pub fn spawn(
    runtime: &tokio::runtime::Runtime,
    addr: SocketAddr,
    metrics: Metrics,
    health: Arc<Health>,
) -> std::io::Result<(SocketAddr, tokio::sync::oneshot::Sender<()>)> {
    let listener = runtime.block_on(bind(addr))?;
    let bound = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    runtime.spawn(async move {
        if let Err(error) = serve(listener, metrics, health, async {
            let _ = stop_rx.await;
        })
        .await
        {
            tracing::error!(%error, "metrics endpoint failed");
        }
    });
    Ok((bound, stop_tx))
}

/// Serves the endpoints until `shutdown` completes.
///
/// # Errors
/// When the server fails to accept connections.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (metrics_health, live_health) = (Arc::clone(&health), Arc::clone(&health));
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                let ready = metrics_health.ready();
                async move {
                    metrics.ready.set(i64::from(ready));
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics.render())
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let stalled = live_health.stalled_for();
                async move {
                    match stalled {
                        None => (StatusCode::OK, "ok\n".to_owned()),
                        Some(silent) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!(
                                "processing loop stalled: no heartbeat for {} s (metrics.liveness_timeout_secs)\n",
                                silent.as_secs()
                            ),
                        ),
                    }
                }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let health = Arc::clone(&health);
                async move {
                    let reasons = health.not_ready_reasons();
                    if reasons.is_empty() {
                        (StatusCode::OK, "ready\n".to_owned()).into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", reasons.join("; ")))
                            .into_response()
                    }
                }
            }),
        );
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors or a connection reset before accept: keep serving.
                Err(error) => {
                    tracing::warn!(%error, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::debug!(%peer, "metrics endpoint: connection limit reached, closing");
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
            drop(permit);
        });
    }
}
