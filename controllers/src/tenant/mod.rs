//! The Tenant reconciler: namespaces, quotas, limit ranges, network policies,
//! role bindings and admission policies of an organisation.

pub mod admission;
pub mod build;
pub mod quota;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aleph_crds::common::{ConditionStatus, DeletionPolicy};
use aleph_crds::tenant::{ResourceUsage, Tenant, TenantStatus};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{Event, LimitRange, Namespace, ResourceQuota};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::apply::{
    FINALIZER, MANAGER, TENANT_LABEL, apply_if_changed, delete_ignoring_missing, ignore_missing,
    patch_status_if_changed,
};
use crate::conditions::{NewCondition, set_condition};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::runner::{Reconcile, Watch};
use build::QUOTA_NAME;
use quota::Milli;

/// Namespace label set once the namespace's ResourceQuota exists; until then
/// the quota guard policy refuses pods there, so nothing escapes the quota.
pub const QUOTA_READY_LABEL: &str = "aleph.dev/quota";
/// The policy refusing pods in tenant namespaces whose quota is not in place yet.
pub const QUOTA_GUARD_POLICY: &str = "aleph-tenant-quota-guard";

/// The tenants' children the controller watches anyway, cached so that a
/// pass reads them without a request. ResourceQuotas are not among them: the
/// rebalance must see every quota of the tenant as it is now, and a quota
/// missing from a cache that lags behind its creation would let the others
/// grow past the tenant's share.
pub struct Cache {
    namespaces: Store<Namespace>,
    limit_ranges: Store<LimitRange>,
    network_policies: Store<NetworkPolicy>,
    role_bindings: Store<RoleBinding>,
    admission_policies: Store<ValidatingAdmissionPolicy>,
    admission_bindings: Store<ValidatingAdmissionPolicyBinding>,
    /// Pod creations refused by a tenant quota (FailedCreate events of
    /// ReplicaSets and Jobs): where the tenant's headroom is needed.
    refusals: Store<Event>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").finish_non_exhaustive()
    }
}

/// The Tenant's status without `gatewayUsage`, which the autoscaler's usage
/// summary writes (its own field manager): the reconciler neither compares
/// nor writes it back from a possibly older read.
fn own_status(tenant: &Tenant) -> Option<TenantStatus> {
    tenant
        .status
        .clone()
        .map(TenantStatus::without_gateway_usage)
}

/// The Tenant controller, watching what it makes. The caches of its watches
/// go into `ctx` for the reconciles to read.
pub fn controller(ctx: &Context, watch: &Watch<'_>) -> Controller<DeserializeGuard<Tenant>> {
    let client = &ctx.client;
    let owned = || crate::runner::watch_config().labels(TENANT_LABEL);
    let (namespaces, namespace_stream) = crate::runner::cached_watch(
        Api::<Namespace>::all(client.clone()),
        owned(),
        crate::runner::untrimmed,
    );
    let (limit_ranges, limit_range_stream) = crate::runner::cached_watch(
        Api::<LimitRange>::all(client.clone()),
        owned(),
        crate::runner::untrimmed,
    );
    let (network_policies, network_policy_stream) = crate::runner::cached_watch(
        Api::<NetworkPolicy>::all(client.clone()),
        owned(),
        crate::runner::untrimmed,
    );
    let (role_bindings, role_binding_stream) = crate::runner::cached_watch(
        Api::<RoleBinding>::all(client.clone()),
        owned(),
        crate::runner::untrimmed,
    );
    let (admission_policies, admission_policy_stream) = crate::runner::cached_watch(
        Api::<ValidatingAdmissionPolicy>::all(client.clone()),
        owned(),
        crate::runner::untrimmed,
    );
    let (admission_bindings, admission_binding_stream) = crate::runner::cached_watch(
        Api::<ValidatingAdmissionPolicyBinding>::all(client.clone()),
        owned(),
        crate::runner::untrimmed,
    );
    // Only FailedCreate events, and only the tenant quota's refusals wake a
    // Tenant: the reconcile moves headroom to the refused namespace.
    let (refusals, refusal_stream) = crate::runner::cached_watch(
        Api::<Event>::all(client.clone()),
        crate::runner::watch_config().fields("reason=FailedCreate"),
        crate::runner::untrimmed,
    );
    let tenant_of_namespace = namespaces.clone();
    if ctx
        .tenant_cache
        .set(Cache {
            namespaces,
            limit_ranges,
            network_policies,
            role_bindings,
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
    Controller::new(
        Api::<DeserializeGuard<Tenant>>::all(client.clone()),
        watch.primary(),
    )
    .owns(Api::<ResourceQuota>::all(client.clone()), owned())
    .owns_stream(limit_range_stream)
    .owns_stream(network_policy_stream)
    .owns_stream(role_binding_stream)
    .owns_stream(admission_policy_stream)
    .owns_stream(admission_binding_stream)
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

impl Reconcile for Tenant {
    const CONTROLLER: &'static str = "tenant";

    fn conditions(&self) -> &[aleph_crds::Condition] {
        self.status
            .as_ref()
            .map_or(&[], |s| s.conditions.as_slice())
    }

    async fn reconcile(tenant: Arc<Self>, ctx: Arc<Context>) -> Result<Action> {
        let api: Api<Tenant> = Api::all(ctx.client.clone());
        crate::error::from_finalizer(
            finalizer(&api, FINALIZER, tenant, |event| async {
                match event {
                    FinalizerEvent::Apply(t) => apply(&t, &ctx).await,
                    FinalizerEvent::Cleanup(t) => cleanup(&t, &ctx).await,
                }
            })
            .await,
        )
    }
}

/// The operator's own user name, as the API server sees it (a ServiceAccount
/// in the chart, whatever the kubeconfig says elsewhere): the owners' policy
/// exempts it, so that the operator can still write what it owns.
static OPERATOR_USER: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

async fn operator_user(client: &kube::Client) -> Result<String> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    OPERATOR_USER
        .get_or_try_init(|| async {
            let reviews: Api<SelfSubjectReview> = Api::all(client.clone());
            let review = reviews
                .create(&PostParams::default(), &SelfSubjectReview::default())
                .await?;
            review
                .status
                .and_then(|s| s.user_info)
                .and_then(|u| u.username)
                .filter(|u| !u.is_empty())
                .ok_or_else(|| {
                    Error::Serialization("the API server did not say who the operator is".into())
                })
        })
        .await
        .cloned()
}

static CLUSTER_POLICIES_APPLIED: AtomicBool = AtomicBool::new(false);

/// The cluster-wide admission policies every tenant relies on, applied once per process.
async fn ensure_cluster_policies(client: &kube::Client, operator: &str) -> Result<()> {
    if CLUSTER_POLICIES_APPLIED.load(Ordering::SeqCst) {
        return Ok(());
    }
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    for (policy, binding) in [
        build::prevent_deletion_policy()?,
        quota_guard_policy()?,
        admission::owner_namespaces_policy(operator)?,
    ] {
        let name = policy.name_any();
        apply_if_changed(&policies, policies.get_opt(&name).await?.as_ref(), &policy).await?;
        apply_if_changed(&bindings, bindings.get_opt(&name).await?.as_ref(), &binding).await?;
    }
    CLUSTER_POLICIES_APPLIED.store(true, Ordering::SeqCst);
    Ok(())
}

/// Whether a namespace labelled with the tenant but not in `spec.namespaces`
/// is one an owner created (adopted already, or not made by the operator),
/// rather than one taken off the list.
fn owner_created(ns: &Namespace) -> bool {
    let labels = ns.labels();
    labels
        .get(build::ORIGIN_LABEL)
        .is_some_and(|o| o == "owner")
        || labels
            .get(crate::apply::MANAGED_BY)
            .is_none_or(|m| m != MANAGER)
}

fn quota_guard_policy() -> Result<(ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding)> {
    let meta = json!({ "name": QUOTA_GUARD_POLICY, "labels": crate::apply::standard_labels("tenant", "all") });
    let policy = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": meta,
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": { "resourceRules": [{ "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"] }] },
            "validations": [{
                "expression": format!("has(namespaceObject.metadata.labels) && '{QUOTA_READY_LABEL}' in namespaceObject.metadata.labels && namespaceObject.metadata.labels['{QUOTA_READY_LABEL}'] == 'ready'"),
                "message": "the tenant quota of this namespace is not in place yet: retry in a few seconds",
                "reason": "Forbidden",
            }],
        },
    }))
    .map_err(|e| Error::Serialization(e.to_string()))?;
    let binding = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": meta,
        "spec": {
            "policyName": QUOTA_GUARD_POLICY,
            "validationActions": ["Deny"],
            "matchResources": { "namespaceSelector": { "matchExpressions": [{ "key": TENANT_LABEL, "operator": "Exists" }] } },
        },
    }))
    .map_err(|e| Error::Serialization(e.to_string()))?;
    Ok((policy, binding))
}

