//! The pass that writes a tenant's children: the cluster-wide admission
//! policies, its namespaces (declared, adopted, released), the owners'
//! cluster role, the limit ranges, network policies, role bindings and
//! admission policies of its namespaces, and its quotas (through
//! [`super::rebalance`]); and the release of its namespaces when it goes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::time::Duration;

use aleph_crds::common::DeletionPolicy;
use aleph_crds::keys::{ORIGIN_LABEL, QUOTA_READY_LABEL, TENANT_LABEL};
use aleph_crds::tenant::Tenant;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{LimitRange, Namespace, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::build::{self, QUOTA_NAME};
use super::rebalance::{demands, quota_enforced, rebalance_quotas, recent_refusals};
use super::status::{ADMISSION_STUCK_SECONDS, AdmissionWait};
use super::{
    ADMISSION_REQUEUE, DEMAND_WINDOW_REQUEUE, MOVING_REQUEUE, NOT_READY_REQUEUE, TenantState,
    admission, children, list_labelled, quota, status, tenant_quotas, validate,
};
use crate::apply::{
    Absent, MANAGER, Owner, apply_if_changed, create_absent, delete_ignoring_missing,
    ignore_missing,
};
use crate::context::Context;
use crate::error::{Error, Result, uid_of};

/// The operator's own user name, as the API server sees it (a ServiceAccount
/// in the chart, whatever the kubeconfig says elsewhere): the owners' policy
/// exempts it, so that the operator can still write what it owns.
async fn operator_user(client: &kube::Client, state: &TenantState) -> Result<String> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    state
        .operator_user
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

/// The cluster-wide admission policies every tenant relies on (the shared
/// policies its bindings name among them), applied once per operator.
async fn ensure_cluster_policies(ctx: &Context, state: &TenantState, operator: &str) -> Result<()> {
    let client = &ctx.client;
    state
        .cluster_policies_applied
        .get_or_try_init(|| async {
            let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
            let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
            let mut guard_fresh = false;
            for (policy, binding) in [
                build::prevent_deletion_policy(),
                build::quota_guard_policy(),
                admission::owner_namespaces_policy(operator),
            ] {
                let name = policy.name_any();
                let observed = (
                    policies.get_opt(&name).await?,
                    bindings.get_opt(&name).await?,
                );
                let wrote = apply_if_changed(&policies, observed.0.as_ref(), &policy).await?
                    | apply_if_changed(&bindings, observed.1.as_ref(), &binding).await?;
                if name == build::QUOTA_GUARD_POLICY {
                    guard_fresh = wrote
                        || observed.0.as_ref().is_some_and(just_created)
                        || observed.1.as_ref().is_some_and(just_created);
                }
            }
            for policy in shared_policies(ctx, state, operator) {
                let name = policy.name_any();
                apply_if_changed(&policies, policies.get_opt(&name).await?.as_ref(), policy)
                    .await?;
            }
            // A guard in place for a while is in force: a restart sends no probe.
            if guard_fresh {
                guard_in_force(client).await
            } else {
                Ok(())
            }
        })
        .await?;
    Ok(())
}

/// Waits until the API server enforces the quota guard: no tenant namespace
/// is made before, or its pods would be admitted before their quota limits
/// anything (the API server loads a new policy and binding about a second
/// after they exist). Proved by a server-side dry run that only the guard
/// refuses ([`build::guard_probe`]), when the guard was written or created
/// within the last minute. The shared policies and the tenants' bindings
/// are written after the guard, and the API server loads them in that order.
async fn guard_in_force(client: &kube::Client) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let probe = build::guard_probe();
    let mut last = String::new();
    for _ in 0..GUARD_PROBES {
        match not_refused(&namespaces, &probe, build::GUARD_PROBE_REFUSED).await? {
            None => return Ok(()),
            Some(got) => last = got,
        }
        tokio::time::sleep(GUARD_PROBE_INTERVAL).await;
    }
    Err(Error::NotReady(format!(
        "the API server does not enforce the quota guard {} yet (a dry-run namespace it must refuse was {last}); no tenant namespace is made until it does",
        build::QUOTA_GUARD_POLICY
    )))
}

/// Whether `object` was created so recently that the API server may not
/// enforce it yet (another operator instance made it a moment ago).
fn just_created<K: Resource>(object: &K) -> bool {
    !object
        .meta()
        .creation_timestamp
        .as_ref()
        .is_some_and(|t| older_than(t, 60))
}

/// Whether `time` is `seconds` or more ago.
fn older_than(time: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time, seconds: i64) -> bool {
    k8s_openapi::jiff::Timestamp::now().duration_since(time.0)
        >= k8s_openapi::jiff::SignedDuration::from_secs(seconds)
}

