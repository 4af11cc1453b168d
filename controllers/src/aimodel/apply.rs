//! The apply stage of an AIModel: what writes its children to the API.
//!
//! On the Kubernetes backend ([`serve`]): the model cache (a shared claim and
//! download Job, joined as one more user, released when no longer used), then
//! the Services, Deployments, HPA and HTTPRoute, each applied only when the
//! cluster's copy differs ([`Owner::ensure`], which never takes over
//! another's object of the same name) and the model's children no
//! longer wanted deleted; then the conditions of what the cluster made of
//! them. Switching to SageMaker removes the serving children
//! ([`remove_kubernetes_serving`]); deleting the model removes what is on
//! SageMaker first ([`cleanup`], behind the finalizer).

use aleph_crds::conditions::{DEGRADED, PROGRESSING, READY};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aleph_crds::aimodel::{AIModel, AIModelStatus, CacheStatus};
use aleph_crds::common::ConditionStatus;
use aleph_crds::keys::CACHE_READY_ANNOTATION;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::build::{ModelVolume, ServingPlan, TrackPlan};
use super::cache::CacheState;
use super::observe::{ChildCaches, ModelChildren, cache_objects_used_by};
use super::status::{Observation, TrackObservation, invalid_spec};
use super::{build, cache, sagemaker, status};
use crate::apply::{MANAGER, Owner, delete_ignoring_missing, ignore_missing, is_subset};
use crate::conditions::{NewCondition, set_condition};
use crate::context::Context;
use crate::error::{Error, Result, uid_of};

/// Deletion: what is on SageMaker goes first (the Kubernetes children are
/// garbage-collected). Until SageMaker is done the finalizer stays.
pub(super) async fn cleanup(model: &AIModel, ctx: &Context) -> Result<Action> {
    match sagemaker::cleanup(model, ctx).await? {
        Some(after) => Err(Error::CleanupPending(format!(
            "SageMaker resources of {} are being removed; looking again in about {}s",
            model.name_any(),
            after.as_secs()
        ))),
        None => Ok(Action::await_change()),
    }
}

