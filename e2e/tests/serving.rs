//! Models that really serve, on the real node: llama.cpp's server loads a
//! tiny GGUF that the tests write themselves (random weights, see
//! `aleph_e2e::gguf`), put into the S3 emulator and named by an `s3://` URI
//! (or a `pvc://` path), and answers OpenAI's API from a pod in the model's
//! namespace: chat, streaming, the canary's share of real traffic, promotion,
//! a rollout under load without a failed request, and a status that says why
//! a broken model or a starved pod does not serve.

use std::time::{Duration, Instant};

use aleph_crds::aimodel::AIModel;
use aleph_e2e::real_node::{pin_namespace, require, run_pods};
use aleph_e2e::s3::{s3_model_yaml, s3_put, s3_secret};
use aleph_e2e::serving::{
    Answer, LLAMACPP_IMAGE, RequestLoop, Streamed, Tally, client, client_pod,
};
use aleph_e2e::{
    TestEnv, apply_yaml, find_condition, live_pods, tenant_manifest, unique_name, wait_for,
    wait_for_deletion, wait_tenant_ready,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, ListParams};
use tiny_gguf::{Shape, tiny_llama};

/// From apply to Ready: the download, the image's start and the load.
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// A rollout of one or four tiny models.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(240);

/// An AIModel served by llama.cpp on CPUs; `extra` is more of the spec
/// (YAML lines indented by two spaces).
fn llamacpp_model(name: &str, uri: &str, args: &[&str], extra: &str) -> String {
    let args = serde_json::to_string(args).unwrap_or_default();
    let rest = format!(
        r#"  runtime:
    engine: llamacpp
    image: {LLAMACPP_IMAGE}
    args: {args}
  resources: {{gpus: 0, memory: 256Mi}}
  cache: {{size: 1Gi, downloadTimeoutSeconds: 300}}
{extra}"#
    );
    s3_model_yaml(name, uri, &rest)
}

/// Waits until the model's Ready condition has `reason`; returns its
/// `(status, reason, message)`.
async fn ready_with_reason(
    models: &Api<AIModel>,
    name: &str,
    reason: &str,
) -> (String, String, String) {
    let model = wait_for(models, name, READY_TIMEOUT, |m| {
        ready(m).is_some_and(|(_, r, _)| r == reason)
    })
    .await;
    ready(&model).unwrap_or_default()
}

fn ready(model: &AIModel) -> Option<(String, String, String)> {
    let object = serde_json::json!({ "status": model.status });
    let c = find_condition(&object, "Ready")?;
    Some((
        c.status.clone(),
        c.reason.clone().unwrap_or_default(),
        c.message.clone().unwrap_or_default(),
    ))
}

fn observed(model: &AIModel) -> bool {
    model.status.as_ref().and_then(|s| s.observed_generation) == model.metadata.generation
}

/// Waits until the model serves its current spec with `replicas` ready.
async fn wait_serving(models: &Api<AIModel>, name: &str, replicas: i32) -> AIModel {
    wait_for(models, name, READY_TIMEOUT, |m| {
        observed(m)
            && ready(m).is_some_and(|(s, reason, _)| s == "True" && reason == "Serving")
            && m.status.as_ref().and_then(|s| s.ready_replicas) == Some(replicas)
    })
    .await
}

/// Waits until the Deployment has rolled out completely: every pod is of the
/// current template and available, and no other pod is left.
async fn wait_rolled_out(deployments: &Api<Deployment>, name: &str) -> Deployment {
    wait_for(deployments, name, ROLLOUT_TIMEOUT, |d| {
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let s = d.status.clone().unwrap_or_default();
        s.observed_generation == d.metadata.generation
            && s.updated_replicas == Some(want)
            && s.available_replicas == Some(want)
            && s.replicas == Some(want)
    })
    .await
}

/// The serving pods of `model` that are not being deleted.
async fn serving_pods(pods: &Api<Pod>, model: &str) -> Vec<Pod> {
    let selector = format!("aleph.dev/model={model}");
    live_pods(pods, &selector, "list serving pods").await
}