/// How often, and how many times, a pass looks whether the quota guard is
/// in force before it gives up (and the next pass tries again).
const GUARD_PROBE_INTERVAL: Duration = Duration::from_millis(200);
const GUARD_PROBES: usize = 50;

/// The admission policies every tenant's bindings name, as the operator
/// wants them.
fn shared_policies<'a>(
    ctx: &Context,
    state: &'a TenantState,
    operator: &str,
) -> &'a [ValidatingAdmissionPolicy] {
    state.shared_policies.get_or_init(|| {
        // The images the operator itself runs in tenant namespaces (the model
        // cache's downloader) pass the registry rule: the platform's own.
        let operator_images = [ctx.settings.model_cache_image.clone()];
        vec![
            admission::tenants_policy(&operator_images),
            admission::owners_policy(operator, &operator_images),
        ]
    })
}

/// Puts the shared admission policies back where they were deleted or
/// changed by hand: every tenant's rules are in them. Read from the watch of
/// policies (a GET only where it does not show one).
async fn keep_shared_policies(ctx: &Context, state: &TenantState, operator: &str) -> Result<()> {
    let api: Api<ValidatingAdmissionPolicy> = Api::all(ctx.client.clone());
    for policy in shared_policies(ctx, state, operator) {
        let name = policy.name_any();
        let cached = state.cache.get().and_then(|c| {
            c.admission_policies
                .store
                .get(&kube::runtime::reflector::ObjectRef::new(&name))
        });
        let observed = match cached {
            Some(found) => Some((*found).clone()),
            None => api.get_opt(&name).await?,
        };
        if apply_if_changed(&api, observed.as_ref(), policy).await? {
            tracing::info!(policy = %name, "the shared admission policy was put back");
        }
    }
    Ok(())
}

/// Whether a namespace labelled with the tenant but not in `spec.namespaces`
/// is one an owner created (adopted already, or not made by the operator),
/// rather than one taken off the list.
fn owner_created(ns: &Namespace) -> bool {
    let labels = ns.labels();
    labels.get(ORIGIN_LABEL).is_some_and(|o| o == "owner")
        || labels
            .get(crate::apply::MANAGED_BY)
            .is_none_or(|m| m != MANAGER)
}

/// A tenant's children of one kind, by namespace ("" when cluster-wide) and name.
type Children<K> = BTreeMap<(String, String), K>;

/// The tenant's cluster-wide children `(A, B)` named `name` (a policy and
/// its binding, a role and its binding), as last observed: applied while
/// `desired`, else deleted where they exist, the binding first.
async fn ensure_pair<A, B>(
    owner: Owner<'_>,
    apis: (&Api<A>, &Api<B>),
    observed: (&Children<A>, &Children<B>),
    name: &str,
    desired: Option<(A, B)>,
) -> Result<()>
where
    A: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug + Send + 'static,
    B: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug + Send + 'static,
{
    let key = (String::new(), name.to_string());
    match desired {
        Some((a, b)) => {
            owner
                .ensure_cached(apis.0, observed.0.get(&key), &a)
                .await?;
            owner
                .ensure_cached(apis.1, observed.1.get(&key), &b)
                .await?;
        }
        None => {
            if observed.1.contains_key(&key) {
                delete_ignoring_missing(apis.1, name).await?;
            }
            if observed.0.contains_key(&key) {
                delete_ignoring_missing(apis.0, name).await?;
            }
        }
    }
    Ok(())
}

