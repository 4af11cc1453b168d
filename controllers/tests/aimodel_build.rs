//! The AIModel's children built from YAML fixtures (`tests/fixtures/aimodel`):
//! one serving Deployment per runtime with its arguments, probes and
//! resources, plus the Service, HPA, canary split, cache claim and Job.

use std::collections::BTreeMap;

use aleph_controllers::aimodel::build::{self, ServingPlan};
use aleph_controllers::aimodel::{cache, runtime};
use aleph_crds::aimodel::AIModel;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodSpec, Probe, Volume};

/// The model-cache image the tests configure (not the default, to see it used).
const MODEL_CACHE_IMAGE: &str = "registry.example/aleph-model-cache:test";

fn fixture(name: &str) -> AIModel {
    let path = format!(
        "{}/tests/fixtures/aimodel/{name}.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn plan(model: &AIModel) -> ServingPlan {
    let uri = model
        .spec
        .source
        .as_ref()
        .map(|s| s.uri.clone())
        .expect("the fixture has a source");
    build::plan(model, &uri).unwrap_or_else(|e| panic!("plan: {e}"))
}

fn stable(model: &AIModel) -> (ServingPlan, Deployment) {
    let plan = plan(model);
    let deployment =
        build::deployment(model, &plan, &plan.stable, MODEL_CACHE_IMAGE).expect("deployment");
    (plan, deployment)
}

/// The fixture `name`, its plan and its stable Deployment.
fn served(name: &str) -> (AIModel, ServingPlan, Deployment) {
    let model = fixture(name);
    let (plan, d) = stable(&model);
    (model, plan, d)
}

fn pod(d: &Deployment) -> &PodSpec {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec")
}

fn container(d: &Deployment) -> &Container {
    &pod(d).containers[0]
}

/// The container of the cache Job that downloads `uri`.
fn cache_container(model: &AIModel, plan: &ServingPlan, uri: &str) -> Container {
    let job = cache::job(model, uri, &plan.stable.source, MODEL_CACHE_IMAGE).expect("job");
    let pod = job.spec.and_then(|s| s.template.spec).expect("pod");
    pod.containers.into_iter().next().expect("a container")
}

fn args(c: &Container) -> Vec<&str> {
    c.args.iter().flatten().map(String::as_str).collect()
}

/// The value after `flag` in the arguments.
fn arg_value<'a>(c: &'a Container, flag: &str) -> Option<&'a str> {
    let args = c.args.as_ref()?;
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1).map(String::as_str)
}

fn resource(c: &Container, side: &str, name: &str) -> Option<String> {
    let r = c.resources.as_ref()?;
    let map = if side == "requests" {
        r.requests.as_ref()
    } else {
        r.limits.as_ref()
    }?;
    map.get(name).map(|q| q.0.clone())
}

fn http_path(p: Option<&Probe>) -> Option<&str> {
    p?.http_get.as_ref()?.path.as_deref()
}

fn budget(p: Option<&Probe>) -> i32 {
    p.map_or(0, |p| {
        p.period_seconds.unwrap_or(10) * p.failure_threshold.unwrap_or(3)
    })
}

fn env(c: &Container) -> BTreeMap<&str, Option<&str>> {
    c.env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e.value.as_deref()))
        .collect()
}

/// The pod's volume `name`.
fn volume<'a>(spec: &'a PodSpec, name: &str) -> &'a Volume {
    let mut volumes = spec.volumes.iter().flatten();
    volumes
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("volume {name}"))
}

/// The GPU product the pod selects nodes by.
fn gpu_product(spec: &PodSpec) -> Option<&str> {
    let selector = spec.node_selector.as_ref()?;
    selector.get("nvidia.com/gpu.product").map(String::as_str)
}

/// The first item of an optional list.
fn first<T>(items: &Option<Vec<T>>) -> Option<&T> {
    items.iter().flatten().next()
}

/// The value of `key` in an optional map (labels, annotations, selectors).
fn value<'a>(map: Option<&'a BTreeMap<String, String>>, key: &str) -> Option<&'a str> {
    map?.get(key).map(String::as_str)
}

fn mount_path<'a>(c: &'a Container, volume: &str) -> Option<&'a str> {
    c.volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == volume)
        .map(|m| m.mount_path.as_str())
}

