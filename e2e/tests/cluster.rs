//! The cluster the tests run against does what the other tests rely on: nodes,
//! scheduling onto GPU nodes, workloads, Jobs, quotas, namespace deletion and
//! RBAC. On the local control plane the pods are run by kwok; on kind they run
//! for real, so every manifest here works on both.

use std::time::Duration;

use aleph_e2e::{TestEnv, has_condition, unique_name, wait_for, wait_for_deletion};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{Job, JobStatus};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ResourceQuota, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};

const TIMEOUT: Duration = Duration::from_secs(90);
const H100: &str = "NVIDIA-H100-80GB-HBM3";
const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";
const BUSYBOX_IMAGE: &str = "busybox:1.37";

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn pod_condition<'a>(pod: &'a Pod, type_: &str) -> Option<(&'a str, Option<&'a str>)> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
        .map(|c| (c.status.as_str(), c.reason.as_deref()))
}

/// The nodes offering `nvidia.com/gpu` of the given product, if the cluster
/// has any (the local control plane does; a plain kind cluster does not).
async fn gpu_nodes(client: Client, product: &str) -> Vec<Node> {
    let nodes: Api<Node> = Api::all(client);
    let selector = format!("nvidia.com/gpu.product={product}");
    nodes
        .list(&ListParams::default().labels(&selector))
        .await
        .map(|list| list.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.allocatable.as_ref())
                .is_some_and(|a| a.contains_key("nvidia.com/gpu"))
        })
        .collect()
}

#[tokio::test]
async fn every_node_is_ready() {
    let env = TestEnv::new().await;
    let nodes: Api<Node> = env.cluster_api();
    let list = nodes.list(&ListParams::default()).await;
    let names: Vec<String> = list
        .map(|l| l.items.iter().map(ResourceExt::name_any).collect())
        .unwrap_or_else(|e| panic!("cannot list nodes: {e}"));
    assert!(!names.is_empty(), "the cluster has no nodes");
    for name in &names {
        wait_for(&nodes, name, TIMEOUT, node_ready).await;
    }
    env.cleanup().await;
}

/// A Deployment `web` of `replicas` pause pods labelled `app: web`; `metadata`
/// and `container` end its metadata and its container.
fn web_deployment(replicas: u32, metadata: &str, container: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
{metadata}spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: web
        image: {PAUSE_IMAGE}
{container}"#
    )
}

#[tokio::test]
async fn deployment_gets_three_running_pods() {
    let env = TestEnv::new().await;
    let resources = "        resources:\n          requests: {cpu: 10m, memory: 16Mi}\n";
    env.apply_yaml(&web_deployment(3, "", resources)).await;
    wait_for(&env.api::<Deployment>(), "web", TIMEOUT, |d| {
        d.status.as_ref().and_then(|s| s.available_replicas) == Some(3)
    })
    .await;
    let pods = env
        .api::<Pod>()
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap_or_else(|e| panic!("cannot list pods: {e}"));
    let running = pods
        .items
        .iter()
        .filter(|p| pod_phase(p) == Some("Running"))
        .count();
    assert_eq!(running, 3, "pods: {:?}", pods.items);
    env.cleanup().await;
}

