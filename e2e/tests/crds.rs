//! The CRDs against a real API server: they install and are established, the
//! examples are accepted, `kubectl explain` documents the fields, and each
//! validation rule refuses a bad manifest with a message naming the field.

use aleph_e2e::TestEnv;

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test]
async fn crds_install_and_examples_are_accepted() {
    let env = TestEnv::new().await;
    let crds = root().join("crds");
    let crds = crds.to_string_lossy();
    env.kubectl(["apply", "--server-side", "--force-conflicts", "-f", &crds])
        .await
        .expect_success();
    let out = env
        .kubectl([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            &crds,
        ])
        .await
        .expect_success();
    assert_eq!(
        out.stdout.matches("condition met").count(),
        5,
        "{}",
        out.stdout
    );

    let names = env
        .kubectl(["get", "crd", "-o", "name"])
        .await
        .expect_success();
    let ours: Vec<&str> = names
        .stdout
        .lines()
        .filter(|l| l.ends_with(".aleph.dev"))
        .collect();
    assert_eq!(ours.len(), 5, "{ours:?}");

    // Server-side dry run: every admission check runs, nothing is stored.
    let examples = root().join("examples");
    let out = env
        .kubectl([
            "apply",
            "--dry-run=server",
            "-f",
            &examples.to_string_lossy(),
        ])
        .await
        .expect_success();
    for kind in [
        "tenant.aleph.dev/acme",
        "aimodel.aleph.dev/llama-3-8b",
        "aimodel.aleph.dev/fraud-xgboost",
        "plugin.aleph.dev/pii-redactor",
        "pipeline.aleph.dev/nightly-retrain",
        "pipelinerun.aleph.dev/",
    ] {
        assert!(
            out.stdout.contains(kind),
            "{kind} not applied: {}",
            out.stdout
        );
    }

    let explain = env
        .kubectl(["explain", "aimodel.spec"])
        .await
        .expect_success();
    for text in [
        "Where the model's weights come from",
        "autoscaling",
        "The serving runtime",
    ] {
        assert!(
            explain.stdout.contains(text),
            "kubectl explain lacks `{text}`:\n{}",
            explain.stdout
        );
    }
    let categories = env.kubectl(["get", "aleph"]).await;
    assert!(
        categories.success(),
        "kubectl get aleph: {}",
        categories.stderr
    );
    env.cleanup().await;
}