#[test]
fn vllm_on_an_h100_asks_for_the_gpu_selects_the_product_and_tolerates_the_taint() {
    let (model, plan, d) = served("vllm-h100");
    assert_eq!(d.metadata.name.as_deref(), Some("llama-3-8b"));
    assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(2));
    let c = container(&d);
    assert_eq!(c.image.as_deref(), Some(runtime::VLLM_IMAGE));
    assert_eq!(arg_value(c, "--model"), Some("/models"));
    assert_eq!(arg_value(c, "--tensor-parallel-size"), Some("1"));
    assert_eq!(arg_value(c, "--port"), Some("8000"));
    assert_eq!(arg_value(c, "--served-model-name"), Some("llama-3-8b"));
    assert!(args(c).contains(&"meta-llama/Llama-3.1-8B-Instruct"));
    assert_eq!(args(c).last(), Some(&"--max-model-len=8192"));
    // Requests equal limits, the GPU included.
    for side in ["requests", "limits"] {
        assert_eq!(resource(c, side, "nvidia.com/gpu").as_deref(), Some("1"));
        assert_eq!(resource(c, side, "cpu").as_deref(), Some("8"));
        assert_eq!(resource(c, side, "memory").as_deref(), Some("64Gi"));
    }
    let spec = pod(&d);
    assert_eq!(gpu_product(spec), Some("NVIDIA-H100-80GB-HBM3"));
    let toleration = first(&spec.tolerations).expect("toleration");
    assert_eq!(toleration.key.as_deref(), Some("nvidia.com/gpu"));
    assert_eq!(toleration.operator.as_deref(), Some("Exists"));
    assert_eq!(toleration.effect.as_deref(), Some("NoSchedule"));
    // Probes: a startup budget of at least 30 minutes for loading the weights.
    assert_eq!(http_path(c.startup_probe.as_ref()), Some("/health"));
    assert_eq!(http_path(c.readiness_probe.as_ref()), Some("/health"));
    assert_eq!(http_path(c.liveness_probe.as_ref()), Some("/health"));
    assert!(budget(c.startup_probe.as_ref()) >= 1800);
    // The weights: the cache claim, read-only, at /models; shared memory at /dev/shm.
    let cache_claim = cache::cache_name("hf://meta-llama/Llama-3.1-8B-Instruct@main");
    let model_volume = volume(spec, "model");
    let claim = model_volume
        .persistent_volume_claim
        .as_ref()
        .expect("a claim");
    assert_eq!(claim.claim_name, cache_claim);
    assert_eq!(claim.read_only, Some(true));
    assert_eq!(mount_path(c, "model"), Some("/models"));
    assert_eq!(mount_path(c, "dshm"), Some("/dev/shm"));
    let shm = volume(spec, "dshm").empty_dir.as_ref().expect("dshm");
    assert_eq!(shm.medium.as_deref(), Some("Memory"));
    assert_eq!(env(c).get("HF_HUB_OFFLINE"), Some(&Some("1")));
    assert!(
        spec.init_containers.is_none(),
        "the cache downloads, not the pod"
    );
    assert_eq!(spec.enable_service_links, Some(false));
    // Labels, pod annotations, owner.
    let template = d.spec.as_ref().map(|s| &s.template).expect("template");
    let meta = template.metadata.as_ref().expect("pod metadata");
    let labels = meta.labels.as_ref().expect("labels");
    assert_eq!(value(Some(labels), "aleph.dev/model"), Some("llama-3-8b"));
    assert_eq!(value(Some(labels), "aleph.dev/track"), Some("stable"));
    let annotations = meta.annotations.as_ref().expect("annotations");
    assert_eq!(
        value(Some(annotations), "example.com/team"),
        Some("research")
    );
    let owner = first(&d.metadata.owner_references).expect("owner");
    assert_eq!(owner.kind, "AIModel");
    assert_eq!(owner.controller, Some(true));
    // The Service and the URL (OpenAI-compatible under /v1).
    let svc = build::service(&model, &plan);
    let port = &svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .expect("ports")[0];
    assert_eq!(port.port, 8000);
    assert_eq!(
        plan.url(),
        "http://llama-3-8b.research.svc.cluster.local:8000/v1"
    );
    assert!(build::hpa(&model, &plan).is_none());
}