fn by_name<K: Resource>(items: Vec<K>) -> BTreeMap<(String, String), K> {
    items
        .into_iter()
        .map(|o| ((o.namespace().unwrap_or_default(), o.name_any()), o))
        .collect()
}

/// The tenant's objects in `store`, once the store has been filled.
fn cached<K>(store: &Store<K>, tenant: &str) -> Option<BTreeMap<(String, String), K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    futures::FutureExt::now_or_never(store.wait_until_ready())?.ok()?;
    Some(by_name(
        store
            .state()
            .into_iter()
            .filter(|o| o.labels().get(TENANT_LABEL).map(String::as_str) == Some(tenant))
            .map(|o| (*o).clone())
            .collect(),
    ))
}

/// The tenant's objects of kind `K`: from the controller's cache when it has
/// one (`pick` chooses it) and it is filled, else listed.
async fn children<K>(
    ctx: &Context,
    pick: impl Fn(&Cache) -> &Store<K>,
    tenant: &str,
) -> Result<BTreeMap<(String, String), K>>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + 'static,
{
    if let Some(found) = ctx.tenant_cache.get().and_then(|c| cached(pick(c), tenant)) {
        return Ok(found);
    }
    list_labelled(&ctx.client, tenant).await
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

async fn apply(tenant: &Tenant, ctx: &Context) -> Result<Action> {
    let client = &ctx.client;
    let name = tenant.name_any();
    let generation = tenant.metadata.generation;
    let operator = operator_user(client).await?;
    ensure_cluster_policies(client, &operator).await?;

    let hard = quota::tenant_hard(tenant.spec.plan, tenant.spec.quota.as_ref())
        .map_err(Error::InvalidSpec);
    let hard = match hard {
        Ok(hard) => hard,
        Err(error) => {
            let mut status = tenant.status.clone().unwrap_or_default();
            set_condition(
                &mut status.conditions,
                NewCondition::no("Ready", "InvalidSpec", error.to_string()),
                generation,
            );
            status.observed_generation = generation;
            patch_status_if_changed(
                &Api::<Tenant>::all(client.clone()),
                tenant,
                own_status(tenant).as_ref(),
                &status.clone().without_gateway_usage(),
            )
            .await?;
            return Err(error);
        }
    };

    let ns_api: Api<Namespace> = Api::all(client.clone());
    let labelled: BTreeMap<String, Namespace> = children(ctx, |c| &c.namespaces, &name)
        .await?
        .into_iter()
        .map(|((_, n), ns)| (n, ns))
        .collect();
    let quotas = list_labelled::<ResourceQuota>(client, &name).await?;
    let desired_names: Vec<String> = tenant
        .spec
        .namespaces
        .iter()
        .map(|n| build::namespace_name(&name, n))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    // Namespaces the owners created, oldest first: adopted while the
    // tenant's namespace count allows (two owners creating at once can both
    // pass admission; the later ones then wait, unadopted, where the owners
    // have no access and the quota guard refuses pods).
    let limit = quota::namespace_limit(tenant.spec.plan, tenant.spec.quota.as_ref());
    let mut owners_namespaces: Vec<&Namespace> = labelled
        .iter()
        .filter(|(n, ns)| {
            !desired_names.contains(n)
                && ns.metadata.deletion_timestamp.is_none()
                && owner_created(ns)
        })
        .map(|(_, ns)| ns)
        .collect();
    owners_namespaces.sort_by_key(|ns| (ns.creation_timestamp(), ns.name_any()));
    let room_for = limit.saturating_sub(desired_names.len());
    let excess: Vec<String> = owners_namespaces
        .iter()
        .skip(room_for)
        .map(|ns| ns.name_any())
        .collect();
    let adopted: Vec<&Namespace> = owners_namespaces.iter().take(room_for).copied().collect();
    let room = admission::NamespaceRoom {
        declared: desired_names.clone(),
        count: desired_names.len() + owners_namespaces.len(),
        limit,
    };

    // Namespaces: create or update ours, never take over somebody else's.
    let mut conflicts = Vec::new();
    let mut ready_namespaces = Vec::new();
    let mut waiting = false;
    let with_quota_label = |mut ns: Namespace| {
        if quotas.contains_key(&(ns.name_any(), QUOTA_NAME.to_string())) {
            ns.labels_mut()
                .insert(QUOTA_READY_LABEL.to_string(), "ready".to_string());
        }
        ns
    };
    for ns_name in &desired_names {
        let observed = match labelled.get(ns_name) {
            Some(ns) => Some(ns.clone()),
            None => ns_api.get_opt(ns_name).await?,
        };
        if let Some(ns) = &observed {
            if ns.labels().get(TENANT_LABEL).is_some_and(|t| t != &name)
                || (ns.labels().get(TENANT_LABEL).is_none())
            {
                conflicts.push(ns_name.clone());
                continue;
            }
            if ns.metadata.deletion_timestamp.is_some() {
                waiting = true;
                continue;
            }
        }
        let desired = with_quota_label(build::namespace(tenant, ns_name)?);
        apply_if_changed(&ns_api, observed.as_ref(), &desired).await?;
        ready_namespaces.push(ns_name.clone());
    }
    let mut newly_adopted = Vec::new();
    for ns in &adopted {
        let ns_name = ns.name_any();
        if !ns.labels().contains_key(build::ORIGIN_LABEL) {
            newly_adopted.push(ns_name.clone());
        }
        let desired = with_quota_label(build::adopted_namespace(tenant, &ns_name)?);
        apply_if_changed(&ns_api, Some(*ns), &desired).await?;
        ready_namespaces.push(ns_name);
    }
    if !newly_adopted.is_empty() {
        ctx.event(
            tenant,
            EventType::Normal,
            "NamespaceAdopted",
            format!(
                "adopted {} (created by an owner): quota, limits, policies and bindings follow",
                newly_adopted.join(", ")
            ),
        )
        .await;
    }

    // Namespaces taken off the list (not those the owners created).
    for (ns_name, ns) in &labelled {
        if desired_names.contains(ns_name)
            || ns.metadata.deletion_timestamp.is_some()
            || owner_created(ns)
        {
            continue;
        }
        release_namespace(&ns_api, ns_name, tenant.spec.deletion_policy).await?;
    }

    // The admin owners' right to create namespaces, while there is room.
    let role_api: Api<ClusterRole> = Api::all(client.clone());
    let role_binding_api: Api<ClusterRoleBinding> = Api::all(client.clone());
    let role_name = build::owner_cluster_role_name(&name);
    match build::owner_cluster_role(tenant, limit > desired_names.len())? {
        Some((role, binding)) => {
            apply_if_changed(
                &role_api,
                role_api.get_opt(&role_name).await?.as_ref(),
                &role,
            )
            .await?;
            apply_if_changed(
                &role_binding_api,
                role_binding_api.get_opt(&role_name).await?.as_ref(),
                &binding,
            )
            .await?;
        }
        None => {
            delete_ignoring_missing(&role_binding_api, &role_name).await?;
            delete_ignoring_missing(&role_api, &role_name).await?;
        }
    }

    // Per-namespace children.
    let limit_ranges = children(ctx, |c| &c.limit_ranges, &name).await?;
    let policies = children(ctx, |c| &c.network_policies, &name).await?;
    let bindings = children(ctx, |c| &c.role_bindings, &name).await?;
    for ns_name in &ready_namespaces {
        let lr = build::limit_range(tenant, ns_name)?;
        let key = (ns_name.clone(), build::LIMIT_RANGE_NAME.to_string());
        apply_if_changed(
            &Api::namespaced(client.clone(), ns_name),
            limit_ranges.get(&key),
            &lr,
        )
        .await?;

        let np_api: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns_name);
        let key = (ns_name.clone(), build::NETWORK_POLICY_NAME.to_string());
        match build::network_policy(tenant, ns_name)? {
            Some(np) => {
                apply_if_changed(&np_api, policies.get(&key), &np).await?;
            }
            None if policies.contains_key(&key) => {
                delete_ignoring_missing(&np_api, build::NETWORK_POLICY_NAME).await?
            }
            None => {}
        }

        let rb_api: Api<RoleBinding> = Api::namespaced(client.clone(), ns_name);
        let desired = build::role_bindings(tenant, ns_name)?;
        let wanted: BTreeSet<String> = desired.iter().map(|rb| rb.name_any()).collect();
        for rb in &desired {
            apply_if_changed(&rb_api, bindings.get(&(ns_name.clone(), rb.name_any())), rb).await?;
        }
        for (ns, rb_name) in bindings.keys() {
            if ns == ns_name && !wanted.contains(rb_name) {
                delete_ignoring_missing(&rb_api, rb_name).await?;
            }
        }
    }

    // Admission rules: the policy for everyone, and the one for the tenant's users.
    let vap_api: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let vapb_api: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    let admission_policies = children(ctx, |c| &c.admission_policies, &name).await?;
    let admission_bindings = children(ctx, |c| &c.admission_bindings, &name).await?;
    // The images the operator itself runs in tenant namespaces (the model
    // cache's downloader) pass the registry rule: the platform's own.
    let operator_images = [ctx.settings.model_cache_image.clone()];
    let desired_policies = [
        (
            admission::admission_policy_name(&name),
            admission::admission_policy(tenant, &operator_images)?,
        ),
        (
            admission::owner_policy_name(&name),
            Some(admission::owner_policy(
                tenant,
                &operator,
                &operator_images,
                &room,
            )?),
        ),
    ];
    for (policy_name, desired) in desired_policies {
        let key = (String::new(), policy_name.clone());
        match desired {
            Some((policy, binding)) => {
                apply_if_changed(&vap_api, admission_policies.get(&key), &policy).await?;
                apply_if_changed(&vapb_api, admission_bindings.get(&key), &binding).await?;
            }
            None => {
                if admission_bindings.contains_key(&key) {
                    delete_ignoring_missing(&vapb_api, &policy_name).await?;
                }
                if admission_policies.contains_key(&key) {
                    delete_ignoring_missing(&vap_api, &policy_name).await?;
                }
            }
        }
    }

    // The tenant-wide quota, split over the namespaces that exist, with the
    // headroom moved to where the quota refused a creation.
    let refusals = ctx
        .tenant_cache
        .get()
        .map(|c| {
            recent_refusals(
                &c.refusals,
                &ready_namespaces,
                k8s_openapi::jiff::Timestamp::now(),
            )
        })
        .unwrap_or_default();
    let demands = demands(client, refusals).await?;
    let rebalance =
        rebalance_quotas(tenant, client, &ready_namespaces, &quotas, &hard, &demands).await?;
    if rebalance.moved {
        ctx.event(
            tenant,
            EventType::Normal,
            "QuotaRebalanced",
            rebalance.note.clone(),
        )
        .await;
    }

    // Status.
    let usage = aggregate_usage(&quotas, &ready_namespaces, &hard);
    let mut status = tenant.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    status.namespaces = ready_namespaces.clone();
    status.namespace_count = i32::try_from(ready_namespaces.len()).unwrap_or(i32::MAX);
    status.gpus = usage
        .get(quota::GPU)
        .map(|u| format!("{}/{}", u.used, u.hard));
    // In place and counted: until the quota controller has filled in a
    // quota's status, the API server refuses every object the quota counts.
    let uncounted: Vec<String> = ready_namespaces
        .iter()
        .filter_map(|ns| {
            match quotas
                .get(&(ns.clone(), QUOTA_NAME.to_string()))
                .map(quota_count)
            {
                None => Some(format!("{ns} (no quota yet)")),
                Some(QuotaCount::Counted) => None,
                Some(QuotaCount::Pending) => Some(format!("{ns} (new limits)")),
                Some(QuotaCount::Missing(resources)) => {
                    Some(format!("{ns} ({})", resources.join(", ")))
                }
            }
        })
        .collect();
    let was_ready = crate::conditions::is_true(&status.conditions, "Ready");
    let ready = if !conflicts.is_empty() {
        NewCondition::no(
            "Ready",
            "NamespaceConflict",
            format!(
                "namespaces {} already exist and belong to somebody else: rename them in spec.namespaces",
                conflicts.join(", ")
            ),
        )
    } else if !excess.is_empty() {
        NewCondition::no(
            "Ready",
            "NamespaceLimitExceeded",
            format!(
                "owners created {} beyond the tenant's {limit} namespaces (spec.quota.namespaces): they are not adopted; delete them or raise the quota",
                excess.join(", ")
            ),
        )
    } else if !uncounted.is_empty() {
        NewCondition::no(
            "Ready",
            "Provisioning",
            format!(
                "waiting for the quota controller to count the quotas of {}: until it does, the API server refuses what they limit there",
                uncounted.join(", ")
            ),
        )
    } else if waiting
        || ready_namespaces.len() != desired_names.len() + adopted.len()
        || rebalance.creating
    {
        NewCondition::no(
            "Ready",
            "Provisioning",
            "creating the tenant's namespaces and quotas",
        )
    } else {
        NewCondition::yes(
            "Ready",
            "Provisioned",
            format!("{} namespaces provisioned", ready_namespaces.len()),
        )
    };
    let is_ready = ready.status == ConditionStatus::True;
    let was_over = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.reason == "NamespaceLimitExceeded");
    if !excess.is_empty() && !was_over {
        ctx.event(
            tenant,
            EventType::Warning,
            "NamespaceLimitExceeded",
            ready.message.clone(),
        )
        .await;
    }
    set_condition(&mut status.conditions, ready, generation);
    let exhausted: Vec<String> = usage
        .iter()
        .filter(|(r, u)| hard.get(r.as_str()).is_some_and(|h| *h > 0) && u.used == u.hard)
        .map(|(r, u)| format!("{r} ({}/{})", u.used, u.hard))
        .collect();
    let was_exhausted = crate::conditions::is_true(&status.conditions, "QuotaExhausted");
    let exhausted_condition = if exhausted.is_empty() {
        NewCondition::no(
            "QuotaExhausted",
            "WithinQuota",
            "usage is below the tenant quota",
        )
    } else {
        NewCondition::yes(
            "QuotaExhausted",
            "QuotaExhausted",
            format!(
                "the tenant uses all of {}: raise spec.quota or free resources",
                exhausted.join(", ")
            ),
        )
    };
    let note = exhausted_condition.message.clone();
    set_condition(&mut status.conditions, exhausted_condition, generation);
    status.usage = usage;
    let changed = patch_status_if_changed(
        &Api::<Tenant>::all(client.clone()),
        tenant,
        own_status(tenant).as_ref(),
        &status.clone().without_gateway_usage(),
    )
    .await?;
    if changed && is_ready && !was_ready {
        ctx.event(
            tenant,
            EventType::Normal,
            "TenantProvisioned",
            format!("{} namespaces provisioned", status.namespace_count),
        )
        .await;
    }
    if changed && !exhausted.is_empty() && !was_exhausted {
        ctx.event(tenant, EventType::Warning, "QuotaExhausted", note)
            .await;
    }
    // What a Tenant waits for wakes it through the watches: namespaces turning
    // Active, quotas created, rewritten and counted. The requeue is for what
    // no watch shows (the next recount request) and a safety net.
    Ok(if rebalance.moving {
        // Lowered limits reach the quotas' status (which admission reads) a
        // moment later; the raise follows then. Their watch wakes the Tenant
        // first; this is the safety net.
        Action::requeue(MOVING_REQUEUE)
    } else if is_ready {
        // Refusals wake the Tenant through the events watch.
        Action::requeue(if demands.is_empty() {
            Duration::from_secs(3600)
        } else {
            DEMAND_WINDOW_REQUEUE
        })
    } else {
        Action::requeue(NOT_READY_REQUEUE)
    })
}