/// The Kubernetes backend: caches, Deployments, Services, HPA, HTTPRoute and
/// the conditions that describe them. Returns when to look again.
pub(super) async fn serve(
    model: &AIModel,
    ctx: &Context,
    status: &mut AIModelStatus,
) -> Result<Option<Duration>> {
    let generation = model.metadata.generation;
    let uri = match (&model.spec.source, &model.spec.training) {
        (Some(source), _) => source.uri.clone(),
        (None, Some(_)) => match sagemaker::trained_artifact(Some(status)) {
            Some(artifact) => artifact,
            None => {
                let conditions = match sagemaker::terminal_failure(status).cloned() {
                    Some(failure) => [
                        NewCondition::no(
                            READY,
                            failure.reason.clone(),
                            format!("no model to serve: {}", failure.message),
                        ),
                        NewCondition::no(
                            PROGRESSING,
                            failure.reason.clone(),
                            "waiting for the training spec to be fixed",
                        ),
                        NewCondition::yes(DEGRADED, failure.reason, failure.message),
                    ],
                    None => [
                        NewCondition::no(
                            READY,
                            "WaitingForTraining",
                            "serving starts once the training job has produced the model",
                        ),
                        NewCondition::yes(
                            PROGRESSING,
                            "WaitingForTraining",
                            "waiting for the training job's artifact",
                        ),
                        NewCondition::no(DEGRADED, "Healthy", "no problem observed"),
                    ],
                };
                for condition in conditions {
                    set_condition(&mut status.conditions, condition, generation);
                }
                return Ok(Some(Duration::from_secs(30)));
            }
        },
        (None, None) => {
            let message = "spec.source: set source, or training whose artifact becomes the source";
            invalid_spec(status, generation, message);
            return Err(Error::InvalidSpec(message.into()));
        }
    };
    status.served_source = Some(uri.clone());
    let plan = match build::plan(model, &uri) {
        Ok(plan) => plan,
        Err(e) => {
            invalid_spec(status, generation, &e.to_string());
            return Err(Error::InvalidSpec(e.to_string()));
        }
    };
    let client = &ctx.client;
    let namespace = plan.namespace.clone();
    let uid = uid_of(model)?;
    let owner = model_owner(&uid);

    // Caches first: a Deployment is made (or changed) only once its weights are in place.
    let mut caches: BTreeMap<String, CacheState> = BTreeMap::new();
    for track in plan.tracks() {
        if matches!(track.volume, ModelVolume::Cache { .. }) && !caches.contains_key(&track.uri) {
            let state = ensure_cache(
                model,
                client,
                &namespace,
                track,
                &ctx.settings.model_cache_image,
            )
            .await?;
            caches.insert(track.uri.clone(), state);
        }
    }

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &namespace);
    let children = &ctx.state::<AiModelState>().children;
    let model_children = ModelChildren {
        namespace: &namespace,
        model: &plan.name,
        owner,
    };
    let observed = model_children.observe(ctx, children).await?;
    let (observed_deployments, observed_services, observed_hpas) =
        (observed.deployments, observed.services, observed.hpas);

    // The Service exists from the start so that the URL is stable. With a
    // canary, each track has its own Service too: the HTTPRoute's backends
    // (where the Gateway API is installed) and what aleph-gateway splits
    // traffic between at the exact percentage.
    let mut wanted_services = vec![build::service(model, &plan)];
    if model.spec.canary.is_some() {
        for track in plan.tracks() {
            wanted_services.push(build::track_service(model, &plan, track));
        }
    }
    for service in &wanted_services {
        owner
            .ensure_cached(
                &services,
                observed_services.get(&service.name_any()),
                service,
            )
            .await?;
    }
    delete_unwanted(&services, &observed_services, &names(&wanted_services)).await?;

    let mut applied: BTreeMap<String, Deployment> = BTreeMap::new();
    let mut up_to_date: BTreeMap<String, bool> = BTreeMap::new();
    for track in plan.tracks() {
        let name = track.deployment_name(&plan.name);
        let observed = observed_deployments.get(&name);
        let weights_ready = caches
            .get(&track.uri)
            .is_none_or(|state| *state == CacheState::Ready);
        if weights_ready {
            let desired = build::deployment(model, &plan, track, &ctx.settings.model_cache_image)?;
            let current = owner
                .ensure_cached(&deployments, observed, &desired)
                .await?;
            applied.insert(name.clone(), current);
            up_to_date.insert(name, true);
        } else if let Some(observed) = observed {
            // Keep serving the previous weights until the new ones are in place.
            applied.insert(name.clone(), observed.clone());
            up_to_date.insert(name, false);
        }
    }
    let wanted_deployments: BTreeSet<String> = plan
        .tracks()
        .map(|t| t.deployment_name(&plan.name))
        .collect();
    delete_unwanted(&deployments, &observed_deployments, &wanted_deployments).await?;

    match build::hpa(model, &plan) {
        Some(hpa) => {
            owner
                .ensure_cached(&hpas, observed_hpas.get(&hpa.name_any()), &hpa)
                .await?;
            delete_unwanted(&hpas, &observed_hpas, &BTreeSet::from([hpa.name_any()])).await?;
        }
        None => delete_unwanted(&hpas, &observed_hpas, &BTreeSet::new()).await?,
    }

    let seen = &ctx.state::<AiModelState>().gateway_api;
    let gateway = model.spec.canary.is_some() && gateway_api_installed(client, seen).await;
    if gateway_api_installed_cached(seen) || gateway {
        reconcile_route(model, owner, client, &plan, gateway).await?;
    }

    // What the cluster made of it.
    let pods = model_children.pods(ctx, children).await?;
    let url = plan.url();
    let tracks: Vec<TrackObservation<'_>> = plan
        .tracks()
        .map(|t| {
            let name = t.deployment_name(&plan.name);
            TrackObservation {
                track: t.track,
                deployment: applied.get(&name),
                cache: caches.get(&t.uri).cloned(),
                up_to_date: up_to_date.get(&name).copied().unwrap_or(false),
            }
        })
        .collect();
    let assessment = status::assess(&Observation {
        gpus: model.spec.resources.gpus.unwrap_or(0),
        gpu_product: model.spec.resources.gpu_product.as_deref(),
        tracks,
        pods: &pods,
        url: &url,
        scales_to_zero: model
            .spec
            .autoscaling
            .as_ref()
            .is_some_and(|a| a.min_replicas == 0 && a.target_concurrency.is_some()),
    });
    let all_up_to_date = plan
        .tracks()
        .all(|t| up_to_date.get(&t.deployment_name(&plan.name)) == Some(&true));
    if all_up_to_date {
        let wanted: BTreeSet<String> = caches.keys().map(|uri| cache::cache_name(uri)).collect();
        release_caches(model, ctx, &namespace, &wanted).await?;
    }

    let requeue = if assessment.degraded.status == ConditionStatus::True {
        Duration::from_secs(60)
    } else if assessment.progressing.status == ConditionStatus::True {
        Duration::from_secs(10)
    } else if model.spec.canary.is_some() && !gateway {
        // A canary without the Gateway API: look for it again now and then.
        GATEWAY_RECHECK
    } else {
        Duration::from_secs(600)
    };
    set_condition(&mut status.conditions, assessment.ready, generation);
    set_condition(&mut status.conditions, assessment.progressing, generation);
    set_condition(&mut status.conditions, assessment.degraded, generation);
    status.replicas = Some(assessment.replicas);
    status.ready_replicas = Some(assessment.ready_replicas);
    status.replica_summary = Some(format!(
        "{}/{}",
        assessment.ready_replicas, assessment.replicas
    ));
    status.selector = Some(plan.selector());
    status.url = Some(url);
    // The gateway serves Kubernetes-backed models under their own name.
    status.gateway_url = ctx.settings.gateway_url.clone();
    status.gateway_model = ctx.settings.gateway_url.as_ref().map(|_| plan.name.clone());
    status.cache = plan
        .tracks()
        .next()
        .and_then(|t| match &t.volume {
            ModelVolume::Cache { claim } => Some((claim.clone(), caches.get(&t.uri)?.phase())),
            _ => None,
        })
        .map(|(claim_name, phase)| CacheStatus {
            claim_name,
            phase: phase.to_string(),
        });
    Ok(Some(requeue))
}