#[test]
fn the_cache_claim_and_job_download_once_with_the_credentials() {
    let model = fixture("vllm-h100");
    let uri = "hf://meta-llama/Llama-3.1-8B-Instruct@main";
    let plan = plan(&model);
    let claim = cache::claim(&model, uri);
    assert_eq!(claim.metadata.name, Some(cache::cache_name(uri)));
    let spec = claim.spec.as_ref().expect("claim spec");
    assert_eq!(
        spec.access_modes.as_deref(),
        Some(&["ReadWriteMany".to_string()][..])
    );
    let owner = claim
        .metadata
        .owner_references
        .iter()
        .flatten()
        .next()
        .expect("user");
    assert_eq!(owner.controller, None, "a cache is shared: no controller");
    let job = cache::job(&model, uri, &plan.stable.source, MODEL_CACHE_IMAGE).expect("job");
    let job_spec = job.spec.as_ref().expect("job spec");
    assert_eq!(job_spec.active_deadline_seconds, Some(1800));
    assert_eq!(job_spec.backoff_limit, Some(cache::DOWNLOAD_RETRIES));
    let pod = job_spec.template.spec.as_ref().expect("pod");
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    let c = &pod.containers[0];
    // The model-cache image runs its own downloader: no shell, no install at start.
    assert_eq!(c.image.as_deref(), Some(MODEL_CACHE_IMAGE));
    assert_eq!(c.command, None);
    assert_eq!(c.args, None);
    assert_eq!(
        c.termination_message_policy.as_deref(),
        Some("FallbackToLogsOnError")
    );
    let env = env(c);
    assert_eq!(env.get("SOURCE"), Some(&Some(uri)));
    assert_eq!(env.get("TARGET"), Some(&Some(cache::TARGET_DIR)));
    assert_eq!(env.get("MODEL_REVISION"), Some(&Some("main")));
    // The fixture's cache has the default size, 50Gi: 1/64 of it, 10m a GiB.
    assert_eq!(resource(c, "requests", "memory").as_deref(), Some("800Mi"));
    assert_eq!(resource(c, "requests", "cpu").as_deref(), Some("500m"));
    assert_eq!(resource(c, "limits", "memory").as_deref(), Some("4Gi"));
    let from = c.env_from.iter().flatten().next().expect("envFrom");
    assert_eq!(
        from.secret_ref.as_ref().map(|s| s.name.as_str()),
        Some("hf-token")
    );
    assert_eq!(mount_path(c, "model"), Some(cache::TARGET_DIR));
    // The download's mount is writable; the claim is the cache's.
    let volume = pod.volumes.iter().flatten().next().expect("volume");
    assert_eq!(
        volume
            .persistent_volume_claim
            .as_ref()
            .map(|p| p.claim_name.clone()),
        Some(cache::cache_name(uri))
    );
}

#[test]
fn tgi_shards_over_four_gpus_and_downloads_per_pod_without_the_cache() {
    let (_, plan, d) = served("tgi-4-gpus");
    let c = container(&d);
    assert_eq!(c.image.as_deref(), Some(runtime::TGI_IMAGE));
    assert_eq!(arg_value(c, "--model-id"), Some("/models"));
    assert_eq!(arg_value(c, "--num-shard"), Some("4"));
    assert_eq!(arg_value(c, "--port"), Some("8080"));
    assert_eq!(
        resource(c, "limits", "nvidia.com/gpu").as_deref(),
        Some("4")
    );
    assert_eq!(resource(c, "requests", "memory").as_deref(), Some("128Gi"));
    assert_eq!(resource(c, "requests", "cpu"), None);
    assert_eq!(env(c).get("MAX_INPUT_TOKENS"), Some(&Some("4096")));
    assert!(budget(c.startup_probe.as_ref()) >= 1800);
    let spec = pod(&d);
    assert_eq!(gpu_product(spec), Some("NVIDIA-A100-SXM4-80GB"));
    // No cache: an init container downloads into an emptyDir.
    let init = first(&spec.init_containers).expect("init container");
    assert_eq!(init.name, "download");
    assert_eq!(init.image.as_deref(), Some(MODEL_CACHE_IMAGE));
    // The per-pod volume's size limit (30Gi) sizes the download's requests.
    assert_eq!(
        resource(init, "requests", "memory").as_deref(),
        Some("480Mi")
    );
    assert_eq!(resource(init, "requests", "cpu").as_deref(), Some("300m"));
    assert_eq!(
        volume(spec, "model")
            .empty_dir
            .as_ref()
            .and_then(|e| e.size_limit.as_ref())
            .map(|q| q.0.as_str()),
        Some("30Gi")
    );
    assert_eq!(
        plan.url(),
        "http://mistral.research.svc.cluster.local:8080/v1"
    );
}

