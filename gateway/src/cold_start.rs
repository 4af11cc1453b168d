//! Holding requests while a model scales from zero.
//!
//! A model that scales from zero ([`Model::scale_from_zero`]) may have no
//! ready endpoint when a request for it comes: its autoscaler starts a replica
//! because it sees that request (in `inflight_requests` and `arrivals_total`).
//! So the request waits, in a queue per model bounded in length
//! ([`GatewayConfig::cold_start_queue`](crate::GatewayConfig)) and in time
//! ([`GatewayConfig::cold_start_timeout`](crate::GatewayConfig)), until a
//! snapshot swap gives the model a ready endpoint; then it goes on as any
//! other request. Waiting is nothing but the request's future parked on the
//! state's swap announcements: a client that goes away drops that future,
//! and with it its place in the queue. The queue keeps no order: when the
//! endpoint appears every waiter proceeds at once and the balancer spreads
//! them over the endpoints there are.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

use crate::state::{GatewayState, Lookup, Model};
use crate::usage::Metrics;

/// The waiting requests of every model, and how many a model may have.
#[derive(Debug)]
pub(crate) struct ColdStartQueues {
    capacity: usize,
    /// Requests waiting, by model id; a model without any has no entry.
    waiting: Arc<Mutex<HashMap<String, usize>>>,
    metrics: Metrics,
}

/// One request's place in its model's queue; dropping it leaves the queue.
#[derive(Debug)]
struct QueueSlot {
    id: String,
    waiting: Arc<Mutex<HashMap<String, usize>>>,
    gauge: Gauge,
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = waiting.get_mut(&self.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                waiting.remove(&self.id);
            }
        }
        self.gauge.dec();
    }
}

/// Why a request stopped waiting without an endpoint.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NotReady {
    /// The model's queue was full.
    QueueFull,
    /// The wait's end passed.
    TimedOut,
    /// The model no longer scales from zero, and still has no ready endpoint.
    NoLongerScalesFromZero,
    /// The name now resolves to another tenant's model.
    Forbidden,
    /// The model is gone.
    Gone,
}

impl ColdStartQueues {
    /// Queues of `capacity` requests per model, counted in `metrics`.
    pub(crate) fn new(capacity: usize, metrics: Metrics) -> Self {
        Self {
            capacity,
            waiting: Arc::default(),
            metrics,
        }
    }

    /// The requests waiting for `model` now.
    pub(crate) fn waiting(&self, model: &Model) -> usize {
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.get(&model.id()).copied().unwrap_or(0)
    }

    fn enter(&self, model: &Model) -> Option<QueueSlot> {
        let id = model.id();
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let n = waiting.entry(id.clone()).or_default();
        if *n >= self.capacity {
            if *n == 0 {
                waiting.remove(&id);
            }
            return None;
        }
        *n += 1;
        let gauge = self.metrics.queued(&model.namespace, &model.aimodel);
        gauge.inc();
        Some(QueueSlot {
            id,
            waiting: self.waiting.clone(),
            gauge,
        })
    }

    /// Waits in `model`'s queue until the name `requested` resolves, for a
    /// caller of `tenant`, to a model with a ready endpoint, and returns that
    /// model as it then is; or until `until`.
    pub(crate) async fn wait_until_ready(
        &self,
        state: &GatewayState,
        tenant: &str,
        requested: &str,
        model: &Model,
        until: Instant,
    ) -> Result<Model, NotReady> {
        let _slot = self.enter(model).ok_or(NotReady::QueueFull)?;
        let tenant = tenant.to_owned();
        // Subscribed before the first look: a swap after it wakes the loop.
        let mut changes = state.changes();
        loop {
            let snapshot = state.snapshot();
            match snapshot.lookup(std::slice::from_ref(&tenant), requested) {
                Lookup::Found { model: now, .. } if now.has_ready_endpoint() => {
                    return Ok(now.clone());
                }
                Lookup::Found { model: now, .. } if !now.scale_from_zero => {
                    return Err(NotReady::NoLongerScalesFromZero);
                }
                Lookup::Found { .. } => {}
                Lookup::OtherTenant => return Err(NotReady::Forbidden),
                Lookup::Unknown => return Err(NotReady::Gone),
            }
            match tokio::time::timeout_at(until, changes.changed()).await {
                Ok(Ok(())) => {}
                // The state is gone (never while a request holds the
                // gateway); nothing will change any more.
                Ok(Err(_)) => {
                    tokio::time::sleep_until(until).await;
                    return Err(NotReady::TimedOut);
                }
                Err(_) => return Err(NotReady::TimedOut),
            }
        }
    }
}
