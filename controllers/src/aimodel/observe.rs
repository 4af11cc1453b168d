//! What a pass reads of a model's serving children (Deployments, Services,
//! the HPA) and of its serving pods: from the caches of the controller's own
//! watches of them, so that a pass does not list them again; or, where no
//! controller of this context watches the namespace (a pass run on its own),
//! by listing. The pods are kept trimmed to what the status reads of them
//! ([`trim_pod`]).
//!
//! A cache may lag behind the operator's own writes. That is safe here: a
//! child missing from it is looked up by name before it is created
//! ([`crate::apply::Owner::ensure`]), one the cache holds in an older version
//! is applied again (server-side apply, the same result), and one deleted
//! meanwhile is deleted again, ignoring that it is gone. Each change to a
//! child wakes its model through the same watch, so the next pass sees it.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Mutex;

use aleph_crds::aimodel::AIModel;
use aleph_crds::keys::{CACHE_LABEL, MODEL_LABEL};
use futures::FutureExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, PersistentVolumeClaim, PodStatus, Service};
use kube::api::{Api, ListParams};
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::apply::Owner;
use crate::context::Context;
use crate::error::Result;
use crate::lean::ServingPod;

/// The caches of one controller's watches of the models' serving children.
#[derive(Clone)]
pub(super) struct ChildStores {
    /// The namespace the controller watches; all when `None`.
    pub scope: Option<String>,
    /// The controller's own cache of the models (read by the autoscaler,
    /// which keeps no copy of its own).
    pub models: Store<DeserializeGuard<AIModel>>,
    /// Deployments labelled with a model (the autoscaler reads the stable
    /// track's from here too).
    pub deployments: Store<Deployment>,
    /// Services labelled with a model.
    pub services: Store<Service>,
    /// HPAs labelled with a model.
    pub hpas: Store<HorizontalPodAutoscaler>,
    /// Pods labelled with a model, decoded lean and trimmed by [`trim_pod`].
    pub pods: Store<ServingPod>,
    /// The model caches' download Jobs.
    pub cache_jobs: Store<Job>,
    /// The model caches' claims.
    pub cache_claims: Store<PersistentVolumeClaim>,
}

/// The caches of every AIModel controller on one context (one per watched
/// scope), in the context's per-controller state.
#[derive(Default)]
pub(super) struct ChildCaches(Mutex<Vec<ChildStores>>);

impl Debug for ChildCaches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildCaches").finish_non_exhaustive()
    }
}

impl ChildCaches {
    /// Keeps the caches of a controller just built.
    pub fn add(&self, stores: ChildStores) {
        if let Ok(mut all) = self.0.lock() {
            all.push(stores);
        }
    }

    /// The caches of every controller, one per watched scope.
    pub(super) fn all(&self) -> Vec<ChildStores> {
        self.0.lock().map(|all| all.clone()).unwrap_or_default()
    }

    /// The caches that cover `namespace`, if a controller watches it.
    pub(super) fn covering(&self, namespace: &str) -> Option<ChildStores> {
        let all = self.0.lock().ok()?;
        all.iter()
            .find(|s| s.scope.as_deref().is_none_or(|scope| scope == namespace))
            .cloned()
    }
}

/// A model's serving children that it controls, by name.
pub(super) struct Children {
    /// Its Deployments (the stable track's and the canary's).
    pub deployments: BTreeMap<String, Deployment>,
    /// Its Services.
    pub services: BTreeMap<String, Service>,
    /// Its HPA.
    pub hpas: BTreeMap<String, HorizontalPodAutoscaler>,
}

/// Where a pass reads one model's children from.
pub(super) struct ModelChildren<'a> {
    /// The model's namespace.
    pub namespace: &'a str,
    /// The model's name (the value of its children's model label).
    pub model: &'a str,
    /// The model, as the owner its children name.
    pub owner: Owner<'a>,
}

/// The model caches' Jobs or claims in `namespace` that `uid` is a user of
/// (an owner reference of the object), from the cache where a controller
/// watches them, else listed. A cached copy may lag: what a pass does with it
/// must be checked against the live object.
pub(super) async fn cache_objects_used_by<K>(
    ctx: &Context,
    store: Option<&Store<K>>,
    namespace: &str,
    uid: &str,
) -> Result<Vec<K>>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let used = |o: &K| o.owner_references().iter().any(|r| r.uid == uid);
    if let Some(store) = store
        && let Some(Ok(())) = store.wait_until_ready().now_or_never()
    {
        let found = store.state_filter(|o| {
            o.meta().namespace.as_deref() == Some(namespace)
                && o.labels().contains_key(CACHE_LABEL)
                && used(o)
        });
        return Ok(found.into_iter().map(|o| K::clone(&o)).collect());
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let listed = api.list(&ListParams::default().labels(CACHE_LABEL)).await?;
    Ok(listed.items.into_iter().filter(used).collect())
}

