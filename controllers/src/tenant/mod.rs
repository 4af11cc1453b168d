//! The Tenant reconciler: namespaces, quotas, limit ranges, network policies,
//! role bindings and admission policies of an organisation.
//!
//! The reconcile's stages, each in its file: `validate.rs` checks the spec
//! before anything is written, `apply.rs` writes the tenant's children (with
//! `rebalance.rs` splitting its quota over its namespaces) and releases
//! namespaces, `status.rs` computes and writes the Tenant's status.

pub mod admission;
mod apply;
pub mod build;
mod cel;
pub mod quota;
mod quota_view;
mod rebalance;
mod status;
mod validate;

pub use rebalance::quota_counted;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use aleph_crds::keys::{FINALIZER, TENANT_LABEL};
use aleph_crds::tenant::Tenant;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{Event, LimitRange, Namespace, ResourceQuota};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use kube::api::{Api, ListParams};
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::context::Context;
use crate::error::Result;
use crate::runner::{Reconcile, Watch};
use build::QUOTA_NAME;

/// How long a refusal keeps asking for headroom while its ReplicaSet or Job
/// still lacks pods. Those controllers retry a refused pod with a backoff that
/// doubles from 5 ms up to 1000 s, so a demand must outlive the longest wait
/// between two retries, or its headroom would go back before the retry.
const DEMAND_WINDOW_SECONDS: i64 = 1200;
/// How soon a Tenant with open demands looks again (an answered or expired
/// demand gives its headroom back to the even split).
const DEMAND_WINDOW_REQUEUE: Duration = Duration::from_secs(30);
/// How soon a Tenant whose limits are moving looks again without an event.
const MOVING_REQUEUE: Duration = Duration::from_secs(2);
/// A hard limit on an extended resource no pod requests: adding or removing
/// it changes the quota's hard limits without changing what the quota
/// admits, which is what makes the quota controller count the quota again.
pub const RECOUNT_MARKER: &str = "requests.aleph.dev/recount";
/// How soon a Tenant looks again whose admission rules the API server does
/// not enforce yet (it loads new bindings about once a second).
const ADMISSION_REQUEUE: Duration = Duration::from_millis(500);
/// How long a Tenant that is not Ready waits for a look without a watch event.
const NOT_READY_REQUEUE: Duration = Duration::from_secs(10);
/// How long to give the quota controller between two such requests.
const RECOUNT_INTERVAL: chrono::TimeDelta = chrono::TimeDelta::seconds(10);

/// The tenants' children the controller watches anyway, cached so that a
/// pass reads them without a request, each kind with its index by tenant
/// ([`Children`]). The ResourceQuotas are read with the operator's own
/// writes laid over them ([`quota_view`]): the rebalance must see every
/// quota it wrote, even before the cache does.
struct Cache {
    /// The controller's own cache of the Tenants (the autoscaler reads it).
    tenants: Store<DeserializeGuard<Tenant>>,
    namespaces: Children<Namespace>,
    quotas: Children<ResourceQuota>,
    limit_ranges: Children<LimitRange>,
    network_policies: Children<NetworkPolicy>,
    role_bindings: Children<RoleBinding>,
    /// The admin owners' ClusterRole and its binding.
    cluster_roles: Children<ClusterRole>,
    cluster_role_bindings: Children<ClusterRoleBinding>,
    admission_policies: Children<ValidatingAdmissionPolicy>,
    admission_bindings: Children<ValidatingAdmissionPolicyBinding>,
    /// Pod creations refused by a tenant quota (FailedCreate events of
    /// ReplicaSets and Jobs): where the tenant's headroom is needed.
    refusals: Store<Event>,
}

/// What the Tenant controller keeps between reconciles, in the context's
/// per-controller state.
#[derive(Debug, Default)]
pub struct TenantState {
    /// The caches of the children it watches (set when the controller is
    /// built; a reconcile without them lists).
    cache: std::sync::OnceLock<Cache>,
    /// The operator's own user name, as the API server sees it.
    operator_user: tokio::sync::OnceCell<String>,
    /// Set once the cluster-wide admission policies are applied (once per
    /// context; the reconciles that start together wait for the first).
    cluster_policies_applied: tokio::sync::OnceCell<()>,
    /// The shared admission policies the tenants' bindings name.
    shared_policies: std::sync::OnceLock<Vec<ValidatingAdmissionPolicy>>,
    /// The quotas written that the cache may not show yet.
    quota_ledger: quota_view::QuotaLedger,
    /// The tenants (by uid) whose admission rules the API server was found
    /// to enforce.
    admission_proved: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl TenantState {
    fn admission_proved(&self, uid: &str) -> bool {
        self.admission_proved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(uid)
    }

    fn prove_admission(&self, uid: &str) {
        self.admission_proved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(uid.to_string());
    }

    fn forget_admission(&self, uid: &str) {
        self.admission_proved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(uid);
    }
}

/// The cache of one kind of the tenants' children, and which of them are
/// whose ([`tenant_of`]).
struct Children<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    index: crate::index::OwnerIndex<K>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").finish_non_exhaustive()
    }
}

