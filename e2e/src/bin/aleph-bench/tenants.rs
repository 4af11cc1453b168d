//! Tenants for the benchmark, and the floor: the Tenant reconciler's children
//! written directly by a plain client.

use std::collections::BTreeMap;

use aleph_controllers::tenant::{admission, build, quota};
use aleph_crds::keys::{QUOTA_READY_LABEL, TENANT_LABEL};
use aleph_crds::tenant::Tenant;
use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding;
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::observe::ReadyWatch;
use crate::{BenchError, Result, Run, create_all, post};

/// The short name of each benchmark Tenant's one namespace.
pub const NAMESPACE: &str = "main";

/// The Tenant `name`: one namespace, one owner, isolation (a NetworkPolicy)
/// and an admission rule (read by the shared ValidatingAdmissionPolicies
/// through the tenant's bindings), so every kind of child the reconciler
/// makes is made.
pub fn tenant(name: &str, labels: &BTreeMap<String, String>) -> Result<Tenant> {
    serde_json::from_value(json!({
        "apiVersion": "aleph.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "owners": [{ "kind": "User", "name": format!("{name}-owner"), "role": "admin" }],
            "namespaces": [NAMESPACE],
            "plan": "pro",
            "network": { "isolated": true },
            "admission": { "allowedRegistries": ["registry.k8s.io/"] },
        },
    }))
    .map_err(|e| BenchError::Setup(format!("the benchmark Tenant does not parse: {e}")))
}

/// The name of the i-th Tenant of a run.
pub fn name(prefix: &str, run: &Run, i: usize) -> String {
    format!("{prefix}-{}-{i:04}", run.id)
}

/// Creates the run's N Tenants, `creators` at a time.
pub async fn create(run: &Run, creators: usize) -> Result<()> {
    let api: Api<Tenant> = Api::all(run.client.clone());
    let labels = run.aleph_labels();
    let tenants = (0..run.n)
        .map(|i| tenant(&name("ab", run, i), &labels))
        .collect::<Result<Vec<_>>>()?;
    create_all(tenants, creators, |t| {
        let api = api.clone();
        async move { post(&api, &t).await }
    })
    .await
}

/// Makes a child of the floor: only the floor's label, and no owner (there is
/// no Tenant, and the garbage collector would delete an orphan).
fn floor_owned<K: Resource>(mut obj: K, labels: &BTreeMap<String, String>) -> K {
    let meta = obj.meta_mut();
    meta.labels = Some(labels.clone());
    meta.owner_references = None;
    obj
}

