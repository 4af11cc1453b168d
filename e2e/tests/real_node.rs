//! Behaviour on the real node (`aleph-real-0`, see `e2e/src/real_node.rs`):
//! containers really run there, so these tests claim what happens to
//! processes and packets, not only what objects say. Every namespace whose
//! pods must run is pinned to the real node first; the rest of the cluster's
//! nodes are kwok's.
//!
//! Network checks open TCP connections with busybox `nc` from one pod to
//! another ([`real_node::expect_connect`]); a connection that must not open is
//! always paired with a check that the same server accepts it from somewhere
//! allowed, so a refusal cannot come from a server that does not listen.

use std::collections::BTreeMap;
use std::time::Duration;

use aleph_controllers::plugin::build::SANDBOX_USER;
use aleph_crds::aimodel::AIModel;
use aleph_crds::pipeline::{PipelineRun, RunPhase, StepPhase};
use aleph_crds::plugin::Plugin;
use aleph_e2e::pipelines::{finished_run, phase, step};
use aleph_e2e::real_node::{
    self, BUSYBOX_IMAGE, REAL_NODE_NAME, REAL_NODE_POOL_LABEL, REAL_NODE_TAINT, apiserver_port,
    client_pod, exec, expect_connect, host_ip, http_get, httpd_pod, nslookup, pin_namespace,
    pod_ip, pod_manifest, readiness_probe_http, run_pods,
};
use aleph_e2e::{
    TestEnv, find_condition, has_condition, kubectl, node_of, tenant_manifest, unique_name,
    wait_for, wait_tenant_ready,
};
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

const TIMEOUT: Duration = Duration::from_secs(120);

fn labels(app: &str) -> BTreeMap<&str, &str> {
    BTreeMap::from([("app", app)])
}