/// The Tenant controller, watching what it makes. The caches of its watches
/// go into `ctx` for the reconciles to read.
pub fn controller(ctx: &Context, watch: &Watch<'_>) -> Controller<DeserializeGuard<Tenant>> {
    let client = &ctx.client;
    let owned = || crate::runner::watch_config().labels(TENANT_LABEL);
    // Namespaces and quotas are kept whole (the passes read them); the
    // other children only as their metadata and the digest of the rest
    // (see `crate::digest`), without their labels: a pass finds them by
    // their owner reference ([`belongs`]).
    use crate::runner::untrimmed;
    let (namespaces, namespace_stream) = cluster_watch(client, owned(), untrimmed);
    let tenant_of_namespace = namespaces.store.clone();
    let (quotas, quota_stream) = cluster_watch(client, owned(), untrimmed);
    let (limit_ranges, limit_range_stream) =
        cluster_watch(client, owned(), |o: &mut LimitRange| {
            keep_unlabelled(o, |o| o.spec = None)
        });
    let (network_policies, network_policy_stream) =
        cluster_watch(client, owned(), |o: &mut NetworkPolicy| {
            keep_unlabelled(o, |o| o.spec = None)
        });
    let (role_bindings, role_binding_stream) =
        cluster_watch(client, owned(), |o: &mut RoleBinding| {
            keep_unlabelled(o, |o| o.subjects = None)
        });
    let (cluster_roles, cluster_role_stream) =
        cluster_watch(client, owned(), |o: &mut ClusterRole| {
            keep_unlabelled(o, |o| {
                o.rules = None;
                o.aggregation_rule = None;
            })
        });
    let (cluster_role_bindings, cluster_role_binding_stream) =
        cluster_watch(client, owned(), |o: &mut ClusterRoleBinding| {
            keep_unlabelled(o, |o| o.subjects = None)
        });
    let (admission_policies, admission_policy_stream) =
        cluster_watch(client, owned(), |o: &mut ValidatingAdmissionPolicy| {
            // The status is the API server's type check of the rules:
            // warnings that no pass reads, often larger than the rest.
            o.status = None;
            keep_unlabelled(o, |o| o.spec = None)
        });
    let (admission_bindings, admission_binding_stream) = cluster_watch(
        client,
        owned(),
        |o: &mut ValidatingAdmissionPolicyBinding| keep_unlabelled(o, |o| o.spec = None),
    );
    // Only FailedCreate events, and only the tenant quota's refusals wake a
    // Tenant: the reconcile moves headroom to the refused namespace.
    let failed_creates = crate::runner::watch_config().fields("reason=FailedCreate");
    let (refusals, refusal_stream) =
        crate::runner::cached_watch(Api::all(client.clone()), failed_creates, untrimmed);
    let controller = crate::runner::primary_controller(Api::all(client.clone()), watch.primary());
    let tenants = controller.store();
    if ctx
        .state::<TenantState>()
        .cache
        .set(Cache {
            tenants: tenants.clone(),
            namespaces,
            quotas,
            limit_ranges,
            network_policies,
            role_bindings,
            cluster_roles,
            cluster_role_bindings,
            admission_policies,
            admission_bindings,
            refusals,
        })
        .is_err()
    {
        tracing::warn!(
            "a second Tenant controller on one context: its reconciles read the first one's caches"
        );
    }
    // A child wakes its Tenant through its owner reference, as `owns` would;
    // but `owns` names the owner in the child's namespace, and a Tenant has
    // none: the scheduler would take the Tenant woken by a namespaced child
    // for another object than the Tenant woken by itself, and run two
    // passes of one Tenant at once, each with its own requeue.
    controller
        .watches_stream(quota_stream, owning_tenant)
        .watches_stream(limit_range_stream, owning_tenant)
        .watches_stream(network_policy_stream, owning_tenant)
        .watches_stream(role_binding_stream, owning_tenant)
        .watches_stream(cluster_role_stream, owning_tenant)
        .watches_stream(cluster_role_binding_stream, owning_tenant)
        .watches_stream(
            admission_policy_stream,
            move |policy: ValidatingAdmissionPolicy| {
                // A tenant's own policy (of an earlier version) wakes its tenant; a
                // shared one (no owner) any one tenant, whose pass puts it back.
                match policy
                    .owner_references()
                    .iter()
                    .find(|o| o.kind == "Tenant")
                {
                    Some(owner) => Some(ObjectRef::new(&owner.name)),
                    None => tenants
                        .state()
                        .first()
                        .map(|t| ObjectRef::new(&t.name_any())),
                }
            },
        )
        .watches_stream(admission_binding_stream, owning_tenant)
        .watches_stream(namespace_stream, |ns: Namespace| {
            ns.labels().get(TENANT_LABEL).map(|t| ObjectRef::new(t))
        })
        .watches_stream(refusal_stream, move |event: Event| {
            let refused = event
                .message
                .as_deref()
                .is_some_and(|m| m.contains(&format!("exceeded quota: {QUOTA_NAME},")));
            if !refused {
                return None;
            }
            let ns = tenant_of_namespace.get(&ObjectRef::new(event.namespace()?.as_str()))?;
            ns.labels().get(TENANT_LABEL).map(|t| ObjectRef::new(t))
        })
}