/// Deletes a namespace the tenant no longer lists, or with Retain lets it go
/// (drops the tenant's labels so no policy of the tenant applies any more).
async fn release_namespace(api: &Api<Namespace>, name: &str, policy: DeletionPolicy) -> Result<()> {
    match policy {
        DeletionPolicy::Delete => delete_ignoring_missing(api, name).await,
        DeletionPolicy::Retain => {
            let patch = json!({ "metadata": { "labels": { TENANT_LABEL: null, QUOTA_READY_LABEL: null } } });
            ignore_missing(
                api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await,
            )
            .map(|_| ())
        }
    }
}

async fn cleanup(tenant: &Tenant, ctx: &Context) -> Result<Action> {
    let name = tenant.name_any();
    let ns_api: Api<Namespace> = Api::all(ctx.client.clone());
    let labelled = list_labelled::<Namespace>(&ctx.client, &name).await?;
    for (_, ns_name) in labelled.keys() {
        release_namespace(&ns_api, ns_name, tenant.spec.deletion_policy).await?;
    }
    ctx.event(
        tenant,
        EventType::Normal,
        "TenantDeleted",
        match tenant.spec.deletion_policy {
            DeletionPolicy::Delete => format!("deleting {} namespaces", labelled.len()),
            DeletionPolicy::Retain => format!("released {} namespaces (Retain)", labelled.len()),
        },
    )
    .await;
    Ok(Action::await_change())
}

