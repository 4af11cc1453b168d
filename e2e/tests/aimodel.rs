//! AIModels on the Kubernetes backend, end to end, against the operator
//! started by the test command: serving Deployments on the right GPU nodes,
//! rollouts, scheduling failures, autoscaling and `kubectl scale`, the model
//! cache, canaries, quota refusals and garbage collection.
//!
//! The local control plane has no volume provisioner, so the tests that use
//! the model cache provide volumes themselves: hostPath PersistentVolumes of a
//! storage class of their own, bound by the real PV controller.

use std::time::Duration;

use aleph_crds::AIModel;
use aleph_e2e::sagemaker_fake::FakeConfig;
use aleph_e2e::{
    OperatorOptions, OperatorProcess, PRIVATE_OPERATOR_LABEL, TestEnv, aws, find_condition,
    has_condition, live_pods, node_of, tenant_manifest, unique_name, wait_condition, wait_for,
    wait_for_deletion, wait_tenant_ready,
};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};

const TIMEOUT: Duration = Duration::from_secs(120);
const H100: &str = "NVIDIA-H100-80GB-HBM3";

/// An AIModel manifest; `spec` is the spec's body, indented by two spaces.
fn model_yaml(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: aleph.dev/v1alpha1\nkind: AIModel\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

/// Makes `count` hostPath volumes of a storage class of the test's own and
/// returns the class: what a provisioner would do on a real cluster.
async fn cache_storage(env: &TestEnv, count: usize) -> String {
    let class = format!("{}-cache", env.namespace());
    let mut yaml = String::new();
    for i in 0..count {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: {class}-{i}\n  labels: {{ aleph.dev/e2e: \"true\" }}\nspec:\n  capacity: {{ storage: 100Gi }}\n  accessModes: [ReadWriteMany, ReadWriteOnce]\n  persistentVolumeReclaimPolicy: Retain\n  storageClassName: {class}\n  hostPath: {{ path: /tmp/{class}-{i} }}\n"
        ));
    }
    env.apply_yaml(&yaml).await;
    class
}

async fn patch_spec(env: &TestEnv, name: &str, spec: serde_json::Value) {
    env.api::<AIModel>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({ "spec": spec })),
        )
        .await
        .unwrap_or_else(|e| panic!("patching AIModel {name}: {e}"));
}

/// Whether the model's status describes its current generation.
fn current(m: &AIModel) -> bool {
    m.status.as_ref().and_then(|s| s.observed_generation) == m.metadata.generation
}

/// Applies the AIModel `name` of `spec` and waits until it is Ready for it.
async fn apply_ready(env: &TestEnv, name: &str, spec: &str) -> AIModel {
    env.apply_yaml(&model_yaml(name, spec)).await;
    wait_ready(env, name).await
}

async fn wait_ready(env: &TestEnv, name: &str) -> AIModel {
    wait_for(&env.api::<AIModel>(), name, TIMEOUT, |m| {
        current(m) && has_condition(m, "Ready", "True")
    })
    .await
}

/// Waits until the model is Ready for its current spec with `replicas` ready replicas.
async fn wait_ready_replicas(env: &TestEnv, name: &str, replicas: i32) -> AIModel {
    wait_for(&env.api::<AIModel>(), name, TIMEOUT, |m| {
        current(m)
            && has_condition(m, "Ready", "True")
            && m.status.as_ref().and_then(|s| s.ready_replicas) == Some(replicas)
    })
    .await
}

async fn pods_of(env: &TestEnv, selector: &str) -> Vec<Pod> {
    live_pods(&env.api::<Pod>(), selector, "list pods").await
}

async fn events_with_reason(env: &TestEnv, name: &str, reason: &str) -> Vec<Event> {
    aleph_e2e::events_about(&env.api(), "AIModel", name, reason).await
}

fn gpu_request(pod: &Pod) -> Option<String> {
    pod.spec.as_ref()?.containers[0]
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("nvidia.com/gpu")
        .map(|q| q.0.clone())
}

fn template_spec(d: &Deployment) -> &k8s_openapi::api::core::v1::PodSpec {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod template")
}