/// A model as the owner of its serving children.
fn model_owner(uid: &str) -> Owner<'_> {
    Owner { uid, noun: "model" }
}

fn names<K: Resource>(objects: &[K]) -> BTreeSet<String> {
    objects.iter().map(|o| o.name_any()).collect()
}

/// Deletes the observed objects not in `wanted`.
async fn delete_unwanted<K>(
    api: &Api<K>,
    observed: &BTreeMap<String, K>,
    wanted: &BTreeSet<String>,
) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    for name in observed.keys().filter(|n| !wanted.contains(*n)) {
        delete_ignoring_missing(api, name).await?;
    }
    Ok(())
}

/// Switching to the SageMaker backend removes the serving Deployments,
/// Services and HPA the model had on the cluster.
pub(super) async fn remove_kubernetes_serving(model: &AIModel, ctx: &Context) -> Result<()> {
    let namespace = model.namespace().unwrap_or_default();
    let uid = uid_of(model)?;
    let owner = model_owner(&uid);
    let name = model.name_any();
    let observed = ModelChildren {
        namespace: &namespace,
        model: &name,
        owner,
    }
    .observe(ctx, &ctx.state::<AiModelState>().children)
    .await?;
    let none = BTreeSet::new();
    let client = &ctx.client;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    delete_unwanted(&deployments, &observed.deployments, &none).await?;
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    delete_unwanted(&services, &observed.services, &none).await?;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &namespace);
    delete_unwanted(&hpas, &observed.hpas, &none).await?;
    Ok(())
}

// --- the model cache -----------------------------------------------------------