fn quota_values(map: Option<&BTreeMap<String, Quantity>>) -> BTreeMap<String, Milli> {
    map.map(|m| {
        m.iter()
            .filter_map(|(k, v)| quota::parse_quantity(&v.0).ok().map(|q| (k.clone(), q)))
            .collect()
    })
    .unwrap_or_default()
}

/// Sum of usage over the tenant's namespaces, against the tenant's hard limits.
fn aggregate_usage(
    quotas: &BTreeMap<(String, String), ResourceQuota>,
    namespaces: &[String],
    hard: &BTreeMap<&'static str, Milli>,
) -> BTreeMap<String, ResourceUsage> {
    let mut used: BTreeMap<&str, Milli> = hard.keys().map(|k| (*k, 0)).collect();
    for ns in namespaces {
        let Some(rq) = quotas.get(&(ns.clone(), QUOTA_NAME.to_string())) else {
            continue;
        };
        let values = quota_values(rq.status.as_ref().and_then(|s| s.used.as_ref()));
        for (resource, total) in used.iter_mut() {
            *total += values.get(*resource).copied().unwrap_or(0);
        }
    }
    used.into_iter()
        .map(|(r, u)| {
            let h = hard.get(r).copied().unwrap_or(0);
            (
                r.to_string(),
                ResourceUsage {
                    used: quota::display(r, u),
                    hard: quota::display(r, h),
                },
            )
        })
        .collect()
}

