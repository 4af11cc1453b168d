//! Autoscaling on the requests in flight that aleph-gateway measures, on the
//! real node with the real engine: a llama.cpp model with `minReplicas: 0`
//! goes to zero when idle, its first request through the gateway is held
//! while a replica starts and then served, a load loop raises the replicas by
//! `targetConcurrency`, and they come back down (to zero) once it stops.

use std::time::{Duration, Instant};

use aleph_crds::aimodel::AIModel;
use aleph_e2e::real_node::{pin_namespace, require};
use aleph_e2e::s3::{s3_put_tiny_chat, s3_secret};
use aleph_e2e::serving::LLAMACPP_IMAGE;
use aleph_e2e::{
    TestEnv, apply_yaml, find_condition, gateway, openai, tenant_manifest, unique_name, wait_for,
    wait_tenant_ready,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::json;

const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// Idle seconds before the last replica stops.
const TO_ZERO_AFTER: u64 = 20;
/// Seconds load must stay low before scaling down.
const STABILIZATION: u64 = 5;

async fn replicas(deployments: &Api<Deployment>, name: &str) -> Option<i32> {
    deployments
        .get_opt(name)
        .await
        .expect("get the Deployment")
        .and_then(|d| d.spec)
        .and_then(|s| s.replicas)
}

/// Waits until the model's stable Deployment asks for `want` replicas.
async fn wait_replicas(
    deployments: &Api<Deployment>,
    name: &str,
    want: i32,
    timeout: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let now = replicas(deployments, name).await;
        if now == Some(want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "{name} still has {now:?} replicas, not {want}, after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The reasons of the model's scaling events, oldest first.
async fn scaling_events(env: &TestEnv, namespace: &str, model: &str) -> Vec<(String, String)> {
    let events: Api<Event> = Api::namespaced(env.client(), namespace);
    let mut list: Vec<Event> = events
        .list(&ListParams::default().fields(&format!(
            "involvedObject.name={model},involvedObject.kind=AIModel"
        )))
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref().is_some_and(|r| r.starts_with("Scaled")))
        .collect();
    list.sort_by_key(|e| e.metadata.creation_timestamp.clone().map(|t| t.0));
    list.into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn a_model_scales_from_zero_on_its_first_request_and_with_the_gateways_load() {
    let env = TestEnv::new().await;
    require(&env.client()).await;
    let t = unique_name("gwz");
    let spec = format!(
        "  owners: [{{kind: User, name: {t}-owner}}]\n  namespaces: [apps]\n  plan: enterprise\n  admission:\n    allowedRegistries: [\"aleph.local/\"]\n"
    );
    env.apply_yaml(&tenant_manifest(&t, &spec)).await;
    wait_tenant_ready(&env, &t, READY_TIMEOUT).await;
    let ns = format!("{t}-apps");
    pin_namespace(&env.client(), &ns).await;
    let bucket = unique_name("gwz-models");
    s3_put_tiny_chat(&bucket);
    let apply = |yaml: String| {
        let client = env.client();
        let ns = ns.clone();
        async move {
            apply_yaml(&client, &yaml, Some(&ns))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    };
    apply(s3_secret()).await;
    apply(format!(
        r#"apiVersion: aleph.dev/v1alpha1
kind: AIModel
metadata: {{name: zero}}
spec:
  source: {{uri: "s3://{bucket}/tiny/chat.gguf", credentialsSecret: {{name: s3}}}}
  runtime: {{engine: llamacpp, image: {LLAMACPP_IMAGE}}}
  resources: {{gpus: 0, memory: 256Mi}}
  cache: {{size: 1Gi, downloadTimeoutSeconds: 300}}
  autoscaling:
    minReplicas: 0
    maxReplicas: 2
    targetConcurrency: 1
    scaleDownStabilizationSeconds: {STABILIZATION}
    scaleToZeroAfterSeconds: {TO_ZERO_AFTER}
"#
    ))
    .await;
    gateway::install(&env, 1).await;
    let (key, secret) = gateway::key_secret("key");
    apply(secret).await;

    // Idle from the start: the first replica stops after the idle time, and
    // the model says why it has none.
    let deployments: Api<Deployment> = Api::namespaced(env.client(), &ns);
    let models: Api<AIModel> = Api::namespaced(env.client(), &ns);
    wait_replicas(&deployments, "zero", 0, READY_TIMEOUT).await;
    let model = wait_for(&models, "zero", Duration::from_secs(60), |m| {
        let status = json!({ "status": m.status });
        find_condition(&status, "Ready")
            .is_some_and(|c| c.status == "True" && c.reason.as_deref() == Some("ScaledToZero"))
    })
    .await;
    let decided = model
        .status
        .and_then(|s| s.autoscaler)
        .expect("status.autoscaler");
    assert_eq!(
        (decided.reason.as_str(), decided.desired_replicas),
        ("ScaledToZero", 0)
    );

    // The first request waits for a replica to start, then is served.
    let pod = gateway::wait_for_gateway_pods(&env.api(), 1, READY_TIMEOUT)
        .await
        .remove(0);
    let base = format!("http://{}:8080/v1", gateway::pod_ip(&pod));
    let python = openai::python();
    let deadline = Instant::now() + Duration::from_secs(60);
    while openai::call(&python, &base, &key, "models", &[]).await["ids"] != json!(["zero"]) {
        assert!(
            Instant::now() < deadline,
            "the gateway never listed the model"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(replicas(&deployments, "zero").await, Some(0));
    let started = Instant::now();
    let answer = openai::call(&python, &base, &key, "stream", &["zero", "4", "Hello"]).await;
    let cold_start = started.elapsed();
    assert!(
        !answer["content"].as_str().unwrap_or_default().is_empty(),
        "the first request at zero replicas: {answer}"
    );
    println!(
        "gateway autoscale: cold start from zero to the whole answer through the gateway: {:.1}s",
        cold_start.as_secs_f32()
    );
    assert_eq!(replicas(&deployments, "zero").await, Some(1));
    let events = scaling_events(&env, &ns, "zero").await;
    assert!(
        events.iter().any(|(r, _)| r == "ScaledFromZero"),
        "no ScaledFromZero event: {events:?}"
    );

    // Four callers in a closed loop, each answer 64 tokens long (so that
    // the time a request spends in the engine outweighs the time the
    // client spends between two): the gateway measures about three or
    // four in flight on average and, with one per replica wanted, the
    // model gets its maximum, 2.
    let spec = openai::LoadSpec {
        model: "zero",
        workers: 4,
        max_tokens: 64,
    };
    let target = openai::LoadTarget::local(&python, &base, &key);
    let load = openai::LoadLoop::start(target, spec, Duration::from_secs(60)).await;
    let rise = Instant::now();
    while replicas(&deployments, "zero").await != Some(2) {
        if rise.elapsed() > Duration::from_secs(60) {
            // What the load loop got tells a load that never arrived from
            // an autoscaler that did not act on it.
            let tally = load.stop().await;
            panic!("zero did not reach 2 replicas within 60s of load; the load loop: {tally:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let rose = rise.elapsed();
    println!(
        "gateway autoscale: 2 replicas {:.1}s into the load",
        rose.as_secs_f32()
    );
    // Both replicas take their share before the load stops.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let tally = load.stop().await;
    assert!(tally.ok > 0, "{tally:?}");
    assert_eq!(
        (tally.failed, tally.ok),
        (0, tally.sent),
        "every request of the load loop answered: {tally:?}"
    );
    println!(
        "gateway autoscale: the load loop's {} requests all answered",
        tally.ok
    );

    // Load gone: down to one after the stabilization window, then to zero
    // after the idle time.
    let stopped = Instant::now();
    wait_replicas(
        &deployments,
        "zero",
        1,
        Duration::from_secs(STABILIZATION + 30),
    )
    .await;
    wait_replicas(
        &deployments,
        "zero",
        0,
        Duration::from_secs(TO_ZERO_AFTER + 30),
    )
    .await;
    println!(
        "gateway autoscale: back to zero {:.1}s after the load stopped",
        stopped.elapsed().as_secs_f32()
    );
    let reasons: Vec<String> = scaling_events(&env, &ns, "zero")
        .await
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    for reason in ["ScaledToZero", "ScaledFromZero", "ScaledUp", "ScaledDown"] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "no {reason} event: {reasons:?}"
        );
    }
    env.cleanup().await;
}
