//! What the tenant tests share: Tenants, owners, pods and refusals.

#![allow(dead_code)]

use std::time::Duration;

use aleph_crds::tenant::Tenant;
use aleph_e2e::{TestEnv, tenant_manifest, wait_tenant_ready};
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

pub const TIMEOUT: Duration = Duration::from_secs(90);
pub const H100: &str = "NVIDIA-H100-80GB-HBM3";
pub const A100: &str = "NVIDIA-A100-SXM4-80GB";

/// A Tenant `name` on plan pro with the namespaces `namespaces` (a YAML
/// list's items), owned by a User `{name}-{suffix}` of `role` for each of
/// `owners` (suffix, role); `rest` ends its spec, YAML lines indented by two
/// spaces.
pub fn pro_tenant(name: &str, owners: &[(&str, &str)], namespaces: &str, rest: &str) -> String {
    let owners: String = owners
        .iter()
        .map(|(who, role)| format!("    - {{ kind: User, name: {name}-{who}, role: {role} }}\n"))
        .collect();
    tenant_manifest(
        name,
        &format!("  owners:\n{owners}  namespaces: [{namespaces}]\n  plan: pro\n{rest}"),
    )
}

/// Applies the Tenant `yaml` and waits until it is Ready.
pub async fn ready_tenant(env: &TestEnv, name: &str, yaml: &str) -> Tenant {
    env.kubectl_with_stdin(["apply", "-f", "-"], yaml)
        .await
        .expect_success();
    wait_ready(env, name).await
}

/// Waits until the Tenant `name` is Ready. The Tenant is deleted at the
/// test's cleanup.
pub async fn wait_ready(env: &TestEnv, name: &str) -> Tenant {
    env.delete_on_cleanup(kube::discovery::ApiResource::erase::<Tenant>(&()), name);
    wait_tenant_ready(env, name, TIMEOUT).await
}

pub async fn delete_tenant(env: &TestEnv, name: &str) {
    let tenants: Api<Tenant> = env.cluster_api();
    let _ = tenants.delete(name, &DeleteParams::default()).await;
}

/// Deletes `name` through `api`.
pub async fn delete<K>(api: &Api<K>, name: &str) -> kube::Result<()>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.delete(name, &DeleteParams::default()).await.map(|_| ())
}

/// Merge-patches `name` through `api` with `patch`.
pub async fn merge_patch<K>(api: &Api<K>, name: &str, patch: Value) -> kube::Result<K>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
}

/// Merge-patches the spec of the Tenant `name` with `spec`, as the cluster
/// admin; panics, naming the patch, when that fails.
pub async fn patch_tenant_spec(env: &TestEnv, name: &str, spec: Value) -> Tenant {
    let tenants: Api<Tenant> = env.cluster_api();
    merge_patch(&tenants, name, json!({ "spec": spec.clone() }))
        .await
        .unwrap_or_else(|e| panic!("patching the spec of {name} with {spec}: {e}"))
}

/// Asserts that each of `namespaces` is gone or being deleted: it went with
/// its Tenant.
pub async fn assert_namespaces_went(client: &kube::Client, namespaces: &[String]) {
    let api: Api<Namespace> = Api::all(client.clone());
    for ns in namespaces {
        let left = api
            .get_opt(ns)
            .await
            .unwrap_or_else(|e| panic!("get the namespace {ns}: {e}"));
        assert!(
            left.is_none_or(|n| n.metadata.deletion_timestamp.is_some()),
            "{ns} outlived its Tenant"
        );
    }
}

/// Gets `name` in `namespace`, which must exist.
pub async fn get_namespaced<K>(client: &kube::Client, namespace: &str, name: &str) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{} {name} in {namespace}: {e}",
                K::kind(&K::DynamicType::default())
            )
        })
}

/// What the operator makes in each of a tenant's namespaces, each of which
/// must exist: the quota, the limits, the isolation policy and the owners'
/// admin binding. Returns the quota and the binding.
pub async fn tenant_objects(
    client: &kube::Client,
    namespace: &str,
) -> (ResourceQuota, RoleBinding) {
    let quota = get_namespaced(client, namespace, "aleph-tenant-quota").await;
    get_namespaced::<LimitRange>(client, namespace, "aleph-tenant-defaults").await;
    get_namespaced::<NetworkPolicy>(client, namespace, "aleph-tenant-isolation").await;
    let binding = get_namespaced(client, namespace, "aleph-owners-admin").await;
    (quota, binding)
}

/// A pod that meets Pod Security `restricted`, so that only the tenant's own
/// rules can refuse it.
pub fn pod(name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": {
            "securityContext": { "runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": { "type": "RuntimeDefault" } },
            "containers": [container("main", image)],
        },
    })
}

pub fn container(name: &str, image: &str) -> Value {
    json!({
        "name": name,
        "image": image,
        "securityContext": { "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] } },
    })
}

/// `pod` asking for `gpus` GPUs, tolerating the GPU nodes' taint.
pub fn gpu_pod(name: &str, image: &str, gpus: u32) -> Value {
    let mut p = pod(name, image);
    p["spec"]["containers"][0]["resources"] = json!({
        "requests": { "nvidia.com/gpu": gpus.to_string() },
        "limits": { "nvidia.com/gpu": gpus.to_string() },
    });
    p["spec"]["tolerations"] =
        json!([{ "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" }]);
    p
}

/// Required node affinity to `products`.
pub fn affinity(products: &[&str]) -> Value {
    json!({ "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{ "matchExpressions": [
            { "key": "nvidia.com/gpu.product", "operator": "In", "values": products },
        ] }],
    } } })
}

