//! What every reconciler is given: the client, metrics, the event recorder,
//! the leader state and the operator's settings.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use crate::error::{Error, backoff};
use crate::events::{Note, Recorder};
use crate::leader::LeaderState;
use crate::metrics::Metrics;
use crate::sagemaker::aws::{AwsSageMaker, AwsSageMakerConfig, RegionalClients};

/// The image that downloads `hf://` and `s3://` sources unless the operator is
/// told another (`--model-cache-image`): the model-cache image of this release.
pub const DEFAULT_MODEL_CACHE_IMAGE: &str = concat!(
    "ghcr.io/aleph-dev/aleph-model-cache:",
    env!("CARGO_PKG_VERSION")
);

/// Settings of the operator that reconcilers read.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The AWS region when a resource names none.
    pub aws_region: Option<String>,
    /// The SageMaker API's URL; the environment's (`AWS_ENDPOINT_URL_SAGEMAKER`) or AWS's when `None`.
    pub sagemaker_endpoint_url: Option<String>,
    /// The longest wait between two looks at a changing SageMaker resource
    /// (jobs and endpoints are otherwise polled every 30 to 300 seconds).
    pub sagemaker_max_poll: Option<Duration>,
    /// The image that downloads models from `hf://` and `s3://` sources.
    pub model_cache_image: String,
    /// aleph-gateway's OpenAI-compatible base URL, shown in the status of the
    /// models it serves.
    pub gateway_url: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            aws_region: None,
            sagemaker_endpoint_url: None,
            sagemaker_max_poll: None,
            model_cache_image: DEFAULT_MODEL_CACHE_IMAGE.to_string(),
            gateway_url: None,
        }
    }
}

/// Shared by every reconcile of every controller.
pub struct Context {
    /// The Kubernetes client.
    pub client: kube::Client,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Whether this replica may write.
    pub leader: LeaderState,
    /// Operator settings.
    pub settings: Settings,
    failures: Mutex<HashMap<String, u32>>,
    sagemaker: tokio::sync::OnceCell<RegionalClients>,
    /// Each controller's own state (its caches, what it has done once), kept
    /// by type, so that this shared context depends on no kind.
    states: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl Context {
    /// Builds the context; the tests use the same constructor.
    pub fn new(
        client: kube::Client,
        metrics: Arc<Metrics>,
        leader: LeaderState,
        settings: Settings,
    ) -> Self {
        Self {
            recorder: Recorder::new(
                client.clone(),
                "aleph-operator",
                std::env::var("POD_NAME").ok(),
            ),
            client,
            metrics,
            leader,
            settings,
            failures: Mutex::new(HashMap::new()),
            sagemaker: tokio::sync::OnceCell::new(),
            states: Mutex::new(HashMap::new()),
        }
    }

    /// The state of type `T` that one controller keeps for all its
    /// reconciles, made with `T::default()` on first use.
    pub fn state<T: Any + Default + Send + Sync>(&self) -> Arc<T> {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        let state = states
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()));
        Arc::clone(state)
            .downcast::<T>()
            .unwrap_or_else(|_| unreachable!("states are keyed by their type"))
    }

    /// Publishes a Normal event about `obj` (see [`Context::event`]).
    pub async fn normal<K>(&self, obj: &K, reason: &str, note: impl Into<String>)
    where
        K: Resource<DynamicType = ()>,
    {
        self.event(obj, EventType::Normal, reason, note).await;
    }

    /// Publishes a Warning event about `obj` (see [`Context::event`]).
    pub async fn warning<K>(&self, obj: &K, reason: &str, note: impl Into<String>)
    where
        K: Resource<DynamicType = ()>,
    {
        self.event(obj, EventType::Warning, reason, note).await;
    }

    /// Publishes an event about `obj`; a failure to publish is logged, never fatal.
    pub async fn event<K>(&self, obj: &K, type_: EventType, reason: &str, note: impl Into<String>)
    where
        K: Resource<DynamicType = ()>,
    {
        let note = note.into();
        let event = Note {
            type_,
            reason,
            action: reason,
            note: &note,
        };
        if let Err(error) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(%error, reason, "could not publish event");
        }
    }

    /// The SageMaker adapter for `region` (the operator's default when `None`),
    /// built from the environment on first use: the default credential chain,
    /// the operator's region and `AWS_ENDPOINT_URL_SAGEMAKER`.
    pub async fn sagemaker(&self, region: Option<&str>) -> Result<Arc<AwsSageMaker>, Error> {
        let clients = self
            .sagemaker
            .get_or_try_init(|| async {
                let config = AwsSageMakerConfig {
                    region: self.settings.aws_region.clone(),
                    endpoint_url: self.settings.sagemaker_endpoint_url.clone(),
                    ..AwsSageMakerConfig::default()
                };
                AwsSageMaker::from_env(&config, self.metrics.sagemaker_calls.clone())
                    .await
                    .map(RegionalClients::new)
            })
            .await?;
        clients.get(region).map_err(|e| Error::Blocked {
            reason: "AWSNotConfigured",
            message: e.message().to_string(),
        })
    }

    /// Forgets the failures of `obj` after a successful reconcile.
    pub fn reset_backoff(&self, key: &str) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(key);
        }
    }

    /// What to do after a failed reconcile: wait for a change when the spec is
    /// invalid, otherwise retry with per-object exponential backoff and jitter.
    pub fn error_action(&self, key: &str, error: &Error) -> Action {
        if error.is_permanent() {
            return Action::await_change();
        }
        let failures = match self.failures.lock() {
            Ok(mut map) => {
                let n = map.entry(key.to_string()).or_insert(0);
                *n = n.saturating_add(1);
                *n - 1
            }
            Err(_) => 0,
        };
        Action::requeue(backoff(
            failures,
            Duration::from_secs(1),
            Duration::from_secs(300),
        ))
    }
}

/// A key naming an object for per-object bookkeeping.
pub fn object_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    #[derive(Default)]
    struct Counter(std::sync::atomic::AtomicU32);

    #[derive(Default)]
    struct Other(std::sync::atomic::AtomicU32);

    #[tokio::test]
    async fn each_controller_state_is_made_once_and_kept_apart() {
        // A client whose every request fails: the state needs no API server.
        let service = tower::service_fn(|_: http::Request<kube::client::Body>| async {
            Err::<http::Response<kube::client::Body>, _>(std::io::Error::other("no API server"))
        });
        let client = kube::Client::new(service, "default");
        let ctx = Context::new(
            client,
            Arc::new(Metrics::default()),
            LeaderState::new(true),
            Settings::default(),
        );
        ctx.state::<Counter>().0.fetch_add(1, Ordering::SeqCst);
        ctx.state::<Counter>().0.fetch_add(1, Ordering::SeqCst);
        assert_eq!(ctx.state::<Counter>().0.load(Ordering::SeqCst), 2);
        assert_eq!(ctx.state::<Other>().0.load(Ordering::SeqCst), 0);
    }
}
