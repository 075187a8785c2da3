//! The HTTP endpoint: `/metrics` (Prometheus text format), `/healthz` (the processing loop
//! comes round) and `/readyz` (brokers reachable, partitions assigned, sinks writing).

use crate::telemetry::{Health, Metrics};
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;

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
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