/// What one rebalancing pass did.
#[derive(Debug, Default)]
struct Rebalance {
    /// A namespace's quota was created: the tenant is still being provisioned.
    creating: bool,
    /// Limits are on their way (lowered and not yet raised, a conflicting
    /// admission, a recount asked for): look again soon.
    moving: bool,
    /// Headroom moved toward a refused namespace.
    moved: bool,
    /// What moved, for the event.
    note: String,
}

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

/// The recent refusals by the tenant's quotas in `namespaces`.
fn recent_refusals(
    refusals: &Store<Event>,
    namespaces: &[String],
    now: k8s_openapi::jiff::Timestamp,
) -> Vec<Arc<Event>> {
    refusals
        .state()
        .into_iter()
        .filter(|event| {
            let in_tenant = event.namespace().is_some_and(|ns| namespaces.contains(&ns));
            let last = event
                .series
                .as_ref()
                .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
                .or_else(|| event.last_timestamp.as_ref().map(|t| t.0))
                .or_else(|| event.event_time.as_ref().map(|t| t.0))
                .or_else(|| event.metadata.creation_timestamp.as_ref().map(|t| t.0));
            in_tenant
                && last.is_some_and(|l| now.as_second() - l.as_second() <= DEMAND_WINDOW_SECONDS)
                && event
                    .message
                    .as_deref()
                    .is_some_and(|m| m.contains(&format!("exceeded quota: {QUOTA_NAME},")))
        })
        .collect()
}