/// Makes `track`'s cache claim and download Job if missing, adds `model` to
/// their users, marks the claim ready once the Job succeeded, and returns
/// where the cache stands.
async fn ensure_cache(
    model: &AIModel,
    client: &kube::Client,
    namespace: &str,
    track: &TrackPlan,
    model_cache_image: &str,
) -> Result<CacheState> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let name = cache::cache_name(&track.uri);
    let claim = match claims.get_opt(&name).await? {
        Some(claim) => add_user(&claims, claim, model).await?,
        None => create_or_join(&claims, &cache::claim(model, &track.uri), model).await?,
    };
    let mut job = match jobs.get_opt(&name).await? {
        Some(job) => Some(add_user(&jobs, job, model).await?),
        None => None,
    };
    if !cache::claim_is_ready(&claim) {
        if job.is_none() {
            let desired = cache::job(model, &track.uri, &track.source, model_cache_image)?;
            job = Some(create_or_join(&jobs, &desired, model).await?);
        }
        if job.as_ref().is_some_and(cache::job_succeeded) {
            let patch =
                json!({ "metadata": { "annotations": { CACHE_READY_ANNOTATION: "true" } } });
            claims
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            return Ok(CacheState::Ready);
        }
    }
    // The downloader's own words about a failed attempt, and why an attempt
    // cannot start (a credentials Secret that does not exist, an image).
    let (failure, stuck) = match &job {
        Some(_) if !cache::claim_is_ready(&claim) => {
            let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
            let attempts = pods
                .list(&ListParams::default().labels(&cache::pod_selector(&track.uri)))
                .await?;
            (
                cache::last_failure(&attempts.items),
                attempts.items.iter().find_map(status::start_problem),
            )
        }
        _ => (None, None),
    };
    let state = cache::state(
        &track.uri,
        Some(&claim),
        job.as_ref(),
        failure.as_deref(),
        model.spec.cache.download_timeout_seconds,
    );
    Ok(match (state, stuck) {
        (CacheState::Downloading(_), Some(stuck)) => CacheState::Failed(format!(
            "the download of {} is stuck: {stuck}; it starts by itself once that is fixed",
            track.uri
        )),
        (state, _) => state,
    })
}

/// Creates `desired`; if another model made it first, joins its users.
async fn create_or_join<K>(api: &Api<K>, desired: &K, model: &AIModel) -> Result<K>
where
    K: Resource + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..PostParams::default()
    };
    match api.create(&params, desired).await {
        Ok(created) => Ok(created),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let existing = api.get(&desired.name_any()).await?;
            add_user(api, existing, model).await
        }
        Err(e) => Err(e.into()),
    }
}

/// Adds `model` to the owners of a shared cache object (a strategic merge
/// keyed by UID leaves the other users' references alone).
async fn add_user<K>(api: &Api<K>, object: K, model: &AIModel) -> Result<K>
where
    K: Resource + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    let Some(reference) = cache::user_ref(model) else {
        return Ok(object);
    };
    if object
        .owner_references()
        .iter()
        .any(|r| r.uid == reference.uid)
    {
        return Ok(object);
    }
    let patch = json!({ "metadata": { "ownerReferences": [reference] } });
    Ok(api
        .patch(
            &object.name_any(),
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await?)
}

/// Drops `model` from the users of the caches it no longer uses; a cache
/// nobody uses any more is deleted.
///
/// The objects it uses are read from the watch cache; one it no longer wants
/// is read again live before anything is done to it, and deleted only if it
/// still has no other user at that version (a precondition), so that a model
/// that joined meanwhile never loses its cache.
async fn release_caches(
    model: &AIModel,
    ctx: &Context,
    namespace: &str,
    wanted: &BTreeSet<String>,
) -> Result<()> {
    let Some(uid) = model.uid() else {
        return Ok(());
    };
    let stores = ctx.state::<AiModelState>().children.covering(namespace);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let store = stores.as_ref().map(|s| &s.cache_jobs);
    for job in cache_objects_used_by(ctx, store, namespace, &uid).await? {
        release(&jobs, &job.name_any(), &uid, wanted).await?;
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    let store = stores.as_ref().map(|s| &s.cache_claims);
    for claim in cache_objects_used_by(ctx, store, namespace, &uid).await? {
        release(&claims, &claim.name_any(), &uid, wanted).await?;
    }
    Ok(())
}

async fn release<K>(api: &Api<K>, name: &str, uid: &str, wanted: &BTreeSet<String>) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    if wanted.contains(name) {
        return Ok(());
    }
    let Some(object) = api.get_opt(name).await? else {
        return Ok(());
    };
    let owners = object.owner_references();
    if !owners.iter().any(|r| r.uid == uid) {
        return Ok(());
    }
    if owners.iter().all(|r| r.uid == uid) {
        let unchanged = kube::api::DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                resource_version: object.resource_version(),
                uid: None,
            }),
            ..kube::api::DeleteParams::background()
        };
        // A conflict means someone changed it since: the next pass looks again.
        return ignore_missing(api.delete(name, &unchanged).await).map(|_| ());
    }
    let patch = json!({ "metadata": { "ownerReferences": [{ "$patch": "delete", "uid": uid }] } });
    ignore_missing(
        api.patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await,
    )
    .map(|_| ())
}

