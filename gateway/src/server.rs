//! Serving the API and `/metrics` until shutdown, and the shutdown itself: a
//! drain, then every request in flight to its end.
//!
//! When the shutdown signal comes (the kubelet's SIGTERM when the pod is
//! deleted):
//!
//! 1. the gateway starts draining ([`Gateway::start_draining`]): `/readyz`
//!    fails at once, and every answer closes its connection, so that a client
//!    keeping connections alive opens its next one through the Service;
//! 2. for the drain time it keeps accepting connections and serving them:
//!    the endpoints controller, kube-proxy on every node and any other client
//!    learn only after a moment that the pod is going, and until then send it
//!    new connections;
//! 3. then it stops accepting (the listener closes), closes idle connections,
//!    lets every request in flight finish (streams and requests waiting for a
//!    starting model included), and returns once the last one has ended.
//!    `/metrics` is served until then.
//!
//! The pod's grace period must cover the drain and the longest request worth
//! finishing: the kubelet kills what is left when it ends.

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Gateway;

/// Serves `gateway`'s API on `api` and `registry`'s series on `metrics` until
/// `shutdown` completes, then drains for `drain` and finishes the requests in
/// flight (see the module's documentation). Returns once everything has
/// ended, or the first error of a listener.
pub async fn serve(
    gateway: Gateway,
    api: TcpListener,
    metrics: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> std::io::Result<()> {
    // Aborted when `serve` returns or is dropped.
    let mut ticker = tokio::task::JoinSet::new();
    ticker.spawn(keep_a_timer_due());
    let (stop_api, api_stopped) = stop_signal();
    let (stop_metrics, metrics_stopped) = stop_signal();
    let api = tokio::spawn(
        axum::serve(
            crate::api::no_delay_on_accept(api),
            axum::ServiceExt::<axum::extract::Request>::into_make_service(gateway.api()),
        )
        .with_graceful_shutdown(api_stopped)
        .into_future(),
    );
    let metrics = tokio::spawn(
        axum::serve(
            crate::api::no_delay_on_accept(metrics),
            crate::api::metrics_router(registry),
        )
        .with_graceful_shutdown(metrics_stopped)
        .into_future(),
    );

    shutdown.await;
    tracing::info!(
        drain_seconds = drain.as_secs_f64(),
        "shutting down: not ready any more, serving while clients move away"
    );
    gateway.start_draining();
    tokio::time::sleep(drain).await;
    tracing::info!("drained: no longer accepting connections; finishing the requests in flight");
    let _ = stop_api.send(true);
    let api = api.await.map_err(std::io::Error::other).and_then(|r| r);
    tracing::info!("every request has ended");
    let _ = stop_metrics.send(true);
    let metrics = metrics.await.map_err(std::io::Error::other).and_then(|r| r);
    ticker.abort_all();
    api.and(metrics)
}

/// How often [`keep_a_timer_due`] wakes.
const TIMER_TICK: Duration = Duration::from_secs(1);

/// Keeps one of the runtime's timers due within [`TIMER_TICK`], for as long
/// as the gateway serves.
///
/// Every request sets timers (its response-header and request timeouts,
/// minutes away) and cancels them when it ends. Tokio's time driver, when it
/// waits for the sockets with no timer due, waits with no deadline; a timer
/// set then is due before that, so setting it wakes the driver to wait again
/// with the new deadline: a write to its eventfd and one more `epoll_wait`
/// for each request that arrives at an idle gateway (nginx makes two system
/// calls fewer per request). With a timer always due within a second, the
/// driver never waits past it, and a request's timers, due later, wake
/// nothing. The cost: one wake-up a second when idle.
async fn keep_a_timer_due() {
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// A sender and a future that completes once `true` is sent (or the sender
/// is dropped).
fn stop_signal() -> (
    watch::Sender<bool>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (tx, mut rx) = watch::channel(false);
    (tx, async move {
        let _ = rx.wait_for(|stop| *stop).await;
    })
}
