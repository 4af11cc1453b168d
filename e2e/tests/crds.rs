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
        aleph_crds::all_crds().len(),
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
    assert_eq!(ours.len(), aleph_crds::all_crds().len(), "{ours:?}");

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
        "steptemplate.aleph.dev/tokenize-v1",
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

/// A manifest a validation rule must refuse: one entry of
/// `fixtures/invalid_manifests.yaml`.
#[derive(serde::Deserialize)]
struct Invalid {
    /// What the case is.
    what: String,
    kind: String,
    name: String,
    /// The manifest from `spec:` on.
    body: String,
    /// Text the API server's refusal must contain.
    refusal: String,
}

impl Invalid {
    /// The whole manifest.
    fn manifest(&self) -> String {
        let Invalid {
            kind, name, body, ..
        } = self;
        format!(
            "\napiVersion: aleph.dev/v1alpha1\nkind: {kind}\nmetadata: {{ name: {name} }}\n{body}\n"
        )
    }
}

fn invalid_manifests() -> Vec<Invalid> {
    serde_saphyr::from_str(include_str!("fixtures/invalid_manifests.yaml"))
        .expect("fixtures/invalid_manifests.yaml")
}

#[tokio::test]
async fn each_validation_rule_refuses_a_bad_manifest_naming_the_field() {
    let env = TestEnv::new().await;
    let cases = invalid_manifests();
    let mut failures = Vec::new();
    for case in &cases {
        let (what, expected) = (&case.what, &case.refusal);
        let out = env
            .kubectl_with_stdin(["create", "--dry-run=server", "-f", "-"], &case.manifest())
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
    println!("{} invalid manifests checked", cases.len());
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