/// The tenant's children in namespace `ns_name` (its limit range, network
/// policy and role bindings), written at once; `observed` are the caches'
/// limit ranges, network policies and role bindings of the tenant.
async fn namespace_children(
    client: &kube::Client,
    owner: Owner<'_>,
    tenant: &Tenant,
    ns_name: &str,
    observed: (
        &Children<LimitRange>,
        &Children<NetworkPolicy>,
        &Children<RoleBinding>,
    ),
) -> Result<()> {
    let (limit_ranges, policies, bindings) = observed;
    let key = |name: &str| (ns_name.to_string(), name.to_string());
    let lr_api: Api<LimitRange> = Api::namespaced(client.clone(), ns_name);
    let limit_range = async {
        let lr = build::limit_range(tenant, ns_name);
        owner
            .ensure_cached(
                &lr_api,
                limit_ranges.get(&key(build::LIMIT_RANGE_NAME)),
                &lr,
            )
            .await
            .map(drop)
    };
    let np_api: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns_name);
    let network_policy = async {
        let observed = policies.get(&key(build::NETWORK_POLICY_NAME));
        match build::network_policy(tenant, ns_name) {
            Some(np) => owner.ensure_cached(&np_api, observed, &np).await.map(drop),
            None if observed.is_some() => {
                delete_ignoring_missing(&np_api, build::NETWORK_POLICY_NAME).await
            }
            None => Ok(()),
        }
    };
    let rb_api: Api<RoleBinding> = Api::namespaced(client.clone(), ns_name);
    let role_bindings = async {
        let desired = build::role_bindings(tenant, ns_name);
        let wanted: BTreeSet<String> = desired.iter().map(|rb| rb.name_any()).collect();
        futures::future::try_join_all(
            desired
                .iter()
                .map(|rb| owner.ensure_cached(&rb_api, bindings.get(&key(&rb.name_any())), rb)),
        )
        .await?;
        // Only the tenant's own: a RoleBinding somebody else made with the
        // tenant's label (found when the pass lists by label) stays.
        for ((ns, rb_name), found) in bindings {
            if ns == ns_name && !wanted.contains(rb_name) && owner.controls(found) {
                delete_ignoring_missing(&rb_api, rb_name).await?;
            }
        }
        Ok(())
    };
    futures::future::try_join3(limit_range, network_policy, role_bindings)
        .await
        .map(drop)
}