/// A pod's condition `type_`: `(status, reason, message)`.
fn pod_condition(pod: &Pod, type_: &str) -> Option<(String, String, String)> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == type_))
        .map(|c| {
            (
                c.status.clone(),
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

/// The first container's `state.running` is set.
fn container_running(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

/// Starts a test on the real node: the node must be there and Ready, and the
/// test's namespace is pinned to it.
/// Runs in `ns` the servers `first` (on 8080 and 8081) and `second` (on
/// 8080), each answering its name, and a client pod; returns the servers' IPs.
async fn two_servers_and_a_client(
    client: &kube::Client,
    ns: &str,
    first: &str,
    second: &str,
) -> (String, String) {
    let pods = run_pods(
        client,
        ns,
        &[
            httpd_pod(first, &labels(first), &[8080, 8081], first),
            httpd_pod(second, &labels(second), &[8080], second),
            client_pod("client", &labels("client")),
        ],
    )
    .await;
    (pod_ip(&pods[first]), pod_ip(&pods[second]))
}

/// A test's environment whose namespace's pods run on the real node (the
/// test needs one): the environment, its client and its namespace.
async fn pinned_env() -> (TestEnv, kube::Client, String) {
    let env = TestEnv::new().await;
    let client = env.client();
    real_node::require(&client).await;
    pin_namespace(&client, env.namespace()).await;
    let ns = env.namespace().to_string();
    (env, client, ns)
}

#[tokio::test]
async fn the_real_node_runs_only_pods_that_ask_for_it() {
    let env = TestEnv::new().await;
    let client = env.client();
    let ns = env.namespace().to_string();
    let node = real_node::require(&client).await;

    // The node: Ready (require checked it), labelled and tainted.
    assert_eq!(
        node.labels().get(REAL_NODE_POOL_LABEL).map(String::as_str),
        Some("real"),
        "labels of {REAL_NODE_NAME}: {:?}",
        node.labels()
    );
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    assert!(
        taints.iter().any(|t| t.key == REAL_NODE_TAINT
            && t.value.as_deref() == Some("true")
            && t.effect == "NoSchedule"),
        "{REAL_NODE_NAME} lacks the taint {REAL_NODE_TAINT}=true:NoSchedule: {taints:?}"
    );

    // Before the namespace is pinned: a pod that selects the real node but
    // does not tolerate its taint is never scheduled, while the same pod with
    // the toleration runs there; a pod that asks for nothing goes to a kwok
    // node.
    let pods: Api<Pod> = env.api();
    let selecting = |name: &str, tolerations: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{ name: {name} }}
spec:
  terminationGracePeriodSeconds: 1
  nodeSelector: {{ {REAL_NODE_POOL_LABEL}: real }}
  tolerations: [{tolerations}]
  containers: [{{ name: main, image: {BUSYBOX_IMAGE}, imagePullPolicy: Never, command: [sleep, "3600"] }}]
"#
        )
    };
    env.apply_yaml(&selecting("untolerated", "")).await;
    env.apply_yaml(&selecting(
        "tolerated",
        &format!("{{ key: {REAL_NODE_TAINT}, operator: Exists, effect: NoSchedule }}"),
    ))
    .await;
    env.apply_yaml(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{ name: anywhere }}
spec:
  containers: [{{ name: main, image: {BUSYBOX_IMAGE}, imagePullPolicy: Never, command: [sleep, "3600"] }}]
"#
    ))
    .await;
    let pending = wait_for(&pods, "untolerated", TIMEOUT, |p| {
        pod_condition(p, "PodScheduled")
            .is_some_and(|(status, reason, _)| status == "False" && reason == "Unschedulable")
    })
    .await;
    let (_, _, why) = pod_condition(&pending, "PodScheduled").unwrap_or_default();
    assert!(
        why.contains("untolerated taint"),
        "the scheduler does not blame a taint: {why}"
    );
    let tolerated = wait_for(&pods, "tolerated", TIMEOUT, container_running).await;
    assert_eq!(
        node_of(&tolerated),
        Some(REAL_NODE_NAME),
        "the pod that tolerates the taint runs elsewhere"
    );
    let anywhere = wait_for(&pods, "anywhere", TIMEOUT, |p| node_of(p).is_some()).await;
    let elsewhere = node_of(&anywhere).unwrap_or_default();
    assert_ne!(
        elsewhere, REAL_NODE_NAME,
        "a pod that asked for nothing landed on the real node"
    );

    // Pinned, the namespace's pods run there: the script's output shows in the
    // pod's log, and the readiness probe (an HTTP GET on busybox httpd) is
    // what makes the pod Ready; a probe of a port nobody listens on never does.
    pin_namespace(&client, &ns).await;
    let script = "echo \"product=$((6 * 7)) uid=$(id -u) host=$(hostname)\"; \
                  mkdir -p /tmp/www && echo ok >/tmp/www/index.html && \
                  exec httpd -f -p 8080 -h /tmp/www";
    let started = tokio::time::Instant::now();
    let running = run_pods(
        &client,
        &ns,
        &[pod_manifest(
            "hello",
            &labels("hello"),
            script,
            &readiness_probe_http(8080),
        )],
    )
    .await;
    println!(
        "pod hello ran and was Ready on {REAL_NODE_NAME} in {:.1}s",
        started.elapsed().as_secs_f32()
    );
    let hello = &running["hello"];
    assert!(container_running(hello), "{:?}", hello.status);
    let logs = env.kubectl(["logs", "hello"]).await.expect_success().stdout;
    assert_eq!(
        logs.lines().next().unwrap_or_default(),
        "product=42 uid=65532 host=hello",
        "the log of pod hello: {logs}"
    );

    env.apply_yaml(&pod_manifest(
        "unready",
        &labels("unready"),
        "mkdir -p /tmp/www && echo ok >/tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www",
        &readiness_probe_http(8081),
    ))
    .await;
    let unready = wait_for(&pods, "unready", TIMEOUT, container_running).await;
    assert_eq!(node_of(&unready), Some(REAL_NODE_NAME));
    // Probed every second: after 5 s it has failed several times.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let unready = pods.get("unready").await.expect("pod unready");
    assert!(container_running(&unready), "{:?}", unready.status);
    assert_eq!(
        pod_condition(&unready, "Ready").map(|(status, _, _)| status),
        Some("False".to_string()),
        "a pod whose probe finds no server is Ready: {:?}",
        unready.status
    );

    // The untolerated pod is still where it was.
    let still = pods.get("untolerated").await.expect("pod untolerated");
    assert!(
        node_of(&still).is_none(),
        "the untolerated pod was scheduled"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn pods_resolve_cluster_dns_and_reach_services() {
    let (env, client, ns) = pinned_env().await;
    let body = unique_name("served-by-web");
    env.apply_yaml(
        r#"apiVersion: v1
kind: Service
metadata: { name: web }
spec:
  selector: { app: web }
  ports: [{ port: 80, targetPort: 8080 }]
"#,
    )
    .await;
    run_pods(
        &client,
        &ns,
        &[
            httpd_pod("web", &labels("web"), &[8080], &body),
            client_pod("client", &labels("client")),
        ],
    )
    .await;
    let cluster_ip = |namespace: &str, name: &str| {
        let services: Api<Service> = Api::namespaced(client.clone(), namespace);
        let name = name.to_string();
        async move {
            services
                .get(&name)
                .await
                .unwrap_or_else(|e| panic!("service {name}: {e}"))
                .spec
                .and_then(|s| s.cluster_ip)
                .unwrap_or_else(|| panic!("service {name} has no cluster IP"))
        }
    };

    // Cluster names resolve to their Services' addresses.
    for (namespace, service) in [("default", "kubernetes"), (ns.as_str(), "web")] {
        let name = format!("{service}.{namespace}.svc.cluster.local");
        let found = nslookup(&ns, "client", &name).await.expect_success();
        let ip = cluster_ip(namespace, service).await;
        assert!(
            found.stdout.contains(&format!("Address: {ip}")),
            "{name} does not resolve to {ip}: {found}"
        );
    }

    // The Service answers, by its name, with what its pod serves (kube-proxy
    // programs the Service's address a moment after its endpoints appear:
    // retried briefly).
    let host = format!("web.{ns}.svc.cluster.local");
    let mut attempts = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let response = loop {
        let out = http_get(&ns, "client", &host, 80, "/").await;
        if out.success() && !out.stdout.is_empty() {
            break out.stdout;
        }
        attempts.push(out.to_string());
        assert!(
            tokio::time::Instant::now() < deadline,
            "http://{host}/ never answered: {attempts:#?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let (head, served) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    assert!(
        head.lines()
            .next()
            .is_some_and(|l| l.starts_with("HTTP/1.") && l.contains(" 200 ")),
        "http://{host}/ did not answer 200: {response:?}"
    );
    assert_eq!(served.trim(), body, "http://{host}/ served something else");

    // A name outside the cluster does not resolve.
    let outside = nslookup(&ns, "client", "example.com.").await;
    assert!(
        !outside.success() && !outside.stdout.contains("Name:"),
        "a name outside the cluster resolved: {outside}"
    );
    env.cleanup().await;
}

fn tenant_yaml(name: &str, spec_extra: &str) -> String {
    tenant_manifest(
        name,
        &format!(
            r#"  owners: [{{ kind: User, name: {name}-owner }}]
  namespaces: [apps]
  plan: free
  admission:
    allowedRegistries: ["aleph.local/"]
{spec_extra}"#
        ),
    )
}

/// Waits until the tenant is Ready and its namespace `apps` can take pods
/// (its default ServiceAccount exists), pins that namespace to the real node
/// and returns its name.
async fn ready_tenant_namespace(env: &TestEnv, tenant: &str) -> String {
    wait_tenant_ready(env, tenant, TIMEOUT).await;
    let ns = format!("{tenant}-apps");
    let service_accounts: Api<ServiceAccount> = Api::namespaced(env.client(), &ns);
    wait_for(&service_accounts, "default", TIMEOUT, |_| true).await;
    pin_namespace(&env.client(), &ns).await;
    ns
}

#[tokio::test]
async fn tenants_are_isolated_and_a_hipaa_tenant_reaches_only_its_allowed_egress() {
    let (env, client, ns) = pinned_env().await;
    let host = host_ip();
    let apiserver = apiserver_port();

    // Servers outside every tenant, in the test's namespace (no policy there):
    // `listed` on 8080 (allowed to the hipaa tenant) and 8081 (not), `unlisted`
    // on 8080; and a client there that shows they all listen.
    let (listed, unlisted) = two_servers_and_a_client(&client, &ns, "listed", "unlisted").await;

    let a = unique_name("rta");
    let b = unique_name("rtb");
    let c = unique_name("rtc");
    env.apply_yaml(&tenant_yaml(&a, "")).await;
    env.apply_yaml(&tenant_yaml(&b, "")).await;
    env.apply_yaml(&tenant_yaml(
        &c,
        &format!(
            "  compliance: hipaa\n  network:\n    allowedEgress:\n      - {{ cidr: {host}/32, ports: [{apiserver}] }}\n      - {{ cidr: {listed}/32, ports: [8080] }}\n"
        ),
    ))
    .await;
    let ns_a = ready_tenant_namespace(&env, &a).await;
    let ns_b = ready_tenant_namespace(&env, &b).await;
    let ns_c = ready_tenant_namespace(&env, &c).await;

    let server_and_client = |tenant: &str| {
        [
            httpd_pod("server", &labels("server"), &[8080], tenant),
            client_pod("client", &labels("client")),
        ]
    };
    let in_a = run_pods(&client, &ns_a, &server_and_client(&a)).await;
    let in_b = run_pods(&client, &ns_b, &server_and_client(&b)).await;
    // Pod Security `restricted` applies under hipaa: the pods meet it.
    run_pods(&client, &ns_c, &[client_pod("client", &labels("client"))]).await;
    let server_a = pod_ip(&in_a["server"]);
    let server_b = pod_ip(&in_b["server"]);

    // Cluster DNS answers tenant A and the hipaa tenant.
    let kubernetes = "kubernetes.default.svc.cluster.local";
    nslookup(&ns_a, "client", kubernetes).await.expect_success();
    nslookup(&ns_c, "client", kubernetes).await.expect_success();
    for (from, to, port, connects) in [
        // Within a tenant: connected; across tenants: not, either way.
        (&ns_a, &server_a, 8080, true),
        (&ns_b, &server_b, 8080, true),
        (&ns_a, &server_b, 8080, false),
        (&ns_b, &server_a, 8080, false),
        // The test's own namespace is no tenant's: kept out too.
        (&ns, &server_a, 8080, false),
        // Tenant A's egress is not restricted: it reaches the servers outside.
        (&ns_a, &listed, 8081, true),
        (&ns_a, &unlisted, 8080, true),
        // The hipaa tenant: exactly the listed destinations.
        (&ns_c, &host, apiserver, true),
        (&ns_c, &listed, 8080, true),
        (&ns, &listed, 8081, true),
        (&ns_c, &listed, 8081, false),
        (&ns, &unlisted, 8080, true),
        (&ns_c, &unlisted, 8080, false),
        (&ns_c, &server_a, 8080, false),
    ] {
        expect_connect(from, "client", to, port, connects).await;
    }

    env.cleanup().await;
}

/// A Plugin `name` whose busybox httpd answers `page` on port 8080; `extra`
/// ends its spec.
fn httpd_plugin(name: &str, page: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: aleph.dev/v1alpha1
kind: Plugin
metadata: {{ name: {name} }}
spec:
  version: 1.0.0
  image: {BUSYBOX_IMAGE}
  port: 8080
  protocol: HTTP
  command: [sh, -c, "mkdir -p /tmp/www && echo {page} >/tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"]
  resources: {{ cpu: 50m, memory: 32Mi }}
{extra}"#
    )
}

#[tokio::test]
async fn a_plugin_connects_only_to_its_allowed_egress_without_a_token_as_the_sandbox_user() {
    let (env, client, ns) = pinned_env().await;
    let (allowed, other) = two_servers_and_a_client(&client, &ns, "allowed", "other").await;

    let egress = format!(
        "  sandbox:\n    allowedEgress:\n      - {{ cidr: {allowed}/32, ports: [8080] }}\n"
    );
    env.apply_yaml(&httpd_plugin("probe", "plugin", &egress))
        .await;
    let plugins: Api<Plugin> = env.api();
    let plugin = wait_for(&plugins, "probe", TIMEOUT, |p| {
        has_condition(p, "Ready", "True")
    })
    .await;
    let pods: Api<Pod> = env.api();
    let listed = pods
        .list(&ListParams::default().labels("aleph.dev/plugin=probe"))
        .await
        .expect("list the plugin's pods")
        .items;
    assert_eq!(
        listed.len(),
        1,
        "one replica: {:?}",
        listed.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    );
    let pod = &listed[0];
    let name = pod.name_any();
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(REAL_NODE_NAME),
        "{:?}",
        plugin.status
    );

    // Egress: the listed address and port only; the servers do listen.
    expect_connect(&ns, &name, &allowed, 8080, true).await;
    expect_connect(&ns, "client", &allowed, 8081, true).await;
    expect_connect(&ns, &name, &allowed, 8081, false).await;
    expect_connect(&ns, "client", &other, 8080, true).await;
    expect_connect(&ns, &name, &other, 8080, false).await;
    expect_connect(&ns, &name, &host_ip(), apiserver_port(), false).await;
    // DNS stays allowed.
    nslookup(&ns, &name, "kubernetes.default.svc.cluster.local")
        .await
        .expect_success();

    // No ServiceAccount token, and the process is the sandbox's user.
    let token = exec(
        &ns,
        &name,
        "test -e /var/run/secrets/kubernetes.io/serviceaccount/token",
    )
    .await;
    assert!(
        !token.success(),
        "the plugin's container has a ServiceAccount token: {token}"
    );
    // The plugin's own process (PID 1, httpd) and a command run beside it.
    let status = exec(&ns, &name, "cat /proc/1/status; echo exec=$(id -u)")
        .await
        .expect_success()
        .stdout;
    let uids: Vec<&str> = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let sandbox_user = SANDBOX_USER.to_string();
    assert!(
        uids.len() == 4 && uids.iter().all(|u| *u == sandbox_user),
        "PID 1 of the plugin does not run as {sandbox_user} (real, effective, saved, fs): {status}"
    );
    assert!(
        status.contains(&format!("exec={sandbox_user}")),
        "a command in the plugin's container does not run as {sandbox_user}: {status}"
    );
    assert_ne!(SANDBOX_USER, 0);
    // The root filesystem is read-only; /tmp is writable.
    let write = exec(&ns, &name, "touch /probe").await;
    assert!(!write.success(), "the root filesystem is writable: {write}");
    exec(&ns, &name, "touch /tmp/probe").await.expect_success();
    env.cleanup().await;
}

