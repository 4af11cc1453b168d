//! The real node of the local cluster (`e2e/cluster/node.sh`): kubelet and
//! containerd on this machine, where containers really run. Tests that claim
//! behaviour (a process runs, a probe passes, a packet is dropped) put their
//! pods there; the kwok nodes only prove wiring.
//!
//! Only pods that ask for it land on the real node: it carries the taint
//! [`REAL_NODE_TAINT`] and the label [`REAL_NODE_POOL_LABEL`]`=real`. A test
//! pins every pod of a namespace to it with [`pin_namespace`], through the API
//! server's `PodNodeSelector` and `PodTolerationRestriction` admission plugins,
//! so that pods made by controllers (Jobs, Deployments, the operator's own
//! children) go there too without their specs saying so.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};

use crate::kubectl::{KubectlOutput, kubectl};
use crate::wait::wait_for;

/// The real node's name.
pub const REAL_NODE_NAME: &str = "aleph-real-0";
/// The node-pool label (value `real`).
pub const REAL_NODE_POOL_LABEL: &str = "aleph.dev/node-pool";
/// The taint key that keeps other pods off the real node (effect NoSchedule).
pub const REAL_NODE_TAINT: &str = "aleph.dev/real-node";
/// The image with a shell and network tools (busybox) built by `e2e/images`.
pub const BUSYBOX_IMAGE: &str = "aleph.local/busybox:dev";

const NODE_SELECTOR_ANNOTATION: &str = "scheduler.alpha.kubernetes.io/node-selector";
const DEFAULT_TOLERATIONS_ANNOTATION: &str = "scheduler.alpha.kubernetes.io/defaultTolerations";

/// Returns the real node, or panics saying why the cluster has none: the
/// tests that need it are never skipped.
pub async fn require(client: &Client) -> Node {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = match nodes.get_opt(REAL_NODE_NAME).await {
        Ok(Some(node)) => node,
        Ok(None) => panic!(
            "the cluster has no real node {REAL_NODE_NAME}: these tests need one. Run them with \
             `make test` (e2e/cluster/with-cluster.sh) as root on a machine with the packages of \
             scripts/setup.sh; with ALEPH_REAL_NODE=0 or another cluster, they fail by design"
        ),
        Err(e) => panic!("cannot read node {REAL_NODE_NAME}: {e}"),
    };
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status == "True");
    assert_eq!(
        ready,
        Some(true),
        "the real node {REAL_NODE_NAME} is not Ready: see its kubelet's log in $ALEPH_STATE/node/logs"
    );
    node
}

/// Makes every pod created from now on in `namespace` go to the real node.
pub async fn pin_namespace(client: &Client, namespace: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let tolerations =
        format!(r#"[{{"key":"{REAL_NODE_TAINT}","operator":"Exists","effect":"NoSchedule"}}]"#);
    let patch = serde_json::json!({
        "metadata": {"annotations": {
            NODE_SELECTOR_ANNOTATION: format!("{REAL_NODE_POOL_LABEL}=real"),
            DEFAULT_TOLERATIONS_ANNOTATION: tolerations,
        }}
    });
    namespaces
        .patch(namespace, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("cannot pin namespace {namespace} to the real node: {e}"));
}

/// A pod manifest running `script` with `sh -c` in the busybox image, as a
/// non-root user with the restricted security context (so it is admitted in
/// namespaces with Pod Security `restricted`).
pub fn busybox_pod(name: &str, labels: &BTreeMap<&str, &str>, script: &str) -> String {
    let labels: String = labels
        .iter()
        .map(|(k, v)| format!("{k}: \"{v}\", "))
        .collect();
    let script = serde_json::to_string(script).unwrap_or_default();
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{{labels}}}
spec:
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    seccompProfile: {{type: RuntimeDefault}}
  containers:
  - name: main
    image: {BUSYBOX_IMAGE}
    imagePullPolicy: Never
    command: [sh, -c, {script}]
    resources:
      requests: {{cpu: 10m, memory: 16Mi}}
      limits: {{cpu: 200m, memory: 64Mi}}
    securityContext:
      allowPrivilegeEscalation: false
      capabilities: {{drop: [ALL]}}
"#
    )
}

/// Waits until pod `name` runs and is Ready, and returns it (with its IP).
pub async fn wait_running(pods: &Api<Pod>, name: &str, timeout: Duration) -> Pod {
    wait_for(pods, name, timeout, |pod| {
        pod.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    })
    .await
}

/// The pod's IP; panics when it has none.
pub fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_else(|| panic!("pod {} has no IP", pod.name_any()))
}

/// Runs `sh -c script` in the pod's first container (`kubectl exec`).
pub async fn exec(namespace: &str, pod: &str, script: &str) -> KubectlOutput {
    kubectl(["exec", "-n", namespace, pod, "--", "sh", "-c", script]).await
}

/// Whether a TCP connection from the pod to `host:port` opens within
/// `seconds` (busybox `nc`, which exits 0 once connected when its input ends).
pub async fn can_connect(namespace: &str, pod: &str, host: &str, port: u16, seconds: u32) -> bool {
    exec(
        namespace,
        pod,
        &format!("nc -w {seconds} {host} {port} </dev/null"),
    )
    .await
    .success()
}
