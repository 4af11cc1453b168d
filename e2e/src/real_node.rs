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
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

use tokio::time::Instant;

use crate::apply::apply_yaml;
use crate::kubectl::{KubectlOutput, kubectl};
use crate::wait::{node_of, wait_for};

/// The real node's name.
pub const REAL_NODE_NAME: &str = "aleph-real-0";
/// The node-pool label (value `real`).
pub const REAL_NODE_POOL_LABEL: &str = "aleph.dev/node-pool";
/// The taint key that keeps other pods off the real node (effect NoSchedule).
pub const REAL_NODE_TAINT: &str = "aleph.dev/real-node";
/// The image with a shell and network tools (busybox) built by `e2e/images`.
pub const BUSYBOX_IMAGE: &str = "aleph.local/busybox:dev";

/// How long a pod on the real node may take to run and be Ready.
pub const POD_START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long [`expect_connect`] gives network policies to take effect.
pub const POLICY_SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How many checks in a row [`expect_connect`] wants the same outcome.
pub const SETTLED_CHECKS: u32 = 3;

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

/// The name of the real node's network namespace (`aleph-n<N>`, as
/// `e2e/cluster/node.sh` made it for the cluster of `$ALEPH_STATE`): where
/// kube-proxy's rules, and so Services' ClusterIPs, apply. A command run in it
/// (`ip netns exec NAME ...`) reaches Services as the node's own processes do;
/// this machine's other processes reach pods only, by their IPs.
pub fn node_netns() -> String {
    let state = std::env::var("ALEPH_STATE").unwrap_or_else(|_| {
        panic!(
            "ALEPH_STATE is not set: run the tests under e2e/cluster/with-cluster.sh, which \
             starts the real node and says where its state is"
        )
    });
    let path = std::path::Path::new(&state).join("node/node.env");
    let env = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("the real node's {}: {e}", path.display()));
    env.lines()
        .find_map(|line| line.strip_prefix("NODE_NETNS="))
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| panic!("no NODE_NETNS in {}", path.display()))
}

/// The pod addresses kube-proxy's rules on the real node send the Service
/// `namespace/service`'s connections to (the DNAT targets of its endpoint
/// chains, sorted): what the node does, which lags behind the Service's
/// EndpointSlices by one sync of kube-proxy's.
pub async fn proxied_endpoints(namespace: &str, service: &str) -> Result<Vec<String>, String> {
    let out = tokio::process::Command::new("ip")
        .args(["netns", "exec", &node_netns(), "iptables-save", "-t", "nat"])
        .output()
        .await
        .map_err(|e| format!("iptables-save in the real node's namespace: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "iptables-save in the real node's namespace: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(dnat_targets(
        &String::from_utf8_lossy(&out.stdout),
        namespace,
        service,
    ))
}

/// The addresses of `iptables-save` output's DNAT rules commented with the
/// Service `namespace/service` (kube-proxy comments each endpoint's rule with
/// `namespace/service:port-name`, or `namespace/service` for an unnamed port).
fn dnat_targets(rules: &str, namespace: &str, service: &str) -> Vec<String> {
    let tagged = format!("--comment \"{namespace}/{service}");
    let mut ips: Vec<String> = rules
        .lines()
        .filter(|line| {
            line.split_once(&tagged)
                .is_some_and(|(_, rest)| rest.starts_with(':') || rest.starts_with('"'))
        })
        .filter_map(|line| {
            line.split_once("-j DNAT --to-destination ")
                .map(|(_, to)| to)
        })
        .filter_map(|to| to.split_whitespace().next()?.rsplit_once(':'))
        .map(|(ip, _)| ip.to_string())
        .collect();
    ips.sort();
    ips.dedup();
    ips
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
    // The admission plugins read namespaces from the API server's informer,
    // which takes the annotations a moment after the patch: a pod created in
    // between goes anywhere. A dry-run creation shows when they apply.
    let probe: Pod = serde_saphyr::from_str(&busybox_pod("pin-probe", &BTreeMap::new(), "true"))
        .unwrap_or_else(|e| panic!("the pin probe pod: {e}"));
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let admitted = match pods.create(&dry_run, &probe).await {
            Ok(pod) => pod,
            // Refused by the namespace's own rules (a tenant's admission
            // policy, say): the probe cannot tell, so give the informer the
            // moment it usually takes.
            Err(kube::Error::Api(s)) if (400..500).contains(&s.code) => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                return;
            }
            Err(e) => panic!("a dry-run pod in {namespace}: {e}"),
        };
        let selector = admitted
            .spec
            .and_then(|s| s.node_selector)
            .unwrap_or_default();
        if selector.get(REAL_NODE_POOL_LABEL).map(String::as_str) == Some("real") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pods created in {namespace} are still not pinned to the real node 30 s after \
             its annotations were set: is the PodNodeSelector admission plugin on?"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A pod manifest running `script` with `sh -c` in the busybox image, as a
/// non-root user with the restricted security context (so it is admitted in
/// namespaces with Pod Security `restricted`).
pub fn busybox_pod(name: &str, labels: &BTreeMap<&str, &str>, script: &str) -> String {
    pod_manifest(name, labels, script, "")
}