/// The Tenant that controls `child` (its controller owner reference), named
/// without a namespace as every cluster-scoped object is.
fn owning_tenant<K: Resource>(child: K) -> Option<ObjectRef<DeserializeGuard<Tenant>>> {
    child
        .owner_references()
        .iter()
        .find(|r| {
            r.controller == Some(true)
                && r.kind == Tenant::kind(&())
                && r.api_version == Tenant::api_version(&())
        })
        .map(|r| ObjectRef::new(&r.name))
}

/// The Tenant controller's cache of the Tenants, for the autoscaler (which
/// keeps no copy of its own); `None` until the controller is built.
pub(crate) fn tenant_cache(ctx: &Context) -> Option<Store<DeserializeGuard<Tenant>>> {
    ctx.state::<TenantState>()
        .cache
        .get()
        .map(|c| c.tenants.clone())
}

/// A cached watch of the tenants' `K`s in the whole cluster that `config`
/// selects, trimmed by `trim` and indexed by tenant (see
/// [`crate::runner::indexed_watch`]).
fn cluster_watch<K>(
    client: &kube::Client,
    config: kube::runtime::watcher::Config,
    trim: fn(&mut K),
) -> (
    Children<K>,
    impl futures::Stream<Item = Result<K, kube::runtime::watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, index, stream) =
        crate::runner::indexed_watch(Api::all(client.clone()), config, trim, tenant_of);
    (Children { store, index }, stream)
}

impl Reconcile for Tenant {
    const CONTROLLER: &'static str = "tenant";

    fn conditions(&self) -> &[aleph_crds::Condition] {
        crate::runner::status_conditions(self.status.as_ref(), |s| &s.conditions)
    }

    async fn reconcile(tenant: Arc<Self>, ctx: Arc<Context>) -> Result<Action> {
        let api: Api<Tenant> = Api::all(ctx.client.clone());
        let adding = tenant.meta().deletion_timestamp.is_none()
            && !tenant.finalizers().iter().any(|f| f == FINALIZER);
        let action = crate::error::from_finalizer(
            finalizer(&api, FINALIZER, Arc::clone(&tenant), |event| async {
                match event {
                    FinalizerEvent::Apply(t) => apply::apply(&t, &ctx).await,
                    FinalizerEvent::Cleanup(t) => apply::cleanup(&t, &ctx).await,
                }
            })
            .await,
        )?;
        if !adding {
            return Ok(action);
        }
        // The finalizer is in place now (the helper ends its pass once it has
        // written it, for the watch to bring the Tenant back): the children
        // are written in this pass rather than a debounce and a queue turn
        // later. A deletion from now on waits for their release.
        let mut with_finalizer = (*tenant).clone();
        with_finalizer.finalizers_mut().push(FINALIZER.to_string());
        apply::apply(&with_finalizer, &ctx).await
    }
}

fn by_name<K: Resource>(items: Vec<K>) -> BTreeMap<(String, String), K> {
    items
        .into_iter()
        .map(|o| ((o.namespace().unwrap_or_default(), o.name_any()), o))
        .collect()
}

