use super::*;
use aleph_crds::common::ComputeResources;
use aleph_crds::keys::PLUGIN_LABEL;
use aleph_crds::pipeline::PipelineSpec;
use k8s_openapi::api::core::v1::EnvVar;
use proptest::prelude::*;

const RUN: &str = r#"
apiVersion: aleph.dev/v1alpha1
kind: PipelineRun
metadata:
  name: nightly-202601020200
  namespace: team-a
  uid: 0b7c5c3e-1111-2222-3333-444455556666
  labels:
    aleph.dev/tenant: acme
spec:
  pipelineRef:
    name: nightly
"#;

const PIPELINE: &str = r#"
params:
  - name: epochs
    type: int
    default: "3"
steps:
  - name: train
    timeoutSeconds: 3600
    podAnnotations:
      example.com/epochs: "e$(params.epochs)"
      example.com/data: $(steps.fetch.outputs.uri)
    container:
      image: ghcr.io/acme/trainer:$(params.epochs)
      command: ["python", "train.py"]
      args: ["--epochs=$(params.epochs)", "--data=$(steps.fetch.outputs.uri)", "--home=$(HOME)"]
      env:
        - name: MODE
          value: full-$(params.epochs)
        - name: HF_TOKEN
          secretKeyRef:
            name: hf
            key: token
        - name: ALEPH_STEP
          value: overridden
      resources:
        cpu: "4"
        memory: 32Gi
        gpus: 2
        gpuProduct: NVIDIA-H100-80GB-HBM3
  - name: scan
    plugin:
      name: scanner
      args: ["--target=$(params.epochs)"]
  - name: fit
    training:
      image: 123456789012.dkr.ecr.us-east-1.amazonaws.com/xgb:1
      roleArn: arn:aws:iam::123456789012:role/sm
      instanceType: ml.m5.large
      outputS3Uri: s3://bucket/out
"#;

const PLUGIN: &str = r#"
apiVersion: aleph.dev/v1alpha1
kind: Plugin
metadata:
  name: scanner
  namespace: team-a
spec:
  version: 1.2.0
  image: ghcr.io/acme/scanner:1.2.0
  mode: job
  command: ["/scan"]
  args: ["--quiet"]
  env:
    - name: LEVEL
      value: $(params.epochs)
  config:
    rules.yaml: "x: 1"
  secrets:
    - name: scanner-key
  sandbox:
    runtimeClassName: gvisor
status:
  currentImage: ghcr.io/acme/scanner:1.1.0
"#;

fn run() -> PipelineRun {
    serde_saphyr::from_str(RUN).unwrap()
}

fn pipeline() -> PipelineSpec {
    serde_saphyr::from_str(PIPELINE).unwrap()
}

fn plugin() -> Plugin {
    serde_saphyr::from_str(PLUGIN).unwrap()
}

fn params() -> BTreeMap<String, String> {
    BTreeMap::from([("epochs".to_string(), "3".to_string())])
}

fn outputs() -> StepOutputs {
    StepOutputs::from([(
        "fetch".to_string(),
        BTreeMap::from([("uri".to_string(), "s3://b/$x".to_string())]),
    )])
}

fn pod(job: &Job) -> &PodSpec {
    job.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn env_value<'a>(c: &'a Container, name: &str) -> Option<&'a EnvVar> {
    c.env.as_ref().unwrap().iter().find(|e| e.name == name)
}

