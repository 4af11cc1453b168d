//! Artifacts end to end, on the real node (`e2e/src/real_node.rs`) with the
//! S3 emulator (moto's server, `e2e/src/s3.rs`): a pipeline that prepares a
//! dataset in a workspace, trains a model artifact from it, evaluates that
//! artifact into a JSON list of metrics, scores each metric in a fan-out and
//! publishes a summary; the digests in status are those of the objects in
//! S3; a second run reuses the memoized steps without running them; deleting
//! a run deletes its own artifacts and keeps the memoized ones; deleting the
//! Pipeline deletes the memoized ones; deleting the namespace does not wait
//! for a run's artifacts, which no Job can delete there any more.

use std::time::Duration;

use aleph_crds::pipeline::{Pipeline, PipelineRun, RunPhase, StepPhase};
use aleph_crds::pipeline_artifacts::ArtifactRef;
use aleph_e2e::pipelines::{finished_run, label_values, phase, run_manifest, run_pods, step};
use aleph_e2e::real_node::{self, BUSYBOX_IMAGE, pin_namespace};
use aleph_e2e::s3::{s3_get, s3_keys, s3_put, s3_secret};
use aleph_e2e::{TestEnv, events_about, kubectl, unique_name, wait_for_deletion};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::Api;
use sha2::{Digest, Sha256};

const TIMEOUT: Duration = Duration::from_secs(240);

/// The artifact `name` that step `step_name` of the run left.
fn artifact(run: &PipelineRun, step_name: &str, name: &str) -> ArtifactRef {
    step(run, step_name)
        .artifacts
        .iter()
        .find(|a| a.name == name)
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "step {step_name} of {} left no artifact {name}: {:#?}",
                run.metadata.name.as_deref().unwrap_or_default(),
                step(run, step_name)
            )
        })
}

/// Checks that `artifact` is an object of `bucket` whose contents have the
/// recorded digest and size; returns its key and contents.
fn check_in_s3(bucket: &str, artifact: &ArtifactRef) -> (String, String) {
    let key = artifact
        .uri
        .strip_prefix(&format!("s3://{bucket}/"))
        .unwrap_or_else(|| panic!("{} is not in bucket {bucket}", artifact.uri))
        .to_string();
    let body = s3_get(bucket, &key);
    let digest: String = Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(digest, artifact.sha256, "the digest of {}", artifact.uri);
    assert_eq!(
        usize::try_from(artifact.size).ok(),
        Some(body.len()),
        "{artifact:?}"
    );
    (key, String::from_utf8_lossy(&body).into_owned())
}

fn pipeline(bucket: &str) -> String {
    format!(
        r#"apiVersion: aleph.dev/v1alpha1
kind: Pipeline
metadata: {{ name: ml }}
spec:
  artifactStore: {{ bucket: {bucket}, prefix: runs, credentialsSecret: {{ name: s3 }} }}
  workspaces:
    - name: data
      volumeClaimTemplate: {{ storage: 16Mi }}
  steps:
    - name: prepare
      workspaces: [{{ name: data }}]
      container:
        image: {BUSYBOX_IMAGE}
        command: [sh, -c, 'printf "a,1\nb,2\nc,3\n" >/workspace/data/dataset.csv && echo "digest=$(sha256sum </workspace/data/dataset.csv | cut -d" " -f1)" >>"$ALEPH_OUTPUTS_FILE"']
    - name: train
      dependsOn: [prepare]
      memoize: true
      workspaces: [{{ name: data, readOnly: true }}]
      artifacts:
        outputs: [{{ name: model, path: /out/model.bin }}]
      container:
        image: {BUSYBOX_IMAGE}
        command: [sh, -c, 'echo "model of dataset $1 rows=$(wc -l </workspace/data/dataset.csv)" >/out/model.bin && echo "trainedBy=$HOSTNAME" >>"$ALEPH_OUTPUTS_FILE"', train]
        args: ["$(steps.prepare.outputs.digest)"]
    - name: evaluate
      dependsOn: [train]
      memoize: true
      artifacts:
        inputs: [{{ name: model, from: steps.train.artifacts.model, path: /in/model.bin }}]
        outputs: [{{ name: report, path: /out/report.txt }}]
      container:
        image: {BUSYBOX_IMAGE}
        command:
          - sh
          - -c
          - |
            grep -q "rows=3" /in/model.bin || exit 4
            if echo x >/in/model.bin 2>/dev/null; then exit 5; fi
            {{ echo "report on:"; cat /in/model.bin; }} >/out/report.txt
            echo 'metrics=["accuracy","loss"]' >>"$ALEPH_OUTPUTS_FILE"
    - name: score
      dependsOn: [evaluate]
      forEach: {{ fromOutput: steps.evaluate.outputs.metrics }}
      container:
        image: {BUSYBOX_IMAGE}
        command: [sh, -c, 'echo "metric=$1" >>"$ALEPH_OUTPUTS_FILE"', score]
        args: ["$(item)"]
    - name: publish
      dependsOn: [evaluate, score]
      artifacts:
        inputs: [{{ name: report, from: steps.evaluate.artifacts.report, path: /in/report.txt }}]
        outputs: [{{ name: summary, path: /out/summary.txt }}]
      container:
        image: {BUSYBOX_IMAGE}
        command: [sh, -c, 'cp /in/report.txt /out/summary.txt && echo "scores $1" >>/out/summary.txt', publish]
        args: ["$(steps.score.outputs.results)"]
"#
    )
}