// --- the Gateway API ---------------------------------------------------------------

const GATEWAY_API: &str = "gateway.networking.k8s.io/v1";
const GATEWAY_RECHECK: Duration = Duration::from_secs(60);
/// What the AIModel controller keeps between reconciles, in the context's
/// per-controller state.
#[derive(Debug, Default)]
pub(super) struct AiModelState {
    /// When the controller last looked whether the cluster serves the
    /// Gateway API, and what it found.
    gateway_api: GatewaySeen,
    /// The caches of the controllers' watches of the serving children.
    pub(super) children: ChildCaches,
}

type GatewaySeen = Mutex<Option<(Instant, bool)>>;

/// What the last look found, without looking again.
fn gateway_api_installed_cached(seen: &GatewaySeen) -> bool {
    seen.lock()
        .ok()
        .and_then(|seen| *seen)
        .is_some_and(|(_, installed)| installed)
}

/// Whether the cluster serves HTTPRoutes (looked up at most once a minute).
async fn gateway_api_installed(client: &kube::Client, seen: &GatewaySeen) -> bool {
    if let Ok(seen) = seen.lock()
        && let Some((at, installed)) = *seen
        && at.elapsed() < GATEWAY_RECHECK
    {
        return installed;
    }
    let installed = match client.list_api_group_resources(GATEWAY_API).await {
        Ok(list) => list.resources.iter().any(|r| r.name == "httproutes"),
        Err(kube::Error::Api(s)) if s.code == 404 => false,
        Err(error) => {
            tracing::debug!(%error, "cannot tell whether the Gateway API is installed");
            return gateway_api_installed_cached(seen);
        }
    };
    if let Ok(mut seen) = seen.lock() {
        *seen = Some((Instant::now(), installed));
    }
    installed
}

/// Applies the canary's HTTPRoute, or deletes the model's route when there is no canary.
async fn reconcile_route(
    model: &AIModel,
    owner: Owner<'_>,
    client: &kube::Client,
    plan: &ServingPlan,
    wanted: bool,
) -> Result<()> {
    let resource = build::http_route_resource();
    let routes: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &plan.namespace, &resource);
    // None: the Gateway API went away since the last look.
    let Some(observed) = ignore_missing(routes.get_opt(&plan.name).await)? else {
        return Ok(());
    };
    let desired = build::http_route(model, plan).filter(|_| wanted);
    // A route of that name that is not the model's is left alone: that is
    // an error only while the model wants its own.
    if let Some(foreign) = observed.as_ref().filter(|r| !owner.controls(*r)) {
        return match desired {
            Some(_) => Err(owner.conflict("HTTPRoute", &foreign.name_any())),
            None => Ok(()),
        };
    }
    match desired {
        Some(route) => {
            if observed.as_ref().is_some_and(|o| is_subset(&route, o)) {
                return Ok(());
            }
            let applied = routes
                .patch(
                    &plan.name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&route),
                )
                .await;
            // Not found: the HTTPRoute kind was removed since the last look.
            ignore_missing(applied)?;
        }
        None if observed.is_some() => delete_ignoring_missing(&routes, &plan.name).await?,
        None => {}
    }
    Ok(())
}
