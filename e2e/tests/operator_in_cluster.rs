//! The operator installed for real: `helm install` of `charts/aleph-operator`
//! with the locally built image (`e2e/images`), two replicas running as pods
//! on the real node, with in-cluster configuration, their own ServiceAccount
//! token and exactly the chart's RBAC.
//!
//! One test walks the release's life, because each step needs the previous:
//! - installed without its RBAC, the pods run but are not Ready: kubelet's
//!   readiness probe reads `/readyz`, which says the caches cannot sync;
//! - `helm upgrade` adds the RBAC: both pods turn Ready by themselves;
//! - `/metrics` and `/readyz` answer on each pod's IP;
//! - every example is reconciled with no request refused (no `Forbidden` in
//!   either pod's log);
//! - deleting the leader's pod hands the Lease to the other replica;
//! - `helm uninstall` leaves no object of the release behind.
//!
//! The in-cluster operator reconciles only objects with its private label; the
//! operator process the other tests share ignores them.

use std::time::{Duration, Instant};

use aleph_e2e::helm::{Release, apply_examples, helm};
use aleph_e2e::operator::{http_get, metric_sum};
use aleph_e2e::real_node::{pin_namespace, pod_ip, require};
use aleph_e2e::{
    PRIVATE_OPERATOR_LABEL, TestEnv, find_condition, kubectl, live_pods, unique_name, wait_for,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject};

const TIMEOUT: Duration = Duration::from_secs(180);

fn env_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the tests with `make test` (scripts/run-tests.sh exports it)"
        )
    })
}

/// The port of a URL such as `http://10.210.1.1:41234`.
fn port_of(url: &str) -> String {
    url.rsplit(':')
        .next()
        .map(|p| p.trim_end_matches('/').to_owned())
        .unwrap_or_default()
}

/// The release's values: the local image, two replicas, the private label,
/// egress to the API server's and the SageMaker emulator's ports, no EC2
/// metadata lookups.
fn values(label: &str, rbac: bool) -> String {
    let api_port = env_var("ALEPH_APISERVER_PORT");
    let moto = env_var("ALEPH_MOTO_URL");
    let moto_port = port_of(&moto);
    format!(
        r#"
image: {{repository: aleph.local/aleph-operator, tag: dev, pullPolicy: Never}}
replicaCount: 2
gateway:
  image: {{repository: aleph.local/aleph-gateway, tag: dev, pullPolicy: Never}}
rbac: {{create: {rbac}}}
operator:
  watchLabelSelector: "{PRIVATE_OPERATOR_LABEL}={label}"
  logFormat: text
  modelCacheImage: aleph.local/model-cache:dev
  # The operator the other tests share keeps the step template index.
  stepTemplateAdmission: false
  leaderElection: {{leaseDurationSeconds: 6, retrySeconds: 1}}
  aws: {{region: us-east-1}}
networkPolicy:
  egressPorts: [443, 6443, {api_port}, {moto_port}]
extraEnv:
- {{name: AWS_EC2_METADATA_DISABLED, value: "true"}}
- {{name: AWS_ENDPOINT_URL_SAGEMAKER, value: "{moto}"}}
- {{name: AWS_ACCESS_KEY_ID, value: testing}}
- {{name: AWS_SECRET_ACCESS_KEY, value: testing}}
"#
    )
}

fn values_file(label: &str, rbac: bool) -> String {
    let path = std::env::temp_dir().join(format!("{label}-{rbac}.yaml"));
    std::fs::write(&path, values(label, rbac))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path.to_string_lossy().into_owned()
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|c| c.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0)
}

fn running(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|c| {
            c.iter()
                .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        })
}

async fn release_pods(pods: &Api<Pod>, release: &Release) -> Vec<Pod> {
    component_pods(pods, release, "operator").await
}

/// The release's live pods of one component: `operator` or `gateway`.
async fn component_pods(pods: &Api<Pod>, release: &Release, component: &str) -> Vec<Pod> {
    let selector = format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/component={component}",
        release.name
    );
    live_pods(pods, &selector, "list the release's pods").await
}