/// Whether the ReplicaSet or Job a refusal is about still waits for pods: it
/// exists (the same object) and has fewer pods than it wants. A refusal about
/// another kind is taken as open until it is old.
async fn still_waiting(client: &kube::Client, event: &Event) -> Result<bool> {
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::api::batch::v1::Job;
    let involved = &event.involved_object;
    let (Some(ns), Some(name)) = (involved.namespace.as_deref(), involved.name.as_deref()) else {
        return Ok(false);
    };
    let same = |uid: Option<&String>| involved.uid.is_none() || uid == involved.uid.as_ref();
    match involved.kind.as_deref() {
        Some("ReplicaSet") => {
            let api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
            Ok(match api.get_opt(name).await? {
                Some(rs) if same(rs.metadata.uid.as_ref()) => {
                    let wanted = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                    let made = rs.status.as_ref().map_or(0, |s| s.replicas);
                    made < wanted
                }
                _ => false,
            })
        }
        Some("Job") => {
            let api: Api<Job> = Api::namespaced(client.clone(), ns);
            Ok(match api.get_opt(name).await? {
                Some(job) if same(job.metadata.uid.as_ref()) => {
                    let status = job.status.clone().unwrap_or_default();
                    let finished = status.conditions.iter().flatten().any(|c| {
                        (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True"
                    });
                    let parallelism = job.spec.as_ref().and_then(|s| s.parallelism).unwrap_or(1);
                    !finished && status.active.unwrap_or(0) < parallelism
                }
                _ => false,
            })
        }
        _ => Ok(true),
    }
}

/// The demands open in the tenant's namespaces: from the recent refusals by
/// their quotas whose ReplicaSet or Job still waits, per namespace and
/// resource the highest usage a refused creation would have brought the
/// namespace to, and since when.
async fn demands(
    client: &kube::Client,
    refusals: Vec<Arc<Event>>,
) -> Result<BTreeMap<String, BTreeMap<String, quota::Demand>>> {
    let mut out: BTreeMap<String, BTreeMap<String, quota::Demand>> = BTreeMap::new();
    for event in refusals {
        let Some(ns) = event.namespace() else {
            continue;
        };
        let Some((requested, used)) = event
            .message
            .as_deref()
            .and_then(|m| quota::parse_refusal(m, QUOTA_NAME))
        else {
            continue;
        };
        if !still_waiting(client, &event).await? {
            continue;
        }
        let first = event
            .first_timestamp
            .as_ref()
            .map(|t| t.0)
            .or_else(|| event.event_time.as_ref().map(|t| t.0))
            .or_else(|| event.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .map_or(0, |t| t.as_second());
        let per_resource = out.entry(ns).or_default();
        for (resource, amount) in requested {
            let level = used.get(&resource).copied().unwrap_or(0) + amount;
            let entry = per_resource.entry(resource).or_insert(quota::Demand {
                level,
                since: first,
            });
            entry.level = entry.level.max(level);
            entry.since = entry.since.min(first);
        }
    }
    Ok(out)
}

/// A namespace's quota as the rebalance sees it.
struct Observed {
    namespace: String,
    quota: Option<ResourceQuota>,
    /// The spec's hard limits.
    hard: BTreeMap<String, Milli>,
    /// What admission enforces now: the larger of spec and status.
    enforced: BTreeMap<String, Milli>,
    used: BTreeMap<String, Milli>,
}

/// Splits the tenant's hard limits over its namespaces' ResourceQuotas,
/// moving headroom to where a creation was refused, so that no namespace
/// ever enforces more than the tenant has:
///
/// 1. lower every limit above its target, each write conditioned on the
///    quota's resourceVersion (a concurrent admission changes it, and the
///    write fails instead of cutting below what was just admitted);
/// 2. create missing quotas with what is free now;
/// 3. raise a limit only by what the others do not enforce: admission reads a
///    quota's status, which the quota controller updates a moment after its
///    spec, so a lowered limit counts at its old value until then.
///
/// At every instant the limits admission reads sum to at most the tenant's.
async fn rebalance_quotas(
    tenant: &Tenant,
    client: &kube::Client,
    namespaces: &[String],
    quotas: &BTreeMap<(String, String), ResourceQuota>,
    hard: &BTreeMap<&'static str, Milli>,
    demands: &BTreeMap<String, BTreeMap<String, quota::Demand>>,
) -> Result<Rebalance> {
    let mut current: Vec<Observed> = Vec::new();
    for ns in namespaces {
        let rq = quotas.get(&(ns.clone(), QUOTA_NAME.to_string())).cloned();
        let h = hard_limits(rq.as_ref());
        let mut status_hard = quota_values(
            rq.as_ref()
                .and_then(|q| q.status.as_ref())
                .and_then(|s| s.hard.as_ref()),
        );
        status_hard.remove(RECOUNT_MARKER);
        let mut enforced = h.clone();
        for (r, v) in status_hard {
            let e = enforced.entry(r).or_insert(0);
            *e = (*e).max(v);
        }
        let mut used = quota_values(
            rq.as_ref()
                .and_then(|q| q.status.as_ref())
                .and_then(|s| s.used.as_ref()),
        );
        // Not counted yet: assume the namespace uses all it may admit.
        if rq.as_ref().is_some_and(|q| !quota_counted(q)) {
            used = enforced.clone();
        }
        current.push(Observed {
            namespace: ns.clone(),
            quota: rq,
            hard: h,
            enforced,
            used,
        });
    }
    let mut target: Vec<BTreeMap<String, Milli>> = vec![BTreeMap::new(); current.len()];
    for (resource, tenant_hard) in hard {
        let used: Vec<Milli> = current
            .iter()
            .map(|o| o.used.get(*resource).copied().unwrap_or(0))
            .collect();
        let wanted: Vec<Option<quota::Demand>> = current
            .iter()
            .map(|o| {
                demands
                    .get(&o.namespace)
                    .and_then(|d| d.get(*resource))
                    .copied()
            })
            .collect();
        let shares = quota::targets(*tenant_hard, &used, &wanted, quota::unit_of(resource));
        for (i, share) in shares.into_iter().enumerate() {
            target[i].insert(resource.to_string(), share);
        }
    }
    let mut pass = Rebalance::default();
    let mut notes = Vec::new();

    // 1. Lower.
    for (i, o) in current.iter_mut().enumerate() {
        let Some(rq) = &o.quota else { continue };
        let lower: BTreeMap<String, Milli> = target[i]
            .iter()
            .map(|(r, t)| (r.clone(), (*t).min(o.hard.get(r).copied().unwrap_or(*t))))
            .collect();
        if lower != o.hard {
            let api: Api<ResourceQuota> = Api::namespaced(client.clone(), &o.namespace);
            match replace_hard(&api, rq, &lower).await {
                Ok(updated) => {
                    o.quota = Some(updated);
                    o.hard = lower;
                    pass.moving = true;
                }
                Err(e) if is_conflict(&e) => {
                    // An admission counted meanwhile: look again.
                    pass.moving = true;
                    return Ok(pass);
                }
                Err(e) => return Err(e),
            }
        }
    }

    // 2. Create the missing quotas with what nobody else enforces.
    for i in 0..current.len() {
        if current[i].quota.is_some() {
            continue;
        }
        let mut start = BTreeMap::new();
        for (resource, tenant_hard) in hard {
            let enforced: Vec<Milli> = current
                .iter()
                .map(|o| o.enforced.get(*resource).copied().unwrap_or(0))
                .collect();
            let t = target[i].get(*resource).copied().unwrap_or(0);
            start.insert(
                resource.to_string(),
                quota::raise_to(*tenant_hard, &enforced, i, 0, t).max(0),
            );
        }
        let ns = current[i].namespace.clone();
        let api: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns);
        let rq: ResourceQuota = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {
                "name": QUOTA_NAME,
                "namespace": ns,
                "labels": build::tenant_labels(&tenant.name_any()),
                "ownerReferences": crate::apply::controller_ref(tenant).into_iter().collect::<Vec<_>>(),
            },
            "spec": { "hard": to_quantities(&start) },
        }))
        .map_err(|e| Error::Serialization(e.to_string()))?;
        match api
            .create(
                &PostParams {
                    field_manager: Some(MANAGER.into()),
                    ..PostParams::default()
                },
                &rq,
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        current[i].enforced = start;
        pass.creating = true;
        pass.moving = true;
    }
    if pass.creating {
        return Ok(pass);
    }

    // 3. Raise, the namespaces with a demand first.
    let mut order: Vec<usize> = (0..current.len()).collect();
    order.sort_by_key(|i| !demands.contains_key(&current[*i].namespace));
    for i in order {
        let Some(rq) = current[i].quota.clone() else {
            continue;
        };
        let mut raised = current[i].hard.clone();
        for (resource, tenant_hard) in hard {
            let enforced: Vec<Milli> = current
                .iter()
                .map(|o| o.enforced.get(*resource).copied().unwrap_or(0))
                .collect();
            let h = current[i].hard.get(*resource).copied().unwrap_or(0);
            let t = target[i].get(*resource).copied().unwrap_or(0);
            raised.insert(
                resource.to_string(),
                quota::raise_to(*tenant_hard, &enforced, i, h, t),
            );
        }
        let api: Api<ResourceQuota> = Api::namespaced(client.clone(), &current[i].namespace);
        if raised != current[i].hard {
            match replace_hard(&api, &rq, &raised).await {
                Ok(_) => {}
                Err(e) if is_conflict(&e) => {
                    pass.moving = true;
                    return Ok(pass);
                }
                Err(e) => return Err(e),
            }
            if demands.contains_key(&current[i].namespace) {
                let gpus = |m: &BTreeMap<String, Milli>| m.get(quota::GPU).copied().unwrap_or(0);
                notes.push(format!(
                    "{}: GPUs {} -> {}",
                    current[i].namespace,
                    quota::display(quota::GPU, gpus(&current[i].hard)),
                    quota::display(quota::GPU, gpus(&raised))
                ));
                pass.moved = true;
            }
            for (r, v) in &raised {
                let e = current[i].enforced.entry(r.clone()).or_insert(0);
                *e = (*e).max(*v);
            }
            current[i].hard = raised;
        } else if recount_due(&rq, chrono::Utc::now()) {
            request_recount(&api, &rq).await?;
            pass.moving = true;
        }
        if current[i].hard != target[i] {
            // Waiting for the others' lowered limits to be enforced.
            pass.moving = true;
        }
    }
    pass.note = format!(
        "moved headroom to where the quota refused a creation: {}",
        notes.join(", ")
    );
    Ok(pass)
}