#[test]
fn triton_autoscales_with_an_hpa_and_leaves_replicas_to_it() {
    let (model, plan, d) = served("triton-s3");
    let c = container(&d);
    assert_eq!(c.image.as_deref(), Some(runtime::TRITON_IMAGE));
    assert_eq!(
        c.command.as_deref(),
        Some(&["tritonserver".to_string()][..])
    );
    assert!(args(c).contains(&"--model-repository=/models"));
    assert!(args(c).contains(&"--http-port=8000"));
    assert_eq!(
        http_path(c.readiness_probe.as_ref()),
        Some("/v2/health/ready")
    );
    assert_eq!(
        http_path(c.liveness_probe.as_ref()),
        Some("/v2/health/live")
    );
    assert!(budget(c.startup_probe.as_ref()) >= 1800);
    assert_eq!(
        resource(c, "limits", "nvidia.com/gpu").as_deref(),
        Some("1")
    );
    // No product: any GPU node, still tolerating the taint.
    assert!(pod(&d).node_selector.is_none());
    assert!(pod(&d).tolerations.is_some());
    // The HPA owns the replica count.
    assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), None);
    let hpa = build::hpa(&model, &plan).expect("autoscaling");
    let spec = hpa.spec.expect("hpa spec");
    assert_eq!(spec.min_replicas, Some(2));
    assert_eq!(spec.max_replicas, 10);
    assert_eq!(spec.scale_target_ref.kind, "Deployment");
    assert_eq!(spec.scale_target_ref.name, "resnet");
    let metrics = spec.metrics.expect("metrics");
    let cpu = metrics
        .iter()
        .find_map(|m| m.resource.as_ref())
        .expect("cpu metric");
    assert_eq!(cpu.name, "cpu");
    assert_eq!(cpu.target.average_utilization, Some(70));
    // CPU only: targetConcurrency is the operator's, on the gateway's load.
    assert_eq!(metrics.len(), 1, "{metrics:?}");
    let stabilization = spec
        .behavior
        .and_then(|b| b.scale_down)
        .and_then(|s| s.stabilization_window_seconds);
    assert_eq!(stabilization, Some(120));
    // Triton's HTTP API is not OpenAI's.
    assert_eq!(plan.url(), "http://resnet.vision.svc.cluster.local:8000");
    // The S3 download uses the credentials as its environment.
    let c = &cache_container(&model, &plan, "s3://acme-models/triton/resnet50");
    assert_eq!(c.image.as_deref(), Some(MODEL_CACHE_IMAGE));
    assert_eq!(c.command, None);
    assert_eq!(
        env(c).get("SOURCE"),
        Some(&Some("s3://acme-models/triton/resnet50"))
    );
    assert_eq!(
        c.env_from
            .iter()
            .flatten()
            .next()
            .and_then(|f| f.secret_ref.as_ref())
            .map(|s| s.name.as_str()),
        Some("aws-creds")
    );
}

#[test]
fn ollama_on_cpu_gets_no_gpu_toleration_or_selector() {
    let (model, plan, d) = served("ollama-cpu");
    let c = container(&d);
    assert_eq!(c.image.as_deref(), Some(runtime::OLLAMA_IMAGE));
    assert_eq!(args(c), ["serve"]);
    assert_eq!(c.ports.as_ref().map(|p| p[0].container_port), Some(11434));
    let env = env(c);
    assert_eq!(env.get("OLLAMA_MODELS"), Some(&Some("/models")));
    assert_eq!(env.get("OLLAMA_HOST"), Some(&Some("0.0.0.0:11434")));
    assert_eq!(http_path(c.readiness_probe.as_ref()), Some("/api/tags"));
    assert_eq!(resource(c, "requests", "nvidia.com/gpu"), None);
    assert_eq!(resource(c, "limits", "cpu").as_deref(), Some("2"));
    assert!(pod(&d).tolerations.is_none());
    assert!(pod(&d).node_selector.is_none());
    assert_eq!(plan.url(), "http://tiny.dev.svc.cluster.local:11434/v1");
    let c = &cache_container(&model, &plan, "ollama://llama3.2:1b");
    let env = self::env(c);
    assert_eq!(env.get("MODEL_NAME"), Some(&Some("llama3.2:1b")));
}