#[tokio::test]
async fn the_vllm_example_serves_from_h100_nodes_only_and_turns_ready_with_a_url() {
    let env = TestEnv::new().await;
    let class = cache_storage(&env, 1).await;
    let example = include_str!("../../examples/aimodel-vllm.yaml");
    assert!(example.contains("  cache:\n    size: 40Gi"));
    let manifest = example.replace(
        "  cache:\n    size: 40Gi",
        &format!("  cache:\n    size: 40Gi\n    storageClassName: {class}"),
    );
    env.apply_yaml(
        "apiVersion: v1\nkind: Secret\nmetadata: { name: hf-token }\nstringData: { HF_TOKEN: hf_not_a_real_token }\n",
    )
    .await;
    env.apply_yaml(&manifest).await;

    let model = wait_ready(&env, "llama-3-8b").await;
    let status = model.status.clone().expect("status");
    let url = format!(
        "http://llama-3-8b.{}.svc.cluster.local:8000/v1",
        env.namespace()
    );
    assert_eq!(status.url.as_deref(), Some(url.as_str()));
    assert_eq!(status.ready_replicas, Some(1));
    assert_eq!(status.replica_summary.as_deref(), Some("1/1"));
    assert_eq!(
        status.selector.as_deref(),
        Some("aleph.dev/model=llama-3-8b")
    );
    assert_eq!(
        status.cache.as_ref().map(|c| c.phase.as_str()),
        Some("Ready")
    );

    // The Deployment's pod asks for the GPU, selects the product, tolerates the taint.
    let deployment = env
        .api::<Deployment>()
        .get("llama-3-8b")
        .await
        .expect("deployment");
    let pod_spec = template_spec(&deployment);
    let container = &pod_spec.containers[0];
    let resources = container.resources.as_ref().expect("resources");
    for side in [&resources.requests, &resources.limits] {
        assert_eq!(
            side.as_ref()
                .and_then(|r| r.get("nvidia.com/gpu"))
                .map(|q| q.0.as_str()),
            Some("1")
        );
    }
    assert_eq!(
        pod_spec
            .node_selector
            .as_ref()
            .and_then(|n| n.get("nvidia.com/gpu.product"))
            .map(String::as_str),
        Some(H100)
    );
    assert!(pod_spec.tolerations.iter().flatten().any(|t| {
        t.key.as_deref() == Some("nvidia.com/gpu") && t.effect.as_deref() == Some("NoSchedule")
    }));
    let args = container.args.clone().unwrap_or_default();
    assert!(
        args.windows(2)
            .any(|w| w == ["--tensor-parallel-size", "1"]),
        "{args:?}"
    );

    // Its pods run on H100 nodes only.
    let pods = pods_of(&env, "aleph.dev/model=llama-3-8b").await;
    assert!(!pods.is_empty());
    for pod in &pods {
        let node = node_of(pod).unwrap_or_default();
        assert!(
            node.starts_with("aleph-gpu-h100-"),
            "pod {} runs on {node}, not on an H100 node",
            pod.name_any()
        );
    }

    // The Service in front of it. The example scales on the gateway's
    // requests in flight: no HPA; the operator's autoscaler keeps the
    // minimum while no request comes.
    let service = env
        .api::<Service>()
        .get("llama-3-8b")
        .await
        .expect("service");
    let port = service.spec.and_then(|s| s.ports).expect("ports")[0].port;
    assert_eq!(port, 8000);
    assert!(
        !env.exists::<HorizontalPodAutoscaler>("llama-3-8b").await,
        "targetConcurrency is scaled by the operator, not an HPA"
    );
    let replicas = env
        .api::<Deployment>()
        .get("llama-3-8b")
        .await
        .expect("deployment")
        .spec
        .and_then(|s| s.replicas);
    assert_eq!(replicas, Some(1));

    // The event and the printer columns.
    assert!(
        !events_with_reason(&env, "llama-3-8b", "ModelDeployed")
            .await
            .is_empty()
    );
    let table = env
        .kubectl(["get", "aimodel", "llama-3-8b"])
        .await
        .expect_success()
        .stdout;
    let header = table.lines().next().unwrap_or_default();
    for column in ["RUNTIME", "GPUS", "REPLICAS", "READY", "URL", "AGE"] {
        assert!(header.contains(column), "no {column} column in:\n{table}");
    }
    let row = table.lines().nth(1).unwrap_or_default();
    for cell in ["vllm", "1/1", "True", url.as_str()] {
        assert!(row.contains(cell), "no {cell} in:\n{table}");
    }
    env.cleanup().await;
}

#[tokio::test]
async fn changing_the_gpu_count_rolls_the_deployment_and_too_many_gpus_is_unschedulable() {
    let env = TestEnv::new().await;
    apply_ready(
        &env,
        "roll",
        &format!(
            "  source: {{ uri: hf://acme/roll-7b }}\n  cache: {{ enabled: false }}\n  resources: {{ gpus: 1, gpuProduct: {H100} }}\n"
        ),
    )
    .await;
    let deployments = env.api::<Deployment>();
    let before = deployments.get("roll").await.expect("deployment");

    patch_spec(
        &env,
        "roll",
        serde_json::json!({ "resources": { "gpus": 2 } }),
    )
    .await;
    wait_ready(&env, "roll").await;
    let after = deployments.get("roll").await.expect("deployment");
    assert!(after.metadata.generation > before.metadata.generation);
    let container = &template_spec(&after).containers[0];
    let args = container.args.clone().unwrap_or_default();
    assert!(
        args.windows(2)
            .any(|w| w == ["--tensor-parallel-size", "2"]),
        "{args:?}"
    );
    // A rollout: a second ReplicaSet, and the ready pod is the new one with 2 GPUs.
    let replica_sets = env
        .list_labelled::<ReplicaSet>("aleph.dev/model=roll")
        .await;
    assert_eq!(
        replica_sets.len(),
        2,
        "a new ReplicaSet for the new template"
    );
    let pods = wait_until(async || {
        let pods = pods_of(&env, "aleph.dev/model=roll").await;
        (pods.len() == 1 && gpu_request(&pods[0]).as_deref() == Some("2")).then_some(pods)
    })
    .await;
    let node = node_of(&pods[0]).unwrap_or_default();
    assert!(node.starts_with("aleph-gpu-h100-"), "{node}");

    // More GPUs than any node has: Degraded, Unschedulable, with what is missing.
    patch_spec(
        &env,
        "roll",
        serde_json::json!({ "resources": { "gpus": 16 } }),
    )
    .await;
    let model = wait_for(&env.api::<AIModel>(), "roll", TIMEOUT, |m| {
        current(m) && has_condition(m, "Degraded", "True")
    })
    .await;
    let degraded = find_condition(&model, "Degraded").expect("Degraded");
    assert_eq!(degraded.reason.as_deref(), Some("Unschedulable"));
    let message = degraded.message.unwrap_or_default();
    assert!(
        message.starts_with("needs 16 x NVIDIA-H100-80GB-HBM3 GPUs; no node has them free"),
        "{message}"
    );
    let ready = find_condition(&model, "Ready").expect("Ready");
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason.as_deref(), Some("Unschedulable"));
    assert!(
        !events_with_reason(&env, "roll", "ModelUnschedulable")
            .await
            .is_empty()
    );
    env.cleanup().await;
}