/// Waits until `model` has exactly `count` serving pods, terminating ones
/// included, each running with `arg` among its arguments (when given), and
/// its Service's EndpointSlices list those pods' addresses only, every one
/// ready, and kube-proxy's rules on the node send the Service there only.
async fn drained(pods: &Api<Pod>, ns: &str, model: &str, arg: Option<&str>, count: usize) {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let slices: Api<EndpointSlice> = Api::namespaced(pods.clone().into_client(), ns);
    // The serving pods (not the model cache's downloads).
    let selector = format!("aleph.dev/model={model},aleph.dev/track");
    let service = format!("kubernetes.io/service-name={model}");
    aleph_e2e::poll(ROLLOUT_TIMEOUT, Duration::from_millis(500), async || {
        let all = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| e.to_string())?
            .items;
        let mut ips: Vec<String> = all
            .iter()
            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
            .collect();
        let old: Vec<String> = all
            .iter()
            .filter(|p| arg.is_some_and(|arg| !container_args(p).iter().any(|a| a == arg)))
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
        if all.len() != count || !old.is_empty() || ips.len() != count {
            return Err(format!(
                "{model}: {} pods (want {count}), {} with addresses, still draining: {old:?}",
                all.len(),
                ips.len()
            ));
        }
        let mut listed: Vec<String> = Vec::new();
        for slice in slices
            .list(&ListParams::default().labels(&service))
            .await
            .map_err(|e| e.to_string())?
            .items
        {
            for endpoint in slice.endpoints {
                if endpoint.conditions.and_then(|c| c.ready) != Some(true) {
                    return Err(format!("{model}: an endpoint is not ready yet"));
                }
                listed.extend(endpoint.addresses);
            }
        }
        ips.sort();
        listed.sort();
        if listed != ips {
            return Err(format!(
                "{model}: its Service lists {listed:?}, its pods are {ips:?}"
            ));
        }
        // And the node sends the Service's connections there, and nowhere
        // else (a deleted pod's address no longer answers: "No route to host").
        let proxied = aleph_e2e::real_node::proxied_endpoints(ns, model).await?;
        if proxied != ips {
            return Err(format!(
                "{model}: kube-proxy's rules on the node send its Service to {proxied:?}, its pods are {ips:?}"
            ));
        }
        Ok(())
    })
    .await;
}

fn container_args(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.args.clone())
        .unwrap_or_default()
}

fn seconds_between(a: &k8s_openapi::jiff::Timestamp, b: &k8s_openapi::jiff::Timestamp) -> f64 {
    (b.as_millisecond() - a.as_millisecond()) as f64 / 1000.0
}

fn url(model: &AIModel) -> String {
    model
        .status
        .as_ref()
        .and_then(|s| s.url.clone())
        .expect("status.url")
}

/// Sets up a test: the real node, a bucket holding `objects`, and a
/// namespace pinned to the real node holding the S3 Secret and the client
/// pod: the test's own, or with `tenant` the namespace `apps` of a new Tenant
/// (isolated, admitting only the local images). Returns the namespace.
async fn setup(objects: &[(&str, &[u8])], tenant: bool) -> (TestEnv, String, String) {
    let env = TestEnv::new().await;
    require(&env.client()).await;
    let ns = if tenant {
        let name = unique_name("serve");
        env.apply_yaml(&tenant_manifest(
            &name,
            &format!(
                r#"  owners: [{{kind: User, name: {name}-owner}}]
  namespaces: [apps]
  plan: free
  network: {{isolated: true}}
  admission:
    allowedRegistries: ["aleph.local/"]
"#
            ),
        ))
        .await;
        wait_tenant_ready(&env, &name, READY_TIMEOUT).await;
        let ns = format!("{name}-apps");
        let accounts: Api<ServiceAccount> = Api::namespaced(env.client(), &ns);
        wait_for(&accounts, "default", READY_TIMEOUT, |_| true).await;
        ns
    } else {
        env.namespace().to_string()
    };
    pin_namespace(&env.client(), &ns).await;
    let bucket = unique_name("models");
    s3_put(&bucket, objects);
    apply(&env, &ns, &s3_secret()).await;
    run_pods(&env.client(), &ns, &[client_pod("client")]).await;
    (env, bucket, ns)
}