/// A [`busybox_pod`] serving `body` as `/index.html` with busybox `httpd` on
/// each of `ports`, and Ready only once the first one answers an HTTP GET (its
/// readiness probe). `body` is one line of letters, digits, `-`, `.` and `_`.
pub fn httpd_pod(name: &str, labels: &BTreeMap<&str, &str>, ports: &[u16], body: &str) -> String {
    assert!(
        body.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)),
        "an httpd body is letters, digits, '-', '.' and '_': {body:?}"
    );
    let (first, others) = ports
        .split_first()
        .unwrap_or_else(|| panic!("httpd pod {name} needs a port"));
    // Without -f httpd goes to the background; the last one stays in front.
    let mut script = format!("mkdir -p /tmp/www && echo {body} >/tmp/www/index.html");
    for port in others {
        script.push_str(&format!(" && httpd -p {port} -h /tmp/www"));
    }
    script.push_str(&format!(" && exec httpd -f -p {first} -h /tmp/www"));
    pod_manifest(name, labels, &script, &readiness_probe_http(*first))
}

/// The YAML of a container's readiness probe: an HTTP GET of `/` on `port`
/// every second, to append to a container of [`busybox_pod`]'s shape.
pub fn readiness_probe_http(port: u16) -> String {
    format!(
        "    readinessProbe:\n      httpGet: {{path: /, port: {port}}}\n      periodSeconds: 1\n      failureThreshold: 1\n"
    )
}

/// A [`busybox_pod`] that only sleeps: a client to run commands in with [`exec`].
pub fn client_pod(name: &str, labels: &BTreeMap<&str, &str>) -> String {
    busybox_pod(name, labels, "exec sleep 3600")
}

/// [`busybox_pod`] with `container_extra` (YAML lines indented by four
/// spaces, such as [`readiness_probe_http`]) appended to its container.
pub fn pod_manifest(
    name: &str,
    labels: &BTreeMap<&str, &str>,
    script: &str,
    container_extra: &str,
) -> String {
    let labels: String = labels
        .iter()
        .map(|(k, v)| format!("{k}: \"{v}\", "))
        .collect();
    let script = serde_json::to_string(script).unwrap_or_default();
    restricted_pod(
        name,
        &format!("  labels: {{{labels}}}\n"),
        &format!(
            r#"  - name: main
    image: {BUSYBOX_IMAGE}
    imagePullPolicy: Never
    command: [sh, -c, {script}]
    resources:
      requests: {{cpu: 10m, memory: 16Mi}}
      limits: {{cpu: 200m, memory: 64Mi}}
"#
        ),
        container_extra,
    )
}

/// A pod `name` that meets Pod Security `restricted`: a non-root user, the
/// runtime's seccomp profile, no privilege escalation and no capabilities.
/// `metadata` (YAML lines indented by two spaces) ends its metadata;
/// `container` (from its `- name:` line on) is its one container, to which
/// the container's security context and then `container_extra` are added.
pub fn restricted_pod(
    name: &str,
    metadata: &str,
    container: &str,
    container_extra: &str,
) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
{metadata}spec:
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    seccompProfile: {{type: RuntimeDefault}}
  containers:
{container}    securityContext:
      allowPrivilegeEscalation: false
      capabilities: {{drop: [ALL]}}
{container_extra}"#
    )
}

