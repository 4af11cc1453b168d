//! The AIModel reconciler.
//!
//! On the Kubernetes backend a model becomes: a model cache (a claim and a
//! download Job shared by the models with the same source, see [`cache`]),
//! then a serving Deployment (and a canary one), a Service, an HPA when it
//! autoscales, and an HTTPRoute splitting traffic to a canary when the Gateway
//! API is installed (see [`build`]). Its status says what is going on
//! ([`status`]). On the SageMaker backend, and for training, the [`sagemaker`]
//! part does the work and its Serving condition becomes Ready.
//!
//! The reconcile's stages, each in its file: [`validate`] checks what the
//! schema cannot (through [`build::plan`]), [`build`] makes the children from
//! the spec alone, `apply.rs` writes them to the API (server-side apply, only
//! what changed; pruning what is no longer wanted, the caches' users and the
//! SageMaker cleanup behind the finalizer), and [`status`] says what the
//! cluster made of them (written only when it changed). This file wires the
//! controller and runs the stages in that order.

mod apply;
pub mod build;
pub mod cache;
mod observe;
pub mod runtime;
pub mod sagemaker;
pub mod source;
pub mod status;
pub mod validate;

use aleph_crds::conditions::{DEGRADED, PROGRESSING, READY, SERVING, TRAINED};
use std::sync::Arc;
use std::time::Duration;

use aleph_crds::aimodel::{AIModel, AIModelStatus, ServingBackend};
use aleph_crds::common::ConditionStatus;
use aleph_crds::keys::{CACHE_LABEL, FINALIZER, MODEL_LABEL};
use kube::ResourceExt;
use kube::api::Api;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;

use crate::apply::patch_status_if_changed;
use crate::conditions::{NewCondition, find, set_condition};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::runner::{Reconcile, Watch};
use apply::{cleanup, remove_kubernetes_serving, serve};
use observe::ChildStores;

/// The AIModel controller for what `watch` names, watching what it makes:
/// Deployments, Services and HPAs (owned), cache claims and Jobs (owned by
/// every model using them) and the serving pods (for scheduling failures and
/// crashes).
pub fn controller(ctx: &Context, watch: &Watch<'_>) -> Controller<DeserializeGuard<AIModel>> {
    let client = &ctx.client;
    let children = || crate::runner::watch_config().labels(MODEL_LABEL);
    let caches = || crate::runner::watch_config().labels(CACHE_LABEL);
    // The serving children are kept in caches that the passes read instead
    // of listing them (see `observe`), trimmed to what the passes read and
    // the digest of the rest (see `crate::digest`).
    use crate::runner::{cached_watch, untrimmed};
    let (deployments, deployment_stream) =
        cached_watch(watch.api(client), children(), observe::trim_deployment);
    let (services, service_stream) =
        cached_watch(watch.api(client), children(), observe::trim_service);
    let (hpas, hpa_stream) = cached_watch(watch.api(client), children(), observe::trim_hpa);
    // Pods trimmed to what the status reads: any change to a pod (its status
    // too) wakes its model.
    let (pods, pod_stream) = cached_watch(watch.api(client), children(), observe::trim_pod);
    let (cache_jobs, cache_job_stream) = cached_watch(watch.api(client), caches(), untrimmed);
    let (cache_claims, cache_claim_stream) = cached_watch(watch.api(client), caches(), untrimmed);
    let controller = crate::runner::primary_controller(watch.api(client), watch.primary());
    ctx.state::<apply::AiModelState>()
        .children
        .add(ChildStores {
            scope: watch.namespace.map(str::to_string),
            models: controller.store(),
            deployments,
            services,
            hpas,
            pods,
            cache_jobs,
            cache_claims,
        });
    controller
        .owns_stream(deployment_stream)
        .owns_stream(service_stream)
        .owns_stream(hpa_stream)
        .owns_stream(cache_job_stream)
        .owns_stream(cache_claim_stream)
        .watches_stream(pod_stream, |pod: crate::lean::ServingPod| {
            let namespace = pod.namespace()?;
            pod.labels()
                .get(MODEL_LABEL)
                .map(|name| ObjectRef::new(name).within(&namespace))
        })
}

/// What the autoscaler reads of the AIModel controllers' caches, for each
/// watched scope: the models and their Deployments. They are the
/// controllers' own copies, so the autoscaler keeps none of its own; a scope
/// whose controller is not built yet shows nothing, as an unfilled cache does.
pub(crate) fn serving_caches(
    ctx: &Context,
) -> Vec<(
    kube::runtime::reflector::Store<DeserializeGuard<AIModel>>,
    kube::runtime::reflector::Store<k8s_openapi::api::apps::v1::Deployment>,
)> {
    ctx.state::<apply::AiModelState>()
        .children
        .all()
        .into_iter()
        .map(|s| (s.models, s.deployments))
        .collect()
}

impl Reconcile for AIModel {
    const CONTROLLER: &'static str = "aimodel";

    fn conditions(&self) -> &[aleph_crds::Condition] {
        crate::runner::status_conditions(self.status.as_ref(), |s| &s.conditions)
    }