fn is_conflict(error: &Error) -> bool {
    matches!(error, Error::Kube(kube::Error::Api(s)) if s.code == 409)
}

/// A hard limit on an extended resource no pod requests: adding or removing
/// it changes the quota's hard limits without changing what the quota
/// admits, which is what makes the quota controller count the quota again.
pub const RECOUNT_MARKER: &str = "requests.aleph.dev/recount";
/// When the operator last asked the quota controller to count a quota again.
pub const RECOUNT_ANNOTATION: &str = "aleph.dev/recount-requested-at";
/// How long a Tenant that is not Ready waits for a look without a watch event.
const NOT_READY_REQUEUE: Duration = Duration::from_secs(10);
/// How long to give the quota controller between two such requests.
const RECOUNT_INTERVAL: chrono::TimeDelta = chrono::TimeDelta::seconds(10);

/// How far the quota controller has counted a quota.
#[derive(Debug, PartialEq, Eq)]
enum QuotaCount {
    /// It has not taken in the quota's current hard limits yet.
    Pending,
    /// It has taken them in but has no usage for these resources: it synced
    /// the quota before its discovery (every 30 s) found their custom
    /// resource, and it will not look at the quota again before its full
    /// resync (5 min by default) or a change to the quota's hard limits.
    Missing(Vec<String>),
    /// Every hard limit has a usage: the API server admits what fits.
    Counted,
}

/// Whether the quota controller has counted usage against the quota's
/// current hard limits: its status has the spec's hard limits and a usage for
/// each (the API server refuses objects of a resource without one, "status
/// unknown for quota").
fn quota_count(rq: &ResourceQuota) -> QuotaCount {
    let spec = quota_values(rq.spec.as_ref().and_then(|s| s.hard.as_ref()));
    let Some(status) = rq.status.as_ref() else {
        return QuotaCount::Pending;
    };
    let Some(status_hard) = status.hard.as_ref() else {
        return QuotaCount::Pending;
    };
    if quota_values(Some(status_hard)) != spec {
        return QuotaCount::Pending;
    }
    let used = status.used.as_ref();
    let missing: Vec<String> = status_hard
        .keys()
        .filter(|r| r.as_str() != RECOUNT_MARKER && !used.is_some_and(|u| u.contains_key(*r)))
        .cloned()
        .collect();
    if missing.is_empty() {
        QuotaCount::Counted
    } else {
        QuotaCount::Missing(missing)
    }
}

fn quota_counted(rq: &ResourceQuota) -> bool {
    quota_count(rq) == QuotaCount::Counted
}

/// The quota's hard limits, without the recount marker.
fn hard_limits(rq: Option<&ResourceQuota>) -> BTreeMap<String, Milli> {
    let mut hard = quota_values(
        rq.and_then(|q| q.spec.as_ref())
            .and_then(|s| s.hard.as_ref()),
    );
    hard.remove(RECOUNT_MARKER);
    hard
}

/// Whether to ask the quota controller to count `rq` again now: it has
/// resources it did not count, and the last request is long enough ago for
/// its discovery to have found them meanwhile.
fn recount_due(rq: &ResourceQuota, now: chrono::DateTime<chrono::Utc>) -> bool {
    if !matches!(quota_count(rq), QuotaCount::Missing(_)) {
        return false;
    }
    rq.annotations()
        .get(RECOUNT_ANNOTATION)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .is_none_or(|last| now - last.with_timezone(&chrono::Utc) >= RECOUNT_INTERVAL)
}