/// Polls `check` every half second until it gives a value (at most [`TIMEOUT`]).
async fn wait_until<T>(mut check: impl AsyncFnMut() -> Option<T>) -> T {
    aleph_e2e::poll(TIMEOUT, Duration::from_millis(500), async || {
        check().await.ok_or_else(|| "timed out".to_string())
    })
    .await
}

#[tokio::test]
async fn autoscaling_makes_an_hpa_and_kubectl_scale_sets_the_replicas() {
    let env = TestEnv::new().await;
    env.apply_yaml(&model_yaml(
        "auto",
        "  source: { uri: hf://acme/auto-1b }\n  cache: { enabled: false }\n  resources: { cpu: \"2\", memory: 4Gi }\n  autoscaling:\n    minReplicas: 2\n    maxReplicas: 5\n    targetCpuUtilization: 60\n    scaleDownStabilizationSeconds: 90\n",
    ))
    .await;
    let hpa = wait_for(
        &env.api::<HorizontalPodAutoscaler>(),
        "auto",
        TIMEOUT,
        |_| true,
    )
    .await;
    let spec = hpa.spec.expect("hpa spec");
    assert_eq!(spec.scale_target_ref.name, "auto");
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 5));
    let metrics = spec.metrics.unwrap_or_default();
    let [metric] = metrics.as_slice() else {
        panic!("CPU only: {metrics:?}");
    };
    let cpu = metric.resource.as_ref().expect("cpu");
    assert_eq!(cpu.target.average_utilization, Some(60));
    let window = spec
        .behavior
        .and_then(|b| b.scale_down)
        .and_then(|s| s.stabilization_window_seconds);
    assert_eq!(window, Some(90));
    // The HPA controller brings the Deployment to the minimum; the model follows.
    let model = wait_ready_replicas(&env, "auto", 2).await;
    assert_eq!(model.status.and_then(|s| s.replicas), Some(2));
    // While it autoscales, the spec has no replicas to scale.
    let refused = env
        .kubectl(["scale", "aimodel/auto", "--replicas=3"])
        .await
        .expect_failure();
    assert!(
        refused
            .stderr
            .contains("replicas and autoscaling are exclusive"),
        "{refused}"
    );

    // Without autoscaling, `kubectl scale` sets spec.replicas and the Deployment follows.
    apply_ready(
        &env,
        "manual",
        "  source: { uri: hf://acme/manual-1b }\n  cache: { enabled: false }\n  resources: { cpu: \"1\" }\n",
    )
    .await;
    env.kubectl(["scale", "aimodel/manual", "--replicas=3"])
        .await
        .expect_success();
    let model = wait_ready_replicas(&env, "manual", 3).await;
    assert_eq!(model.spec.replicas, Some(3));
    assert_eq!(model.status.as_ref().and_then(|s| s.replicas), Some(3));
    let deployment = env
        .api::<Deployment>()
        .get("manual")
        .await
        .expect("deployment");
    assert_eq!(deployment.spec.and_then(|s| s.replicas), Some(3));
    assert!(!env.exists::<HorizontalPodAutoscaler>("manual").await);
    // The scale subresource reads what it wrote.
    let scale = env
        .kubectl([
            "get",
            "aimodel/manual",
            "--subresource=scale",
            "-o",
            "jsonpath={.spec.replicas}/{.status.replicas}/{.status.selector}",
        ])
        .await
        .expect_success();
    assert_eq!(scale.stdout.trim(), "3/3/aleph.dev/model=manual");
    env.cleanup().await;
}