impl ModelChildren<'_> {
    /// The model's children, from the watches' caches where a controller
    /// watches its namespace, else listed.
    pub async fn observe(&self, ctx: &Context, caches: &ChildCaches) -> Result<Children> {
        let stores = caches.covering(self.namespace);
        let stores = stores.as_ref();
        Ok(Children {
            deployments: self.read(ctx, stores.map(|s| &s.deployments), true).await?,
            services: self.read(ctx, stores.map(|s| &s.services), true).await?,
            hpas: self.read(ctx, stores.map(|s| &s.hpas), true).await?,
        })
    }

    /// The model's serving pods (owned by its Deployments' ReplicaSets), from
    /// the cache (trimmed by [`trim_pod`]) where a controller watches them.
    pub async fn pods(&self, ctx: &Context, caches: &ChildCaches) -> Result<Vec<ServingPod>> {
        let stores = caches.covering(self.namespace);
        let pods = self.read(ctx, stores.as_ref().map(|s| &s.pods), false);
        Ok(pods.await?.into_values().collect())
    }

    /// The model's `K`s, only those it controls when `owned`.
    async fn read<K>(
        &self,
        ctx: &Context,
        store: Option<&Store<K>>,
        owned: bool,
    ) -> Result<BTreeMap<String, K>>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug,
    {
        // A cache that has not finished its first list is not waited for:
        // the pass lists instead (only just after the start).
        if let Some(store) = store
            && let Some(Ok(())) = store.wait_until_ready().now_or_never()
        {
            let found = store.state_filter(|o| self.holds(o, owned));
            return Ok(found
                .into_iter()
                .map(|o| (o.name_any(), K::clone(&o)))
                .collect());
        }
        let api: Api<K> = Api::namespaced(ctx.client.clone(), self.namespace);
        let selector = ListParams::default().labels(&format!("{MODEL_LABEL}={}", self.model));
        let listed = api.list(&selector).await?.items;
        Ok(listed
            .into_iter()
            .filter(|o| !owned || self.owner.controls(o))
            .map(|o| (o.name_any(), o))
            .collect())
    }

    /// Whether `child` is one of this model's, as the list's selector and,
    /// when `owned`, the owner reference say.
    fn holds<K: Resource>(&self, child: &K, owned: bool) -> bool {
        child.meta().namespace.as_deref() == Some(self.namespace)
            && child.labels().get(MODEL_LABEL).map(String::as_str) == Some(self.model)
            && (!owned || self.owner.controls(child))
    }
}

/// Keeps of a serving pod what the model's status reads: its name,
/// namespace, model label and deletion mark, its node, its containers' names
/// and limits (decoded so, see [`ServingPod`]), and of its status the phase,
/// the scheduler's condition and how each container runs
/// ([`trim_container_status`]). The rest (the other labels, the owners, the
/// other conditions, addresses, image digests) would only take memory.
pub(super) fn trim_pod(pod: &mut ServingPod) {
    pod.status = pod.status.take().map(|s| PodStatus {
        phase: s.phase,
        // Only the scheduler's refusal is read (see `status::unschedulable`).
        conditions: s.conditions.map(|cs| {
            cs.into_iter()
                .filter(|c| c.type_ == "PodScheduled")
                .collect()
        }),
        reason: s.reason,
        message: s.message,
        container_statuses: s
            .container_statuses
            .map(|cs| cs.into_iter().map(trim_container_status).collect()),
        init_container_statuses: s
            .init_container_statuses
            .map(|cs| cs.into_iter().map(trim_container_status).collect()),
        ..PodStatus::default()
    });
    let meta = &mut pod.metadata;
    meta.annotations = None;
    meta.owner_references = None;
    meta.generate_name = None;
    if let Some(labels) = meta.labels.as_mut() {
        labels.retain(|k, _| k == MODEL_LABEL);
    }
}

/// Keeps of a container's status how it runs and ran (its state, the last
/// one, readiness and restarts), and its image only while it waits (the
/// image a failed pull names).
fn trim_container_status(c: ContainerStatus) -> ContainerStatus {
    let waiting = c.state.as_ref().is_some_and(|s| s.waiting.is_some());
    ContainerStatus {
        image: if waiting { c.image } else { String::new() },
        last_state: c.last_state,
        name: c.name,
        ready: c.ready,
        restart_count: c.restart_count,
        started: c.started,
        state: c.state,
        ..ContainerStatus::default()
    }
}

/// Keeps of a serving Deployment its metadata, status, replica count and
/// selector (what the status reads), and the digest of the rest
/// ([`crate::digest`]): the pod template is most of its size.
pub(super) fn trim_deployment(deployment: &mut Deployment) {
    crate::digest::keep_digest(deployment, |d| {
        if let Some(spec) = d.spec.as_mut() {
            spec.template = Default::default();
        }
    });
}

/// Keeps of a Service or an HPA its metadata and status, and the digest of
/// its spec ([`crate::digest`]): no pass reads more of them.
pub(super) fn trim_service(service: &mut Service) {
    crate::digest::keep_digest(service, |s| s.spec = None);
}

/// See [`trim_service`].
pub(super) fn trim_hpa(hpa: &mut HorizontalPodAutoscaler) {
    crate::digest::keep_digest(hpa, |h| h.spec = None);
}