/// Applies `yaml` in namespace `ns`.
async fn apply(env: &TestEnv, ns: &str, yaml: &str) {
    apply_yaml(&env.client(), yaml, Some(ns))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn a_llamacpp_model_from_s3_answers_chat_and_streams_and_rolls_without_errors() {
    let gguf = tiny_llama("tiny-chat", 1, Shape::default());
    // In a tenant's namespace, with its quota, isolation and admission rules.
    let (env, bucket, ns) = setup(&[("tiny/chat.gguf", &gguf)], true).await;
    // The identity the download and the serving pods run as (IRSA would
    // annotate it with a role).
    apply(
        &env,
        &ns,
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: model-reader}\n",
    )
    .await;

    let uri = format!("s3://{bucket}/tiny/chat.gguf");
    let started = Instant::now();
    apply(
        &env,
        &ns,
        &llamacpp_model("chat", &uri, &[], "  serviceAccountName: model-reader\n"),
    )
    .await;
    let models: Api<AIModel> = Api::namespaced(env.client(), &ns);
    let model = wait_serving(&models, "chat", 1).await;
    let to_ready = started.elapsed().as_secs_f64();
    let base = url(&model);
    assert_eq!(
        base,
        format!("http://chat.{ns}.svc.cluster.local:8080/v1"),
        "status.url"
    );

    // The cache Job downloaded, and the serving pod loads from /models, both
    // as the named ServiceAccount.
    let jobs: Api<Job> = Api::namespaced(env.client(), &ns);
    let claim = aleph_e2e::serving::cache_claim(&model).expect("status.cache");
    let job = jobs.get(&claim).await.expect("the download Job");
    assert_eq!(job.status.as_ref().and_then(|s| s.succeeded), Some(1));
    let job_sa = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.service_account_name.clone());
    assert_eq!(
        job_sa.as_deref(),
        Some("model-reader"),
        "the download's ServiceAccount"
    );
    let pods: Api<Pod> = Api::namespaced(env.client(), &ns);
    let serving = serving_pods(&pods, "chat").await;
    assert_eq!(serving.len(), 1);
    let pod = &serving[0];
    assert_eq!(
        pod.spec
            .as_ref()
            .and_then(|s| s.service_account_name.as_deref()),
        Some("model-reader"),
        "the serving pod's ServiceAccount"
    );
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(aleph_e2e::real_node::REAL_NODE_NAME)
    );
    let args = container_args(pod);
    let model_arg = args
        .iter()
        .position(|a| a == "--model")
        .map(|i| args[i + 1].as_str());
    assert_eq!(model_arg, Some("/models/chat.gguf"), "{args:?}");

    // The API, from a pod in the model's namespace.
    let listed: Answer = client(&ns, "client", &["models", &base, "chat"]).await;
    assert_eq!(listed.status, 200, "{listed:?}");
    let ids: Vec<&str> = listed.body["data"]
        .as_array()
        .map(|d| d.iter().filter_map(|m| m["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["chat"], "GET /v1/models: {listed:?}");

    let answer: Answer = client(&ns, "client", &["chat", &base, "chat"]).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let body = &answer.body;
    assert_eq!(body["object"], "chat.completion", "{body}");
    assert_eq!(body["model"], "chat", "{body}");
    let content = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(!content.is_empty(), "an empty completion: {body}");
    let tokens = body["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    assert!(
        (1..=8).contains(&tokens),
        "the engine generated {tokens} tokens for max_tokens 8: {body}"
    );
    println!("llamacpp: chat answered {content:?} ({tokens} tokens)");
    // Where the time from apply to the first answer went, from the objects'
    // own timestamps: the download Job's run, the serving pod's start and
    // load (created to Ready), and the first request.
    let download = match job
        .status
        .as_ref()
        .map(|s| (&s.start_time, &s.completion_time))
    {
        Some((Some(start), Some(done))) => seconds_between(&start.0, &done.0),
        _ => f64::NAN,
    };
    let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let ready_at = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0);
    let load = match (created, ready_at) {
        (Some(a), Some(b)) => seconds_between(&a, &b),
        _ => f64::NAN,
    };
    println!(
        "llamacpp timings: apply to Ready {to_ready:.1} s; download Job {download:.1} s; serving pod created to Ready {load:.1} s; first chat completion {:.3} s",
        answer.seconds
    );

    let streamed: Streamed = client(&ns, "client", &["stream", &base, "chat"]).await;
    assert_eq!(streamed.status, 200, "{streamed:?}");
    assert!(
        streamed
            .content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("text/event-stream")),
        "{streamed:?}"
    );
    assert!(
        streamed.done,
        "the stream did not end with [DONE]: {streamed:?}"
    );
    assert!(
        streamed.events >= 2 && !streamed.content.is_empty(),
        "a stream of one event or no content: {streamed:?}"
    );

    // A rollout under load: new arguments roll the pod with no failed request.
    let deployments: Api<Deployment> = Api::namespaced(env.client(), &ns);
    let before = deployments.get("chat").await.expect("the Deployment");
    let load = RequestLoop::start(&ns, "client", &base, "chat").await;
    apply(
        &env,
        &ns,
        &llamacpp_model(
            "chat",
            &uri,
            &["--ctx-size", "256"],
            "  serviceAccountName: model-reader\n",
        ),
    )
    .await;
    // The operator writes the new template; then the rollout completes.
    let template_args = |d: &Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|s| s.containers.first())
            .and_then(|c| c.args.clone())
            .unwrap_or_default()
    };
    wait_for(&deployments, "chat", ROLLOUT_TIMEOUT, |d| {
        template_args(d).contains(&"256".to_string())
    })
    .await;
    let after = wait_rolled_out(&deployments, "chat").await;
    assert_ne!(
        before.metadata.generation, after.metadata.generation,
        "the new arguments did not change the Deployment"
    );
    // The replaced pod is gone (it kept serving through its preStop pause).
    let deadline = Instant::now() + ROLLOUT_TIMEOUT;
    loop {
        let all = pods
            .list(&ListParams::default().labels("aleph.dev/model=chat"))
            .await
            .expect("list pods")
            .items;
        if all.len() == 1 && container_args(&all[0]).contains(&"256".to_string()) {
            break;
        }
        assert!(Instant::now() < deadline, "the old pod did not go away");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let tally = load.stop().await;
    println!(
        "llamacpp: rollout under load: {} requests, {} failed",
        tally.ok, tally.failed
    );
    // Requests failed during the rollout?
    tally.assert_all_answered(&ns, "client").await;
    assert!(tally.ok >= 10, "too few requests to tell: {tally:?}");
    wait_serving(&models, "chat", 1).await;
    env.cleanup().await;
}

