//! Pipelines and PipelineRuns end to end, against the operator started by the
//! test command: Jobs run by kwok (`aleph.dev/test-run-duration`,
//! `aleph.dev/test-fail` and `aleph.dev/test-output` on the step's pods say
//! how long they run, whether they fail and what outputs they write), SageMaker
//! training against moto, rollouts to AIModels served on the cluster.
//!
//! Times in statuses have second precision, so comparisons of step and
//! attempt times allow a second either way.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use aleph_crds::aimodel::AIModel;
use aleph_crds::pipeline::{Pipeline, PipelineRun, RunPhase, StepPhase, StepStatus};
use aleph_e2e::sagemaker_fake::{FAILURE_REASON_TAG, FakeConfig, OUTCOME_TAG, SageMakerFake};
use aleph_e2e::{
    OperatorProcess, PRIVATE_OPERATOR_LABEL, TestEnv, aws, find_condition, has_condition,
    table_row, unique_name, wait_condition, wait_for, wait_for_deletion,
};
use aws_sdk_sagemaker::config::Credentials;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};

const TIMEOUT: Duration = Duration::from_secs(90);

/// The pod annotation by which a step's pod runs for a second under kwok.
const RUNS_1S: &str = "aleph.dev/test-run-duration: 1s";

/// The pod annotation by which a step's pod runs for five minutes under kwok:
/// longer than any test waits, so until the run is stopped.
const RUNS_UNTIL_STOPPED: &str = "aleph.dev/test-run-duration: 300s";

fn time(text: Option<&str>) -> Timestamp {
    let text = text.unwrap_or_else(|| panic!("a time is missing"));
    text.parse()
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
}

/// Seconds from `a` to `b`.
fn seconds(a: Timestamp, b: Timestamp) -> i64 {
    b.as_second() - a.as_second()
}

fn status_of(run: &PipelineRun) -> &aleph_crds::pipeline::PipelineRunStatus {
    run.status
        .as_ref()
        .unwrap_or_else(|| panic!("run {} has no status", run.name_any()))
}

fn step<'a>(run: &'a PipelineRun, name: &str) -> &'a StepStatus {
    status_of(run)
        .steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| {
            panic!(
                "run {} has no step {name}: {:#?}",
                run.name_any(),
                run.status
            )
        })
}

fn phase(run: &PipelineRun) -> RunPhase {
    run.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

fn finished(run: &PipelineRun) -> bool {
    matches!(
        phase(run),
        RunPhase::Succeeded | RunPhase::Failed | RunPhase::Cancelled
    )
}

fn reason(run: &PipelineRun) -> String {
    find_condition(run, "Succeeded")
        .and_then(|c| c.reason)
        .unwrap_or_default()
}

fn message(run: &PipelineRun) -> String {
    find_condition(run, "Succeeded")
        .and_then(|c| c.message)
        .unwrap_or_default()
}

async fn finished_run(env: &TestEnv, name: &str) -> PipelineRun {
    wait_for(&env.api::<PipelineRun>(), name, TIMEOUT, finished).await
}

fn run_yaml(name: &str, pipeline: &str, extra: &str) -> String {
    format!(
        "apiVersion: aleph.dev/v1alpha1\nkind: PipelineRun\nmetadata: {{ name: {name} }}\nspec:\n  pipelineRef: {{ name: {pipeline} }}\n{extra}"
    )
}

/// Applies the PipelineRun `name` of `pipeline` (`extra` ends its spec) and
/// waits until it has finished.
async fn run_to_end(env: &TestEnv, name: &str, pipeline: &str, extra: &str) -> PipelineRun {
    env.apply_yaml(&run_yaml(name, pipeline, extra)).await;
    finished_run(env, name).await
}

/// Asserts the run's phase and its Succeeded condition's reason.
fn assert_ended(run: &PipelineRun, expected: RunPhase, why: &str) {
    assert_eq!(phase(run), expected, "{:#?}", run.status);
    assert_eq!(reason(run), why);
}

/// Asserts that the run's Succeeded condition's message contains `text`.
fn assert_message(run: &PipelineRun, text: &str) {
    assert!(message(run).contains(text), "{}", message(run));
}

/// A Pipeline named `name`; `spec` is the body of its spec.
fn pipeline(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: aleph.dev/v1alpha1\nkind: Pipeline\nmetadata: {{ name: {name} }}\nspec:\n{spec}"
    )
}

/// The `steps:` of a Pipeline's spec (each a step's YAML, see
/// [`container_step`]), then its `finally:` steps when there are some.
fn steps_spec(steps: &[String], finally: &[String]) -> String {
    let mut spec = format!("  steps:\n{}", steps.concat());
    if !finally.is_empty() {
        spec.push_str("  finally:\n");
        spec.push_str(&finally.concat());
    }
    spec
}

/// The steps of a run that has to be stopped: `long` runs until then, `next`
/// depends on it, and `finally` is the run's `finally:` step.
fn stopped_steps(long: &str, next: &str, finally: &str) -> String {
    steps_spec(
        &[
            container_step(long, &[], RUNS_UNTIL_STOPPED, ""),
            container_step(next, &[long], RUNS_1S, ""),
        ],
        &[container_step(finally, &[], RUNS_1S, "")],
    )
}

/// Applies the Pipeline `name` of `spec` and its run `{name}-1` (`extra`
/// ends the run's spec), and waits until the run has finished.
async fn apply_and_run(env: &TestEnv, name: &str, spec: &str, extra: &str) -> PipelineRun {
    env.apply_yaml(&pipeline(name, spec)).await;
    run_to_end(env, &format!("{name}-1"), name, extra).await
}

/// The arguments of a Job's first container.
fn job_args(job: &Job) -> Vec<String> {
    job.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers[0].args.clone())
        .unwrap_or_default()
}

/// The Job `name`'s first container's arguments.
async fn args_of(env: &TestEnv, name: &str) -> Vec<String> {
    let job = env
        .api::<Job>()
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("the Job {name}: {e}"));
    job_args(&job)
}

