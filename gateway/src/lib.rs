//! `aleph-gateway`: one OpenAI-compatible endpoint in front of every model,
//! for many tenants. It authenticates the caller, resolves the requested
//! model within the caller's tenant, applies the tenant's limits, picks an
//! endpoint (canary split, then least in flight or prompt-prefix hash),
//! forwards the request with `"model"` rewritten to the engine's name, streams
//! the answer back and meters its tokens from the engine's `usage`. A request
//! for a model that scales from zero and has no ready replica waits for one.
//! [`server`] serves it all and drains on shutdown.
//!
//! This crate's core knows nothing of Kubernetes: it reads a [`GatewayState`]
//! that whoever knows the tenants, keys, models and endpoints fills in and
//! marks synced: the watches of [`k8s`], or a static file ([`static_config`]).

pub mod api;
pub mod auth;
pub mod body;
pub mod clock;
mod cold_start;
pub mod error;
pub mod inflight;
pub mod k8s;
pub mod limits;
mod proxy;
pub mod route;
pub mod server;
pub mod state;
pub mod static_config;
mod upstream;
pub mod usage;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::registry::Registry;

use crate::cold_start::ColdStartQueues;

pub use auth::{Authenticators, Caller};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::ApiError;
pub use limits::Limits;
pub use route::{Balancer, RoutingMode};
pub use state::{
    Endpoint, GatewayState, KeyInfo, Model, Owners, Snapshot, TenantLimits, Track, hash_key,
};
pub use usage::{Metrics, UsageLedger, UsageTotals};

/// How the gateway behaves; the same for every tenant.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// How long connecting to an engine may take before another endpoint is tried.
    pub connect_timeout: Duration,
    /// How long an engine may take to send its response headers (for a
    /// streamed request, until its first bytes; for a plain one, until the
    /// whole answer is computed).
    pub response_header_timeout: Duration,
    /// How long a whole exchange may last, streaming included; a stream still
    /// running then is cut off.
    pub request_timeout: Duration,
    /// The `Retry-After` sent when a model has no ready endpoint.
    pub retry_after: Duration,
    /// How many gateway replicas share each tenant limit (see [`limits`]).
    pub replicas_share: u64,
    /// How an endpoint is picked within a track.
    pub routing: RoutingMode,
    /// How long a request for a model that scales from zero may wait for its
    /// first ready endpoint.
    pub cold_start_timeout: Duration,
    /// How many requests may wait so for each model; more get 503.
    pub cold_start_queue: usize,
    /// How long a connection to an engine may stay idle, kept for the next
    /// request to the same endpoint, before it is closed.
    pub upstream_idle_timeout: Duration,
    /// How many idle connections are kept per endpoint.
    pub upstream_idle_per_endpoint: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 << 20,
            connect_timeout: Duration::from_secs(2),
            response_header_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(900),
            retry_after: Duration::from_secs(5),
            replicas_share: 1,
            routing: RoutingMode::LeastInFlight,
            cold_start_timeout: Duration::from_secs(300),
            cold_start_queue: 256,
            upstream_idle_timeout: Duration::from_secs(30),
            upstream_idle_per_endpoint: 1024,
        }
    }
}

/// The gateway: configuration, state and counters, shared by every request.
#[derive(Clone, Debug)]
pub struct Gateway {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: GatewayConfig,
    state: Arc<GatewayState>,
    authenticators: Authenticators,
    balancer: Balancer,
    limits: Arc<Limits>,
    ledger: Arc<UsageLedger>,
    metrics: Metrics,
    cold_start: ColdStartQueues,
    /// The connections to the engines.
    upstream: upstream::Pool,
    /// Set once shutdown has begun: `/readyz` fails and connections close
    /// after each answer.
    draining: AtomicBool,
}

impl Gateway {
    /// A gateway reading `state`, timing its limits and usage days on `clock`
    /// and registering its metrics in `registry`. It authenticates API keys.
    pub fn new(
        config: GatewayConfig,
        state: Arc<GatewayState>,
        clock: Arc<dyn Clock>,
        registry: &mut Registry,
    ) -> Self {
        Self::with_authenticators(
            config,
            state,
            clock,
            registry,
            Authenticators::api_keys_only(),
        )
    }

    /// [`new`](Self::new), authenticating API keys and what `authenticators`
    /// enables besides (OIDC tokens, Kubernetes tokens).
    pub fn with_authenticators(
        config: GatewayConfig,
        state: Arc<GatewayState>,
        clock: Arc<dyn Clock>,
        registry: &mut Registry,
        authenticators: Authenticators,
    ) -> Self {
        let upstream = upstream::Pool::new(upstream::PoolConfig {
            connect_timeout: config.connect_timeout,
            idle_timeout: config.upstream_idle_timeout,
            max_idle_per_endpoint: config.upstream_idle_per_endpoint,
        });
        let metrics = Metrics::new(registry);
        Self {
            inner: Arc::new(Inner {
                balancer: Balancer::new(config.routing),
                limits: Arc::new(Limits::new(clock.clone(), config.replicas_share)),
                ledger: Arc::new(UsageLedger::new(clock)),
                cold_start: ColdStartQueues::new(config.cold_start_queue, metrics.clone()),
                metrics,
                authenticators,
                state,
                config,
                upstream,
                draining: AtomicBool::new(false),
            }),
        }
    }

    /// Begins the shutdown: from now on `/readyz` answers 503 (so that the
    /// Service stops sending new connections here) and every answer closes
    /// its connection (so that keep-alive clients reconnect elsewhere). The
    /// requests keep being served; see [`server`].
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    /// Whether [`start_draining`](Self::start_draining) was called.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// The requests waiting for a first ready endpoint of `model` now.
    pub fn cold_start_waiting(&self, model: &Model) -> usize {
        self.inner.cold_start.waiting(model)
    }

    /// The API: `/v1/...`, `/healthz` and `/readyz` (see [`api::Api`]).
    pub fn api(&self) -> api::Api {
        api::Api::new(self.clone())
    }

    /// The state the gateway reads.
    pub fn state(&self) -> &Arc<GatewayState> {
        &self.inner.state
    }

    /// The running usage totals per (tenant, model).
    pub fn usage(&self) -> &Arc<UsageLedger> {
        &self.inner.ledger
    }

    /// The Prometheus series.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The endpoint picker and its in-flight counts.
    pub fn balancer(&self) -> &Balancer {
        &self.inner.balancer
    }

    /// The configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.inner.config
    }
}

/// A map of the request path's own bookkeeping (counters, windows, label
/// names), hashed with foldhash rather than SipHash: every request looks up
/// several, and their keys are names the cluster's objects give, not
/// whatever a caller sends.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A set hashed as [`FastMap`] is.
pub type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

/// The value of `key` in `map`, made with `make` when missing: the key is
/// copied only then (`entry` would copy it on every call).
pub(crate) fn entry_for<'a, V, S: std::hash::BuildHasher>(
    map: &'a mut std::collections::HashMap<String, V, S>,
    key: &str,
    make: impl FnOnce() -> V,
) -> &'a mut V {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), make());
    }
    map.get_mut(key).expect("the entry was just made")
}