#[test]
fn a_custom_runtime_runs_as_declared_on_the_users_claim() {
    let (_, plan, d) = served("custom-pvc");
    let c = container(&d);
    assert_eq!(c.image.as_deref(), Some("ghcr.io/acme/scorer:1.4.2"));
    assert_eq!(args(c), ["--threads=4"]);
    assert!(c.command.is_none());
    assert_eq!(c.ports.as_ref().map(|p| p[0].container_port), Some(9000));
    assert_eq!(http_path(c.startup_probe.as_ref()), Some("/healthz"));
    assert_eq!(http_path(c.readiness_probe.as_ref()), Some("/healthz"));
    let secret = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "API_KEY")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("secret env");
    assert_eq!(
        (secret.name.as_str(), secret.key.as_str()),
        ("scorer", "api-key")
    );
    // The claim is mounted as it is, at the path inside it.
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "model")
        .expect("mount");
    assert_eq!(mount.sub_path.as_deref(), Some("scorer/v3"));
    assert_eq!(mount.read_only, Some(true));
    assert_eq!(
        volume(pod(&d), "model")
            .persistent_volume_claim
            .as_ref()
            .map(|p| p.claim_name.as_str()),
        Some("weights")
    );
    assert_eq!(plan.url(), "http://scorer.dev.svc.cluster.local:9000");
}

#[test]
fn a_canary_splits_replicas_and_weights() {
    let model = fixture("canary");
    let plan = plan(&model);
    let canary = plan.canary.as_ref().expect("canary");
    assert_eq!(plan.stable.replicas, Some(3));
    assert_eq!(canary.replicas, Some(1));
    let stable = build::deployment(&model, &plan, &plan.stable, MODEL_CACHE_IMAGE).expect("stable");
    let canary_d = build::deployment(&model, &plan, canary, MODEL_CACHE_IMAGE).expect("canary");
    assert_eq!(canary_d.metadata.name.as_deref(), Some("chat-canary"));
    // Each has its own cache; both ask for 2 GPUs and shard over them.
    let claim = |d: &Deployment| {
        let claim = volume(pod(d), "model").persistent_volume_claim.as_ref();
        claim.map(|p| p.claim_name.clone())
    };
    assert_eq!(claim(&stable), Some(cache::cache_name("hf://acme/chat@v1")));
    assert_eq!(
        claim(&canary_d),
        Some(cache::cache_name("hf://acme/chat@v2"))
    );
    assert_eq!(
        arg_value(container(&canary_d), "--tensor-parallel-size"),
        Some("2")
    );
    // The selectors tell the tracks apart; the Service selects both.
    let track = |d: &Deployment| {
        let selector = d
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.as_ref());
        value(selector, "aleph.dev/track").map(str::to_string)
    };
    assert_eq!(track(&stable).as_deref(), Some("stable"));
    assert_eq!(track(&canary_d).as_deref(), Some("canary"));
    let svc = build::service(&model, &plan);
    let svc_selector = svc.spec.and_then(|s| s.selector).unwrap_or_default();
    assert_eq!(svc_selector.len(), 1);
    assert_eq!(value(Some(&svc_selector), "aleph.dev/model"), Some("chat"));
    // With the Gateway API: weights 75/25 to the per-track Services.
    let route = build::http_route(&model, &plan).expect("a canary route");
    let backends = &route.data["spec"]["rules"][0]["backendRefs"];
    assert_eq!(backends[0]["name"], "chat-stable");
    assert_eq!(backends[0]["weight"], 75);
    assert_eq!(backends[1]["name"], "chat-canary");
    assert_eq!(backends[1]["weight"], 25);
    assert_eq!(route.data["spec"]["parentRefs"][0]["kind"], "Service");
}

#[test]
fn an_ollama_source_on_vllm_is_an_invalid_spec_naming_the_field() {
    let mut model = fixture("vllm-h100");
    if let Some(source) = model.spec.source.as_mut() {
        source.uri = "ollama://llama3".into();
    }
    let err = build::plan(&model, "ollama://llama3").expect_err("invalid");
    assert_eq!(err.field, "spec.source.uri");
    let message = &err.message;
    assert!(message.contains("runtime.engine: ollama"), "{message}");
}

#[test]
fn target_concurrency_leaves_the_replicas_to_the_operators_autoscaler() {
    let mut model = fixture("triton-s3");
    let auto = model.spec.autoscaling.as_mut().expect("autoscaling");
    auto.target_cpu_utilization = None;
    auto.target_concurrency = Some(4);
    auto.min_replicas = 0;
    let (plan, d) = stable(&model);
    // No HPA, and no replica count in the Deployment the operator applies:
    // the autoscaler sets it through the scale subresource.
    assert!(build::hpa(&model, &plan).is_none());
    assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), None);
}