#[test]
fn a_container_step_becomes_a_job() {
    let spec = pipeline();
    let job = build_step_job(&run(), &spec.steps[0], 2, &params(), &outputs(), None).unwrap();
    let meta = &job.metadata;
    assert_eq!(meta.name.as_deref(), Some("nightly-202601020200-train-2"));
    assert_eq!(meta.namespace.as_deref(), Some("team-a"));
    let labels = meta.labels.as_ref().unwrap();
    for (k, v) in [
        ("app.kubernetes.io/managed-by", "aleph-operator"),
        ("app.kubernetes.io/part-of", "aleph"),
        ("aleph.dev/pipelinerun", "nightly-202601020200"),
        ("aleph.dev/step", "train"),
        ("aleph.dev/attempt", "2"),
        ("aleph.dev/pipeline", "nightly"),
        ("aleph.dev/tenant", "acme"),
    ] {
        assert_eq!(labels.get(k).map(String::as_str), Some(v), "{k}");
    }
    let owner = &meta.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.api_version, "aleph.dev/v1alpha1");
    assert_eq!(owner.kind, "PipelineRun");
    assert_eq!(owner.name, "nightly-202601020200");
    assert_eq!(owner.uid, "0b7c5c3e-1111-2222-3333-444455556666");
    assert_eq!(owner.controller, Some(true));
    let spec = job.spec.as_ref().unwrap();
    assert_eq!(spec.backoff_limit, Some(0));
    assert_eq!(spec.active_deadline_seconds, Some(3600));
    assert_eq!(
        spec.template.metadata.as_ref().unwrap().labels.as_ref(),
        Some(labels)
    );
    let annotations = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap();
    assert_eq!(annotations["example.com/epochs"], "e3");
    assert_eq!(
        annotations["example.com/data"], "s3://b/$x",
        "annotations are not expanded by the kubelet, so nothing is escaped"
    );
    let pod = pod(&job);
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(pod.automount_service_account_token, None);
    let c = &pod.containers[0];
    assert_eq!(c.name, STEP_CONTAINER);
    assert_eq!(c.image.as_deref(), Some("ghcr.io/acme/trainer:3"));
    assert_eq!(
        c.command.as_deref(),
        Some(&["python".to_string(), "train.py".to_string()][..])
    );
    assert_eq!(
        c.args.as_deref().unwrap(),
        ["--epochs=3", "--data=s3://b/$$x", "--home=$(HOME)"],
        "inserted values are escaped for the kubelet, the user's own $(HOME) is not"
    );
    assert_eq!(
        env_value(c, "MODE").unwrap().value.as_deref(),
        Some("full-3")
    );
    let token = env_value(c, "HF_TOKEN").unwrap();
    assert_eq!(token.value, None);
    let selector = token
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (selector.name.as_str(), selector.key.as_str()),
        ("hf", "token")
    );
    assert_eq!(
        env_value(c, "ALEPH_STEP").unwrap().value.as_deref(),
        Some("overridden")
    );
    assert_eq!(
        env_value(c, "ALEPH_OUTPUTS_FILE").unwrap().value.as_deref(),
        Some(OUTPUTS_FILE)
    );
    let names: Vec<&str> = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(names.len(), unique.len(), "no duplicate env names");
    let resources = c.resources.as_ref().unwrap();
    for amounts in [
        resources.requests.as_ref().unwrap(),
        resources.limits.as_ref().unwrap(),
    ] {
        assert_eq!(amounts["cpu"].0, "4");
        assert_eq!(amounts["memory"].0, "32Gi");
        assert_eq!(amounts["nvidia.com/gpu"].0, "2");
    }
    let toleration = &pod.tolerations.as_ref().unwrap()[0];
    assert_eq!(toleration.key.as_deref(), Some("nvidia.com/gpu"));
    assert_eq!(toleration.operator.as_deref(), Some("Exists"));
    assert_eq!(toleration.effect.as_deref(), Some("NoSchedule"));
    assert_eq!(
        pod.node_selector.as_ref().unwrap()["nvidia.com/gpu.product"],
        "NVIDIA-H100-80GB-HBM3"
    );
    assert_eq!(c.termination_message_path.as_deref(), Some(OUTPUTS_FILE));
    assert_eq!(c.termination_message_policy.as_deref(), Some("File"));
    let mount = &c.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(mount.mount_path, OUTPUTS_DIR);
    assert!(pod.volumes.as_ref().unwrap()[0].empty_dir.is_some());
    let security = c.security_context.as_ref().unwrap();
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
}