#[tokio::test]
async fn artifacts_flow_through_s3_with_their_digests_are_memoized_and_go_with_their_run() {
    let env = TestEnv::new().await;
    real_node::require(&env.client()).await;
    pin_namespace(&env.client(), env.namespace()).await;
    let ns = env.namespace().to_string();
    let bucket = unique_name("artifacts");
    s3_put(&bucket, &[]);
    env.apply_yaml(&s3_secret()).await;
    env.apply_yaml(&pipeline(&bucket)).await;

    // Run 1: every step runs, and each artifact's digest is its object's.
    env.apply_yaml(&run_manifest("ml-1", "ml", "")).await;
    let started = tokio::time::Instant::now();
    let first = finished_run(&env, "ml-1", TIMEOUT).await;
    println!(
        "run ml-1 finished in {:.1}s",
        started.elapsed().as_secs_f32()
    );
    assert_eq!(phase(&first), RunPhase::Succeeded, "{:#?}", first.status);
    let model = artifact(&first, "train", "model");
    let (model_key, model_text) = check_in_s3(&bucket, &model);
    let dataset = step(&first, "prepare")
        .outputs
        .get("digest")
        .cloned()
        .unwrap_or_default();
    assert_eq!(model_text, format!("model of dataset {dataset} rows=3\n"));
    let report = artifact(&first, "evaluate", "report");
    let (report_key, report_text) = check_in_s3(&bucket, &report);
    assert_eq!(report_text, format!("report on:\n{model_text}"));
    let summary = artifact(&first, "publish", "summary");
    let (summary_key, summary_text) = check_in_s3(&bucket, &summary);
    assert!(
        summary_text.starts_with(&report_text)
            && summary_text.contains(r#"scores [{"metric":"accuracy"},{"metric":"loss"}]"#),
        "{summary_text}"
    );
    // Memoized steps' artifacts are in the cache, the others' under the run.
    let cache = format!("runs/{ns}/cache/");
    assert!(model_key.starts_with(&cache), "{model_key}");
    assert!(report_key.starts_with(&cache), "{report_key}");
    assert_eq!(
        summary_key,
        format!("runs/{ns}/ml-1/publish/1/summary/summary.txt")
    );
    // The artifacts are the only outputs' business of the uploader: the
    // steps' outputs hold only what the steps wrote.
    assert!(
        step(&first, "train")
            .outputs
            .keys()
            .all(|k| k == "trainedBy"),
        "{:?}",
        step(&first, "train").outputs
    );

    // Run 2: the same dataset, so train and evaluate are reused from run 1
    // without a pod; the rest runs again, on the reused artifacts.
    env.apply_yaml(&run_manifest("ml-2", "ml", "")).await;
    let second = finished_run(&env, "ml-2", TIMEOUT).await;
    assert_eq!(phase(&second), RunPhase::Succeeded, "{:#?}", second.status);
    for name in ["train", "evaluate"] {
        let s = step(&second, name);
        assert_eq!(s.phase, StepPhase::Reused, "{s:#?}");
        assert!(
            s.message
                .as_deref()
                .unwrap_or_default()
                .contains("memoized: reused what run ml-1 left"),
            "{s:#?}"
        );
        assert_eq!(s.artifacts, step(&first, name).artifacts);
        assert_eq!(s.outputs, step(&first, name).outputs);
    }
    assert_eq!(
        label_values(&run_pods(&env, "ml-2").await, "aleph.dev/step"),
        ["prepare", "publish", "score", "score"],
        "only the steps that are not memoized ran"
    );
    let events = env.api();
    // One event per reused step; the recorder counts repeats of a reason
    // about the same object in one series.
    let reused: i32 = events_about(&events, "PipelineRun", "ml-2", "StepReused")
        .await
        .iter()
        .map(|e| {
            e.series
                .as_ref()
                .and_then(|s| s.count)
                .or(e.count)
                .unwrap_or(1)
        })
        .sum();
    assert_eq!(reused, 2);
    let summary2 = artifact(&second, "publish", "summary");
    let (summary2_key, summary2_text) = check_in_s3(&bucket, &summary2);
    assert_eq!(summary2_text, summary_text);
    assert_eq!(
        summary2_key,
        format!("runs/{ns}/ml-2/publish/1/summary/summary.txt")
    );

    // Deleting run 1 deletes its own artifacts (the run waits for it), and
    // leaves run 2's and the memoized ones.
    kubectl(["delete", "pipelinerun", "-n", &ns, "ml-1", "--wait=false"])
        .await
        .expect_success();
    let runs: Api<PipelineRun> = env.api();
    wait_for_deletion(&runs, "ml-1", TIMEOUT).await;
    assert_eq!(
        s3_keys(&bucket, &format!("runs/{ns}/ml-1/")),
        Vec::<String>::new()
    );
    assert_eq!(
        s3_keys(&bucket, &format!("runs/{ns}/ml-2/")),
        std::slice::from_ref(&summary2_key)
    );
    assert_eq!(s3_keys(&bucket, &cache), {
        let mut keys = vec![model_key, report_key];
        keys.sort();
        keys
    });
    assert_eq!(
        events_about(&events, "PipelineRun", "ml-1", "DeletingArtifacts")
            .await
            .len(),
        1
    );
    let jobs: Api<Job> = env.api();
    wait_for_deletion(&jobs, "ml-1-delete-artifacts", TIMEOUT).await;

    // Deleting the Pipeline deletes the memoized artifacts (it waits for
    // that), and nothing else: run 2's stay with run 2.
    let pipelines: Api<Pipeline> = env.api();
    let held = pipelines.get("ml").await.expect("the pipeline");
    assert_eq!(held.finalizers(), ["aleph.dev/cleanup"]);
    kubectl(["delete", "pipeline", "-n", &ns, "ml", "--wait=false"])
        .await
        .expect_success();
    wait_for_deletion(&pipelines, "ml", TIMEOUT).await;
    assert_eq!(s3_keys(&bucket, &cache), Vec::<String>::new());
    assert_eq!(
        s3_keys(&bucket, &format!("runs/{ns}/ml-2/")),
        std::slice::from_ref(&summary2_key)
    );
    let deleting = events_about(&events, "Pipeline", "ml", "DeletingArtifacts").await;
    assert_eq!(deleting.len(), 1);
    let note = deleting[0].message.clone().unwrap_or_default();
    assert!(
        note.contains(&format!("of 2 step runs under s3://{bucket}/{cache}")),
        "{note}"
    );
    wait_for_deletion(&jobs, "ml-delete-memoized", TIMEOUT).await;

    // Deleting the namespace does not hang on run 2's finalizer: no Job can
    // start there any more, so its artifacts are left.
    let namespaces: Api<Namespace> = Api::all(env.client());
    namespaces
        .delete(&ns, &Default::default())
        .await
        .expect("delete the namespace");
    wait_for_deletion(&namespaces, &ns, TIMEOUT).await;
    assert_eq!(
        s3_keys(&bucket, &format!("runs/{ns}/ml-2/")),
        [summary2_key]
    );
    env.cleanup().await;
}