/// A Deployment of one replica whose pod template is `pod`'s spec.
pub fn deployment(name: &str, pod: &Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": name } },
            "template": { "metadata": { "labels": { "app": name } }, "spec": pod["spec"] },
        },
    })
}

pub fn typed<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("a valid object")
}

/// Server-side dry run: the request goes through admission and stores nothing.
pub fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..PostParams::default()
    }
}

/// The refusal of `result` ("admitted" when there was none).
pub fn outcome<T>(result: Result<T, kube::Error>) -> String {
    match result {
        Ok(_) => "admitted".to_string(),
        Err(e) => e.to_string(),
    }
}

/// Repeats `attempt` (which must store nothing: a dry run) until it is
/// refused, for at most 30 s: admission policies reach the API server's
/// cache a moment after they are written. Returns the refusal, or "admitted".
pub async fn until_refused<T>(mut attempt: impl AsyncFnMut() -> Result<T, kube::Error>) -> String {
    for _ in 0..60 {
        if let Err(e) = attempt().await {
            return e.to_string();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    "admitted".to_string()
}

/// Creates `object` as a `K` in a dry run until that is refused (see
/// [`until_refused`]); returns the refusal, or "admitted".
pub async fn create_refused<K>(api: &Api<K>, object: &Value) -> String
where
    K: Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = typed(object.clone());
    until_refused(async || api.create(&dry_run(), &object).await).await
}

/// Whether `message` is a refusal naming `rule`.
pub fn refused_by(message: &str, rule: &str) -> bool {
    message != "admitted" && message.contains(rule)
}

/// Creates `object` through `api` (stored if admitted, not a dry run) and
/// asserts that it is refused naming `rule`; `what` names the case.
pub async fn assert_create_refused<K>(api: &Api<K>, object: &K, rule: &str, what: &str)
where
    K: Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let message = outcome(api.create(&PostParams::default(), object).await);
    assert!(refused_by(&message, rule), "{what}: {message}");
}

/// Adds the ephemeral container `debugger` running `image` to the pod `pod`
/// through `pods`, as `kubectl debug` does; `target` names the container
/// whose processes it sees, if any.
pub async fn debug_pod(
    pods: &Api<k8s_openapi::api::core::v1::Pod>,
    pod: &str,
    image: &str,
    target: Option<&str>,
) -> kube::Result<k8s_openapi::api::core::v1::Pod> {
    let mut debugger = json!({ "name": "debugger", "image": image });
    if let Some(target) = target {
        debugger["targetContainerName"] = json!(target);
    }
    let patch = json!({ "spec": { "ephemeralContainers": [debugger] } });
    pods.patch_subresource(
        "ephemeralcontainers",
        pod,
        &PatchParams::default(),
        &Patch::Strategic(patch),
    )
    .await
}

/// Asserts that the pod `name` can still be updated where no admission rule
/// looks: a label is added to it.
pub async fn assert_pod_relabels(pods: &Api<k8s_openapi::api::core::v1::Pod>, name: &str) {
    let labels = json!({ "metadata": { "labels": { "touched": "yes" } } });
    merge_patch(pods, name, labels)
        .await
        .unwrap_or_else(|e| panic!("a label change on the admitted pod {name}: {e}"));
}

/// Waits until a pod running `image`, then a Deployment of such a pod, are
/// refused in dry runs through `pods` and `deployments` (see
/// [`create_refused`]), and asserts that each refusal names `rule`.
pub async fn assert_pod_and_deployment_refused(
    pods: &Api<k8s_openapi::api::core::v1::Pod>,
    deployments: &Api<k8s_openapi::api::apps::v1::Deployment>,
    image: &str,
    rule: &str,
) {
    let message = create_refused(pods, &pod("new", image)).await;
    assert!(refused_by(&message, rule), "a new pod: {message}");
    let message = create_refused(deployments, &deployment("web", &pod("x", image))).await;
    assert!(refused_by(&message, rule), "a new Deployment: {message}");
}

/// Makes the ClusterRole `name` that lets its holder add ephemeral containers
/// (`kubectl debug`), which the built-in `admin` role does not; returns the
/// YAML lines that bind it to `user` through a Tenant's
/// `additionalRoleBindings`. Deleted at the test's cleanup.
pub async fn debugger_role(env: &TestEnv, name: &str, user: &str) -> String {
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = env.cluster_api();
    roles
        .create(
            &PostParams::default(),
            &typed(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": { "name": name },
                "rules": [{ "apiGroups": [""], "resources": ["pods/ephemeralcontainers"], "verbs": ["get", "patch", "update"] }],
            })),
        )
        .await
        .expect("the debugger ClusterRole");
    env.delete_on_cleanup(
        kube::discovery::ApiResource::erase::<k8s_openapi::api::rbac::v1::ClusterRole>(&()),
        name,
    );
    format!(
        "  additionalRoleBindings:\n    - clusterRole: {name}\n      subjects: [{{ kind: User, name: {user} }}]\n"
    )
}

/// Waits until the tenant's owners' policy holds for `client` in `namespace`
/// (it reaches the API server's cache on its own, a moment after the
/// tenant's other policy): deleting the operator's isolation policy, in a dry
/// run, is refused.
pub async fn owners_policy_in_force(client: &kube::Client, namespace: &str) {
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), namespace);
    let dry = DeleteParams {
        dry_run: true,
        ..DeleteParams::default()
    };
    let message =
        until_refused(async || policies.delete("aleph-tenant-isolation", &dry).await).await;
    assert!(refused_by(&message, "made by the operator"), "{message}");
}
