//! Reading PipelineRuns in tests: a run's phase and steps, waiting until it
//! has finished, and the pods its steps ran in.

use std::time::Duration;

use aleph_crds::pipeline::{PipelineRun, RunPhase, StepStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::ListParams;

use crate::env::TestEnv;
use crate::wait::wait_for;

/// The run's phase (Pending before it has a status).
pub fn phase(run: &PipelineRun) -> RunPhase {
    run.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// Whether the run has finished, one way or another.
pub fn finished(run: &PipelineRun) -> bool {
    matches!(
        phase(run),
        RunPhase::Succeeded | RunPhase::Failed | RunPhase::Cancelled
    )
}

/// The status of the run's step `name`; panics, with the run's status, when
/// it has none.
pub fn step<'a>(run: &'a PipelineRun, name: &str) -> &'a StepStatus {
    run.status
        .as_ref()
        .and_then(|s| s.steps.iter().find(|s| s.name == name))
        .unwrap_or_else(|| {
            panic!(
                "run {} has no step {name}: {:#?}",
                run.name_any(),
                run.status
            )
        })
}

/// Waits at most `timeout` until the run `name` of the test's namespace has
/// finished, and returns it.
pub async fn finished_run(env: &TestEnv, name: &str, timeout: Duration) -> PipelineRun {
    wait_for(&env.api::<PipelineRun>(), name, timeout, finished).await
}

/// The pods of the run's steps.
pub async fn run_pods(env: &TestEnv, run: &str) -> Vec<Pod> {
    env.api::<Pod>()
        .list(&ListParams::default().labels(&format!("aleph.dev/pipelinerun={run}")))
        .await
        .unwrap_or_else(|e| panic!("listing the pods of run {run}: {e}"))
        .items
}

/// The pods' `labels[key]`, sorted (an empty string where it is missing).
pub fn label_values(pods: &[Pod], key: &str) -> Vec<String> {
    let mut values: Vec<String> = pods
        .iter()
        .map(|p| p.labels().get(key).cloned().unwrap_or_default())
        .collect();
    values.sort();
    values
}

/// The pipeline run `name` of `pipeline`; `extra` (lines indented by two
/// spaces) ends its spec.
pub fn run_manifest(name: &str, pipeline: &str, extra: &str) -> String {
    format!(
        "apiVersion: aleph.dev/v1alpha1\nkind: PipelineRun\nmetadata: {{ name: {name} }}\nspec:\n  pipelineRef: {{ name: {pipeline} }}\n{extra}"
    )
}

/// The start of the admission policy's refusal of a step template it does not
/// know (`aleph-pipeline-templates`).
pub const UNKNOWN_TEMPLATE: &str = "no such step template: ";

/// How long the template index may take to follow a template's creation or
/// deletion.
const INDEX_LAG: Duration = Duration::from_secs(20);

/// The refusal of applying `yaml` for naming an unknown step template, once
/// the template index says so (it follows a template's deletion within
/// seconds); panics with what happened instead.
pub async fn refused_for_unknown_template(env: &TestEnv, yaml: &str) -> String {
    let deadline = std::time::Instant::now() + INDEX_LAG;
    loop {
        match env.try_dry_run_yaml(yaml).await {
            Err(e) => {
                let message = e
                    .api_status()
                    .map(|s| s.message.clone())
                    .unwrap_or_else(|| panic!("not the API server's refusal: {e}"));
                assert!(message.contains(UNKNOWN_TEMPLATE), "{message}");
                return message;
            }
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok(_) => panic!("still admitted after {INDEX_LAG:?}:\n{yaml}"),
        }
    }
}

/// Applies `yaml`, a Pipeline whose templates were just created: the
/// template index knows them within seconds, and until then the Pipeline is
/// refused as naming an unknown template (any other refusal panics).
pub async fn apply_once_templates_known(env: &TestEnv, yaml: &str) {
    let deadline = std::time::Instant::now() + INDEX_LAG;
    loop {
        match env.try_apply_yaml(yaml).await {
            Ok(_) => return,
            Err(e) => {
                let message = e
                    .api_status()
                    .map(|s| s.message.clone())
                    .unwrap_or_default();
                assert!(
                    message.contains(UNKNOWN_TEMPLATE) && std::time::Instant::now() < deadline,
                    "applying the pipeline: {e}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}