/// Creates the pods of `manifests` in `namespace` (a namespace pinned with
/// [`pin_namespace`]), waits until each runs and is Ready, checks that each is
/// on the real node, and returns them by name, with their IPs.
pub async fn run_pods(
    client: &Client,
    namespace: &str,
    manifests: &[String],
) -> BTreeMap<String, Pod> {
    let mut names = Vec::new();
    for manifest in manifests {
        let applied = apply_yaml(client, manifest, Some(namespace))
            .await
            .unwrap_or_else(|e| panic!("cannot create a pod in {namespace}: {e}"));
        names.extend(applied.into_iter().filter_map(|a| a.object.metadata.name));
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut running = BTreeMap::new();
    for name in names {
        let pod = wait_running(&pods, &name, POD_START_TIMEOUT).await;
        assert_eq!(
            node_of(&pod),
            Some(REAL_NODE_NAME),
            "pod {namespace}/{name} is not on the real node (is its namespace pinned?)"
        );
        running.insert(name, pod);
    }
    running
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

/// Waits until a TCP connection from `pod` to `host:port` opens (`want`
/// true) or does not open (`want` false) in [`SETTLED_CHECKS`] checks in a
/// row, and panics with every outcome seen when that does not happen within
/// [`POLICY_SETTLE_TIMEOUT`]. Network policies reach the node's packet filter
/// a moment after a pod or a policy appears, so the first checks may differ;
/// a policy that never takes effect, or that never lets the connection
/// through, fails.
pub async fn expect_connect(namespace: &str, pod: &str, host: &str, port: u16, want: bool) {
    let deadline = Instant::now() + POLICY_SETTLE_TIMEOUT;
    let mut seen = Vec::new();
    let mut in_a_row = 0;
    while in_a_row < SETTLED_CHECKS {
        let started = Instant::now();
        let opened = can_connect(namespace, pod, host, port, 2).await;
        seen.push(format!(
            "{} after {:.1}s",
            if opened { "opened" } else { "did not open" },
            started.elapsed().as_secs_f32()
        ));
        in_a_row = if opened == want { in_a_row + 1 } else { 0 };
        if in_a_row < SETTLED_CHECKS {
            assert!(
                Instant::now() < deadline,
                "a TCP connection from {namespace}/{pod} to {host}:{port} should {}open; \
                 it was not so {SETTLED_CHECKS} times in a row within {POLICY_SETTLE_TIMEOUT:?}: {}",
                if want { "" } else { "not " },
                seen.join(", ")
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// `nslookup NAME` in the pod: what it printed and whether it succeeded.
pub async fn nslookup(namespace: &str, pod: &str, name: &str) -> KubectlOutput {
    exec(namespace, pod, &format!("nslookup {name}")).await
}

/// An HTTP/1.0 `GET path` of `host:port` from the pod, sent with busybox `nc`
/// (the busybox image's `wget` crashes): the whole response, status line,
/// headers and body, in `stdout`.
pub async fn http_get(
    namespace: &str,
    pod: &str,
    host: &str,
    port: u16,
    path: &str,
) -> KubectlOutput {
    exec(
        namespace,
        pod,
        &format!(
            "printf 'GET {path} HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n' | nc -w 3 {host} {port}"
        ),
    )
    .await
}

/// The address pods on the real node reach this machine at (`ALEPH_HOST_IP`,
/// which the test command exports).
pub fn host_ip() -> String {
    std::env::var("ALEPH_HOST_IP").unwrap_or_else(|_| {
        panic!(
            "ALEPH_HOST_IP is not set: it is the address pods reach this machine at \
             (HOST_IP in $ALEPH_STATE/ports.env); scripts/run-tests.sh exports it"
        )
    })
}

/// The API server's port on [`host_ip`] (`ALEPH_APISERVER_PORT`): something
/// that listens on this machine, for tests of egress to it.
pub fn apiserver_port() -> u16 {
    let text = std::env::var("ALEPH_APISERVER_PORT").unwrap_or_else(|_| {
        panic!(
            "ALEPH_APISERVER_PORT is not set (APISERVER_PORT in $ALEPH_STATE/ports.env); \
             scripts/run-tests.sh exports it"
        )
    });
    text.parse()
        .unwrap_or_else(|e| panic!("ALEPH_APISERVER_PORT={text:?} is not a port: {e}"))
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

/// The directory on this machine behind `claim` (of the local StorageClass,
/// kube-controller-manager's hostPath provisioner), once it is bound.
pub async fn volume_dir(client: &Client, namespace: &str, claim: &str) -> std::path::PathBuf {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let bound = wait_for(&claims, claim, POD_START_TIMEOUT, |c| {
        c.spec
            .as_ref()
            .and_then(|s| s.volume_name.as_ref())
            .is_some()
    })
    .await;
    let volume = bound.spec.and_then(|s| s.volume_name).unwrap_or_default();
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&volume)
        .await
        .unwrap_or_else(|e| panic!("the volume {volume} of claim {claim}: {e}"));
    let path = pv
        .spec
        .and_then(|s| s.host_path)
        .map(|h| h.path)
        .unwrap_or_else(|| panic!("the volume {volume} is not a hostPath volume"));
    let relative = path
        .strip_prefix("/tmp/hostpath_pv/")
        .unwrap_or_else(|| panic!("unexpected volume path {path}"));
    std::path::PathBuf::from(crate::s3::env_var("ALEPH_STATE"))
        .join("volumes")
        .join(relative)
}

#[cfg(test)]
mod tests {
    use super::dnat_targets;

    #[test]
    fn a_services_dnat_targets_are_read_from_its_endpoint_chains_only() {
        let rules = r#"*nat
-A KUBE-SEP-AAA -s 10.211.1.7/32 -m comment --comment "ns1/duo:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-AAA -p tcp -m comment --comment "ns1/duo:http" -m tcp -j DNAT --to-destination 10.211.1.7:8000
-A KUBE-SEP-BBB -p tcp -m comment --comment "ns1/duo:http" -m tcp -j DNAT --to-destination 10.211.1.12:8000
-A KUBE-SEP-CCC -p tcp -m comment --comment "ns1/duo-canary:http" -m tcp -j DNAT --to-destination 10.211.1.9:8000
-A KUBE-SEP-DDD -p tcp -m comment --comment "ns2/duo" -m tcp -j DNAT --to-destination 10.211.1.10:8000
-A KUBE-SEP-EEE -p tcp -m comment --comment "ns1/duo" -m tcp -j DNAT --to-destination 10.211.1.11:9000
COMMIT
"#;
        assert_eq!(
            dnat_targets(rules, "ns1", "duo"),
            ["10.211.1.11", "10.211.1.12", "10.211.1.7"]
        );
        assert_eq!(dnat_targets(rules, "ns2", "duo"), ["10.211.1.10"]);
        assert!(dnat_targets(rules, "ns3", "duo").is_empty());
    }
}