fn time(text: Option<&str>) -> Timestamp {
    let text = text.unwrap_or_else(|| panic!("a time is missing"));
    text.parse()
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
}

/// The step pods of a run.
async fn run_pods_of(client: &Client, ns: &str, run: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.list(&ListParams::default().labels(&format!("aleph.dev/pipelinerun={run}")))
        .await
        .unwrap_or_else(|e| panic!("listing the pods of run {run}: {e}"))
        .items
}

/// The exit code the step container of `pod` ended with.
fn exit_code(pod: &Pod) -> Option<i32> {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == "step"))
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .map(|t| t.exit_code)
}

#[tokio::test]
async fn a_pipeline_of_real_containers_passes_outputs_in_order_and_fails_with_the_exit_code() {
    let (env, client, ns) = pinned_env().await;
    // Step a writes an output only its pod can know (its own name); step b
    // gets it through `$(steps.a.outputs.token)`, records it as its own
    // output, and exits with the run's param `code`.
    env.apply_yaml(&format!(
        r#"apiVersion: aleph.dev/v1alpha1
kind: Pipeline
metadata: {{ name: relay }}
spec:
  params:
    - {{ name: code, type: int, default: "0" }}
  steps:
    - name: a
      container:
        image: {BUSYBOX_IMAGE}
        command: [sh, -c, 'echo "token=a-$HOSTNAME" >>"$ALEPH_OUTPUTS_FILE"; sleep 2']
    - name: b
      dependsOn: [a]
      retries: {{ limit: 1, initialDelaySeconds: 1, maxDelaySeconds: 1 }}
      container:
        image: {BUSYBOX_IMAGE}
        command: [sh, -c, 'echo "seen=$1" >>"$ALEPH_OUTPUTS_FILE"; echo "attempt $ALEPH_ATTEMPT saw $1"; exit "$2"', b]
        args: ["$(steps.a.outputs.token)", "$(params.code)"]
"#
    ))
    .await;
    let run_yaml = |name: &str, code: &str| {
        format!(
            "apiVersion: aleph.dev/v1alpha1\nkind: PipelineRun\nmetadata: {{ name: {name} }}\nspec:\n  pipelineRef: {{ name: relay }}\n  params: [{{ name: code, value: \"{code}\" }}]\n"
        )
    };

    // Run 1: both steps succeed, in order, and the output went from a to b.
    let started = tokio::time::Instant::now();
    env.apply_yaml(&run_yaml("relay-ok", "0")).await;
    let run = finished_run(&env, "relay-ok", TIMEOUT).await;
    println!(
        "run relay-ok finished in {:.1}s",
        started.elapsed().as_secs_f32()
    );
    assert_eq!(phase(&run), RunPhase::Succeeded, "{:#?}", run.status);
    let (a, b) = (step(&run, "a"), step(&run, "b"));
    assert_eq!(
        (a.phase, b.phase),
        (StepPhase::Succeeded, StepPhase::Succeeded)
    );
    assert_eq!((a.attempts, b.attempts), (1, 1));
    assert!(
        time(b.start_time.as_deref()) >= time(a.finish_time.as_deref()),
        "b started before a finished: {a:#?} {b:#?}"
    );
    let pods = run_pods_of(&client, &ns, "relay-ok").await;
    assert_eq!(pods.len(), 2, "one pod per step");
    for pod in &pods {
        assert_eq!(
            pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
            Some(REAL_NODE_NAME)
        );
        assert_eq!(exit_code(pod), Some(0), "{:?}", pod.status);
    }
    let pod_a = pods
        .iter()
        .find(|p| p.labels().get("aleph.dev/step").map(String::as_str) == Some("a"))
        .unwrap_or_else(|| panic!("no pod for step a"));
    let token = format!("a-{}", pod_a.name_any());
    assert_eq!(
        a.outputs.get("token"),
        Some(&token),
        "step a's output is what its pod wrote"
    );
    assert_eq!(
        b.outputs.get("seen"),
        Some(&token),
        "step b saw step a's output"
    );

    // Run 2: b exits 3, is retried once, and the run fails with that code.
    env.apply_yaml(&run_yaml("relay-fail", "3")).await;
    let run = finished_run(&env, "relay-fail", TIMEOUT).await;
    assert_eq!(phase(&run), RunPhase::Failed, "{:#?}", run.status);
    let failed = find_condition(&run, "Succeeded").unwrap_or_else(|| panic!("no condition"));
    assert_eq!(failed.reason.as_deref(), Some("StepFailed"));
    let message = failed.message.unwrap_or_default();
    assert!(
        message.contains("step b failed") && message.contains("exit code 3"),
        "{message}"
    );
    assert_eq!(step(&run, "a").phase, StepPhase::Succeeded);
    let b = step(&run, "b");
    assert_eq!(b.phase, StepPhase::Failed, "{b:#?}");
    assert_eq!(b.attempts, 2, "one attempt and one retry: {b:#?}");
    assert_eq!(b.attempt_times.len(), 2, "{b:#?}");
    assert!(
        b.message
            .as_deref()
            .unwrap_or_default()
            .contains("exit code 3"),
        "{b:#?}"
    );
    let mut codes: Vec<(String, Option<i32>)> = run_pods_of(&client, &ns, "relay-fail")
        .await
        .iter()
        .filter(|p| p.labels().get("aleph.dev/step").map(String::as_str) == Some("b"))
        .map(|p| {
            (
                p.labels()
                    .get("aleph.dev/attempt")
                    .cloned()
                    .unwrap_or_default(),
                exit_code(p),
            )
        })
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        [("1".to_string(), Some(3)), ("2".to_string(), Some(3))],
        "each attempt of b is a pod whose container exited with 3"
    );
    // Each attempt printed what it saw.
    for attempt in 1..=2 {
        let job = format!("job/relay-fail-b-{attempt}");
        let logs = kubectl(["logs", "-n", &ns, &job]).await.expect_success();
        assert!(
            logs.stdout
                .contains(&format!("attempt {attempt} saw a-relay-fail-a-1-")),
            "{logs}"
        );
    }
    env.cleanup().await;
}