/// Asserts that the step's phase is `expected` and its message contains `text`.
fn assert_step(step: &StepStatus, expected: StepPhase, text: &str) {
    assert_eq!(step.phase, expected, "{step:#?}");
    assert!(
        step.message.as_deref().unwrap_or_default().contains(text),
        "{step:#?}"
    );
}

/// The runs of the test's namespace.
async fn list_runs(runs: &Api<PipelineRun>) -> Vec<PipelineRun> {
    runs.list(&ListParams::default())
        .await
        .expect("list runs")
        .items
}

/// The names of the runs of the test's namespace.
async fn run_names(runs: &Api<PipelineRun>) -> Vec<String> {
    list_runs(runs).await.iter().map(|r| r.name_any()).collect()
}

/// Polls the runs every `every` until `done` returns something; panics with
/// `what` and the runs' phases after `within`.
async fn poll_runs<T>(
    runs: &Api<PipelineRun>,
    within: Duration,
    every: Duration,
    what: &str,
    mut done: impl FnMut(&[PipelineRun]) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let list = list_runs(runs).await;
        if let Some(found) = done(&list) {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {within:?}: {:?}",
            list.iter()
                .map(|r| (r.name_any(), phase(r)))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(every).await;
    }
}

/// Merge-patches the spec of the object `name`.
async fn patch_spec<K>(api: &Api<K>, name: &str, spec: serde_json::Value)
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(&serde_json::json!({ "spec": spec })),
    )
    .await
    .unwrap_or_else(|e| panic!("patching {name} with {spec}: {e}"));
}

/// Waits until the run `name` has no finalizer left.
async fn wait_finalizers_gone(env: &TestEnv, name: &str) -> PipelineRun {
    wait_for(&env.api::<PipelineRun>(), name, TIMEOUT, |r| {
        r.finalizers().is_empty()
    })
    .await
}

/// A container step's YAML: `annotations` go on its pod (kwok reads them).
fn container_step(name: &str, depends_on: &[&str], annotations: &str, args: &str) -> String {
    format!(
        "    - name: {name}\n      dependsOn: [{}]\n      podAnnotations: {{ {annotations} }}\n      container: {{ image: registry.k8s.io/pause:3.10, args: [{args}] }}\n",
        depends_on.join(", ")
    )
}

/// The Jobs of a run, by name.
async fn jobs_of(env: &TestEnv, run: &str) -> Vec<Job> {
    env.api::<Job>()
        .list(&ListParams::default().labels(&format!("aleph.dev/pipelinerun={run}")))
        .await
        .unwrap_or_else(|e| panic!("listing the Jobs of {run}: {e}"))
        .items
}

/// The events about one object: `(reason, message)`, oldest first.
async fn events_of(env: &TestEnv, kind: &str, name: &str) -> Vec<(String, String)> {
    let mut events: Vec<Event> = env
        .api::<Event>()
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind={kind},involvedObject.name={name}"
        )))
        .await
        .unwrap_or_else(|e| panic!("listing the events of {kind} {name}: {e}"))
        .items;
    events.sort_by_key(|e| e.metadata.creation_timestamp.clone());
    events
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

