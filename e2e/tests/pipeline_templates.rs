//! Step templates end to end: the example StepTemplate and a
//! ClusterStepTemplate used by a pipeline whose containers really run on the
//! real node; a run keeps the template as it was when the run started; a
//! pipeline that names a template that does not exist is refused at apply
//! (both kinds, every such name in the message), unless it defers the check,
//! when it says so and its run waits for the template; a pipeline whose
//! template was deleted can still be edited, and a new one naming it is
//! refused again.

use std::time::Duration;

use aleph_crds::pipeline::{Pipeline, PipelineRun, RunPhase, StepPhase};
use aleph_crds::step_template::StepTemplate;
use aleph_e2e::pipelines::{
    apply_once_templates_known, finished_run, label_values, phase, refused_for_unknown_template,
    run_manifest, run_pods, step,
};
use aleph_e2e::real_node::{self, BUSYBOX_IMAGE, pin_namespace};
use aleph_e2e::{TestEnv, find_condition, repo_root, unique_name, wait_condition, wait_for};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(180);

/// A cluster template `name` that upper-cases its param `word` into the
/// output `upper`.
fn cluster_template(name: &str) -> String {
    format!(
        r#"apiVersion: aleph.dev/v1alpha1
kind: ClusterStepTemplate
metadata: {{ name: {name} }}
spec:
  params: [{{ name: word }}]
  container:
    image: {BUSYBOX_IMAGE}
    command: [sh, -c, 'echo "upper=$(echo "$WORD" | tr a-z A-Z)" >>"$ALEPH_OUTPUTS_FILE"']
    env: [{{ name: WORD, value: "$(params.word)" }}]
"#
    )
}