#[tokio::test]
async fn the_canary_gets_its_share_of_real_traffic_and_promotion_moves_it_all() {
    let stable = tiny_llama("tiny-stable", 1, Shape::default());
    let canary = tiny_llama("tiny-canary", 2, Shape::default());
    let (env, bucket, ns) = setup(
        &[("v1/model.gguf", &stable), ("v2/model.gguf", &canary)],
        false,
    )
    .await;
    let v1 = format!("s3://{bucket}/v1/model.gguf");
    let v2 = format!("s3://{bucket}/v2/model.gguf");
    // The canary announces another model name, which tells its answers apart.
    let canary_spec = format!(
        r#"  replicas: 4
  canary:
    trafficPercent: 25
    source: {{uri: "{v2}", credentialsSecret: {{name: s3}}}}
    runtime:
      engine: llamacpp
      image: {LLAMACPP_IMAGE}
      args: [--alias, duo-canary]
"#
    );
    env.apply_yaml(&llamacpp_model("duo", &v1, &[], &canary_spec))
        .await;
    let models: Api<AIModel> = env.api();
    let model = wait_serving(&models, "duo", 4).await;
    let base = url(&model);
    let pods: Api<Pod> = env.api();
    let tracks: Vec<String> = serving_pods(&pods, "duo")
        .await
        .iter()
        .filter_map(|p| p.metadata.labels.as_ref()?.get("aleph.dev/track").cloned())
        .collect();
    assert_eq!(
        tracks.iter().filter(|t| *t == "canary").count(),
        1,
        "one canary replica of four: {tracks:?}"
    );

    // The Service lists all four before the count (the canary's share is
    // skewed while one of them is missing).
    drained(&pods, &ns, "duo", None, 4).await;
    let requests = 400;
    let tally: Tally = client(
        &ns,
        "client",
        &["count", &base, "duo", &requests.to_string()],
    )
    .await;
    tally.assert_all_answered(&ns, "client").await;
    let to_canary = tally.answered_by("duo-canary");
    let to_stable = tally.answered_by("duo");
    assert_eq!(
        to_canary + to_stable,
        requests,
        "answers from neither version: {tally:?}"
    );
    let share = f64::from(to_canary) * 100.0 / f64::from(requests);
    println!("canary: {to_canary} of {requests} requests ({share:.1} %) at trafficPercent 25");
    assert!(
        (17.0..=33.0).contains(&share),
        "the canary got {share:.1} % of the traffic, not 25 ± 8 %: {tally:?}"
    );

    // Promotion: the canary's source and runtime become the model's own.
    env.apply_yaml(&llamacpp_model(
        "duo",
        &v2,
        &["--alias", "duo-canary"],
        "  replicas: 4\n",
    ))
    .await;
    let deployments: Api<Deployment> = env.api();
    wait_for_deletion(&deployments, "duo-canary", ROLLOUT_TIMEOUT).await;
    wait_rolled_out(&deployments, "duo").await;
    wait_serving(&models, "duo", 4).await;
    // The rollout is complete before the old pods have drained: a request may
    // still reach one until it is gone.
    drained(&pods, &ns, "duo", Some("duo-canary"), 4).await;
    let tally: Tally = client(&ns, "client", &["count", &base, "duo", "100"]).await;
    println!("canary promoted: {:?}", tally.models);
    tally.assert_all_answered(&ns, "client").await;
    assert_eq!(
        tally.models.get("duo-canary").copied(),
        Some(100),
        "after promotion every answer comes from the former canary: {tally:?}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_corrupt_model_and_a_starved_pod_say_why_in_status() {
    // Not a GGUF file: the engine fails to load it and exits.
    let junk: Vec<u8> = b"this is not a model ".repeat(4096);
    let gguf = tiny_llama("tiny-chat", 1, Shape::default());
    let (env, bucket, _) = setup(
        &[("bad/model.gguf", &junk), ("ok/model.gguf", &gguf)],
        false,
    )
    .await;
    env.apply_yaml(&llamacpp_model(
        "broken",
        &format!("s3://{bucket}/bad/model.gguf"),
        &[],
        "",
    ))
    .await;
    // A memory limit far below what a large context's KV cache needs.
    env.apply_yaml(
        &llamacpp_model(
            "starved",
            &format!("s3://{bucket}/ok/model.gguf"),
            &["--ctx-size", "262144"],
            "",
        )
        .replace("memory: 256Mi", "memory: 48Mi"),
    )
    .await;
    let models: Api<AIModel> = env.api();
    let (status, _, message) = ready_with_reason(&models, "broken", "RuntimeCrashLooping").await;
    println!("broken: {message}");
    assert_eq!(status, "False");
    assert!(message.contains("exit code 1"), "no exit code: {message}");
    assert!(
        message.contains("the end of its log:")
            && message.contains("invalid magic characters")
            && message.contains("failed to load model"),
        "the engine's own words are missing: {message}"
    );

    let (status, _, message) = ready_with_reason(&models, "starved", "RuntimeOOMKilled").await;
    println!("starved: {message}");
    assert_eq!(status, "False");
    assert!(
        message.contains("OOMKilled, exit code 137") && message.contains("memory limit of 48Mi"),
        "{message}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_model_on_a_users_claim_serves_from_pvc() {
    let gguf = tiny_llama("tiny-chat", 3, Shape::default());
    let (env, _bucket, ns) = setup(&[], false).await;
    env.apply_yaml(
        r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: weights}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
"#,
    )
    .await;
    // The user's claim already holds the model: written into its volume on
    // this machine, where the local StorageClass keeps it.
    let dir = aleph_e2e::real_node::volume_dir(&env.client(), &ns, "weights").await;
    std::fs::create_dir_all(dir.join("tiny")).expect("mkdir in the volume");
    std::fs::write(dir.join("tiny/chat.gguf"), &gguf).expect("write the model");
    let models: Api<AIModel> = env.api();
    env.apply_yaml(
        &llamacpp_model("local", "pvc://weights/tiny/chat.gguf", &[], "")
            .replace("    credentialsSecret: {name: s3}\n", ""),
    )
    .await;
    let model = wait_serving(&models, "local", 1).await;
    assert!(
        model
            .status
            .as_ref()
            .and_then(|s| s.cache.as_ref())
            .is_none(),
        "a pvc:// source is mounted, not cached"
    );
    let answer: Answer = client(&ns, "client", &["chat", &url(&model), "local"]).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["model"], "local");
    env.cleanup().await;
}