/// The `(status, reason, message)` of an object's Ready condition.
fn ready_of(obj: &impl serde::Serialize) -> (String, String, String) {
    let c = find_condition(obj, "Ready").unwrap_or_default();
    (
        c.status,
        c.reason.unwrap_or_default(),
        c.message.unwrap_or_default(),
    )
}

/// Waits until the object's Ready condition has the reason
/// `ContainerConfigError`, asserts that it is False and returns its message.
async fn container_config_error<K>(api: &Api<K>, name: &str) -> String
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object = wait_for(api, name, TIMEOUT, |o| {
        ready_of(o).1 == "ContainerConfigError"
    })
    .await;
    let (status, _, message) = ready_of(&object);
    assert_eq!(status, "False", "{name}'s Ready condition: {message}");
    message
}

/// A Secret that does not exist, named by each kind's pods: an AIModel's
/// download credentials, a Plugin's environment, a pipeline step's
/// environment. The kubelet does not start those containers
/// (CreateContainerConfigError); each object's Ready condition says so and
/// names the Secret. Once the Secret exists, the plugin turns Ready, the run
/// finishes and the model's download starts.
#[tokio::test]
async fn a_missing_secret_shows_in_each_kinds_status_and_creating_it_lets_them_start() {
    let (env, _client, _ns) = pinned_env().await;
    let secret = "absent";
    let from_secret = format!("{{ name: TOKEN, secretKeyRef: {{ name: {secret}, key: token }} }}");
    let plugin = httpd_plugin("keyed", "ok", &format!("  env: [{from_secret}]\n"));
    env.apply_yaml(&format!(
        r#"{plugin}---
apiVersion: aleph.dev/v1alpha1
kind: Pipeline
metadata: {{ name: keyed }}
spec:
  steps:
    - name: use
      container:
        image: {BUSYBOX_IMAGE}
        command: [sh, -c, 'test -n "$TOKEN"']
        env: [{from_secret}]
---
apiVersion: aleph.dev/v1alpha1
kind: PipelineRun
metadata: {{ name: keyed }}
spec:
  pipelineRef: {{ name: keyed }}
---
apiVersion: aleph.dev/v1alpha1
kind: AIModel
metadata: {{ name: keyed-model }}
spec:
  source: {{ uri: "s3://weights/keyed.gguf", credentialsSecret: {{ name: {secret} }} }}
  cache: {{ enabled: false }}
  runtime: {{ engine: custom, image: {BUSYBOX_IMAGE}, port: 8080 }}
  resources: {{ cpu: 50m, memory: 32Mi }}
"#
    ))
    .await;
    let names_it = |message: &str| message.contains(&format!("\"{secret}\""));

    let plugins: Api<Plugin> = env.api();
    let message = container_config_error(&plugins, "keyed").await;
    assert!(
        message.contains("cannot start") && names_it(&message),
        "{message}"
    );

    let models: Api<AIModel> = env.api();
    // Not `keyed`: the plugin's Service has that name.
    let message = container_config_error(&models, "keyed-model").await;
    assert!(names_it(&message), "{message}");

    let runs: Api<PipelineRun> = env.api();
    // A run's condition is Succeeded, Unknown while it runs.
    let run = wait_for(&runs, "keyed", TIMEOUT, |r| {
        let message = find_condition(r, "Succeeded")
            .and_then(|c| c.message)
            .unwrap_or_default();
        message.contains("cannot start (CreateContainerConfigError)") && names_it(&message)
    })
    .await;
    assert_eq!(phase(&run), RunPhase::Running, "{:#?}", run.status);

    env.apply_yaml(&format!(
        // The download's endpoint is local and closed: it fails at once,
        // as a download, without leaving the machine.
        "apiVersion: v1\nkind: Secret\nmetadata: {{ name: {secret} }}\nstringData: {{ token: t0ken, AWS_ENDPOINT_URL: \"http://127.0.0.1:9\", AWS_ACCESS_KEY_ID: a, AWS_SECRET_ACCESS_KEY: b, AWS_REGION: us-east-1 }}\n"
    ))
    .await;
    wait_for(&plugins, "keyed", TIMEOUT, |p| {
        has_condition(p, "Ready", "True")
    })
    .await;
    let run = finished_run(&env, "keyed", TIMEOUT).await;
    assert_eq!(phase(&run), RunPhase::Succeeded, "{:#?}", run.status);
    wait_for(&models, "keyed-model", TIMEOUT, |m| {
        ready_of(m).1 != "ContainerConfigError"
    })
    .await;
    env.cleanup().await;
}