#[test]
fn a_cpu_step_gets_no_gpu_scheduling() {
    let mut step = pipeline().steps[0].clone();
    if let Some(c) = step.container.as_mut() {
        c.resources = ComputeResources::default();
        c.args.clear();
    }
    let job = build_step_job(&run(), &step, 1, &params(), &outputs(), None).unwrap();
    let pod = pod(&job);
    assert!(pod.tolerations.is_none() && pod.node_selector.is_none());
    assert!(pod.containers[0].resources.is_none());
    assert!(pod.containers[0].args.is_none());
}

/// The Job of the example's plugin step, run with `plugin`.
fn plugin_step_job(plugin: &Plugin) -> Job {
    build_step_job(
        &run(),
        &pipeline().steps[1],
        1,
        &params(),
        &outputs(),
        Some(plugin),
    )
    .unwrap()
}

#[test]
fn a_plugin_step_with_permissions_gets_its_token() {
    let mut plugin = plugin();
    plugin.spec.permissions = vec![aleph_crds::plugin::PluginPermission {
        api_groups: vec![String::new()],
        resources: vec!["configmaps".into()],
        verbs: vec!["get".into()],
    }];
    let job = plugin_step_job(&plugin);
    let pod = pod(&job);
    assert_eq!(pod.service_account_name.as_deref(), Some("scanner"));
    assert_eq!(pod.automount_service_account_token, Some(true));
}

#[test]
fn a_plugin_step_runs_sandboxed() {
    let job = plugin_step_job(&plugin());
    assert_eq!(
        job.metadata.labels.as_ref().unwrap()[PLUGIN_LABEL],
        "scanner"
    );
    let pod = pod(&job);
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(pod.service_account_name.as_deref(), Some("scanner"));
    assert_eq!(pod.runtime_class_name.as_deref(), Some("gvisor"));
    let pod_security = pod.security_context.as_ref().unwrap();
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(
        pod_security.run_as_user,
        Some(crate::plugin::build::SANDBOX_USER)
    );
    assert_eq!(
        pod_security.run_as_group,
        Some(crate::plugin::build::SANDBOX_USER)
    );
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some("ghcr.io/acme/scanner:1.1.0"),
        "the running version"
    );
    assert_eq!(c.command.as_deref().unwrap(), ["/scan"]);
    assert_eq!(c.args.as_deref().unwrap(), ["--quiet", "--target=3"]);
    assert_eq!(
        env_value(c, "LEVEL").unwrap().value.as_deref(),
        Some("$(params.epochs)"),
        "the plugin's env is its own"
    );
    let s = c.security_context.as_ref().unwrap();
    assert_eq!(s.run_as_non_root, Some(true));
    assert_eq!(s.read_only_root_filesystem, Some(true));
    assert_eq!(s.allow_privilege_escalation, Some(false));
    assert_eq!(
        s.capabilities.as_ref().unwrap().drop.as_deref().unwrap(),
        ["ALL"]
    );
    assert_eq!(s.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    let mounts: Vec<(&str, bool)> = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| (m.mount_path.as_str(), m.read_only == Some(true)))
        .collect();
    assert_eq!(
        mounts,
        [
            (OUTPUTS_DIR, false),
            ("/tmp", false),
            (PLUGIN_CONFIG_DIR, true),
            ("/var/run/secrets/aleph-plugin/scanner-key", true),
        ]
    );
}