#[tokio::test]
async fn the_cache_job_runs_once_for_two_models_with_the_same_source() {
    let env = TestEnv::new().await;
    let class = cache_storage(&env, 2).await;
    let spec = format!(
        "  source: {{ uri: hf://acme/shared-3b }}\n  runtime: {{ engine: tgi }}\n  resources: {{ cpu: \"1\" }}\n  cache: {{ storageClassName: {class}, size: 20Gi }}\n"
    );
    let first = apply_ready(&env, "first", &spec).await;
    let second = apply_ready(&env, "second", &spec).await;

    let claim_name = first
        .status
        .as_ref()
        .and_then(|s| s.cache.clone())
        .expect("cache")
        .claim_name;
    assert_eq!(
        second
            .status
            .as_ref()
            .and_then(|s| s.cache.clone())
            .map(|c| c.claim_name),
        Some(claim_name.clone())
    );
    // One Job, one download pod, one claim: used by both models.
    let jobs = env.list_labelled::<Job>("aleph.dev/cache").await;
    assert_eq!(jobs.len(), 1, "one download for one source");
    let job = &jobs[0];
    assert_eq!(job.name_any(), claim_name);
    let job_status = job.status.clone().unwrap_or_default();
    assert_eq!(
        (job_status.succeeded, job_status.failed.unwrap_or(0)),
        (Some(1), 0)
    );
    let download_pods = env.list_labelled::<Pod>("aleph.dev/cache").await;
    assert_eq!(download_pods.len(), 1, "the download ran once");
    let claims = env
        .list_labelled::<PersistentVolumeClaim>("aleph.dev/cache")
        .await;
    assert_eq!(claims.len(), 1);
    let users: Vec<String> = claims[0]
        .owner_references()
        .iter()
        .map(|r| r.name.clone())
        .collect();
    assert_eq!(users.len(), 2, "{users:?}");
    assert!(users.contains(&"first".to_string()) && users.contains(&"second".to_string()));
    // Both serve from the claim, read-only.
    for name in ["first", "second"] {
        let d = env.api::<Deployment>().get(name).await.expect("deployment");
        let volume = template_spec(&d)
            .volumes
            .iter()
            .flatten()
            .find_map(|v| v.persistent_volume_claim.clone())
            .expect("the cache claim");
        assert_eq!(volume.claim_name, claim_name);
        assert_eq!(volume.read_only, Some(true));
    }
    // The first model goes; the cache stays for the second.
    env.api::<AIModel>()
        .delete("first", &DeleteParams::default())
        .await
        .expect("delete first");
    wait_for_deletion(&env.api::<Deployment>(), "first", TIMEOUT).await;
    let claim = wait_for(
        &env.api::<PersistentVolumeClaim>(),
        &claim_name,
        TIMEOUT,
        |c| c.owner_references().len() == 1,
    )
    .await;
    assert_eq!(claim.owner_references()[0].name, "second");
    assert!(claim.metadata.deletion_timestamp.is_none());
    env.cleanup().await;
}