/// Waits until `check` holds for exactly `count` live pods of the release.
async fn wait_pods(
    pods: &Api<Pod>,
    release: &Release,
    count: usize,
    what: &str,
    check: impl Fn(&Pod) -> bool,
) -> Vec<Pod> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let list = release_pods(pods, release).await;
        if list.len() == count && list.iter().all(&check) {
            return list;
        }
        if Instant::now() > deadline {
            let out = kubectl(["describe", "pods", "-n", &release.namespace]).await;
            panic!("timed out waiting for {count} pods {what}:\n{}", out.stdout);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn lease_holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

async fn pod_logs(namespace: &str, pod: &str, since: &str) -> String {
    let out = kubectl([
        "logs",
        "-n",
        namespace,
        pod,
        &format!("--since-time={since}"),
    ])
    .await;
    assert!(out.success(), "{out}");
    out.stdout
}

#[tokio::test]
async fn the_operator_runs_in_the_cluster_from_its_chart() {
    let env = TestEnv::new().await;
    let client = env.client();
    require(&client).await;
    pin_namespace(&client, env.namespace()).await;
    let label = unique_name("incluster");
    let pods: Api<Pod> = env.api();

    // Without RBAC: alive, never Ready, never restarted.
    let no_rbac = values_file(&label, false);
    let release = Release::install(&env, &["-f", &no_rbac]).await;
    let started = wait_pods(&pods, &release, 2, "running", running).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    for pod in release_pods(&pods, &release).await {
        assert!(
            !is_ready(&pod) && restarts(&pod) == 0,
            "without RBAC the pod {} must run without being Ready (ready: {}, restarts: {})",
            pod.name_any(),
            is_ready(&pod),
            restarts(&pod)
        );
        let addr = format!("{}:8080", pod_ip(&pod));
        let (code, body) = http_get(&addr, "/readyz").await.expect("GET /readyz");
        assert_eq!(code, 503, "/readyz on {addr} without RBAC: {body}");
        let (code, _) = http_get(&addr, "/livez").await.expect("GET /livez");
        assert_eq!(code, 200, "/livez on {addr}");
    }

    // With RBAC: the same pods turn Ready through kubelet's readiness probe.
    let with_rbac = values_file(&label, true);
    helm([
        "upgrade",
        release.name.as_str(),
        aleph_e2e::helm::chart_dir().to_str().unwrap_or_default(),
        "--namespace",
        release.namespace.as_str(),
        "--skip-crds",
        "-f",
        with_rbac.as_str(),
    ])
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let ready_since = Instant::now();
    let ready = wait_pods(&pods, &release, 2, "Ready", is_ready).await;
    let names: Vec<String> = started.iter().map(ResourceExt::name_any).collect();
    for pod in &ready {
        assert!(
            names.contains(&pod.name_any()),
            "the upgrade replaced pod {} instead of the running ones turning Ready",
            pod.name_any()
        );
        assert_eq!(restarts(pod), 0, "pod {} restarted", pod.name_any());
    }
    println!(
        "in-cluster: both replicas Ready {:.1}s after the RBAC arrived",
        ready_since.elapsed().as_secs_f64()
    );
    let since = k8s_openapi::jiff::Timestamp::now().to_string();

    // The gateway's two replicas: Ready once their watches (Tenants, AIModels,
    // key Secrets, EndpointSlices) have listed, which its read-only RBAC allows;
    // a call without a key gets OpenAI's error shape with 401.
    let deadline = Instant::now() + TIMEOUT;
    let gateways = loop {
        let list = component_pods(&pods, &release, "gateway").await;
        if list.len() == 2 && list.iter().all(is_ready) {
            break list;
        }
        if Instant::now() > deadline {
            let out = kubectl(["describe", "pods", "-n", &release.namespace]).await;
            panic!("the gateway's 2 pods never turned Ready:\n{}", out.stdout);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for pod in &gateways {
        let addr = format!("{}:8080", pod_ip(pod));
        let (code, body) = http_get(&addr, "/v1/models").await.expect("GET /v1/models");
        assert_eq!(code, 401, "/v1/models without a key on {addr}: {body}");
        assert!(
            body.contains("\"error\""),
            "not OpenAI's error shape: {body}"
        );
        let metrics = format!("{}:9090", pod_ip(pod));
        let (code, _) = http_get(&metrics, "/metrics").await.expect("GET /metrics");
        assert_eq!(code, 200, "/metrics on {metrics}");
    }

    for pod in &ready {
        let addr = format!("{}:8080", pod_ip(pod));
        let (code, _) = http_get(&addr, "/readyz").await.expect("GET /readyz");
        assert_eq!(code, 200, "/readyz on {addr}");
        let (code, metrics) = http_get(&addr, "/metrics").await.expect("GET /metrics");
        assert_eq!(code, 200, "/metrics on {addr}");
        assert!(
            metrics.contains("aleph_leader"),
            "/metrics on {addr} lacks aleph_leader:\n{metrics}"
        );
    }

    // Every example, reconciled by the in-cluster leader.
    let applied = apply_examples(&env, &label).await;
    for item in &applied {
        let name = item.object.metadata.name.clone().unwrap_or_default();
        let api: Api<DynamicObject> = if item.namespaced {
            Api::namespaced_with(client.clone(), env.namespace(), &item.resource)
        } else {
            Api::all_with(client.clone(), &item.resource)
        };
        let object = wait_for(&api, &name, TIMEOUT, |o| {
            o.data["status"]["observedGeneration"].as_i64() == o.metadata.generation
                && o.data["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| !c.is_empty())
        })
        .await;
        let condition = find_condition(&object.data, "Ready");
        let status = condition.as_ref().map_or("-", |c| c.status.as_str());
        let reason = condition.as_ref().and_then(|c| c.reason.clone());
        println!(
            "in-cluster: {} {name}: Ready={status} ({})",
            item.resource.kind,
            reason.unwrap_or_default()
        );
        // A model served in the cluster names the chart's gateway beside its own URL.
        if item.resource.kind == "AIModel"
            && object.data["status"]["url"].is_string()
            && object.data["spec"]["backend"] != "SageMaker"
        {
            let gateway = format!(
                "http://{}-gateway.{}.svc.cluster.local/v1",
                release.fullname(),
                release.namespace
            );
            assert_eq!(
                object.data["status"]["gatewayUrl"],
                gateway.as_str(),
                "{name}"
            );
            assert_eq!(
                object.data["status"]["gatewayModel"],
                name.as_str(),
                "{name}"
            );
        }
    }
    let mut refused = Vec::new();
    for pod in &ready {
        let log = pod_logs(env.namespace(), &pod.name_any(), &since).await;
        refused.extend(
            log.lines()
                .filter(|l| l.contains("Forbidden") || l.contains("forbidden"))
                .map(str::to_owned),
        );
        let (_, metrics) = http_get(&format!("{}:8080", pod_ip(pod)), "/metrics")
            .await
            .expect("GET /metrics");
        let reconciles = metric_sum(&metrics, "aleph_reconcile_total", &[]);
        println!(
            "in-cluster: {} counted {reconciles} reconciles",
            pod.name_any()
        );
    }
    assert!(
        refused.is_empty(),
        "the chart's RBAC refused requests:\n{}",
        refused.join("\n")
    );

    // The leader's pod deleted: the other replica takes the Lease.
    let leases: Api<Lease> = env.api();
    let lease = release.fullname();
    let deadline = Instant::now() + TIMEOUT;
    let leader = loop {
        if let Some(holder) = lease_holder(&leases, &lease).await {
            break holder;
        }
        assert!(
            Instant::now() < deadline,
            "no replica holds the Lease {lease}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        names.contains(&leader),
        "the Lease holder {leader} is not a pod of the release"
    );
    let deleted_at = Instant::now();
    pods.delete(&leader, &DeleteParams::default())
        .await
        .expect("delete the leader's pod");
    // Another replica takes the Lease: the other running one, or (when the
    // deleted pod could not release it and it expires) the pod replacing it.
    let successor = loop {
        if let Some(holder) = lease_holder(&leases, &lease).await
            && holder != leader
            && release_pods(&pods, &release)
                .await
                .iter()
                .any(|p| p.name_any() == holder)
        {
            break holder;
        }
        if deleted_at.elapsed() > Duration::from_secs(90) {
            let out = kubectl(["get", "lease", &lease, "-n", env.namespace(), "-o", "yaml"]).await;
            let logs = kubectl([
                "logs",
                "-n",
                env.namespace(),
                "-l",
                &format!("app.kubernetes.io/instance={}", release.name),
                "--tail=30",
                "--prefix",
            ])
            .await;
            panic!(
                "no other replica took the Lease after {leader} was deleted:\n{}\n{}",
                out.stdout, logs.stdout
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "in-cluster: {successor} took over {:.1}s after the leader's pod was deleted ({})",
        deleted_at.elapsed().as_secs_f64(),
        if names.contains(&successor) {
            "the other running replica"
        } else {
            "the replacement pod"
        }
    );

    // Examples deleted while their operator still runs (finalizers), then uninstall.
    for item in applied.iter().rev() {
        let name = item.object.metadata.name.clone().unwrap_or_default();
        let api: Api<DynamicObject> = if item.namespaced {
            Api::namespaced_with(client.clone(), env.namespace(), &item.resource)
        } else {
            Api::all_with(client.clone(), &item.resource)
        };
        let _ = api.delete(&name, &DeleteParams::background()).await;
        aleph_e2e::wait_for_deletion(&api, &name, TIMEOUT).await;
    }
    release.uninstall().await;
    let selector = format!("app.kubernetes.io/instance={}", release.name);
    let kinds = "deployments,replicasets,pods,services,serviceaccounts,networkpolicies,\
                 poddisruptionbudgets,roles,rolebindings,clusterroles,clusterrolebindings,configmaps";
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let out = kubectl(["get", kinds, "-A", "-l", &selector, "-o", "name"]).await;
        assert!(out.success(), "{out}");
        if out.stdout.trim().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "helm uninstall left objects of the release behind:\n{}",
            out.stdout
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let deployments: Api<Deployment> = env.api();
    assert!(
        deployments
            .get_opt(&release.fullname())
            .await
            .expect("get the Deployment")
            .is_none(),
        "the Deployment is still there after uninstall"
    );
    env.cleanup().await;
}