/// (description, kind, name, the manifest from its spec on, text the API
/// server's refusal must contain); see [`invalid_manifest`].
const INVALID: &[(&str, &str, &str, &str, &str)] = &[
    (
        "tenant without owners",
        "Tenant",
        "e2e-bad-owners",
        r#"spec: { owners: [], namespaces: [a] }"#,
        "spec.owners",
    ),
    (
        "tenant with an unknown plan",
        "Tenant",
        "e2e-bad-plan",
        r#"spec: { owners: [{ kind: User, name: a }], namespaces: [a], plan: platinum }"#,
        "spec.plan",
    ),
    (
        "tenant namespace that is not a DNS label",
        "Tenant",
        "e2e-bad-ns",
        r#"spec: { owners: [{ kind: User, name: a }], namespaces: [Research_Team] }"#,
        "spec.namespaces",
    ),
    (
        "service account owner without namespace",
        "Tenant",
        "e2e-bad-sa",
        r#"spec: { owners: [{ kind: ServiceAccount, name: ci }], namespaces: [a] }"#,
        "namespace is required for a ServiceAccount owner",
    ),
    (
        "tenant plus namespace name too long",
        "Tenant",
        "e2e-a-rather-long-tenant-name-for-this",
        r#"spec: { owners: [{ kind: User, name: a }], namespaces: [a-rather-long-namespace-name-too] }"#,
        "spec.namespaces",
    ),
    (
        "model without source or training",
        "AIModel",
        "no-source",
        r#"spec: { runtime: { engine: vllm } }"#,
        "set source, or training",
    ),
    (
        "model source with an unknown scheme",
        "AIModel",
        "bad-uri",
        r#"spec: { source: { uri: "ftp://models/llama" } }"#,
        "spec.source.uri",
    ),
    (
        "minReplicas above maxReplicas",
        "AIModel",
        "bad-bounds",
        r#"spec: { source: { uri: "hf://org/model" }, autoscaling: { minReplicas: 5, maxReplicas: 2, targetConcurrency: 4 } }"#,
        "minReplicas must be at most maxReplicas",
    ),
    (
        "both autoscaling targets",
        "AIModel",
        "both-targets",
        r#"spec: { source: { uri: "hf://org/model" }, resources: { cpu: "1" }, autoscaling: { maxReplicas: 3, targetCpuUtilization: 70, targetConcurrency: 4 } }"#,
        "targetConcurrency (scaled on the gateway's requests in flight) and targetCpuUtilization (scaled by an HPA) are exclusive",
    ),
    (
        "scale to zero on CPU",
        "AIModel",
        "zero-cpu",
        r#"spec: { source: { uri: "hf://org/model" }, resources: { cpu: "1" }, autoscaling: { minReplicas: 0, maxReplicas: 3, targetCpuUtilization: 70 } }"#,
        "scaling to zero (minReplicas 0) needs targetConcurrency",
    ),
    (
        "scale to zero with a canary",
        "AIModel",
        "zero-canary",
        r#"spec: { source: { uri: "hf://org/model" }, autoscaling: { minReplicas: 0, maxReplicas: 3, targetConcurrency: 2 }, canary: { trafficPercent: 10, runtime: { engine: tgi } } }"#,
        "a canary's replicas are a share of minReplicas",
    ),
    (
        "replicas together with autoscaling",
        "AIModel",
        "both",
        r#"spec: { source: { uri: "hf://org/model" }, replicas: 2, autoscaling: { maxReplicas: 3, targetCpuUtilization: 70 } }"#,
        "replicas and autoscaling are exclusive",
    ),
    (
        "too many GPUs",
        "AIModel",
        "many-gpus",
        r#"spec: { source: { uri: "hf://org/model" }, resources: { gpus: 100 } }"#,
        "spec.resources.gpus",
    ),
    (
        "custom runtime without image",
        "AIModel",
        "custom",
        r#"spec: { source: { uri: "hf://org/model" }, runtime: { engine: custom } }"#,
        "a custom runtime needs image and port",
    ),
    (
        "SageMaker backend without its section",
        "AIModel",
        "sm",
        r#"spec: { source: { uri: "s3://bucket/model" }, backend: SageMaker }"#,
        "backend SageMaker needs the sagemaker section",
    ),
    (
        "training role that is not an IAM role ARN",
        "AIModel",
        "bad-role",
        r#"spec:
  training: { image: img, roleArn: "admin", instanceType: ml.m5.xlarge, outputS3Uri: "s3://bucket/out" }"#,
        "spec.training.roleArn",
    ),
    (
        "spot wait shorter than the runtime",
        "AIModel",
        "bad-spot",
        r#"spec:
  training:
    image: img
    roleArn: "arn:aws:iam::123456789012:role/r"
    instanceType: ml.m5.xlarge
    outputS3Uri: "s3://bucket/out"
    maxRuntimeSeconds: 7200
    spot: { maxWaitSeconds: 60 }"#,
        "spot.maxWaitSeconds must be at least maxRuntimeSeconds",
    ),
    (
        "plugin version that is not semver",
        "Plugin",
        "bad-version",
        r#"spec: { version: latest, image: ghcr.io/acme/p:1, port: 8080 }"#,
        "spec.version",
    ),
    (
        "service plugin without a port",
        "Plugin",
        "no-port",
        r#"spec: { version: 1.0.0, image: ghcr.io/acme/p:1, mode: service }"#,
        "a service plugin needs a port",
    ),
    (
        "plugin permission with a wildcard",
        "Plugin",
        "wildcard",
        r#"spec:
  version: 1.0.0
  image: ghcr.io/acme/p:1
  mode: job
  permissions: [{ apiGroups: [""], resources: ["*"], verbs: [get] }]"#,
        "wildcards are not allowed",
    ),
    (
        "step with two actions",
        "Pipeline",
        "two-actions",
        r#"spec:
  steps:
    - name: a
      container: { image: busybox }
      plugin: { name: p }"#,
        "a step has exactly one action",
    ),
    (
        "step depending on itself",
        "Pipeline",
        "self-dep",
        r#"spec:
  steps:
    - { name: a, dependsOn: [a], container: { image: busybox } }"#,
        "a step cannot depend on itself",
    ),
    (
        "duplicate step names",
        "Pipeline",
        "dup",
        r#"spec:
  steps:
    - { name: a, container: { image: busybox } }
    - { name: a, container: { image: alpine } }"#,
        "spec.steps[1]",
    ),
    (
        "enum param without values",
        "Pipeline",
        "enum-param",
        r#"spec:
  params: [{ name: size, type: enum }]
  steps: [{ name: a, container: { image: busybox } }]"#,
        "an enum param needs values",
    ),
    (
        "retry cap below the initial delay",
        "Pipeline",
        "bad-retry",
        r#"spec:
  steps:
    - name: a
      container: { image: busybox }
      retries: { limit: 2, initialDelaySeconds: 60, maxDelaySeconds: 10 }"#,
        "maxDelaySeconds must be at least initialDelaySeconds",
    ),
    (
        "run without a pipeline reference",
        "PipelineRun",
        "no-ref",
        r#"spec: { params: [] }"#,
        "spec.pipelineRef",
    ),
];

/// The manifest of an [`INVALID`] entry.
fn invalid_manifest(kind: &str, name: &str, spec: &str) -> String {
    format!(
        "\napiVersion: aleph.dev/v1alpha1\nkind: {kind}\nmetadata: {{ name: {name} }}\n{spec}\n"
    )
}

#[tokio::test]
async fn each_validation_rule_refuses_a_bad_manifest_naming_the_field() {
    let env = TestEnv::new().await;
    let mut failures = Vec::new();
    for (what, kind, name, spec, expected) in INVALID {
        let manifest = invalid_manifest(kind, name, spec);
        let out = env
            .kubectl_with_stdin(["create", "--dry-run=server", "-f", "-"], &manifest)
            .await;
        if out.success() {
            failures.push(format!(
                "{what}: accepted, expected a refusal mentioning `{expected}`"
            ));
        } else if !out.stderr.contains(expected) {
            failures.push(format!(
                "{what}: refused without mentioning `{expected}`: {}",
                out.stderr.trim()
            ));
        }
    }
    println!("{} invalid manifests checked", INVALID.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    env.cleanup().await;
}

#[tokio::test]
async fn immutable_run_fields_cannot_change() {
    let env = TestEnv::new().await;
    let run = r#"
apiVersion: aleph.dev/v1alpha1
kind: PipelineRun
metadata: { name: immutable }
spec: { pipelineRef: { name: first }, params: [] }
"#;
    env.kubectl_with_stdin(["apply", "-f", "-"], run)
        .await
        .expect_success();
    let changed = run.replace("name: first", "name: second");
    let out = env.kubectl_with_stdin(["apply", "-f", "-"], &changed).await;
    assert!(
        !out.success() && out.stderr.contains("pipelineRef is immutable"),
        "{}",
        out.stderr
    );
    env.cleanup().await;
}
