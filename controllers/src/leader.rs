//! Leader election on a `coordination.k8s.io` Lease. Every replica keeps its
//! caches warm; only the holder of the lease writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

/// Whether this replica may write. Cheap to clone and to query.
#[derive(Clone, Debug)]
pub struct LeaderState {
    leading: Arc<AtomicBool>,
    tx: Arc<watch::Sender<bool>>,
}

impl LeaderState {
    /// A state that starts as `leading`.
    pub fn new(leading: bool) -> Self {
        let (tx, _) = watch::channel(leading);
        Self {
            leading: Arc::new(AtomicBool::new(leading)),
            tx: Arc::new(tx),
        }
    }

    /// Whether this replica holds the lease now.
    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    fn set(&self, leading: bool) {
        if self.leading.swap(leading, Ordering::SeqCst) != leading {
            self.tx.send_replace(leading);
        }
    }
}

/// Lease timing.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// The Lease's name.
    pub name: String,
    /// The Lease's namespace.
    pub namespace: String,
    /// This replica's identity (the pod name, or host name and PID).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews, and others retry.
    pub retry_period: Duration,
}

/// Runs leader election until `shutdown` resolves; then releases the lease if held.
pub async fn run(
    client: kube::Client,
    config: LeaseConfig,
    state: LeaderState,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    tokio::pin!(shutdown);
    let mut last_renewal: Option<std::time::Instant> = None;
    loop {
        match try_acquire_or_renew(&api, &config).await {
            Ok(leading) => {
                if leading != state.is_leader() {
                    tracing::info!(identity = %config.identity, leading, lease = %config.name, "leadership changed");
                }
                last_renewal = leading.then(std::time::Instant::now);
                state.set(leading);
            }
            Err(error) => {
                tracing::warn!(%error, "leader election: could not reach the Lease");
                // A holder that cannot renew stops writing before others may take over:
                // at two thirds of the lease duration since its last renewal.
                let deadline = config.lease_duration.mul_f64(2.0 / 3.0);
                if last_renewal.is_none_or(|t| t.elapsed() >= deadline) {
                    state.set(false);
                }
            }
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(config.retry_period) => {}
        }
    }
    if state.is_leader() {
        state.set(false);
        if let Err(error) = release(&api, &config).await {
            tracing::warn!(%error, "could not release the lease");
        }
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn desired_spec(
    config: &LeaseConfig,
    acquire_time: Option<MicroTime>,
    transitions: i32,
) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(config.lease_duration.as_secs().max(1) as i32),
        acquire_time: Some(acquire_time.unwrap_or_else(now)),
        renew_time: Some(now()),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

async fn try_acquire_or_renew(api: &Api<Lease>, config: &LeaseConfig) -> kube::Result<bool> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(desired_spec(config, None, 0)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let ours = holder == config.identity;
    let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(renew), Some(secs)) => {
            let age = Timestamp::now().duration_since(renew.0);
            age.as_secs() >= i64::from(secs)
        }
        _ => true,
    };
    if !ours && !holder.is_empty() && !expired {
        return Ok(false);
    }
    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
    let acquire = if ours {
        spec.acquire_time.clone()
    } else {
        None
    };
    lease.spec = Some(desired_spec(config, acquire, transitions));
    // replace carries the resourceVersion: a concurrent writer gets 409 and loses.
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

async fn release(api: &Api<Lease>, config: &LeaseConfig) -> kube::Result<()> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    api.replace(&config.name, &PostParams::default(), &lease)
        .await?;
    Ok(())
}