/// Trims a cached child as [`crate::digest::keep_digest`] does, `strip`
/// and its labels with it (the digest covers them; a pass finds the child
/// by its owner, [`belongs`]).
fn keep_unlabelled<K: Resource + serde::Serialize>(obj: &mut K, strip: impl FnOnce(&mut K)) {
    crate::digest::keep_digest(obj, |o| {
        strip(o);
        o.meta_mut().labels = None;
    });
}

/// Whether `obj` is one of `tenant`'s children: labelled with it, or (a
/// cached copy kept without its labels) owned by it.
fn belongs<K: Resource>(obj: &K, tenant: &str) -> bool {
    tenant_name(obj) == Some(tenant)
}

/// The tenant whose child `obj` is ([`belongs`]).
fn tenant_name<K: Resource>(obj: &K) -> Option<&str> {
    match obj.meta().labels.as_ref() {
        Some(labels) => labels.get(TENANT_LABEL).map(String::as_str),
        None => obj
            .owner_references()
            .iter()
            .find(|r| r.kind == Tenant::kind(&()) && r.api_version == Tenant::api_version(&()))
            .map(|r| r.name.as_str()),
    }
}

/// [`tenant_name`], as the key of the caches' index.
fn tenant_of<K: Resource>(obj: &K) -> Option<String> {
    tenant_name(obj).map(str::to_string)
}

/// The tenant's objects in `children`' cache, once it has been filled and
/// indexed: those its index gives the tenant, checked ([`crate::index`]).
fn cached<K>(children: &Children<K>, tenant: &str) -> Option<BTreeMap<(String, String), K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    futures::FutureExt::now_or_never(children.store.wait_until_ready())?.ok()?;
    Some(by_name(
        children
            .index
            .of(tenant)?
            .into_iter()
            .filter(|o| belongs(o.as_ref(), tenant))
            .map(|o| (*o).clone())
            .collect(),
    ))
}

/// The tenant's objects of kind `K`: from the controller's cache when it has
/// one (`pick` chooses it) and it is filled, else listed.
async fn children<K>(
    ctx: &Context,
    pick: impl Fn(&Cache) -> &Children<K>,
    tenant: &str,
) -> Result<BTreeMap<(String, String), K>>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + 'static,
{
    if let Some(found) = ctx
        .state::<TenantState>()
        .cache
        .get()
        .and_then(|c| cached(pick(c), tenant))
    {
        return Ok(found);
    }
    list_labelled(&ctx.client, tenant).await
}

/// The tenant's ResourceQuotas: from the cache with the operator's own
/// writes laid over it, or listed when that cannot be trusted.
async fn tenant_quotas(ctx: &Context, tenant: &str) -> Result<quota_view::Quotas> {
    let state = ctx.state::<TenantState>();
    let cached = state.cache.get().and_then(|c| cached(&c.quotas, tenant));
    if let Some(view) = state.quota_ledger.view(tenant, cached) {
        return Ok(view);
    }
    let listed = list_labelled(&ctx.client, tenant).await?;
    state.quota_ledger.listed(tenant, &listed);
    Ok(listed)
}

async fn list_labelled<K>(
    client: &kube::Client,
    tenant: &str,
) -> Result<BTreeMap<(String, String), K>>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default().labels(&format!("{TENANT_LABEL}={tenant}")))
        .await?;
    Ok(by_name(list.items))
}

/// A Tenant from YAML, with a UID (so its children get an owner reference).
#[cfg(test)]
fn tenant_from_yaml(yaml: &str) -> Tenant {
    let mut t: Tenant = serde_saphyr::from_str(yaml).expect("fixture parses");
    t.metadata.uid = Some("uid-1".into());
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespaced_child_wakes_its_tenant_by_the_tenants_own_name() {
        let tenant = tenant_from_yaml(
            "apiVersion: aleph.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec: {owners: [{kind: User, name: alice}], namespaces: [ml]}\n",
        );
        let child = build::limit_range(&tenant, "acme-ml");
        assert_eq!(child.namespace().as_deref(), Some("acme-ml"));
        let woken = owning_tenant(child.clone()).expect("the child names its tenant");
        // The same key as the Tenant's own events: one object to the scheduler.
        assert_eq!(woken, ObjectRef::new("acme"));
        assert_eq!(woken.namespace, None);

        // Only a controlling Tenant counts.
        let mut other = child.clone();
        for r in other.metadata.owner_references.iter_mut().flatten() {
            r.controller = None;
        }
        assert_eq!(owning_tenant(other), None);
        let mut other = child;
        for r in other.metadata.owner_references.iter_mut().flatten() {
            r.kind = "Plugin".into();
        }
        assert_eq!(owning_tenant(other), None);
    }
}
