//! Real traffic through aleph-gateway on the real node, sent with the
//! official `openai` Python client: a canary's exact share of 1,000 requests,
//! told apart by the name each engine answers with; and a gateway pod deleted
//! in the middle of a load loop through the gateway's Service, without a
//! single request lost.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aleph_crds::aimodel::AIModel;
use aleph_e2e::gateway::{
    key_secret, platform_namespace, pod_ip, render_gateway, tenant, wait_for_gateway_pods,
};
use aleph_e2e::openai::{self, Load, LoadLoop, LoadSpec, LoadTarget, load_count};
use aleph_e2e::real_node::{node_netns, pin_namespace, require};
use aleph_e2e::s3::{s3_put, s3_put_tiny_chat, s3_secret};
use aleph_e2e::serving::{LLAMACPP_IMAGE, llamacpp_model};
use aleph_e2e::{
    TestEnv, apply_yaml, find_condition, unique_name, wait_for, wait_for_deletion,
    wait_tenant_ready,
};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;
use tiny_gguf::{Shape, tiny_llama};

const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// Limits far above what the tests send: only the traffic is under test.
const UNLIMITED: &str = "  gateway: {requestsPerMinute: 10000000, tokensPerMinute: 1000000000, tokensPerDay: 1000000000000}\n";

/// A tenant with a key and the S3 Secret in its namespace, pinned to the real
/// node. Returns the tenant's namespace and the key.
/// A test on the real node: the test's environment (a platform namespace for
/// the gateway), and [`tenant_with_key`]'s namespace and key.
async fn gateway_test(prefix: &str) -> (TestEnv, String, String) {
    let env = TestEnv::new().await;
    require(&env.client()).await;
    let (ns, key) = tenant_with_key(&env, prefix).await;
    platform_namespace(&env.client(), env.namespace()).await;
    (env, ns, key)
}

/// Applies the AIModel `yaml` in `ns` and a gateway of `gateways` replicas in
/// the test's namespace; waits until the model `model` serves with
/// `replicas` ready and the gateway's pods are ready, and returns them.
async fn model_behind_gateway(
    env: &TestEnv,
    ns: &str,
    (model, yaml, replicas): (&str, &str, i32),
    gateways: u32,
) -> Vec<Pod> {
    apply_yaml(&env.client(), yaml, Some(ns))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    env.apply_yaml(&render_gateway(&unique_name("gw"), env.namespace(), gateways, &[]).await)
        .await;
    let models: Api<AIModel> = Api::namespaced(env.client(), ns);
    wait_serving(&models, model, replicas).await;
    let pods: Api<Pod> = env.api();
    wait_for_gateway_pods(&pods, gateways as usize, READY_TIMEOUT).await
}