#[test]
fn plugin_problems_are_errors() {
    let spec = pipeline();
    let step = &spec.steps[1];
    let build = |p: Option<&Plugin>| build_step_job(&run(), step, 1, &params(), &outputs(), p);
    assert!(
        matches!(build(None), Err(JobError::PluginMissing { plugin, .. }) if plugin == "scanner")
    );
    let mut other = plugin();
    other.metadata.name = Some("other".into());
    assert!(matches!(
        build(Some(&other)),
        Err(JobError::PluginMissing { .. })
    ));
    let mut service = plugin();
    service.spec.mode = PluginMode::Service;
    assert!(matches!(
        build(Some(&service)),
        Err(JobError::PluginNotJobMode { .. })
    ));
    let mut disabled = plugin();
    disabled.spec.disabled = true;
    assert!(matches!(
        build(Some(&disabled)),
        Err(JobError::PluginDisabled { .. })
    ));
}

#[test]
fn other_steps_and_bad_references_are_errors() {
    let spec = pipeline();
    assert!(matches!(
        build_step_job(&run(), &spec.steps[2], 1, &params(), &outputs(), None),
        Err(JobError::NotAJobStep { step }) if step == "fit"
    ));
    let err = build_step_job(
        &run(),
        &spec.steps[0],
        1,
        &params(),
        &StepOutputs::new(),
        None,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("$(steps.fetch.outputs.uri)"),
        "{err}"
    );
    let mut anonymous = run();
    anonymous.metadata.uid = None;
    assert_eq!(
        build_step_job(&anonymous, &spec.steps[0], 1, &params(), &outputs(), None),
        Err(JobError::RunMetadata { field: "uid" })
    );
}

#[test]
fn long_names_are_cut_and_hashed() {
    let run = "r".repeat(60);
    let name = job_name(&run, "train", 3);
    assert!(name.len() <= 63, "{name}");
    assert!(name.ends_with("-train-3"), "{name}");
    assert_eq!(name, job_name(&run, "train", 3));
    let other = format!("{}x", "r".repeat(59));
    assert_ne!(name, job_name(&other, "train", 3));
    assert_eq!(job_name("short", "s", 1), "short-s-1");
    assert_eq!(label_value("short"), "short");
    assert!(label_value(&"a.".repeat(100)).len() <= 63);
}

#[test]
fn outputs_are_key_value_lines() {
    let got = parse_outputs("accuracy=0.93\r\nuri=s3://b/m?x=1\n\n# comment\nnot a pair\nbad key=1\nuri=s3://b/final\nempty=\n").unwrap();
    assert_eq!(
        got,
        BTreeMap::from([
            ("accuracy".to_string(), "0.93".to_string()),
            ("empty".to_string(), String::new()),
            ("uri".to_string(), "s3://b/final".to_string()),
        ])
    );
    assert!(parse_outputs("").unwrap().is_empty());
    let big = "k=".to_string() + &"v".repeat(MAX_OUTPUTS_BYTES);
    let err = parse_outputs(&big).unwrap_err();
    assert_eq!(err.size, big.len());
    assert!(err.to_string().contains(OUTPUTS_FILE));
    let edge = "k=".to_string() + &"v".repeat(MAX_OUTPUTS_BYTES - 3);
    assert!(parse_outputs(&edge).is_ok());
    assert!(
        parse_outputs(&(edge + "v")).is_err(),
        "4096 bytes may have been cut"
    );
}

proptest! {
    #[test]
    fn job_names_fit_and_stay_apart(
        run in "[a-z0-9]([a-z0-9.-]{0,80}[a-z0-9])?",
        step in "[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?",
        attempt in 1i32..22,
    ) {
        let name = job_name(&run, &step, attempt);
        prop_assert!(name.len() <= 63);
        prop_assert!(name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric()));
        prop_assert!(name.chars().last().is_some_and(|c| c.is_ascii_alphanumeric()));
        prop_assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'));
        prop_assert_ne!(name, job_name(&run, &step, attempt + 1));
        prop_assert!(label_value(&run).len() <= 63);
    }

    #[test]
    fn parse_outputs_never_panics(message in ".{0,300}") {
        let _ = parse_outputs(&message);
    }
}