pub(super) async fn apply(tenant: &Tenant, ctx: &Context) -> Result<Action> {
    let client = &ctx.client;
    let name = tenant.name_any();
    let uid = uid_of(tenant)?;
    let owner = Owner {
        uid: &uid,
        noun: "tenant",
    };
    let state = ctx.state::<TenantState>();
    let operator = operator_user(client, &state).await?;
    ensure_cluster_policies(ctx, &state, &operator).await?;

    let hard = match validate::tenant_hard(tenant) {
        Ok(hard) => hard,
        Err(error) => {
            status::invalid_spec(tenant, client, &error).await?;
            return Err(error);
        }
    };

    let ns_api: Api<Namespace> = Api::all(client.clone());
    let labelled: BTreeMap<String, Namespace> = children(ctx, |c| &c.namespaces, &name)
        .await?
        .into_iter()
        .map(|((_, n), ns)| (n, ns))
        .collect();
    let quotas = tenant_quotas(ctx, &name).await?;
    let admission_bindings = children(ctx, |c| &c.admission_bindings, &name).await?;
    let any_counted = labelled.keys().any(|ns| {
        quotas
            .get(&(ns.clone(), QUOTA_NAME.to_string()))
            .is_some_and(quota_enforced)
    });
    let admission_waiting = admission_in_force(
        ctx,
        &state,
        tenant,
        &labelled,
        &admission_bindings,
        any_counted,
    )
    .await?;
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
    // Namespaces: create or update ours, never take over somebody else's.
    let mut conflicts = Vec::new();
    let mut ready_namespaces = Vec::new();
    let mut waiting = false;
    // The quota guard admits pods in a namespace with this label. A quota
    // just created limits nothing until the quota controller has copied its
    // limits into its status (admission reads them there): the label waits
    // for that, or pods made in between would escape the quota.
    // The label also waits for the API server to enforce the tenant's
    // admission rules (`admission_waiting`), or pods made in between would
    // escape them.
    let with_quota_label = |mut ns: Namespace| {
        if admission_waiting.is_none()
            && quotas
                .get(&(ns.name_any(), QUOTA_NAME.to_string()))
                .is_some_and(quota_enforced)
        {
            ns.labels_mut()
                .insert(QUOTA_READY_LABEL.to_string(), "ready".to_string());
        }
        ns
    };
    for ns_name in &desired_names {
        let desired = with_quota_label(build::namespace(tenant, ns_name));
        let observed = match labelled.get(ns_name) {
            Some(ns) => Some(ns.clone()),
            // Not the tenant's as far as the cache knows: made here unless
            // a namespace of that name exists, which is then looked at.
            None => match create_absent(&ns_api, &desired).await? {
                Absent::Created(_) => {
                    ready_namespaces.push(ns_name.clone());
                    continue;
                }
                Absent::Exists => ns_api.get_opt(ns_name).await?,
            },
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
        apply_if_changed(&ns_api, observed.as_ref(), &desired).await?;
        ready_namespaces.push(ns_name.clone());
    }
    let mut newly_adopted = Vec::new();
    for ns in &adopted {
        let ns_name = ns.name_any();
        if !ns.labels().contains_key(ORIGIN_LABEL) {
            newly_adopted.push(ns_name.clone());
        }
        let desired = with_quota_label(build::adopted_namespace(tenant, &ns_name));
        apply_if_changed(&ns_api, Some(*ns), &desired).await?;
        ready_namespaces.push(ns_name);
    }
    if !newly_adopted.is_empty() {
        ctx.normal(
            tenant,
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

    // What follows the namespaces is written at once: the owners' cluster
    // role, each namespace's children, the admission bindings and the quotas
    // depend on the namespaces only, not on each other, and a pass that
    // wrote them one after another would hold its worker for a round trip
    // each (the quotas go first among them: the quota controller's count is
    // what a new Tenant waits for longest).
    let role_api: Api<ClusterRole> = Api::all(client.clone());
    let role_binding_api: Api<ClusterRoleBinding> = Api::all(client.clone());
    let role_name = build::owner_cluster_role_name(&name);
    let roles = children(ctx, |c| &c.cluster_roles, &name).await?;
    let role_bindings = children(ctx, |c| &c.cluster_role_bindings, &name).await?;
    let limit_ranges = children(ctx, |c| &c.limit_ranges, &name).await?;
    let policies = children(ctx, |c| &c.network_policies, &name).await?;
    let bindings = children(ctx, |c| &c.role_bindings, &name).await?;
    let own_policies = children(ctx, |c| &c.admission_policies, &name).await?;

    // The tenant-wide quota, split over the namespaces that exist, with the
    // headroom moved to where the quota refused a creation.
    let refusals = state
        .cache
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
    let quotas_written = rebalance_quotas(
        tenant,
        client,
        &state.quota_ledger,
        &ready_namespaces,
        &quotas,
        &hard,
        &demands,
    );
    // The admin owners' right to create namespaces, while there is room.
    let owners_role = ensure_pair(
        owner,
        (&role_api, &role_binding_api),
        (&roles, &role_bindings),
        &role_name,
        build::owner_cluster_role(tenant, limit > desired_names.len()),
    );
    let per_namespace = futures::future::try_join_all(ready_namespaces.iter().map(|ns_name| {
        namespace_children(
            client,
            owner,
            tenant,
            ns_name,
            (&limit_ranges, &policies, &bindings),
        )
    }));
    // Admission rules: the tenant's bindings to the shared policies (for
    // everyone, and for its users), with the Tenant as their parameter.
    let admission = async {
        let vap_api: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
        let vapb_api: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
        // The owners' binding first: the API server loads bindings in the
        // order they were written, so once the probe finds the tenants'
        // binding in force, the owners' is too.
        for binding in admission::bindings(tenant).iter().rev() {
            let observed = admission_bindings.get(&(String::new(), binding.name_any()));
            owner.ensure_cached(&vapb_api, observed, binding).await?;
        }
        keep_shared_policies(ctx, &state, &operator).await?;
        // Policies of the tenant's own are those of an earlier version (one per
        // tenant, before the shared ones): their bindings now name the shared
        // policies, so they go.
        for (_, policy_name) in own_policies.keys() {
            delete_ignoring_missing(&vap_api, policy_name).await?;
        }
        Ok::<(), Error>(())
    };
    // Each runs to its end whatever the others meet: a rebalance dropped
    // between a write and its record in the ledger would leave the next pass
    // trusting a cache that may not show that write. The first failure, in
    // the order the pass used to write them, is the pass's.
    let (rebalance, owners_role, per_namespace, admission) =
        futures::future::join4(quotas_written, owners_role, per_namespace, admission).await;
    owners_role?;
    per_namespace?;
    admission?;
    let rebalance = rebalance?;
    // A quota this pass created is in place: the status counts it. Its
    // namespace gets the quota label once the quota controller has counted
    // it (the quota's status wakes the Tenant then).
    let quotas = if rebalance.creating {
        tenant_quotas(ctx, &name).await?
    } else {
        quotas
    };
    if rebalance.moved {
        ctx.normal(tenant, "QuotaRebalanced", rebalance.note.clone())
            .await;
    }

    // Status.
    let is_ready = status::write(
        tenant,
        ctx,
        status::Pass {
            quotas: &quotas,
            hard: &hard,
            ready_namespaces: &ready_namespaces,
            declared: desired_names.len(),
            adopted: adopted.len(),
            conflicts: &conflicts,
            excess: &excess,
            limit,
            waiting,
            creating: rebalance.creating,
            admission_waiting: admission_waiting.as_ref(),
        },
    )
    .await?;
    // What a Tenant waits for wakes it through the watches: namespaces turning
    // Active, quotas created, rewritten and counted. The requeue is for what
    // no watch shows (the next recount request) and a safety net.
    Ok(if admission_waiting.is_some() && any_counted {
        // The API server loads a new binding within about a second; no
        // watch says when. (Until a quota is counted, the quota's watch
        // wakes the Tenant.)
        Action::requeue(ADMISSION_REQUEUE)
    } else if rebalance.moving {
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

/// Whether the API server enforces the tenant's admission rules yet: `None`
/// when it does (or the tenant has no namespace where a pod could go), else
/// what is awaited. Proved once per tenant by a server-side dry run that the
/// tenants' policy refuses only through the tenant's binding
/// ([`admission::admission_probe`]), in a namespace of the tenant; a
/// namespace already labelled ready is the proof of an earlier pass (or
/// operator), so a restart sends no probe. No probe either while none of
/// the tenant's quotas is counted (`counted`): no namespace could be opened
/// yet, and the count gives the API server time to load the binding.
async fn admission_in_force(
    ctx: &Context,
    state: &TenantState,
    tenant: &Tenant,
    labelled: &BTreeMap<String, Namespace>,
    bindings: &Children<ValidatingAdmissionPolicyBinding>,
    counted: bool,
) -> Result<Option<AdmissionWait>> {
    let name = tenant.name_any();
    let uid = uid_of(tenant)?;
    let ours = |ns: &&Namespace| {
        ns.metadata.deletion_timestamp.is_none()
            && ns.labels().get(TENANT_LABEL).is_some_and(|t| *t == name)
    };
    let opened = |ns: &Namespace| {
        ns.labels()
            .get(QUOTA_READY_LABEL)
            .is_some_and(|v| v == "ready")
    };
    if state.admission_proved(&uid) || labelled.values().any(opened) {
        return Ok(None);
    }
    let Some(ns) = labelled.values().find(ours) else {
        return Ok(
            if tenant.spec.namespaces.is_empty() && labelled.is_empty() {
                None
            } else {
                Some(AdmissionWait::Pending)
            },
        );
    };
    let binding = admission::admission_binding_name(&name);
    let Some(bound) = bindings.get(&(String::new(), binding.clone())) else {
        return Ok(Some(AdmissionWait::Pending));
    };
    if !counted {
        return Ok(Some(AdmissionWait::Pending));
    }
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns.name_any());
    let probe = admission::admission_probe(&name);
    Ok(
        match not_refused(&services, &probe, admission::PROBE_REFUSED).await? {
            None => {
                state.prove_admission(&uid);
                None
            }
            Some(got)
                if bound
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .is_some_and(|t| older_than(t, ADMISSION_STUCK_SECONDS)) =>
            {
                Some(AdmissionWait::Stuck(format!(
                    "a dry-run Service in {} that binding {binding} refuses once loaded was {got}",
                    ns.name_any()
                )))
            }
            Some(_) => Some(AdmissionWait::Pending),
        },
    )
}

/// Creates `probe` with a server-side dry run (nothing is stored): `None`
/// when the API server refuses it saying `refusal` (the rule that refuses
/// it is in force), else what it did instead (`admitted`, or `refused: ...`
/// by something else). Any error but an API server's answer is returned.
async fn not_refused<K>(api: &Api<K>, probe: &K, refusal: &str) -> Result<Option<String>>
where
    K: Clone + DeserializeOwned + Serialize + Debug,
{
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    match api.create(&dry_run, probe).await {
        Err(kube::Error::Api(e)) if e.message.contains(refusal) => Ok(None),
        Ok(_) => Ok(Some("admitted".to_string())),
        Err(kube::Error::Api(e)) => Ok(Some(format!("refused: {}", e.message))),
        Err(e) => Err(e.into()),
    }
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

pub(super) async fn cleanup(tenant: &Tenant, ctx: &Context) -> Result<Action> {
    let name = tenant.name_any();
    let ns_api: Api<Namespace> = Api::all(ctx.client.clone());
    let labelled = list_labelled::<Namespace>(&ctx.client, &name).await?;
    let state = ctx.state::<TenantState>();
    state.quota_ledger.forget(&name);
    state.forget_admission(&uid_of(tenant)?);
    for (_, ns_name) in labelled.keys() {
        release_namespace(&ns_api, ns_name, tenant.spec.deletion_policy).await?;
    }
    ctx.normal(
        tenant,
        "TenantDeleted",
        match tenant.spec.deletion_policy {
            DeletionPolicy::Delete => format!("deleting {} namespaces", labelled.len()),
            DeletionPolicy::Retain => format!("released {} namespaces (Retain)", labelled.len()),
        },
    )
    .await;
    Ok(Action::await_change())
}