#[tokio::test]
async fn a_failing_download_is_model_download_failed() {
    let env = TestEnv::new().await;
    let class = cache_storage(&env, 1).await;
    env.apply_yaml(&model_yaml(
        "broken",
        &format!(
            "  source: {{ uri: hf://acme/does-not-exist }}\n  resources: {{ cpu: \"1\" }}\n  cache:\n    storageClassName: {class}\n    podAnnotations: {{ aleph.dev/test-fail: \"true\" }}\n"
        ),
    ))
    .await;
    let model = wait_for(
        &env.api::<AIModel>(),
        "broken",
        Duration::from_secs(180),
        |m| has_condition(m, "Degraded", "True"),
    )
    .await;
    let degraded = find_condition(&model, "Degraded").expect("Degraded");
    assert_eq!(degraded.reason.as_deref(), Some("ModelDownloadFailed"));
    let message = degraded.message.unwrap_or_default();
    assert!(message.contains("hf://acme/does-not-exist"), "{message}");
    assert!(
        message.contains("kubectl logs job/aleph-cache-"),
        "{message}"
    );
    let ready = find_condition(&model, "Ready").expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_deref()),
        ("False", Some("ModelDownloadFailed"))
    );
    assert_eq!(
        model.status.and_then(|s| s.cache).map(|c| c.phase),
        Some("Failed".to_string())
    );
    // Nothing serves a model that is not there.
    assert!(!env.exists::<Deployment>("broken").await);
    assert!(
        !events_with_reason(&env, "broken", "ModelDownloadFailed")
            .await
            .is_empty()
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_canary_gets_its_share_of_the_replicas_and_promoting_it_moves_it_into_the_spec() {
    let env = TestEnv::new().await;
    let model = apply_ready(
        &env,
        "chat",
        "  source: { uri: hf://acme/chat@v1 }\n  cache: { enabled: false }\n  resources: { cpu: \"1\" }\n  replicas: 4\n  canary:\n    source: { uri: hf://acme/chat@v2 }\n    trafficPercent: 25\n",
    )
    .await;
    assert_eq!(
        model.status.as_ref().and_then(|s| s.ready_replicas),
        Some(4)
    );
    let deployments = env.api::<Deployment>();
    let stable = deployments.get("chat").await.expect("stable");
    let canary = deployments.get("chat-canary").await.expect("canary");
    assert_eq!(stable.spec.as_ref().and_then(|s| s.replicas), Some(3));
    assert_eq!(canary.spec.as_ref().and_then(|s| s.replicas), Some(1));
    let revision = |d: &Deployment| {
        template_spec(d)
            .init_containers
            .iter()
            .flatten()
            .next()
            .and_then(|c| {
                c.env
                    .iter()
                    .flatten()
                    .find(|e| e.name == "MODEL_REVISION")
                    .and_then(|e| e.value.clone())
            })
    };
    assert_eq!(revision(&stable).as_deref(), Some("v1"));
    assert_eq!(revision(&canary).as_deref(), Some("v2"));
    // One Service in front of both: 3 stable and 1 canary pod behind it.
    let service = env.api::<Service>().get("chat").await.expect("service");
    let selector = service.spec.and_then(|s| s.selector).unwrap_or_default();
    assert_eq!(selector.len(), 1);
    assert_eq!(
        selector.get("aleph.dev/model").map(String::as_str),
        Some("chat")
    );
    assert_eq!(
        pods_of(&env, "aleph.dev/model=chat,aleph.dev/track=stable")
            .await
            .len(),
        3
    );
    assert_eq!(
        pods_of(&env, "aleph.dev/model=chat,aleph.dev/track=canary")
            .await
            .len(),
        1
    );

    // Promote: the canary's source becomes the model's, the canary goes.
    patch_spec(
        &env,
        "chat",
        serde_json::json!({ "source": { "uri": "hf://acme/chat@v2" }, "canary": null }),
    )
    .await;
    wait_for_deletion(&deployments, "chat-canary", TIMEOUT).await;
    let model = wait_ready_replicas(&env, "chat", 4).await;
    assert_eq!(
        model.status.and_then(|s| s.served_source).as_deref(),
        Some("hf://acme/chat@v2")
    );
    let stable = deployments.get("chat").await.expect("stable");
    assert_eq!(stable.spec.as_ref().and_then(|s| s.replicas), Some(4));
    assert_eq!(revision(&stable).as_deref(), Some("v2"));
    env.cleanup().await;
}

#[tokio::test]
async fn deleting_the_model_removes_every_child() {
    let env = TestEnv::new().await;
    let class = cache_storage(&env, 1).await;
    let model = apply_ready(
        &env,
        "doomed",
        &format!(
            "  source: {{ uri: hf://acme/doomed-1b }}\n  resources: {{ cpu: \"1\" }}\n  cache: {{ storageClassName: {class} }}\n  autoscaling: {{ minReplicas: 1, maxReplicas: 3, targetCpuUtilization: 50 }}\n  canary:\n    runtime: {{ engine: vllm, args: [\"--enable-prefix-caching\"] }}\n    trafficPercent: 50\n"
        ),
    )
    .await;
    let claim = model
        .status
        .and_then(|s| s.cache)
        .expect("cache")
        .claim_name;
    let deployments = env.api::<Deployment>();
    for name in ["doomed", "doomed-canary"] {
        deployments.get(name).await.expect("deployment");
    }
    env.api::<Service>().get("doomed").await.expect("service");
    env.api::<HorizontalPodAutoscaler>()
        .get("doomed")
        .await
        .expect("hpa");
    env.api::<Job>().get(&claim).await.expect("cache job");
    env.api::<PersistentVolumeClaim>()
        .get(&claim)
        .await
        .expect("cache claim");

    env.api::<AIModel>()
        .delete("doomed", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for_deletion(&env.api::<AIModel>(), "doomed", TIMEOUT).await;
    for name in ["doomed", "doomed-canary"] {
        wait_for_deletion(&deployments, name, TIMEOUT).await;
    }
    wait_for_deletion(&env.api::<Service>(), "doomed", TIMEOUT).await;
    wait_for_deletion(&env.api::<HorizontalPodAutoscaler>(), "doomed", TIMEOUT).await;
    wait_for_deletion(&env.api::<Job>(), &claim, TIMEOUT).await;
    wait_for_deletion(&env.api::<PersistentVolumeClaim>(), &claim, TIMEOUT).await;
    wait_until(async || {
        pods_of(&env, "aleph.dev/model=doomed")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_model_the_quota_refuses_says_why() {
    let env = TestEnv::new().await;
    env.resource_quota("gpus", &[("requests.nvidia.com/gpu", "1")], TIMEOUT)
        .await;
    env.apply_yaml(&model_yaml(
        "greedy",
        &format!(
            "  source: {{ uri: hf://acme/greedy-70b }}\n  cache: {{ enabled: false }}\n  resources: {{ gpus: 2, gpuProduct: {H100} }}\n"
        ),
    ))
    .await;
    let (_, degraded) =
        wait_condition(&env.api::<AIModel>(), "greedy", TIMEOUT, "Degraded", "True").await;
    degraded.assert_says("QuotaExceeded", &["exceeded quota: gpus", "nvidia.com/gpu"]);
    env.cleanup().await;
}

#[tokio::test]
async fn bad_specs_are_refused_at_apply_or_explained_in_the_status() {
    let env = TestEnv::new().await;
    // The schema: CPU utilisation needs a CPU request.
    let refused = env
        .try_apply_yaml(&model_yaml(
            "no-cpu",
            "  source: { uri: hf://acme/x }\n  autoscaling: { maxReplicas: 3, targetCpuUtilization: 50 }\n",
        ))
        .await
        .expect_err("refused");
    let message = refused.to_string();
    assert!(
        message.contains("targetCpuUtilization is a share of the CPU request"),
        "{message}"
    );
    let refused = env
        .try_apply_yaml(&model_yaml(
            "bad-uri",
            "  source: { uri: \"gs://bucket/model\" }\n",
        ))
        .await
        .expect_err("refused");
    assert!(refused.to_string().contains("spec.source.uri"), "{refused}");

    // What only the operator can tell: an Ollama model on vLLM.
    env.apply_yaml(&model_yaml(
        "mismatch",
        "  source: { uri: \"ollama://llama3.2:1b\" }\n  runtime: { engine: vllm }\n",
    ))
    .await;
    let model = wait_for(&env.api::<AIModel>(), "mismatch", TIMEOUT, |m| {
        find_condition(m, "Ready").is_some_and(|c| c.reason.as_deref() == Some("InvalidSpec"))
    })
    .await;
    let ready = find_condition(&model, "Ready").expect("Ready");
    let message = ready.message.unwrap_or_default();
    assert!(message.starts_with("spec.source.uri:"), "{message}");
    assert!(message.contains("runtime.engine: ollama"), "{message}");
    assert!(!env.exists::<Deployment>("mismatch").await);
    env.cleanup().await;
}

/// An operator of the test's own, for `env`'s namespace and the models
/// labelled with the returned label only, ready.
async fn private_operator(env: &TestEnv, prefix: &str) -> (String, OperatorProcess) {
    let label = unique_name(prefix);
    let mut operator = OperatorProcess::start(OperatorOptions {
        args: vec![
            "--leader-elect".into(),
            "false".into(),
            "--namespaces".into(),
            env.namespace().to_string(),
        ],
        private_label: Some(label.clone()),
        name: format!("aimodel-{prefix}"),
        ..OperatorOptions::default()
    })
    .await;
    operator.wait_ready(Duration::from_secs(90)).await;
    (label, operator)
}

#[tokio::test]
async fn a_ready_model_is_left_alone() {
    // An operator of its own, so that its write count is this model's alone.
    let env = TestEnv::new().await;
    let (label, mut operator) = private_operator(&env, "steady").await;
    env.apply_yaml(&format!(
        "apiVersion: aleph.dev/v1alpha1\nkind: AIModel\nmetadata:\n  name: steady\n  labels: {{ {PRIVATE_OPERATOR_LABEL}: \"{label}\" }}\nspec:\n  source: {{ uri: hf://acme/steady-8b }}\n  cache: {{ enabled: false }}\n  resources: {{ gpus: 1, gpuProduct: {H100}, cpu: \"4\", memory: 16Gi }}\n  runtime:\n    env: [{{ name: EMPTY, value: \"\" }}, {{ name: VLLM_LOGGING_LEVEL, value: INFO }}]\n  autoscaling: {{ minReplicas: 1, maxReplicas: 3, targetConcurrency: 8 }}\n  canary: {{ runtime: {{ engine: tgi }}, trafficPercent: 30 }}\n"
    ))
    .await;
    wait_ready(&env, "steady").await;
    // Let the last pod and status updates settle: the write count stops moving.
    let mut before = operator.writes_besides_the_lease().await;
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = operator.writes_besides_the_lease().await;
        if now == before {
            break;
        }
        before = now;
    }
    // Every change of the model triggers a reconcile; none finds anything to write.
    let models = env.api::<AIModel>();
    for i in 0..5 {
        let patch = serde_json::json!({ "metadata": { "annotations": { "example.com/poke": i.to_string() } } });
        models
            .patch("steady", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("annotate");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = operator.writes_besides_the_lease().await;
    assert_eq!(
        before,
        after,
        "a steady state sends no write; the operator's log:\n{}",
        operator.log_tail(40)
    );
    assert!(has_condition(
        &models.get("steady").await.expect("model"),
        "Ready",
        "True"
    ));
    operator.terminate(Duration::from_secs(10)).await;
    env.cleanup().await;
}

/// The engine container's value of `VLLM_LOGGING_LEVEL` in the Deployment.
fn logging_level(d: &Deployment) -> Option<String> {
    template_spec(d).containers.iter().find_map(|c| {
        c.env
            .as_deref()?
            .iter()
            .find(|e| e.name == "VLLM_LOGGING_LEVEL")?
            .value
            .clone()
    })
}

/// Sets `VLLM_LOGGING_LEVEL` of the Deployment's first container by hand.
async fn edit_logging_level(deployments: &Api<Deployment>, name: &str, level: &str) {
    let d = deployments.get(name).await.expect("deployment");
    let container = template_spec(&d).containers[0].name.clone();
    let patch = serde_json::json!({ "spec": { "template": { "spec": { "containers": [
        { "name": container, "env": [{ "name": "VLLM_LOGGING_LEVEL", "value": level }] }
    ] } } } });
    deployments
        .patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .expect("edit the deployment by hand");
}

/// Sets the HPA's maxReplicas by hand.
async fn edit_max_replicas(hpas: &Api<HorizontalPodAutoscaler>, name: &str, max: i32) {
    let patch = serde_json::json!({ "spec": { "maxReplicas": max } });
    hpas.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("edit the hpa by hand");
}

#[tokio::test]
async fn edits_by_hand_to_a_models_children_are_undone_also_after_a_restart() {
    // The operator keeps its cached children trimmed, with a digest of what
    // it dropped: an edit of the dropped part must still be seen and undone,
    // while it runs and when it starts again after an edit made meanwhile.
    let env = TestEnv::new().await;
    let (label, mut operator) = private_operator(&env, "edited").await;
    env.apply_yaml(&format!(
        "apiVersion: aleph.dev/v1alpha1\nkind: AIModel\nmetadata:\n  name: edited\n  labels: {{ {PRIVATE_OPERATOR_LABEL}: \"{label}\" }}\nspec:\n  source: {{ uri: hf://acme/edited-1b }}\n  cache: {{ enabled: false }}\n  resources: {{ cpu: \"1\", memory: 2Gi }}\n  runtime:\n    env: [{{ name: VLLM_LOGGING_LEVEL, value: INFO }}]\n  autoscaling: {{ minReplicas: 1, maxReplicas: 3, targetCpuUtilization: 70 }}\n"
    ))
    .await;
    wait_ready(&env, "edited").await;
    let deployments = env.api::<Deployment>();
    let hpas = env.api::<HorizontalPodAutoscaler>();
    let restored_level = async || {
        wait_for(&deployments, "edited", TIMEOUT, |d| {
            logging_level(d).as_deref() == Some("INFO")
        })
        .await
    };
    let restored_max = async || {
        wait_for(&hpas, "edited", TIMEOUT, |h| {
            h.spec.as_ref().map(|s| s.max_replicas) == Some(3)
        })
        .await
    };
    assert_eq!(
        logging_level(&deployments.get("edited").await.expect("deployment")).as_deref(),
        Some("INFO")
    );

    // While the operator runs.
    edit_logging_level(&deployments, "edited", "DEBUG").await;
    edit_max_replicas(&hpas, "edited", 7).await;
    restored_level().await;
    restored_max().await;

    // While it is away: the edits are there when it starts, and undone.
    operator.kill().await;
    edit_logging_level(&deployments, "edited", "TRACE").await;
    edit_max_replicas(&hpas, "edited", 9).await;
    assert_eq!(
        logging_level(&deployments.get("edited").await.expect("deployment")).as_deref(),
        Some("TRACE"),
        "nothing undoes the edit while the operator is away"
    );
    operator.restart().await;
    operator.wait_ready(Duration::from_secs(90)).await;
    restored_level().await;
    restored_max().await;
    operator.terminate(Duration::from_secs(10)).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_model_trained_on_sagemaker_is_served_on_the_cluster_once_trained() {
    // The in-repo SageMaker fake trains for a few seconds; an operator of the
    // test's own talks to it.
    let env = TestEnv::new().await;
    let class = cache_storage(&env, 1).await;
    let sagemaker = aws::start_fake(FakeConfig::training(3, 5_000)).await;
    let label = unique_name("trained");
    let mut operator = aws::start_operator(aws::operator_options(
        env.namespace(),
        &sagemaker.endpoint_url(),
        &label,
        "aimodel-trained",
    ))
    .await;
    env.apply_yaml(&format!(
        "apiVersion: aleph.dev/v1alpha1
kind: AIModel
metadata:
  name: fraud
  labels: {{ {PRIVATE_OPERATOR_LABEL}: \"{label}\" }}
spec:
  runtime: {{ engine: custom, image: ghcr.io/acme/xgboost-serve:1.7, port: 8080, healthPath: /ping }}
  resources: {{ cpu: \"1\" }}
  cache: {{ storageClassName: {class} }}
  training:
    image: 123456789012.dkr.ecr.us-east-1.amazonaws.com/xgboost:1.7
    roleArn: arn:aws:iam::123456789012:role/aleph-training
    instanceType: ml.m5.xlarge
    outputS3Uri: s3://aleph-e2e/models/fraud
    inputs: [{{ name: train, s3Uri: s3://aleph-e2e/data/train }}]
"
    ))
    .await;
    let models = env.api::<AIModel>();
    let waiting = wait_for(&models, "fraud", TIMEOUT, |m| {
        find_condition(m, "Ready")
            .is_some_and(|c| c.reason.as_deref() == Some("WaitingForTraining"))
    })
    .await;
    assert!(has_condition(&waiting, "Progressing", "True"));
    assert!(!env.exists::<Deployment>("fraud").await);

    let model = wait_ready(&env, "fraud").await;
    let status = model.status.expect("status");
    let artifact = status
        .training
        .as_ref()
        .and_then(|t| t.artifact_uri.clone())
        .expect("the trained artifact");
    assert!(
        artifact.starts_with("s3://aleph-e2e/models/fraud"),
        "{artifact}"
    );
    assert_eq!(status.served_source.as_deref(), Some(artifact.as_str()));
    // The artifact went through the cache like any S3 source.
    let claim = status.cache.expect("cache").claim_name;
    let job = env
        .api::<Job>()
        .get(&claim)
        .await
        .expect("the download Job");
    let container = &job
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod")
        .containers[0];
    let source = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "SOURCE")
        .and_then(|e| e.value.clone());
    assert_eq!(source.as_deref(), Some(artifact.as_str()));
    env.api::<Deployment>()
        .get("fraud")
        .await
        .expect("the serving Deployment");
    assert_eq!(sagemaker.counters().training_jobs_created, 1);

    // Deleting it goes through SageMaker's cleanup, then garbage collection.
    models
        .delete("fraud", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for_deletion(&models, "fraud", TIMEOUT).await;
    wait_for_deletion(&env.api::<Deployment>(), "fraud", TIMEOUT).await;
    operator.terminate(Duration::from_secs(10)).await;
    aws::cleanup_with_fake(env, sagemaker).await;
}

/// The Gateway API's HTTPRoute kind, its schema reduced to what the test reads.
const HTTPROUTE_CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: httproutes.gateway.networking.k8s.io
  annotations:
    api-approved.kubernetes.io: https://github.com/kubernetes-sigs/gateway-api/pull/2466
spec:
  group: gateway.networking.k8s.io
  names: { kind: HTTPRoute, listKind: HTTPRouteList, plural: httproutes, singular: httproute }
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      subresources: { status: {} }
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: { type: object, x-kubernetes-preserve-unknown-fields: true }
            status: { type: object, x-kubernetes-preserve-unknown-fields: true }
";

#[tokio::test]
async fn with_the_gateway_api_a_canary_gets_an_httproute_with_weights() {
    let env = TestEnv::new().await;
    let crds: Api<CustomResourceDefinition> = env.cluster_api();
    // The local control plane installs the Gateway API's own CRDs; elsewhere a
    // minimal stand-in (deleted at cleanup) is enough for the operator to see
    // the kind. The real one is never replaced nor deleted here.
    if crds
        .get_opt("httproutes.gateway.networking.k8s.io")
        .await
        .expect("get the HTTPRoute CRD")
        .is_none()
    {
        env.apply_yaml(HTTPROUTE_CRD).await;
    }
    wait_for(
        &crds,
        "httproutes.gateway.networking.k8s.io",
        TIMEOUT,
        |crd| {
            crd.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                })
        },
    )
    .await;
    env.apply_yaml(&model_yaml(
        "split",
        "  source: { uri: hf://acme/split@v1 }\n  cache: { enabled: false }\n  resources: { cpu: \"1\" }\n  replicas: 2\n  canary:\n    source: { uri: hf://acme/split@v2 }\n    trafficPercent: 10\n",
    ))
    .await;
    let routes = aleph_e2e::dynamic::http_routes(env.client(), env.namespace());
    // The operator looks for the Gateway API at most once a minute.
    let route = wait_for(&routes, "split", Duration::from_secs(150), |_| true).await;
    let spec = &route.data["spec"];
    assert_eq!(spec["parentRefs"][0]["kind"], "Service");
    assert_eq!(spec["parentRefs"][0]["name"], "split");
    let backends = &spec["rules"][0]["backendRefs"];
    assert_eq!(backends[0]["name"], "split-stable");
    assert_eq!(backends[0]["weight"], 90);
    assert_eq!(backends[1]["name"], "split-canary");
    assert_eq!(backends[1]["weight"], 10);
    let services = env.api::<Service>();
    for track in ["stable", "canary"] {
        let service = services
            .get(&format!("split-{track}"))
            .await
            .expect("a Service per track");
        let selector = service.spec.and_then(|s| s.selector).unwrap_or_default();
        assert_eq!(
            selector.get("aleph.dev/track").map(String::as_str),
            Some(track)
        );
    }
    // Replicas split too: 1 stable (at least one stays), 1 canary.
    let deployments = env.api::<Deployment>();
    for name in ["split", "split-canary"] {
        let d = deployments.get(name).await.expect("deployment");
        assert_eq!(d.spec.and_then(|s| s.replicas), Some(1));
    }

    // Without a canary, the route and the per-track Services go.
    patch_spec(&env, "split", serde_json::json!({ "canary": null })).await;
    wait_for_deletion(&routes, "split", TIMEOUT).await;
    wait_for_deletion(&services, "split-canary", TIMEOUT).await;
    wait_for_deletion(&services, "split-stable", TIMEOUT).await;
    wait_for_deletion(&deployments, "split-canary", TIMEOUT).await;
    services
        .get("split")
        .await
        .expect("the model's Service stays");
    env.cleanup().await;
}

#[tokio::test]
async fn a_tenants_admission_rules_and_quota_show_in_the_model_status() {
    let env = TestEnv::new().await;
    let tenant = unique_name("aim");
    env.apply_yaml(&tenant_manifest(
        &tenant,
        &format!(
            "  owners: [{{ kind: User, name: {tenant}-owner, role: admin }}]
  namespaces: [serve]
  plan: pro
  quota: {{ gpus: 1 }}
  admission:
    allowedRegistries: [\"ghcr.io/acme/\"]
"
        ),
    ))
    .await;
    wait_tenant_ready(&env, &tenant, TIMEOUT).await;
    let namespace = format!("{tenant}-serve");
    let models: Api<AIModel> = Api::namespaced(env.client(), &namespace);

    // The tenant's registries: vLLM's public image is not among them.
    env.apply_yaml(&format!(
        "apiVersion: aleph.dev/v1alpha1\nkind: AIModel\nmetadata: {{ name: public-image, namespace: {namespace} }}\nspec:\n  source: {{ uri: pvc://weights/llama }}\n  resources: {{ gpus: 1, gpuProduct: {H100} }}\n"
    ))
    .await;
    let (_, degraded) = wait_condition(&models, "public-image", TIMEOUT, "Degraded", "True").await;
    degraded.assert_says(
        "AdmissionDenied",
        &["allowedRegistries", "docker.io/vllm/vllm-openai"],
    );

    // The tenant's quota: one GPU, and the model asks for two per replica.
    env.apply_yaml(&format!(
        "apiVersion: aleph.dev/v1alpha1\nkind: AIModel\nmetadata: {{ name: two-gpus, namespace: {namespace} }}\nspec:\n  source: {{ uri: pvc://weights/llama }}\n  runtime: {{ engine: custom, image: ghcr.io/acme/server:1.0, port: 8080 }}\n  resources: {{ gpus: 2, gpuProduct: {H100} }}\n"
    ))
    .await;
    let (model, degraded) = wait_condition(&models, "two-gpus", TIMEOUT, "Degraded", "True").await;
    degraded.assert_says("QuotaExceeded", &["exceeded quota", "nvidia.com/gpu"]);
    let ready = find_condition(&model, "Ready").expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_deref()),
        ("False", Some("QuotaExceeded"))
    );
    env.cleanup().await;
}