async fn tenant_with_key(env: &TestEnv, prefix: &str) -> (String, String) {
    let name = unique_name(prefix);
    env.apply_yaml(&tenant(&name, UNLIMITED)).await;
    wait_tenant_ready(env, &name, READY_TIMEOUT).await;
    let ns = format!("{name}-apps");
    pin_namespace(&env.client(), &ns).await;
    let (key, secret) = key_secret("load-key");
    for yaml in [s3_secret(), secret] {
        apply_yaml(&env.client(), &yaml, Some(&ns))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    (ns, key)
}

/// Waits until the model serves with `replicas` ready.
async fn wait_serving(models: &Api<AIModel>, name: &str, replicas: i32) {
    wait_for(models, name, READY_TIMEOUT, |m| {
        let object = json!({ "status": m.status });
        find_condition(&object, "Ready").is_some_and(|c| c.status == "True")
            && m.status.as_ref().and_then(|s| s.ready_replicas) == Some(replicas)
    })
    .await;
}

/// Waits until the gateway at `target` answers a completion for `model` with
/// each of `names` (the engines' own model names), sending small batches.
async fn wait_until_answered_by(target: LoadTarget<'_>, model: &str, names: &[&str]) {
    let base = target.base;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let load = load_count(target, LoadSpec::short(model, 2), 10).await;
        if load.failed == 0 && names.iter().all(|n| load.models.contains_key(*n)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway at {base} never answered as {names:?}: {load:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[tokio::test]
async fn the_canary_gets_exactly_its_share_of_1000_requests_through_the_gateway() {
    let (env, ns, key) = gateway_test("gwc").await;
    let bucket = unique_name("gw-canary");
    s3_put(
        &bucket,
        &[
            (
                "v1/model.gguf",
                &tiny_llama("tiny-stable", 1, Shape::default()),
            ),
            (
                "v2/model.gguf",
                &tiny_llama("tiny-canary", 2, Shape::default()),
            ),
        ],
    );
    // Two replicas: one per track. The canary announces another name
    // (`--alias`), so each answer says which engine made it.
    let percent = 30;
    let canary = format!(
        r#"  replicas: 2
  canary:
    trafficPercent: {percent}
    source: {{uri: "s3://{bucket}/v2/model.gguf", credentialsSecret: {{name: s3}}}}
    runtime:
      engine: llamacpp
      image: {LLAMACPP_IMAGE}
      args: [--alias, duo-canary]
"#
    );
    let duo = llamacpp_model("duo", &format!("s3://{bucket}/v1/model.gguf"), &canary);
    let gateway = model_behind_gateway(&env, &ns, ("duo", &duo, 2), 1).await;
    // One gateway replica, called at its pod's address from this machine:
    // its split counter sees every request.
    let base = format!("http://{}:8080/v1", pod_ip(&gateway[0]));
    let python = openai::python();
    let target = LoadTarget::local(&python, &base, &key);
    wait_until_answered_by(target, "duo", &["duo", "duo-canary"]).await;

    let requests = 1000;
    let started = Instant::now();
    let load = load_count(target, LoadSpec::short("duo", 4), requests).await;
    let took = started.elapsed();
    assert_eq!(load.failed, 0, "{load:?}");
    assert_eq!(load.ok, requests, "{load:?}");
    let to_canary = load.models.get("duo-canary").copied().unwrap_or(0);
    let to_stable = load.models.get("duo").copied().unwrap_or(0);
    assert_eq!(
        to_canary + to_stable,
        requests,
        "answers from neither engine: {load:?}"
    );
    let share = to_canary as f64 * 100.0 / requests as f64;
    println!(
        "gateway canary: {to_canary} of {requests} requests ({share:.1} %) answered by the canary at \
         trafficPercent {percent}, {to_stable} by the stable engine; {:.1} s, {:.0} requests/s, \
         slowest {:.3} s",
        took.as_secs_f64(),
        requests as f64 / took.as_secs_f64(),
        load.max_seconds
    );
    assert!(
        (share - percent as f64).abs() <= 3.0,
        "the canary's share {share:.1} % is not {percent} ± 3 %"
    );
    // The gateway splits with a counter: exactly `percent` of every 100.
    assert_eq!(
        to_canary,
        requests * percent / 100,
        "the split is a counter, exact over whole hundreds"
    );
    env.cleanup().await;
}

/// `aleph_gateway_requests_total` of code 200 at a gateway pod.
async fn answered_by(pod: &Pod) -> u64 {
    let (code, metrics) =
        aleph_e2e::operator::http_get(&format!("{}:9090", pod_ip(pod)), "/metrics")
            .await
            .expect("GET a gateway's /metrics");
    assert_eq!(code, 200);
    metrics
        .lines()
        .filter(|l| l.starts_with("aleph_gateway_requests_total{") && l.contains("code=\"200\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Waits until the Service's EndpointSlices list exactly `pods` as ready.
async fn wait_for_service_endpoints(slices: &Api<EndpointSlice>, service: &str, pods: &[Pod]) {
    let mut want: Vec<String> = pods.iter().map(pod_ip).collect();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut ready: Vec<String> = slices
            .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
            .await
            .expect("list the Service's EndpointSlices")
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .flat_map(|e| e.addresses.clone())
            .collect();
        ready.sort();
        if ready == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the Service {service} lists {ready:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn deleting_a_gateway_pod_during_a_load_loop_loses_no_request() {
    let (env, ns, key) = gateway_test("gwk").await;
    let bucket = unique_name("gw-kill");
    s3_put_tiny_chat(&bucket);
    let chat = llamacpp_model("chat", &format!("s3://{bucket}/tiny/chat.gguf"), "");
    let gateways = model_behind_gateway(&env, &ns, ("chat", &chat, 1), 2).await;
    let pods: Api<Pod> = env.api();
    let services: Api<Service> = env.api();
    let service = services
        .list(&ListParams::default())
        .await
        .expect("list Services")
        .items
        .into_iter()
        .find(|s| {
            s.metadata.labels.as_ref().is_some_and(|l| {
                l.get("app.kubernetes.io/name").map(String::as_str) == Some("aleph-gateway")
            })
        })
        .expect("the gateway's Service");
    let service_name = service.metadata.name.clone().unwrap_or_default();
    let cluster_ip = service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .expect("the Service's ClusterIP");
    let slices: Api<EndpointSlice> = env.api();
    wait_for_service_endpoints(&slices, &service_name, &gateways).await;

    // Each replica serves the model before the load starts (each watches
    // the cluster on its own).
    let python = openai::python();
    for pod in &gateways {
        let base = format!("http://{}:8080/v1", pod_ip(pod));
        let target = LoadTarget::local(&python, &base, &key);
        wait_until_answered_by(target, "chat", &["chat"]).await;
    }

    // The load, from the real node's network namespace, through the
    // Service's ClusterIP as any client in the cluster would.
    let netns = node_netns();
    let base = format!("http://{cluster_ip}:80/v1");
    let workers = 6;
    let target = LoadTarget {
        python: &python,
        netns: Some(&netns),
        base: &base,
        key: &key,
    };
    let load = LoadLoop::start(
        target,
        LoadSpec::short("chat", workers),
        Duration::from_secs(60),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    // The busier replica goes: a graceful delete, as a rollout or a drain does.
    let mut counts = Vec::new();
    for pod in &gateways {
        counts.push((answered_by(pod).await, pod.clone()));
    }
    counts.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    let (doomed_answered, doomed) = counts[0].clone();
    let (survivor_answered, survivor) = counts[1].clone();
    let doomed_name = doomed.metadata.name.clone().unwrap_or_default();
    assert!(
        doomed_answered > 0,
        "the load never reached gateway {doomed_name}: {counts:?}"
    );
    let deleted_at = unix_now();
    let deleted_at_exactly = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let deleting = Instant::now();
    pods.delete(&doomed_name, &DeleteParams::default())
        .await
        .expect("delete a gateway pod");
    wait_for_deletion(&pods, &doomed_name, Duration::from_secs(120)).await;
    let gone_after = deleting.elapsed();
    let gone_at = unix_now();
    // Its replacement joins the Service; the load goes on through both.
    let replaced = wait_for_gateway_pods(&pods, 2, READY_TIMEOUT).await;
    let replaced_after = deleting.elapsed();
    wait_for_service_endpoints(&slices, &service_name, &replaced).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let survivor_now = answered_by(&survivor).await;
    let tally: Load = load.stop().await;

    println!(
        "gateway kill: {} requests sent, {} answered, {} failed; gateway {doomed_name} had answered \
         {doomed_answered}, the other {survivor_answered} before its deletion and {survivor_now} at the \
         end; {} answered after the deletion, {} after the pod was gone ({:.1} s after the delete), \
         the replacement Ready {:.1} s after it; slowest request {:.3} s, ended {:+.1} s from the delete",
        tally.sent,
        tally.ok,
        tally.failed,
        tally.ok_since(deleted_at + 1),
        tally.ok_since(gone_at + 1),
        gone_after.as_secs_f64(),
        replaced_after.as_secs_f64(),
        tally.max_seconds,
        tally.slowest_ended_at - deleted_at_exactly,
    );
    assert_eq!(tally.failed, 0, "requests failed: {tally:?}");
    assert_eq!(
        tally.ok, tally.sent,
        "every request sent was answered: {tally:?}"
    );
    assert!(
        tally.ok_since(deleted_at + 1) > 0,
        "no request was answered after the deletion: {tally:?}"
    );
    assert!(
        tally.ok_since(gone_at + 1) > 0,
        "no request was answered after the pod was gone: {tally:?}"
    );
    assert!(
        survivor_now > survivor_answered,
        "the remaining gateway took the load"
    );
    assert!(
        gone_after >= Duration::from_secs(5),
        "the pod went before its 5 s drain ended ({gone_after:?})"
    );
    env.cleanup().await;
}