    async fn reconcile(model: Arc<Self>, ctx: Arc<Context>) -> Result<Action> {
        let Some(namespace) = model.namespace() else {
            return Ok(Action::await_change());
        };
        let has_finalizer = model.finalizers().iter().any(|f| f == FINALIZER);
        // Only what lives outside the cluster needs a finalizer; everything
        // else is garbage-collected through owner references.
        let result = if !sagemaker::uses_sagemaker(&model) && !has_finalizer {
            if model.metadata.deletion_timestamp.is_some() {
                return Ok(Action::await_change());
            }
            reconcile_model(&model, &ctx).await
        } else {
            let api: Api<AIModel> = Api::namespaced(ctx.client.clone(), &namespace);
            crate::error::from_finalizer(
                finalizer(&api, FINALIZER, model, |event| async {
                    match event {
                        FinalizerEvent::Apply(m) => reconcile_model(&m, &ctx).await,
                        FinalizerEvent::Cleanup(m) => cleanup(&m, &ctx).await,
                    }
                })
                .await,
            )
        };
        match result {
            // The namespace is going away with the model in it: nothing to make.
            Err(Error::Kube(kube::Error::Api(status)))
                if status.code == 403 && status.message.contains("being terminated") =>
            {
                Ok(Action::await_change())
            }
            other => other,
        }
    }
}

fn shortest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One pass over a live model: SageMaker (when used), then serving, then status.
async fn reconcile_model(model: &AIModel, ctx: &Context) -> Result<Action> {
    let namespace = model.namespace().unwrap_or_default();
    let api: Api<AIModel> = Api::namespaced(ctx.client.clone(), &namespace);
    let generation = model.metadata.generation;
    let mut status = model.status.clone().unwrap_or_default();

    let sagemaker_requeue = if sagemaker::uses_sagemaker(model) {
        sagemaker::reconcile(model, ctx, &mut status).await?
    } else {
        status
            .conditions
            .retain(|c| c.type_ != TRAINED && c.type_ != SERVING);
        None
    };

    let outcome = match model.spec.backend {
        ServingBackend::SageMaker => {
            remove_kubernetes_serving(model, ctx).await?;
            sagemaker_serving_status(model, ctx, &mut status);
            Ok(Some(Duration::from_secs(300)))
        }
        ServingBackend::Kubernetes => serve(model, ctx, &mut status).await,
    };
    status.observed_generation = generation;
    status.runtime = Some(serving_runtime(model));
    // `status.autoscaler` is the autoscaler's (its own field manager): never
    // written back from a possibly older read.
    status.autoscaler = None;
    let current = model.status.clone().map(|mut s| {
        s.autoscaler = None;
        s
    });
    let changed = patch_status_if_changed(&api, model, current.as_ref(), &status).await?;
    if changed {
        publish_events(model, ctx, model.status.as_ref(), &status).await;
    }
    let requeue = shortest(outcome?, sagemaker_requeue);
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// What serves the model, for `status.runtime` and the Runtime column.
fn serving_runtime(model: &AIModel) -> String {
    match model.spec.backend {
        ServingBackend::SageMaker => "sagemaker".into(),
        ServingBackend::Kubernetes => serde_json::to_value(model.spec.runtime.engine)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
    }
}

/// Events for what changed: ModelDeployed when the model first turns Ready,
/// and a Warning when it turns Degraded for a new reason.
async fn publish_events(
    model: &AIModel,
    ctx: &Context,
    before: Option<&AIModelStatus>,
    after: &AIModelStatus,
) {
    let old = |type_: &str| before.and_then(|s| find(&s.conditions, type_));
    let new = |type_: &str| find(&after.conditions, type_);
    if let Some(ready) = new(READY)
        && ready.status == ConditionStatus::True
        && ready.reason == "Serving"
        && old(READY).is_none_or(|c| c.status != ConditionStatus::True)
    {
        ctx.normal(model, "ModelDeployed", ready.message.clone())
            .await;
    }
    if let Some(degraded) = new(DEGRADED)
        && degraded.status == ConditionStatus::True
        && old(DEGRADED)
            .is_none_or(|c| c.status != ConditionStatus::True || c.reason != degraded.reason)
    {
        let reason = match degraded.reason.as_str() {
            "Unschedulable" => "ModelUnschedulable",
            other => other,
        };
        ctx.warning(model, reason, degraded.message.clone()).await;
    }
}

/// On the SageMaker backend, Ready follows the endpoint's Serving condition
/// and the URL is the endpoint's invocation URL.
fn sagemaker_serving_status(model: &AIModel, ctx: &Context, status: &mut AIModelStatus) {
    let generation = model.metadata.generation;
    let failure = sagemaker::terminal_failure(status).cloned();
    let ready = match (&failure, find(&status.conditions, SERVING)) {
        (Some(failure), _) => {
            NewCondition::no(READY, failure.reason.clone(), failure.message.clone())
        }
        (None, Some(serving)) => NewCondition::new(
            READY,
            serving.status,
            serving.reason.clone(),
            serving.message.clone(),
        ),
        (None, None) => NewCondition::new(
            READY,
            ConditionStatus::Unknown,
            "Pending",
            "waiting for the SageMaker endpoint",
        ),
    };
    let in_service = ready.status == ConditionStatus::True;
    set_condition(&mut status.conditions, ready, generation);
    status.conditions.retain(|c| c.type_ != PROGRESSING);
    let degraded = match failure {
        Some(failure) => NewCondition::yes(DEGRADED, failure.reason, failure.message),
        None => NewCondition::no(DEGRADED, "AsExpected", "no SageMaker failure"),
    };
    set_condition(&mut status.conditions, degraded, generation);
    status.replicas = None;
    status.ready_replicas = None;
    status.replica_summary = None;
    status.selector = None;
    status.cache = None;
    let region = model
        .spec
        .sagemaker
        .as_ref()
        .and_then(|s| s.region.clone())
        .or_else(|| ctx.settings.aws_region.clone());
    // The gateway routes to Kubernetes-backed models only.
    status.gateway_url = None;
    status.gateway_model = None;
    status.url = match (&status.endpoint, region) {
        (Some(endpoint), Some(region)) if in_service => Some(format!(
            "https://runtime.sagemaker.{region}.amazonaws.com/endpoints/{}/invocations",
            endpoint.name
        )),
        _ => None,
    };
}