/// A Pod `name` whose spec's body is `spec`.
fn pod(name: &str, spec: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

fn gpu_pod(name: &str, gpus: u32) -> String {
    let spec = format!(
        r#"  nodeSelector:
    nvidia.com/gpu.product: {H100}
  tolerations:
  - key: nvidia.com/gpu
    operator: Exists
    effect: NoSchedule
  containers:
  - name: cuda
    image: {PAUSE_IMAGE}
    resources:
      limits:
        nvidia.com/gpu: {gpus}
"#
    );
    pod(name, &spec)
}

/// The H100 nodes, or `None` (the test is skipped) when there are none.
async fn h100_nodes(env: &TestEnv) -> Option<Vec<Node>> {
    let nodes = gpu_nodes(env.client(), H100).await;
    if nodes.is_empty() {
        eprintln!("skipped: no node offers nvidia.com/gpu with product {H100}");
        return None;
    }
    Some(nodes)
}

#[tokio::test]
async fn gpu_pod_lands_on_an_h100_node() {
    let env = TestEnv::new().await;
    let Some(h100_nodes) = h100_nodes(&env).await else {
        return env.cleanup().await;
    };
    env.apply_yaml(&gpu_pod("trainer", 1)).await;
    let pod = wait_for(&env.api::<Pod>(), "trainer", TIMEOUT, |p| {
        pod_phase(p) == Some("Running")
    })
    .await;
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    assert!(
        h100_nodes.iter().any(|n| Some(n.name_any()) == node_name),
        "scheduled on {node_name:?}, not on an H100 node"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn gpu_pod_asking_for_more_than_a_node_has_stays_pending() {
    let env = TestEnv::new().await;
    if h100_nodes(&env).await.is_none() {
        return env.cleanup().await;
    }
    env.apply_yaml(&gpu_pod("too-big", 9)).await;
    let pod = wait_for(&env.api::<Pod>(), "too-big", TIMEOUT, |p| {
        pod_condition(p, "PodScheduled") == Some(("False", Some("Unschedulable")))
    })
    .await;
    assert_eq!(pod_phase(&pod), Some("Pending"));
    env.cleanup().await;
}

fn job(name: &str, exit_code: u8, annotations: &str) -> String {
    format!(
        r#"
apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
spec:
  backoffLimit: 0
  template:
    metadata:
      annotations: {{{annotations}}}
    spec:
      restartPolicy: Never
      containers:
      - name: step
        image: {BUSYBOX_IMAGE}
        command: ["sh", "-c", "exit {exit_code}"]
"#
    )
}

/// Runs the Job `name` (its pod exits with `exit_code`; `annotations` go on
/// it) until it has the condition `ended`, and returns its status.
async fn run_job(name: &str, exit_code: u8, annotations: &str, ended: &str) -> JobStatus {
    let env = TestEnv::new().await;
    env.apply_yaml(&job(name, exit_code, annotations)).await;
    let job = wait_for(&env.api::<Job>(), name, TIMEOUT, |j| {
        has_condition(j, ended, "True")
    })
    .await;
    env.cleanup().await;
    job.status.unwrap_or_default()
}

#[tokio::test]
async fn job_completes() {
    let status = run_job("succeeds", 0, "", "Complete").await;
    assert_eq!(status.succeeded, Some(1));
}

#[tokio::test]
async fn job_with_a_failing_pod_fails() {
    let status = run_job("fails", 1, r#"aleph.dev/test-fail: "true""#, "Failed").await;
    assert_eq!(status.failed, Some(1));
}

#[tokio::test]
async fn pod_marked_never_ready_runs_but_is_not_ready() {
    let env = TestEnv::new().await;
    // On kwok the annotation decides; on a real node the probe never succeeds.
    env.apply_yaml(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: stuck
  annotations:
    aleph.dev/test-never-ready: "true"
spec:
  containers:
  - name: server
    image: {PAUSE_IMAGE}
    readinessProbe:
      tcpSocket: {{port: 1}}
      periodSeconds: 1
"#
    ))
    .await;
    let pods = env.api::<Pod>();
    wait_for(&pods, "stuck", TIMEOUT, |p| pod_phase(p) == Some("Running")).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pod = wait_for(&pods, "stuck", TIMEOUT, |_| true).await;
    assert_eq!(pod_phase(&pod), Some("Running"));
    assert_eq!(pod_condition(&pod, "Ready").map(|c| c.0), Some("False"));
    env.cleanup().await;
}

#[tokio::test]
async fn namespace_deletion_completes() {
    let env = TestEnv::new().await;
    let name = unique_name("e2e-doomed");
    env.apply_yaml(&format!(
        r#"
apiVersion: v1
kind: Namespace
metadata:
  name: {name}
  labels:
    aleph.dev/e2e: "true"
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: {name}
data:
  key: value
"#
    ))
    .await;
    wait_for(
        &Api::<ServiceAccount>::namespaced(env.client(), &name),
        "default",
        TIMEOUT,
        |_| true,
    )
    .await;
    env.apply_yaml(&web_deployment(2, &format!("  namespace: {name}\n"), ""))
        .await;
    let deployments: Api<Deployment> = Api::namespaced(env.client(), &name);
    wait_for(&deployments, "web", TIMEOUT, |d| {
        d.status.as_ref().and_then(|s| s.ready_replicas) == Some(2)
    })
    .await;
    let namespaces: Api<Namespace> = env.cluster_api();
    namespaces
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("cannot delete namespace {name}: {e}"));
    wait_for_deletion(&namespaces, &name, Duration::from_secs(120)).await;
    env.cleanup().await;
}

#[tokio::test]
async fn resource_quota_status_follows_pods() {
    let env = TestEnv::new().await;
    env.resource_quota("compute", &[("pods", "2"), ("requests.cpu", "1")], TIMEOUT)
        .await;
    let quotas = env.api::<ResourceQuota>();
    let used = |quota: &ResourceQuota, resource: &str| {
        quota
            .status
            .as_ref()
            .and_then(|s| s.used.as_ref())
            .and_then(|u| u.get(resource))
            .map(|q| q.0.clone())
    };
    wait_for(&quotas, "compute", TIMEOUT, |q| {
        used(q, "pods").as_deref() == Some("0")
    })
    .await;

    let spec = format!(
        r#"  terminationGracePeriodSeconds: 0
  containers:
  - name: app
    image: {PAUSE_IMAGE}
    resources:
      requests: {{cpu: 250m, memory: 16Mi}}
      limits: {{cpu: 250m, memory: 16Mi}}
"#
    );
    let small_pod = |name: &str| pod(name, &spec);
    env.apply_yaml(&small_pod("first")).await;
    env.apply_yaml(&small_pod("second")).await;
    wait_for(&quotas, "compute", TIMEOUT, |q| {
        used(q, "pods").as_deref() == Some("2")
            && used(q, "requests.cpu").as_deref() == Some("500m")
    })
    .await;

    let refused = env
        .try_apply_yaml(&small_pod("third"))
        .await
        .expect_err("a third pod exceeds the quota");
    let status = refused.api_status().map(|s| (s.code, s.message.clone()));
    assert!(
        matches!(&status, Some((403, message)) if message.contains("exceeded quota")),
        "unexpected refusal: {refused}"
    );

    env.api::<Pod>()
        .delete("first", &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("cannot delete pod first: {e}"));
    wait_for(&quotas, "compute", TIMEOUT, |q| {
        used(q, "pods").as_deref() == Some("1")
            && used(q, "requests.cpu").as_deref() == Some("250m")
    })
    .await;
    env.cleanup().await;
}

#[tokio::test]
async fn rbac_denies_a_user_without_rights_until_granted() {
    let env = TestEnv::new().await;
    let user = "jane@example.com";
    let as_jane: Api<Pod> = Api::namespaced(env.impersonated_client(user, &[]), env.namespace());
    match as_jane.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("expected 403 Forbidden for {user}, got {other:?}"),
    }
    let cluster_wide: Api<Namespace> = Api::all(env.impersonated_client(user, &[]));
    assert!(
        cluster_wide.list(&ListParams::default()).await.is_err(),
        "{user} must not list namespaces"
    );

    env.apply_yaml(&format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: pod-reader
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: jane-reads-pods
subjects:
- kind: User
  apiGroup: rbac.authorization.k8s.io
  name: {user}
roleRef:
  kind: Role
  apiGroup: rbac.authorization.k8s.io
  name: pod-reader
"#
    ))
    .await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        match as_jane.list(&ListParams::default()).await {
            Ok(_) => break,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                panic!("{user} still cannot list pods after the RoleBinding: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    let refused = as_jane
        .create(&PostParams::default(), &Pod::default())
        .await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 403),
        "{user} may only read pods: {refused:?}"
    );
    env.cleanup().await;
}