/// Waits until an event with `reason` about the object has been recorded.
async fn wait_event(env: &TestEnv, kind: &str, name: &str, reason: &str) -> String {
    for _ in 0..60 {
        if let Some((_, message)) = events_of(env, kind, name)
            .await
            .into_iter()
            .find(|(r, _)| r == reason)
        {
            return message;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!(
        "no {reason} event about {kind} {name}; its events: {:#?}",
        events_of(env, kind, name).await
    );
}

#[tokio::test]
async fn a_diamond_runs_in_dependency_order_with_its_branches_overlapping() {
    let env = TestEnv::new().await;
    let mut steps = container_step(
        "prepare",
        &[],
        "aleph.dev/test-run-duration: 1s, aleph.dev/test-output: \"version=42\\nrows=1000\"",
        "\"--size=$(params.size)\"",
    );
    for branch in ["left", "middle", "right"] {
        steps.push_str(&container_step(
            branch,
            &["prepare"],
            "aleph.dev/test-run-duration: 4s",
            "\"--version=$(steps.prepare.outputs.version)\"",
        ));
    }
    steps.push_str(&container_step(
        "merge",
        &["left", "middle", "right"],
        RUNS_1S,
        "\"--rows=$(steps.prepare.outputs.rows)\"",
    ));
    let spec =
        format!("  params:\n    - {{ name: size, type: int, default: \"3\" }}\n  steps:\n{steps}");
    let extra = "  params: [{ name: size, value: \"7\" }]\n";
    let run = apply_and_run(&env, "diamond", &spec, extra).await;
    assert_ended(&run, RunPhase::Succeeded, "Succeeded");
    assert!(has_condition(&run, "Succeeded", "True"));
    let status = status_of(&run);
    assert_eq!(status.progress.as_deref(), Some("5/5"));
    assert_eq!(status.params.get("size").map(String::as_str), Some("7"));
    assert!(status.pipeline_spec.is_some(), "the spec is snapshotted");
    for s in &status.steps {
        assert_eq!(s.phase, StepPhase::Succeeded, "{s:#?}");
        assert_eq!(s.attempts, 1, "{s:#?}");
        assert!(s.job_name.is_some(), "{s:#?}");
    }

    // Dependency order, from the steps' times.
    let start = |name: &str| time(step(&run, name).start_time.as_deref());
    let finish = |name: &str| time(step(&run, name).finish_time.as_deref());
    let branches = ["left", "middle", "right"];
    for branch in branches {
        assert!(
            start(branch) >= finish("prepare"),
            "{branch} started before prepare finished"
        );
        assert!(
            start("merge") >= finish(branch),
            "merge started before {branch} finished"
        );
    }
    // The branches ran at the same time: each started before any finished.
    let last_start = branches.iter().map(|b| start(b)).max().unwrap_or_default();
    let first_finish = branches.iter().map(|b| finish(b)).min().unwrap_or_default();
    assert!(
        last_start < first_finish,
        "the branches did not overlap: last start {last_start}, first finish {first_finish}"
    );
    assert!(
        seconds(last_start, first_finish) >= 3,
        "4 s branches overlap by at least 3 s: {last_start} .. {first_finish}"
    );

    // Outputs went from prepare to the later steps, params to prepare.
    assert_eq!(
        step(&run, "prepare")
            .outputs
            .get("version")
            .map(String::as_str),
        Some("42")
    );
    let jobs = jobs_of(&env, "diamond-1").await;
    assert_eq!(jobs.len(), 5);
    let args = |job: &str| -> Vec<String> {
        job_args(
            jobs.iter()
                .find(|j| j.name_any() == job)
                .unwrap_or_else(|| panic!("no Job {job}")),
        )
    };
    assert_eq!(args("diamond-1-prepare-1"), ["--size=7"]);
    assert_eq!(args("diamond-1-middle-1"), ["--version=42"]);
    assert_eq!(args("diamond-1-merge-1"), ["--rows=1000"]);
    for job in &jobs {
        let spec = job.spec.as_ref().expect("a Job spec");
        assert_eq!(spec.backoff_limit, Some(0), "retries are the operator's");
        let owner = &job.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("PipelineRun", Some(true))
        );
    }

    // Printer columns and events.
    let table = env.kubectl(["get", "pipelinerun", "diamond-1"]).await;
    assert!(table.success(), "{}", table.stderr);
    let header = table_row(&table.stdout, 0);
    assert_eq!(
        header,
        [
            "NAME", "PIPELINE", "PHASE", "PROGRESS", "STARTED", "DURATION", "AGE"
        ]
    );
    let row = table_row(&table.stdout, 1);
    assert_eq!(
        &row[..4],
        ["diamond-1", "diamond", "Succeeded", "5/5"],
        "{}",
        table.stdout
    );
    wait_event(&env, "PipelineRun", "diamond-1", "Started").await;
    let done = wait_event(&env, "PipelineRun", "diamond-1", "Succeeded").await;
    assert!(done.contains("all 5 steps succeeded"), "{done}");

    // The pipeline reports itself valid and its last run.
    let pipeline = wait_for(&env.api::<Pipeline>(), "diamond", TIMEOUT, |p| {
        p.status.as_ref().and_then(|s| s.last_run.as_deref()) == Some("diamond-1")
    })
    .await;
    assert!(has_condition(&pipeline, "Ready", "True"));
    assert_eq!(pipeline.status.map(|s| s.step_count), Some(5));
    env.cleanup().await;
}

#[tokio::test]
async fn a_failing_step_is_retried_with_backoff_then_fails_the_run_and_finally_still_runs() {
    let env = TestEnv::new().await;
    let failing = "aleph.dev/test-fail: \"true\", aleph.dev/test-run-duration: 1s";
    let retries =
        "      retries: { limit: 2, initialDelaySeconds: 3, factor: 2, maxDelaySeconds: 30 }\n";
    let spec = steps_spec(
        &[
            container_step("train", &[], failing, "") + retries,
            container_step("deploy", &["train"], RUNS_1S, ""),
            container_step("lint", &[], RUNS_1S, ""),
        ],
        &[container_step("report", &[], RUNS_1S, "")],
    );
    let run = apply_and_run(&env, "flaky", &spec, "").await;
    assert_ended(&run, RunPhase::Failed, "StepFailed");
    assert_message(&run, "step train failed");
    assert_message(&run, "exit code 1");

    let train = step(&run, "train");
    assert_eq!(train.phase, StepPhase::Failed);
    assert_eq!(train.attempts, 3, "one attempt and two retries");
    assert_eq!(train.attempt_times.len(), 3);
    let deploy = step(&run, "deploy");
    assert_step(deploy, StepPhase::Skipped, "dependency train failed");
    assert!(deploy.job_name.is_none(), "a skipped step runs nothing");
    assert_eq!(step(&run, "lint").phase, StepPhase::Succeeded);
    let report = step(&run, "report");
    assert_eq!(
        report.phase,
        StepPhase::Succeeded,
        "finally runs after a failure"
    );
    assert!(time(report.start_time.as_deref()) >= time(train.finish_time.as_deref()));

    // The backoff, from the attempts' times: each attempt's Job failed at
    // some time, and the next attempt started 3 s, then 6 s, later.
    let jobs = jobs_of(&env, "flaky-1").await;
    let failed_at = |attempt: usize| -> Timestamp {
        let job = jobs
            .iter()
            .find(|j| j.name_any() == format!("flaky-1-train-{attempt}"))
            .unwrap_or_else(|| panic!("no Job for attempt {attempt}"));
        let condition = job
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Failed"))
            .unwrap_or_else(|| panic!("attempt {attempt}'s Job did not fail: {job:#?}"));
        condition
            .last_transition_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or_else(|| panic!("no transition time"))
    };
    let attempt_started =
        |attempt: usize| time(train.attempt_times.get(attempt - 1).map(String::as_str));
    let waits: Vec<i64> = (1..=2)
        .map(|a| seconds(failed_at(a), attempt_started(a + 1)))
        .collect();
    for (wait, declared) in waits.iter().zip([3, 6]) {
        assert!(
            (declared - 1..=declared + 5).contains(wait),
            "waited {wait}s before a retry whose backoff is {declared}s (all waits: {waits:?})"
        );
    }
    assert!(waits[1] > waits[0], "the backoff grows: {waits:?}");

    let retrying = wait_event(&env, "PipelineRun", "flaky-1", "StepRetrying").await;
    assert!(retrying.contains("attempt 1 of 3 failed"), "{retrying}");
    assert!(retrying.contains("next attempt in 3s"), "{retrying}");
    let failed = wait_event(&env, "PipelineRun", "flaky-1", "StepFailed").await;
    assert!(
        failed.contains("step train failed after 3 attempts"),
        "{failed}"
    );
    wait_event(&env, "PipelineRun", "flaky-1", "Failed").await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_forbid_schedule_creates_runs_one_at_a_time_and_prunes_its_history() {
    let env = TestEnv::new().await;
    // Every 4 seconds; each run takes about 7.
    let mode = "\"--mode=$(params.mode)\"";
    let tick = container_step("tick", &[], "aleph.dev/test-run-duration: 7s", mode);
    let spec = format!(
        "  params:\n    - {{ name: mode, type: enum, values: [fast, full], default: full }}\n{}  schedule:\n    cron: \"*/4 * * * * *\"\n    timeZone: Europe/Paris\n    concurrencyPolicy: Forbid\n    successfulRunsHistoryLimit: 10\n    params: [{{ name: mode, value: fast }}]\n",
        steps_spec(&[tick], &[]),
    );
    env.apply_yaml(&pipeline("ticker", &spec)).await;
    let runs = env.api::<PipelineRun>();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let every = Duration::from_millis(300);
    let what = "fewer than 2 scheduled runs succeeded";
    poll_runs(&runs, Duration::from_secs(60), every, what, |list| {
        let unfinished: Vec<String> = list
            .iter()
            .filter(|r| !finished(r))
            .map(|r| r.name_any())
            .collect();
        assert!(
            unfinished.len() <= 1,
            "two runs at once under Forbid: {unfinished:?}"
        );
        seen.extend(list.iter().map(|r| r.name_any()));
        let succeeded = list
            .iter()
            .filter(|r| phase(r) == RunPhase::Succeeded)
            .count();
        (succeeded >= 2).then_some(())
    })
    .await;
    let mut list = list_runs(&runs).await;
    list.retain(finished);
    list.sort_by_key(|r| time(status_of(r).start_time.as_deref()));
    for pair in list.windows(2) {
        let (a, b) = (status_of(&pair[0]), status_of(&pair[1]));
        assert!(
            time(b.start_time.as_deref()) >= time(a.completion_time.as_deref()),
            "{} started before {} finished",
            pair[1].name_any(),
            pair[0].name_any()
        );
    }
    let first = &list[0];
    assert!(
        first.name_any().starts_with("ticker-"),
        "{}",
        first.name_any()
    );
    assert_eq!(
        status_of(first).params.get("mode").map(String::as_str),
        Some("fast")
    );
    assert_eq!(first.owner_references()[0].kind, "Pipeline");
    let skipped = wait_event(&env, "Pipeline", "ticker", "RunSkipped").await;
    assert!(skipped.contains("concurrencyPolicy is Forbid"), "{skipped}");
    wait_event(&env, "Pipeline", "ticker", "RunCreated").await;
    let pipeline = env
        .api::<Pipeline>()
        .get("ticker")
        .await
        .expect("the pipeline");
    let status = pipeline.status.expect("a pipeline status");
    assert!(status.last_schedule_time.is_some());
    assert!(status.active.len() <= 1, "{:?}", status.active);

    // Suspended: no new runs; the history shrinks to its new limit.
    let suspend =
        serde_json::json!({"schedule": {"suspend": true, "successfulRunsHistoryLimit": 1}});
    patch_spec(&env.api::<Pipeline>(), "ticker", suspend).await;
    let every = Duration::from_millis(500);
    let what = "the history did not shrink to 1 run";
    poll_runs(&runs, Duration::from_secs(30), every, what, |list| {
        (list.iter().all(finished) && list.len() == 1).then_some(())
    })
    .await;
    let before = run_names(&runs).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        before,
        run_names(&runs).await,
        "a suspended schedule creates no run"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn cancel_deletes_the_running_jobs_skips_the_rest_and_runs_finally() {
    let env = TestEnv::new().await;
    let steps = stopped_steps("crunch", "publish", "cleanup");
    env.apply_yaml(&pipeline("long", &steps)).await;
    env.apply_yaml(&run_yaml("long-1", "long", "")).await;
    let runs = env.api::<PipelineRun>();
    wait_for(&runs, "long-1", TIMEOUT, |r| {
        r.status.as_ref().is_some_and(|s| {
            s.steps
                .iter()
                .any(|s| s.name == "crunch" && s.phase == StepPhase::Running)
        })
    })
    .await;
    let jobs = env.api::<Job>();
    wait_for(&jobs, "long-1-crunch-1", TIMEOUT, |_| true).await;

    let out = set_cancel(&env, "long-1", true).await;
    assert!(out.success(), "{}", out.stderr);
    let run = finished_run(&env, "long-1").await;
    assert_ended(&run, RunPhase::Cancelled, "Cancelled");
    assert!(has_condition(&run, "Succeeded", "False"));
    wait_for_deletion(&jobs, "long-1-crunch-1", Duration::from_secs(30)).await;
    assert_step(step(&run, "crunch"), StepPhase::Failed, "cancelled");
    assert_eq!(step(&run, "publish").phase, StepPhase::Skipped);
    assert_eq!(
        step(&run, "cleanup").phase,
        StepPhase::Succeeded,
        "finally runs after cancel"
    );

    // A cancelled run stays cancelled.
    let out = set_cancel(&env, "long-1", false).await;
    assert!(
        !out.success() && out.stderr.contains("cannot be uncancelled"),
        "{}",
        out.stderr
    );
    wait_event(&env, "PipelineRun", "long-1", "Cancelled").await;
    env.cleanup().await;
}

/// Sets the run's `spec.cancel` with kubectl.
async fn set_cancel(env: &TestEnv, run: &str, cancel: bool) -> aleph_e2e::KubectlOutput {
    let patch = format!(r#"{{"spec":{{"cancel":{cancel}}}}}"#);
    env.kubectl(["patch", "pipelinerun", run, "--type=merge", "-p", &patch])
        .await
}

fn resumable_pipeline(fail_validate: bool) -> String {
    let fail = if fail_validate {
        ", aleph.dev/test-fail: \"true\""
    } else {
        ""
    };
    let rows = "\"--rows=$(steps.extract.outputs.rows)\"";
    let steps = [
        container_step(
            "extract",
            &[],
            &format!("{RUNS_1S}, aleph.dev/test-output: \"rows=1234\""),
            "",
        ),
        container_step("validate", &["extract"], &format!("{RUNS_1S}{fail}"), rows),
        container_step("load", &["validate"], RUNS_1S, rows),
        container_step("docs", &[], RUNS_1S, ""),
    ];
    pipeline("etl", &steps_spec(&steps, &[]))
}

#[tokio::test]
async fn resume_from_reruns_only_what_did_not_succeed_and_reuses_outputs() {
    let env = TestEnv::new().await;
    env.apply_yaml(&resumable_pipeline(true)).await;
    let first = run_to_end(&env, "etl-1", "etl", "").await;
    assert_eq!(phase(&first), RunPhase::Failed);
    assert_eq!(step(&first, "extract").phase, StepPhase::Succeeded);
    assert_eq!(step(&first, "validate").phase, StepPhase::Failed);
    assert_eq!(step(&first, "load").phase, StepPhase::Skipped);
    assert_eq!(step(&first, "docs").phase, StepPhase::Succeeded);

    // The cause is fixed in the pipeline; only the failed part runs again.
    env.apply_yaml(&resumable_pipeline(false)).await;
    let second = run_to_end(&env, "etl-2", "etl", "  resumeFrom: etl-1\n").await;
    assert_eq!(phase(&second), RunPhase::Succeeded, "{:#?}", second.status);
    for reused in ["extract", "docs"] {
        let s = step(&second, reused);
        assert_eq!(s.phase, StepPhase::Reused, "{s:#?}");
        assert_eq!(s.attempts, 0, "{s:#?}");
    }
    assert_eq!(
        step(&second, "extract")
            .outputs
            .get("rows")
            .map(String::as_str),
        Some("1234"),
        "the reused step keeps its outputs"
    );
    assert_eq!(step(&second, "validate").phase, StepPhase::Succeeded);
    assert_eq!(step(&second, "load").phase, StepPhase::Succeeded);
    let mut jobs: Vec<String> = jobs_of(&env, "etl-2")
        .await
        .iter()
        .map(|j| j.name_any())
        .collect();
    jobs.sort();
    assert_eq!(
        jobs,
        ["etl-2-load-1", "etl-2-validate-1"],
        "only the failed part ran"
    );
    assert_eq!(
        args_of(&env, "etl-2-load-1").await,
        ["--rows=1234"],
        "reused outputs reach the rerun steps"
    );
    let started = wait_event(&env, "PipelineRun", "etl-2", "Started").await;
    assert!(
        started.contains("resuming etl-1: reusing extract, docs"),
        "{started}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_cycle_is_reported_as_invalid_graph_naming_its_steps() {
    let env = TestEnv::new().await;
    // (step, what it depends on)
    let graph = [
        ("fetch", &[][..]),
        ("alpha", &["fetch", "gamma"][..]),
        ("beta", &["alpha"][..]),
        ("gamma", &["beta"][..]),
    ];
    let steps: Vec<String> = graph
        .iter()
        .map(|(name, after)| container_step(name, after, "", ""))
        .collect();
    env.apply_yaml(&pipeline("loop", &steps_spec(&steps, &[])))
        .await;
    let pipelines = env.api::<Pipeline>();
    let (_, ready) = wait_condition(&pipelines, "loop", TIMEOUT, "Ready", "False").await;
    ready.assert_says("InvalidGraph", &["alpha -> gamma -> beta"]);

    let run = run_to_end(&env, "loop-1", "loop", "").await;
    assert_ended(&run, RunPhase::Failed, "InvalidGraph");
    assert_message(
        &run,
        "the steps alpha -> gamma -> beta form a dependency cycle",
    );
    assert!(jobs_of(&env, "loop-1").await.is_empty(), "nothing ran");
    let event = wait_event(&env, "PipelineRun", "loop-1", "InvalidGraph").await;
    assert!(event.contains("alpha -> gamma -> beta"), "{event}");
    env.cleanup().await;
}

#[tokio::test]
async fn a_missing_param_fails_the_run_naming_it() {
    let env = TestEnv::new().await;
    let params = "  params:\n    - { name: dataset, type: string }\n    - { name: epochs, type: int, default: \"3\" }\n";
    let go = container_step("go", &[], "", "\"$(params.dataset)\"");
    let spec = format!("{params}{}", steps_spec(&[go], &[]));
    let run = apply_and_run(&env, "needs", &spec, "").await;
    assert_ended(&run, RunPhase::Failed, "ParameterMissing");
    assert_message(&run, "param dataset");
    let run = run_to_end(
        &env,
        "needs-2",
        "needs",
        "  params: [{ name: epochs, value: many }, { name: dataset, value: d }]\n",
    )
    .await;
    assert_eq!(reason(&run), "InvalidParameter");
    assert_message(&run, "\"many\" is not an integer");
    env.cleanup().await;
}

#[tokio::test]
async fn a_finished_run_is_deleted_with_its_jobs_after_its_ttl() {
    let env = TestEnv::new().await;
    let only = container_step("only", &[], RUNS_1S, "");
    let spec = format!("  ttlSecondsAfterFinished: 3\n{}", steps_spec(&[only], &[]));
    let run = apply_and_run(&env, "brief", &spec, "").await;
    assert_eq!(phase(&run), RunPhase::Succeeded);
    wait_for_deletion(
        &env.api::<PipelineRun>(),
        "brief-1",
        Duration::from_secs(30),
    )
    .await;
    wait_for_deletion(&env.api::<Job>(), "brief-1-only-1", Duration::from_secs(30)).await;
    env.cleanup().await;
}

#[tokio::test]
async fn bad_pipelines_are_refused_at_apply_time() {
    let env = TestEnv::new().await;
    let cases = [
        (
            steps_spec(&[container_step("a", &["ghost"], "", "")], &[]),
            "every dependsOn entry of a step must name a step",
        ),
        (
            steps_spec(
                &[container_step("a", &[], "", "")],
                &[container_step("f", &["a"], "", "")],
            ),
            "a finally step may depend only on other finally steps",
        ),
        (
            "  steps:\n    - name: a\n      container: { image: x }\n      rollout: { model: m, source: \"hf://a/b\" }\n".to_string(),
            "exactly one action",
        ),
        (
            "  steps:\n    - name: a\n      podAnnotations: { x: \"z\" }\n      rollout: { model: m, source: \"hf://a/b\" }\n".to_string(),
            "podAnnotations is only for container and plugin steps",
        ),
        (
            format!(
                "{}  schedule: {{ cron: \"* * * * * * *\" }}\n",
                steps_spec(&[container_step("a", &[], "", "")], &[])
            ),
            "spec.schedule.cron",
        ),
    ];
    for (spec, expected) in cases {
        let yaml = pipeline("bad", &spec);
        match env.try_apply_yaml(&yaml).await {
            Ok(_) => panic!("accepted:\n{yaml}"),
            Err(e) => assert!(
                e.to_string().contains(expected),
                "expected {expected:?} in: {e}"
            ),
        }
    }
    env.cleanup().await;
}

/// moto's URL: `ALEPH_MOTO_URL` (set by `make test`, which points the
/// operator at the same server), or the server `e2e/sagemaker/moto.sh` runs.
fn moto_url() -> String {
    if let Ok(url) = std::env::var("ALEPH_MOTO_URL")
        && !url.is_empty()
    {
        return url;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/sagemaker/moto.sh");
    let output = Command::new("bash")
        .arg(script)
        .arg("url")
        .output()
        .unwrap_or_else(|e| panic!("running {script} url: {e}"));
    let url = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(
        output.status.success() && url.starts_with("http"),
        "the SageMaker steps need moto, the server the operator under test talks to: set ALEPH_MOTO_URL"
    );
    url
}

async fn sagemaker(url: &str) -> aws_sdk_sagemaker::Client {
    let credentials = Credentials::new("testing", "testing", None, None, "aleph-e2e");
    aws::sagemaker_client(url, "us-east-1", credentials).await
}

fn training_step(name: &str, bucket_prefix: &str) -> String {
    format!(
        r#"    - name: {name}
      training:
        image: 123456789012.dkr.ecr.us-east-1.amazonaws.com/xgboost:1.7
        roleArn: arn:aws:iam::123456789012:role/aleph-training
        instanceType: ml.m5.xlarge
        outputS3Uri: s3://aleph-e2e/{bucket_prefix}
        hyperparameters: {{ num_round: "$(params.rounds)" }}
        inputs: [{{ name: train, s3Uri: "s3://aleph-e2e/data/train" }}]
"#
    )
}

#[tokio::test]
async fn a_sagemaker_training_step_passes_its_artifact_to_later_steps() {
    let url = moto_url();
    let env = TestEnv::new().await;
    let prefix = format!("pipelines/{}", env.namespace());
    let steps = [
        training_step("train", &prefix),
        container_step(
            "evaluate",
            &["train"],
            RUNS_1S,
            "\"--model=$(steps.train.outputs.artifactUri)\"",
        ),
    ];
    let params = "  params:\n    - { name: rounds, type: int, default: \"20\" }\n";
    let spec = format!("{params}{}", steps_spec(&steps, &[]));
    let extra = "  params: [{ name: rounds, value: \"35\" }]\n";
    let run = apply_and_run(&env, "fit", &spec, extra).await;
    assert_eq!(phase(&run), RunPhase::Succeeded, "{:#?}", run.status);
    let train = step(&run, "train");
    let artifact = train
        .outputs
        .get("artifactUri")
        .cloned()
        .unwrap_or_default();
    let job_name = train
        .outputs
        .get("trainingJob")
        .cloned()
        .unwrap_or_default();
    assert!(artifact.starts_with("s3://aleph-e2e/"), "{train:#?}");
    assert_eq!(train.job_name.as_deref(), Some(job_name.as_str()));

    // The job exists in SageMaker, with the run's hyperparameters.
    let described = sagemaker(&url)
        .await
        .describe_training_job()
        .training_job_name(&job_name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("DescribeTrainingJob {job_name}: {e:?}"));
    assert_eq!(
        described
            .hyper_parameters()
            .and_then(|h| h.get("num_round"))
            .map(String::as_str),
        Some("35")
    );
    // Its artifact reached the next step.
    assert_eq!(
        args_of(&env, "fit-1-evaluate-1").await,
        [format!("--model={artifact}")]
    );
    let started = wait_event(&env, "PipelineRun", "fit-1", "TrainingStarted").await;
    assert!(
        started.contains("step train") && started.contains(&job_name),
        "{started}"
    );
    // No finalizer is left once no training job runs.
    wait_finalizers_gone(&env, "fit-1").await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_rollout_step_points_an_aimodel_at_the_trained_artifact_and_waits_for_it() {
    moto_url();
    let env = TestEnv::new().await;
    env.apply_yaml(
        r#"
apiVersion: aleph.dev/v1alpha1
kind: AIModel
metadata: { name: scorer }
spec:
  backend: Kubernetes
  source: { uri: "s3://aleph-e2e/seed/model.tar.gz" }
  runtime: { engine: custom, image: registry.k8s.io/pause:3.10, port: 8080 }
  resources: { cpu: 500m, memory: 512Mi }
  cache: { enabled: false }
"#,
    )
    .await;
    let models = env.api::<AIModel>();
    let before = wait_for(&models, "scorer", TIMEOUT, |m| {
        has_condition(m, "Ready", "True")
    })
    .await;
    let generation = before.metadata.generation.unwrap_or_default();

    let prefix = format!("rollouts/{}", env.namespace());
    let rollout = "    - name: rollout\n      dependsOn: [train]\n      rollout: { model: scorer, fromStep: train, readyTimeoutSeconds: 120 }\n";
    let spec = format!(
        "  params:\n    - {{ name: rounds, type: int, default: \"10\" }}\n{}",
        steps_spec(&[training_step("train", &prefix), rollout.to_string()], &[]),
    );
    let run = apply_and_run(&env, "ship", &spec, "").await;
    assert_eq!(phase(&run), RunPhase::Succeeded, "{:#?}", run.status);
    let artifact = step(&run, "train")
        .outputs
        .get("artifactUri")
        .cloned()
        .unwrap_or_default();
    let rollout = step(&run, "rollout");
    assert_eq!(
        rollout.outputs.get("source"),
        Some(&artifact),
        "{rollout:#?}"
    );

    let model = models.get("scorer").await.expect("the model");
    assert_eq!(
        model.spec.source.as_ref().map(|s| s.uri.as_str()),
        Some(artifact.as_str())
    );
    let rolled = model.metadata.generation.unwrap_or_default();
    assert!(rolled > generation, "the rollout changed the spec");
    assert!(has_condition(&model, "Ready", "True"));
    assert!(
        model
            .status
            .as_ref()
            .and_then(|s| s.observed_generation)
            .unwrap_or_default()
            >= rolled,
        "the step waited for the controller to observe the new generation"
    );
    assert_eq!(
        rollout.outputs.get("generation").map(String::as_str),
        Some(rolled.to_string().as_str())
    );
    assert_eq!(
        model
            .annotations()
            .get("aleph.dev/rolled-out-by")
            .map(String::as_str),
        Some("ship-1")
    );
    let managers: Vec<String> = model
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.iter().any(|m| m == "aleph-pipeline"),
        "{managers:?}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn the_deadline_stops_the_run_with_timeout_and_finally_still_runs() {
    let env = TestEnv::new().await;
    let spec = format!(
        "  deadlineSeconds: 4\n{}",
        stopped_steps("crawl", "index", "notify")
    );
    let run = apply_and_run(&env, "slow", &spec, "").await;
    assert_ended(&run, RunPhase::Failed, "Timeout");
    assert_message(&run, "deadline of 4s");
    let status = status_of(&run);
    let took = seconds(
        time(status.start_time.as_deref()),
        time(status.completion_time.as_deref()),
    );
    assert!((4..=15).contains(&took), "took {took}s");
    assert_eq!(step(&run, "crawl").phase, StepPhase::Failed);
    assert_eq!(step(&run, "index").phase, StepPhase::Skipped);
    assert_eq!(step(&run, "notify").phase, StepPhase::Succeeded);
    wait_for_deletion(&env.api::<Job>(), "slow-1-crawl-1", Duration::from_secs(30)).await;
    wait_event(&env, "PipelineRun", "slow-1", "Timeout").await;
    env.cleanup().await;
}

/// Starts a SageMaker fake with `config` and an operator of the test's own
/// that calls it, for `env`'s namespace and the runs labelled with the
/// returned label (a new name).
async fn fake_and_operator(
    env: &TestEnv,
    config: FakeConfig,
) -> (SageMakerFake, OperatorProcess, String) {
    let sm = aws::start_fake(config).await;
    let label = unique_name("pipeline");
    let options = aws::operator_options(
        env.namespace(),
        &sm.endpoint_url(),
        &label,
        "pipeline-training",
    );
    let op = aws::start_operator(options).await;
    (sm, op, label)
}

/// A training step for the fake, with tags (the fake reads a job's outcome from them).
fn fake_training_step(name: &str, tags: &str, extra: &str) -> String {
    format!(
        "    - name: {name}\n{extra}      training:\n        image: 123456789012.dkr.ecr.us-east-1.amazonaws.com/xgboost:1.7\n        roleArn: arn:aws:iam::123456789012:role/aleph-training\n        instanceType: ml.m5.xlarge\n        outputS3Uri: s3://aleph-e2e/fake\n        tags: {{ {tags} }}\n"
    )
}

/// A run handed to the test's own operator.
fn labelled_run(name: &str, pipeline: &str, label: &str) -> String {
    format!(
        "apiVersion: aleph.dev/v1alpha1\nkind: PipelineRun\nmetadata:\n  name: {name}\n  labels: {{ {PRIVATE_OPERATOR_LABEL}: \"{label}\" }}\nspec:\n  pipelineRef: {{ name: {pipeline} }}\n"
    )
}

/// Against the in-repo SageMaker fake, whose jobs here run until stopped
/// (moto's complete at once), with an operator of the test's own pointed at it.
#[tokio::test]
async fn cancelling_or_deleting_a_run_stops_its_training_job() {
    let env = TestEnv::new().await;
    let (sm, _op, label) = fake_and_operator(&env, FakeConfig::training_until_stopped(1)).await;
    let steps = [
        fake_training_step("train", "team: ml", ""),
        container_step("evaluate", &["train"], "", ""),
    ];
    env.apply_yaml(&pipeline("longfit", &steps_spec(&steps, &[])))
        .await;
    let runs = env.api::<PipelineRun>();
    let training_running = |r: &PipelineRun| {
        r.status.as_ref().is_some_and(|s| {
            s.steps
                .iter()
                .any(|s| s.name == "train" && s.phase == StepPhase::Running && s.job_name.is_some())
        }) && r.finalizers().iter().any(|f| f == "aleph.dev/cleanup")
    };

    // Cancel: the training job is stopped, the run ends Cancelled, the finalizer goes.
    env.apply_yaml(&labelled_run("longfit-1", "longfit", &label))
        .await;
    let running = wait_for(&runs, "longfit-1", TIMEOUT, training_running).await;
    let job = step(&running, "train").job_name.clone().unwrap_or_default();
    assert_eq!(
        sm.training_job(&job).map(|j| j.status),
        Some("InProgress".into())
    );
    patch_spec(&runs, "longfit-1", serde_json::json!({"cancel": true})).await;
    let run = finished_run(&env, "longfit-1").await;
    assert_eq!(phase(&run), RunPhase::Cancelled, "{:#?}", run.status);
    let stopped = sm.training_job(&job).map(|j| j.status).unwrap_or_default();
    assert!(stopped == "Stopping" || stopped == "Stopped", "{stopped}");
    let run = wait_finalizers_gone(&env, "longfit-1").await;
    assert_eq!(step(&run, "evaluate").phase, StepPhase::Skipped);

    // Delete: the finalizer holds the run until its training job is stopped.
    env.apply_yaml(&labelled_run("longfit-2", "longfit", &label))
        .await;
    let running = wait_for(&runs, "longfit-2", TIMEOUT, training_running).await;
    let job = step(&running, "train").job_name.clone().unwrap_or_default();
    runs.delete("longfit-2", &Default::default())
        .await
        .expect("delete the run");
    wait_for_deletion(&runs, "longfit-2", TIMEOUT).await;
    assert_eq!(
        sm.training_job(&job).map(|j| j.status),
        Some("Stopped".into()),
        "deleting the run stopped its training job"
    );
    assert_eq!(sm.counters().training_jobs_stopped, 2);

    aws::cleanup_with_fake(env, sm).await;
}

#[tokio::test]
async fn a_training_job_that_fails_is_retried_as_a_new_job_then_fails_the_step() {
    let env = TestEnv::new().await;
    let (sm, _op, label) = fake_and_operator(&env, FakeConfig::default()).await;
    let tags =
        format!("{OUTCOME_TAG}: fail, {FAILURE_REASON_TAG}: \"AlgorithmError: out of memory\"");
    let retries = "      retries: { limit: 1, initialDelaySeconds: 1 }\n";
    let train = fake_training_step("train", &tags, retries);
    env.apply_yaml(&pipeline("badfit", &steps_spec(&[train], &[])))
        .await;
    env.apply_yaml(&labelled_run("badfit-1", "badfit", &label))
        .await;
    let run = finished_run(&env, "badfit-1").await;
    assert_ended(&run, RunPhase::Failed, "StepFailed");
    assert_message(&run, "AlgorithmError: out of memory");
    let train = step(&run, "train");
    assert_eq!(train.attempts, 2);
    assert_eq!(
        sm.counters().training_jobs_created,
        2,
        "each attempt is a SageMaker job of its own"
    );
    // The finalizer goes once no training job runs.
    wait_finalizers_gone(&env, "badfit-1").await;
    aws::cleanup_with_fake(env, sm).await;
}

#[tokio::test]
async fn a_replace_schedule_cancels_the_running_run_for_the_next_one() {
    let env = TestEnv::new().await;
    let sync = container_step("sync", &[], RUNS_UNTIL_STOPPED, "");
    let spec = format!(
        "{}  schedule:\n    cron: \"*/3 * * * * *\"\n    concurrencyPolicy: Replace\n",
        steps_spec(&[sync], &[])
    );
    env.apply_yaml(&pipeline("latest", &spec)).await;
    let runs = env.api::<PipelineRun>();
    let in_phase = |list: &[PipelineRun], wanted: RunPhase| -> Vec<String> {
        list.iter()
            .filter(|r| phase(r) == wanted)
            .map(|r| r.name_any())
            .collect()
    };
    let every = Duration::from_millis(300);
    let (cancelled, running) = poll_runs(
        &runs,
        Duration::from_secs(45),
        every,
        "no run was replaced",
        |list| {
            let cancelled = in_phase(list, RunPhase::Cancelled);
            let running = in_phase(list, RunPhase::Running);
            (!cancelled.is_empty() && !running.is_empty()).then_some((cancelled, running))
        },
    )
    .await;
    let replaced = wait_event(&env, "Pipeline", "latest", "RunReplaced").await;
    assert!(replaced.contains(&cancelled[0]), "{replaced}");
    let old = runs.get(&cancelled[0]).await.expect("the cancelled run");
    assert!(old.spec.cancel, "Replace cancels through spec.cancel");
    assert_eq!(reason(&old), "Cancelled");
    assert!(
        running.iter().all(|r| r > &cancelled[0]),
        "the newer run goes on"
    );
    let suspend = serde_json::json!({"schedule": {"suspend": true}});
    patch_spec(&env.api::<Pipeline>(), "latest", suspend).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_plugin_step_runs_the_job_plugin_sandboxed_and_a_service_plugin_is_refused() {
    let env = TestEnv::new().await;
    env.apply_yaml(
        r#"
apiVersion: aleph.dev/v1alpha1
kind: Plugin
metadata: { name: scanner }
spec:
  version: 1.2.0
  image: ghcr.io/acme/scanner:1.2.0
  mode: job
  args: ["--quiet"]
---
apiVersion: aleph.dev/v1alpha1
kind: Plugin
metadata: { name: redactor }
spec:
  version: 1.0.0
  image: ghcr.io/acme/redactor:1.0.0
  mode: service
  port: 8080
"#,
    )
    .await;
    env.apply_yaml(
        r#"
apiVersion: aleph.dev/v1alpha1
kind: Pipeline
metadata: { name: scan }
spec:
  params:
    - { name: target, type: string, default: "s3://acme/data" }
  steps:
    - name: scan
      podAnnotations: { aleph.dev/test-run-duration: 1s }
      plugin: { name: scanner, args: ["--target=$(params.target)"] }
    - name: redact
      plugin: { name: redactor }
"#,
    )
    .await;
    let run = run_to_end(&env, "scan-1", "scan", "").await;
    assert_eq!(phase(&run), RunPhase::Failed, "{:#?}", run.status);
    assert_eq!(step(&run, "scan").phase, StepPhase::Succeeded);
    let redact = step(&run, "redact");
    assert_step(
        redact,
        StepPhase::Failed,
        "plugin redactor has mode service",
    );
    assert_message(&run, "step redact failed");

    let job = env
        .api::<Job>()
        .get("scan-1-scan-1")
        .await
        .expect("the scan Job");
    let template = job.spec.expect("a Job spec").template;
    assert_eq!(
        template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref())
            .and_then(|l| l.get("aleph.dev/plugin"))
            .map(String::as_str),
        Some("scanner")
    );
    let pod = template.spec.expect("a pod spec");
    let container = &pod.containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("ghcr.io/acme/scanner:1.2.0")
    );
    assert_eq!(
        container.args.clone().unwrap_or_default(),
        ["--quiet", "--target=s3://acme/data"]
    );
    let security = container.security_context.clone().unwrap_or_default();
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(pod.automount_service_account_token, Some(false));
    env.cleanup().await;
}