/// Asks the quota controller to count `rq` again, by adding or removing the
/// recount marker (it watches changes to the hard limits only).
async fn request_recount(api: &Api<ResourceQuota>, rq: &ResourceQuota) -> Result<()> {
    let mut updated = rq.clone();
    updated.metadata.managed_fields = None;
    let hard = updated
        .spec
        .get_or_insert_with(Default::default)
        .hard
        .get_or_insert_with(Default::default);
    if hard.remove(RECOUNT_MARKER).is_none() {
        hard.insert(RECOUNT_MARKER.to_string(), Quantity("0".to_string()));
    }
    updated.annotations_mut().insert(
        RECOUNT_ANNOTATION.to_string(),
        crate::conditions::now_rfc3339(),
    );
    replace_quota(api, updated).await?;
    Ok(())
}

fn to_quantities(values: &BTreeMap<String, Milli>) -> BTreeMap<String, Quantity> {
    values
        .iter()
        .map(|(k, v)| (k.clone(), Quantity(quota::display(k, *v))))
        .collect()
}

/// Replaces the hard limits of `rq`, failing with a conflict if it changed since read.
async fn replace_hard(
    api: &Api<ResourceQuota>,
    rq: &ResourceQuota,
    hard: &BTreeMap<String, Milli>,
) -> Result<ResourceQuota> {
    let mut updated = rq.clone();
    updated.metadata.managed_fields = None;
    updated.spec.get_or_insert_with(Default::default).hard = Some(to_quantities(hard));
    replace_quota(api, updated).await
}

/// Writes `updated` over its quota, conditioned on the resourceVersion it
/// carries: a quota changed meanwhile (an admission counted) fails with a
/// conflict and the pass starts again from a fresh look.
async fn replace_quota(api: &Api<ResourceQuota>, updated: ResourceQuota) -> Result<ResourceQuota> {
    Ok(api
        .replace(
            &updated.name_any(),
            &PostParams {
                field_manager: Some(MANAGER.into()),
                ..PostParams::default()
            },
            &updated,
        )
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::{reflector, watcher};

    fn quota(
        spec: &[(&str, &str)],
        status_hard: &[(&str, &str)],
        used: &[(&str, &str)],
    ) -> ResourceQuota {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_string(), Quantity((*v).to_string())))
                .collect::<BTreeMap<_, _>>()
        };
        serde_json::from_value(json!({
            "metadata": { "name": QUOTA_NAME, "namespace": "t-a" },
            "spec": { "hard": map(spec) },
            "status": { "hard": map(status_hard), "used": map(used) },
        }))
        .expect("a ResourceQuota")
    }

    #[test]
    fn a_quota_is_counted_only_with_a_usage_for_each_current_hard_limit() {
        let hard = [("pods", "10"), (quota::AI_MODELS, "2")];
        assert_eq!(
            quota_count(&quota(&hard, &[("pods", "20")], &[("pods", "0")])),
            QuotaCount::Pending,
            "the controller has not taken in the new limits"
        );
        assert_eq!(
            quota_count(&quota(&hard, &hard, &[("pods", "0")])),
            QuotaCount::Missing(vec![quota::AI_MODELS.to_string()])
        );
        assert_eq!(
            quota_count(&quota(
                &hard,
                &[("pods", "10000m"), (quota::AI_MODELS, "2")],
                &[("pods", "1"), (quota::AI_MODELS, "0")]
            )),
            QuotaCount::Counted,
            "quantities compare by value"
        );
        let marked = [("pods", "10"), (RECOUNT_MARKER, "0")];
        assert_eq!(
            quota_count(&quota(&marked, &marked, &[("pods", "0")])),
            QuotaCount::Counted,
            "the recount marker needs no usage"
        );
        assert_eq!(hard_limits(Some(&quota(&marked, &[], &[]))).len(), 1);
    }

    #[test]
    fn a_recount_is_asked_for_at_most_every_interval_and_only_when_missing() {
        let hard = [("pods", "10"), (quota::AI_MODELS, "2")];
        let now = chrono::Utc::now();
        let mut missing = quota(&hard, &hard, &[("pods", "0")]);
        assert!(recount_due(&missing, now));
        missing.annotations_mut().insert(
            RECOUNT_ANNOTATION.to_string(),
            (now - chrono::TimeDelta::seconds(3)).to_rfc3339(),
        );
        assert!(!recount_due(&missing, now));
        assert!(recount_due(&missing, now + RECOUNT_INTERVAL));
        let counted = quota(&hard, &hard, &[("pods", "0"), (quota::AI_MODELS, "0")]);
        assert!(!recount_due(&counted, now));
        let pending = quota(&hard, &[], &[]);
        assert!(!recount_due(&pending, now));
    }

    fn refusal(ns: &str, name: &str, message: &str, last: &str) -> Event {
        serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": ns },
            "involvedObject": { "kind": "ReplicaSet", "namespace": ns, "name": "web-1" },
            "reason": "FailedCreate",
            "message": message,
            "firstTimestamp": last,
            "lastTimestamp": last,
        }))
        .expect("an Event")
    }

    #[test]
    fn only_recent_refusals_by_the_tenant_quota_in_its_namespaces_count() {
        let (reader, mut writer) = reflector::store::<Event>();
        let quota = "Error creating: pods \"web-1-\" is forbidden: exceeded quota: aleph-tenant-quota, \
            requested: requests.nvidia.com/gpu=4, used: requests.nvidia.com/gpu=0, limited: requests.nvidia.com/gpu=2";
        let other = "Error creating: pods \"web-1-\" is forbidden: exceeded quota: someone-elses, \
            requested: requests.nvidia.com/gpu=4, used: requests.nvidia.com/gpu=0, limited: requests.nvidia.com/gpu=2";
        for event in [
            refusal("t-a", "fresh", quota, "2026-01-01T00:10:00Z"),
            refusal("t-a", "old", quota, "2026-01-01T00:00:00Z"),
            refusal("t-a", "other-quota", other, "2026-01-01T00:10:00Z"),
            refusal("elsewhere", "outside", quota, "2026-01-01T00:10:00Z"),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(event));
        }
        let now: k8s_openapi::jiff::Timestamp = "2026-01-01T00:25:00Z".parse().expect("a time");
        let found = recent_refusals(&reader, &["t-a".to_string(), "t-b".to_string()], now);
        let names: Vec<String> = found.iter().map(|e| e.name_any()).collect();
        assert_eq!(names, vec!["fresh".to_string()]);
    }
}