#[tokio::test]
async fn templates_expand_into_steps_that_run_and_a_started_run_keeps_the_template_it_began_with() {
    let env = TestEnv::new().await;
    real_node::require(&env.client()).await;
    pin_namespace(&env.client(), env.namespace()).await;
    let example = std::fs::read_to_string(repo_root().join("examples/steptemplate.yaml"))
        .expect("examples/steptemplate.yaml");
    env.apply_yaml(&example).await;
    let upper = unique_name("upper");
    env.apply_yaml(&cluster_template(&upper)).await;
    let (_, ready) = wait_condition(
        &env.api::<StepTemplate>(),
        "tokenize-v1",
        TIMEOUT,
        "Ready",
        "True",
    )
    .await;
    assert_eq!(ready.status, "True");
    // fetch waits a few seconds, so that the template can change while the
    // run is under way.
    apply_once_templates_known(
        &env,
        &format!(
            r#"apiVersion: aleph.dev/v1alpha1
kind: Pipeline
metadata: {{ name: words }}
spec:
  steps:
    - name: fetch
      container:
        image: {BUSYBOX_IMAGE}
        command: [sh, -c, 'sleep 8; echo "title=the quick brown fox jumps" >>"$ALEPH_OUTPUTS_FILE"']
    - name: count
      dependsOn: [fetch]
      template:
        name: tokenize-v1
        params:
          - {{ name: text, value: "$(steps.fetch.outputs.title)" }}
          - {{ name: min-length, value: "4" }}
    - name: shout
      forEach: {{ items: [ab, cd] }}
      template:
        kind: ClusterStepTemplate
        name: {upper}
        params: [{{ name: word, value: "$(item)" }}]
"#
        ),
    )
    .await;
    let pipelines: Api<Pipeline> = env.api();
    wait_condition(&pipelines, "words", TIMEOUT, "Ready", "True").await;

    // Run 1 starts; then the template changes (what a careless edit of a
    // template in use would do): the run still counts with the template it
    // started with.
    env.apply_yaml(&run_manifest("words-1", "words", "")).await;
    let runs: Api<PipelineRun> = env.api();
    wait_for(&runs, "words-1", TIMEOUT, |r| phase(r) == RunPhase::Running).await;
    env.api::<StepTemplate>()
        .patch(
            "tokenize-v1",
            &PatchParams::default(),
            &Patch::Merge(&json!({ "spec": { "container": { "args": [
                "echo words=999 >> \"$ALEPH_OUTPUTS_FILE\""
            ] } } })),
        )
        .await
        .expect("patch the template");
    let run = finished_run(&env, "words-1", TIMEOUT).await;
    assert_eq!(phase(&run), RunPhase::Succeeded, "{:#?}", run.status);
    // quick, brown, jumps: the words of at least 4 letters.
    assert_eq!(
        step(&run, "count").outputs.get("words").map(String::as_str),
        Some("3")
    );
    let shout = step(&run, "shout");
    assert_eq!(shout.phase, StepPhase::Succeeded);
    assert_eq!(
        shout.outputs.get("results").map(String::as_str),
        Some(r#"[{"upper":"AB"},{"upper":"CD"}]"#)
    );
    // The run's copy of the spec holds the expanded steps.
    let snapshot = run
        .status
        .as_ref()
        .and_then(|s| s.pipeline_spec.clone())
        .expect("the run's pipelineSpec");
    let count = snapshot
        .steps
        .iter()
        .find(|s| s.name == "count")
        .expect("count in the snapshot");
    assert!(
        count.template.is_none() && count.container.is_some(),
        "{count:#?}"
    );
    assert_eq!(
        label_values(&run_pods(&env, "words-1").await, "aleph.dev/step"),
        ["count", "fetch", "shout", "shout"]
    );

    // Run 2, started after the change, uses the template as it is now.
    env.apply_yaml(&run_manifest("words-2", "words", "")).await;
    let run = finished_run(&env, "words-2", TIMEOUT).await;
    assert_eq!(phase(&run), RunPhase::Succeeded, "{:#?}", run.status);
    assert_eq!(
        step(&run, "count").outputs.get("words").map(String::as_str),
        Some("999")
    );
    env.cleanup().await;
}

#[tokio::test]
async fn an_unknown_template_is_refused_at_apply_unless_the_pipeline_defers_the_check() {
    let env = TestEnv::new().await;
    let namespace = env.namespace().to_string();
    let missing_cluster = unique_name("nowhere");
    // Both kinds unknown: the refusal names every one.
    let refused = refused_for_unknown_template(
        &env,
        &format!(
            r#"apiVersion: aleph.dev/v1alpha1
kind: Pipeline
metadata: {{ name: later }}
spec:
  steps:
    - name: hello
      template: {{ name: greet-v1, params: [{{ name: who, value: world }}] }}
  finally:
    - name: bye
      template: {{ kind: ClusterStepTemplate, name: {missing_cluster} }}
"#
        ),
    )
    .await;
    assert!(
        refused.contains(&format!(
            "StepTemplate greet-v1 in namespace {namespace}, ClusterStepTemplate {missing_cluster}"
        )),
        "{refused}"
    );

    // Deferred, the same pipeline is admitted; the operator reports the
    // missing template and holds its runs.
    env.apply_yaml(
        r#"apiVersion: aleph.dev/v1alpha1
kind: Pipeline
metadata:
  name: later
  annotations: { aleph.dev/template-check: Deferred }
spec:
  steps:
    - name: hello
      podAnnotations: { aleph.dev/test-run-duration: 1s }
      template:
        name: greet-v1
        params: [{ name: who, value: world }]
"#,
    )
    .await;
    let pipelines: Api<Pipeline> = env.api();
    let (_, ready) = wait_condition(&pipelines, "later", TIMEOUT, "Ready", "False").await;
    assert_eq!(
        ready.reason.as_deref(),
        Some("TemplateNotFound"),
        "{ready:?}"
    );
    assert!(
        ready
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("greet-v1"),
        "{ready:?}"
    );

    env.apply_yaml(&run_manifest("later-1", "later", "")).await;
    let runs: Api<PipelineRun> = env.api();
    let waiting = wait_for(&runs, "later-1", TIMEOUT, |r| {
        find_condition(r, "Succeeded")
            .and_then(|c| c.reason)
            .as_deref()
            == Some("TemplateNotFound")
    })
    .await;
    assert_eq!(phase(&waiting), RunPhase::Pending);

    // The template appears: the pipeline is Ready, and the waiting run
    // starts and finishes.
    env.apply_yaml(&format!(
        r#"apiVersion: aleph.dev/v1alpha1
kind: StepTemplate
metadata: {{ name: greet-v1 }}
spec:
  params: [{{ name: who }}]
  container: {{ image: {BUSYBOX_IMAGE}, args: ["hello $(params.who)"] }}
"#
    ))
    .await;
    wait_condition(&pipelines, "later", TIMEOUT, "Ready", "True").await;
    let run = finished_run(&env, "later-1", TIMEOUT).await;
    assert_eq!(phase(&run), RunPhase::Succeeded, "{:#?}", run.status);

    // A step that gives the template a param it does not declare: the
    // pipeline says so, and its run fails at once saying the same.
    let wrong_yaml = r#"apiVersion: aleph.dev/v1alpha1
kind: Pipeline
metadata: { name: wrong }
spec:
  steps:
    - name: hello
      template:
        name: greet-v1
        params: [{ name: name, value: world }]
"#;
    apply_once_templates_known(&env, wrong_yaml).await;
    let wrong = wait_for(&pipelines, "wrong", TIMEOUT, |p| {
        find_condition(p, "Ready").and_then(|c| c.reason).as_deref() == Some("InvalidTemplate")
    })
    .await;
    let why = find_condition(&wrong, "Ready")
        .and_then(|c| c.message)
        .unwrap_or_default();
    assert!(
        why.contains("gives name, which the template does not declare (it declares who)"),
        "{why}"
    );
    env.apply_yaml(&run_manifest("wrong-1", "wrong", "")).await;
    let run = finished_run(&env, "wrong-1", TIMEOUT).await;
    assert_eq!(phase(&run), RunPhase::Failed, "{:#?}", run.status);
    let failed = find_condition(&run, "Succeeded").unwrap_or_else(|| panic!("no condition"));
    assert_eq!(failed.reason.as_deref(), Some("InvalidTemplate"));

    // The template is deleted: a pipeline that already names it can still
    // be edited, and a new one naming it is refused again.
    env.api::<StepTemplate>()
        .delete("greet-v1", &Default::default())
        .await
        .expect("delete the template");
    let another = wrong_yaml.replace("name: wrong", "name: another");
    let refused = refused_for_unknown_template(&env, &another).await;
    assert!(
        refused.contains(&format!("StepTemplate greet-v1 in namespace {namespace}")),
        "{refused}"
    );
    env.apply_yaml(&wrong_yaml.replace(
        "name: wrong }",
        "name: wrong, labels: { edited: \"yes\" } }",
    ))
    .await;
    env.cleanup().await;
}