/// What the Tenant reconciler writes for `tenant`, in its order: the
/// namespace, its ResourceQuota, LimitRange, NetworkPolicy and RoleBindings,
/// the owners' ClusterRole and its binding, the two bindings to the shared
/// admission policies, then the namespace's quota label.
async fn floor_one(
    client: &kube::Client,
    tenant: &Tenant,
    labels: &BTreeMap<String, String>,
) -> Result<()> {
    let ns_name = build::namespace_name(&tenant.name_any(), NAMESPACE);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    post(
        &namespaces,
        &floor_owned(build::namespace(tenant, &ns_name), labels),
    )
    .await?;

    let hard = quota::tenant_hard(tenant.spec.plan, tenant.spec.quota.as_ref())
        .map_err(|e| BenchError::Setup(format!("the benchmark Tenant's quota: {e}")))?;
    let quota: ResourceQuota = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": { "name": build::QUOTA_NAME, "namespace": ns_name, "labels": labels },
        "spec": { "hard": hard
            .iter()
            .map(|(k, v)| (k.to_string(), Quantity(quota::format_quantity(*v))))
            .collect::<BTreeMap<_, _>>() },
    }))
    .map_err(|e| BenchError::Setup(e.to_string()))?;
    post(&Api::namespaced(client.clone(), &ns_name), &quota).await?;
    post(
        &Api::namespaced(client.clone(), &ns_name),
        &floor_owned(build::limit_range(tenant, &ns_name), labels),
    )
    .await?;
    if let Some(np) = build::network_policy(tenant, &ns_name) {
        post(
            &Api::namespaced(client.clone(), &ns_name),
            &floor_owned(np, labels),
        )
        .await?;
    }
    for rb in build::role_bindings(tenant, &ns_name) {
        post(
            &Api::namespaced(client.clone(), &ns_name),
            &floor_owned(rb, labels),
        )
        .await?;
    }
    // The admin owners' right to create namespaces (the plan leaves room
    // for more than the one declared), as the operator writes it.
    if let Some((role, binding)) = build::owner_cluster_role(tenant, true) {
        post(
            &Api::<ClusterRole>::all(client.clone()),
            &floor_owned(role, labels),
        )
        .await?;
        post(
            &Api::<ClusterRoleBinding>::all(client.clone()),
            &floor_owned(binding, labels),
        )
        .await?;
    }
    // The operator writes the tenant's two bindings to the shared admission
    // policies; so does the floor.
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    for binding in admission::bindings(tenant) {
        post(&bindings, &floor_owned(binding, labels)).await?;
    }
    let patch = json!({ "metadata": { "labels": { QUOTA_READY_LABEL: "ready" } } });
    namespaces
        .patch(&ns_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// The floor: `workers` at a time, each writing one Tenant's children in order.
pub async fn floor(run: &Run, client: &kube::Client, workers: usize) -> Result<()> {
    let labels = run.floor_labels();
    let tenants = (0..run.n)
        .map(|i| tenant(&name("af", run, i), &BTreeMap::new()))
        .collect::<Result<Vec<_>>>()?;
    create_all(tenants, workers, |t| {
        let labels = labels.clone();
        let client = client.clone();
        async move { floor_one(&client, &t, &labels).await }
    })
    .await
}

/// Deletes the floor's admission bindings, so that they do not weigh on
/// every later admission (the API server evaluates each binding's match),
/// and its cluster roles and bindings.
pub async fn delete_floor_policies(run: &Run) -> Result<()> {
    let lp = ListParams::default().labels(&run.floor_selector());
    delete_labelled::<ValidatingAdmissionPolicyBinding>(run, &lp).await?;
    delete_labelled::<ClusterRoleBinding>(run, &lp).await?;
    delete_labelled::<ClusterRole>(run, &lp).await
}

/// Deletes the cluster-scoped `K`s that `lp` selects.
async fn delete_labelled<K>(run: &Run, lp: &ListParams) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::all(run.client.clone())
        .delete_collection(&DeleteParams::default(), lp)
        .await?;
    Ok(())
}

/// Two watches of the run's Tenants' quotas, started before the first
/// Tenant is created: until each Tenant's quota exists, and until the
/// controller manager has counted each (what a Tenant's Ready waits for).
pub async fn quota_watches(client: &kube::Client, run: &Run) -> [ReadyWatch; 2] {
    // Each Tenant's namespace is named after it: `ab-<run>-<i>-main`.
    let prefix = format!("ab-{}-", run.id);
    let of_run = move |q: &ResourceQuota| {
        q.metadata
            .namespace
            .as_deref()
            .is_some_and(|ns| ns.starts_with(&prefix))
    };
    let api = Api::<ResourceQuota>::all(client.clone());
    let written = ReadyWatch::start(api.clone(), TENANT_LABEL, run.n, of_run.clone()).await;
    let counted = ReadyWatch::start(api, TENANT_LABEL, run.n, move |q| {
        of_run(q) && aleph_controllers::tenant::quota_counted(q)
    })
    .await;
    [written, counted]
}

/// Whether a Tenant reports Ready=True.
pub fn is_ready(tenant: &Tenant) -> bool {
    tenant.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == aleph_crds::common::ConditionStatus::True)
    })
}
