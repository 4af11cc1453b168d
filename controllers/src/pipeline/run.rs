//! The PipelineRun reconciler: runs the steps of one run in dependency order.
//!
//! Each pass reads the run fresh from the API server (the cache may not have
//! caught up with the previous pass's status write), then:
//!
//! 1. on the first pass, snapshots the Pipeline's spec into
//!    `status.pipelineSpec`, resolves the params and, for `resumeFrom`, reuses
//!    the steps that succeeded in the earlier run; an invalid graph or params
//!    fail the run at once (`InvalidGraph`, `ParameterMissing`, ...);
//! 2. looks at every running step: its Job (and pod, for the outputs in the
//!    termination message), its SageMaker training job, or the AIModel it
//!    rolls out;
//! 3. asks [`scheduler::plan`] what to do next and does it: creates Jobs,
//!    starts training jobs, patches AIModels, deletes the Jobs of stopped
//!    steps, finishes the run;
//! 4. writes the status with the resourceVersion it read as a precondition,
//!    so a pass working from an old view fails instead of overwriting a newer
//!    status, and publishes the pass's events.
//!
//! Everything it creates is named after the run, the step and the attempt,
//! so a pass that dies half-way is redone without making anything twice.
//!
//! A run carries the finalizer `aleph.dev/cleanup` only while a SageMaker
//! training step is running: SageMaker jobs are outside the cluster, so a run
//! deleted (or cancelled) then first asks SageMaker to stop them. Every other
//! child is a Job owned by the run, which garbage collection removes.

use aleph_crds::keys::{ATTEMPT_LABEL, FINALIZER, ROLLED_OUT_BY_ANNOTATION, RUN_LABEL, STEP_LABEL};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aleph_crds::TrainingStatus;
use aleph_crds::aimodel::AIModel;
use aleph_crds::common::{ConditionStatus, SageMakerTraining};
use aleph_crds::pipeline::{
    ParamValue, Pipeline, PipelineRun, PipelineRunStatus, PipelineStep, RolloutAction, RunPhase,
    StepPhase, StepStatus,
};
use aleph_crds::plugin::Plugin;
use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::graph::{self, Graph};
use super::jobs::{self};
use super::observe::{JobOutcome, job_outcome};
use super::params::{self, StepOutputs};
use super::retry;
use super::scheduler::{self, FinishReason, RunState};
use crate::apply::{MANAGER, delete_ignoring_missing};
use crate::conditions::{NewCondition, find, parse_time, set_condition};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::sagemaker::{CleanupOutcome, reconcile_training, training::TrainingOutcome};

/// The condition every run reports.
pub const SUCCEEDED: &str = "Succeeded";
/// The field manager of rollout steps' patches to AIModels: a manager of its
/// own, so the managed fields say that a pipeline set the model's source.
pub const ROLLOUT_MANAGER: &str = "aleph-pipeline";
/// The output of a training step holding the model artifact's URI.
pub const ARTIFACT_OUTPUT: &str = "artifactUri";
/// The output of a training step holding the SageMaker training job's name.
pub const TRAINING_JOB_OUTPUT: &str = "trainingJob";

/// How often a run waiting for its Pipeline (or its resumeFrom run) looks again.
const WAIT_FOR_REFERENCE: Duration = Duration::from_secs(10);
/// How often a step whose Job the API server refused for now is tried again.
const RETRY_REFUSED: Duration = Duration::from_secs(10);
/// The longest a running run goes without a look, events or not.
const RESYNC: Duration = Duration::from_secs(300);
/// How often a running training job is looked at when nothing caps it lower.
const TRAINING_POLL: Duration = Duration::from_secs(30);

/// What kind of action a step runs.
enum StepKind<'a> {
    /// A container or plugin: a Job.
    Job,
    /// A SageMaker training job.
    Training(&'a SageMakerTraining),
    /// An AIModel rollout.
    Rollout(&'a RolloutAction),
}

fn kind(step: &PipelineStep) -> StepKind<'_> {
    if let Some(t) = &step.training {
        StepKind::Training(t)
    } else if let Some(r) = &step.rollout {
        StepKind::Rollout(r)
    } else {
        StepKind::Job
    }
}

/// What a pass found out about a running step.
#[derive(Debug, Clone, PartialEq)]
enum Observed {
    /// Still running; what it waits for, and when to look again.
    Running {
        message: Option<String>,
        recheck: Option<Duration>,
    },
    /// Succeeded with these outputs.
    Succeeded(BTreeMap<String, String>),
    /// Failed: why.
    Failed(String),
}

impl Observed {
    fn running() -> Self {
        Self::Running {
            message: None,
            recheck: None,
        }
    }
}

/// What came of starting a step.
enum StartOutcome {
    /// Started (`job_name` is the Job or SageMaker job), and what is already known.
    Started {
        job_name: Option<String>,
        observed: Observed,
    },
    /// Could not start and never will this attempt (a missing plugin, a
    /// reference that does not resolve, a Job the API server rejects).
    Failed(String),
    /// Could not start for now (quota, admission); stays Pending and is tried again.
    Blocked(String),
}

/// Whether a run has finished.
pub fn is_finished(phase: RunPhase) -> bool {
    matches!(
        phase,
        RunPhase::Succeeded | RunPhase::Failed | RunPhase::Cancelled
    )
}

/// A duration as `kubectl` prints ages: `45s`, `4m12s`, `2h3m4s`, `3d4h`.
pub fn format_duration(delta: TimeDelta) -> String {
    let total = delta.num_seconds().max(0);
    let (d, h, m, s) = (
        total / 86_400,
        total % 86_400 / 3600,
        total % 3600 / 60,
        total % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m{s}s"),
        _ => format!("{d}d{h}h"),
    }
}

fn to_std(delta: TimeDelta) -> Duration {
    delta.to_std().unwrap_or(Duration::ZERO)
}

/// When the current attempt of a step started.
fn attempt_started(s: &StepStatus, now: DateTime<Utc>) -> DateTime<Utc> {
    parse_time(s.attempt_times.last().map(String::as_str))
        .or_else(|| parse_time(s.start_time.as_deref()))
        .unwrap_or(now)
}

/// The message of the `Succeeded` condition of a running run.
fn running_message(graph: &Graph, steps: &[StepStatus], progress: &str) -> String {
    let names = |phase: StepPhase| -> Vec<&str> {
        graph
            .names()
            .filter(|n| {
                steps
                    .iter()
                    .find(|s| s.name == *n)
                    .is_some_and(|s| s.phase == phase)
            })
            .collect()
    };
    let mut message = format!("{progress} steps finished");
    let running = names(StepPhase::Running);
    if !running.is_empty() {
        // A running step that says something (it waits, it retries a call)
        // says it here too: the run's condition is what users look at.
        let described: Vec<String> = running
            .iter()
            .map(|name| {
                match steps
                    .iter()
                    .find(|s| s.name == *name)
                    .and_then(|s| s.message.as_deref())
                    .filter(|m| !m.is_empty())
                {
                    Some(said) => format!("{name} ({said})"),
                    None => name.to_string(),
                }
            })
            .collect();
        message.push_str(&format!("; running: {}", described.join(", ")));
    }
    // A step that could not start yet says why (a missing region, a plugin
    // that is not ready).
    let blocked: Vec<String> = names(StepPhase::Pending)
        .into_iter()
        .filter_map(|name| {
            let said = steps
                .iter()
                .find(|s| s.name == name)
                .and_then(|s| s.message.as_deref())
                .filter(|m| !m.is_empty())?;
            Some(format!("{name} ({said})"))
        })
        .collect();
    if !blocked.is_empty() {
        message.push_str(&format!("; cannot start: {}", blocked.join(", ")));
    }
    let retrying = names(StepPhase::Retrying);
    if !retrying.is_empty() {
        message.push_str(&format!("; waiting to retry: {}", retrying.join(", ")));
    }
    message
}

/// The training spec with `$(params.X)` and `$(steps.S.outputs.K)` filled in
/// its hyperparameters.
fn substituted_training(
    spec: &SageMakerTraining,
    params: &BTreeMap<String, String>,
    outputs: &StepOutputs,
) -> Result<SageMakerTraining, String> {
    let mut spec = spec.clone();
    for value in spec.hyperparameters.values_mut() {
        *value = params::substitute(value, params, outputs).map_err(|e| e.to_string())?;
    }
    Ok(spec)
}

/// The source a rollout step sets: its literal (substituted) or the
/// `artifactUri` output of `fromStep`.
fn rollout_source(
    rollout: &RolloutAction,
    params: &BTreeMap<String, String>,
    outputs: &StepOutputs,
) -> Result<String, String> {
    if let Some(source) = &rollout.source {
        return params::substitute(source, params, outputs).map_err(|e| e.to_string());
    }
    let from = rollout.from_step.as_deref().unwrap_or_default();
    outputs
        .get(from)
        .and_then(|o| o.get(ARTIFACT_OUTPUT))
        .cloned()
        .ok_or_else(|| {
            format!("step {from} has no {ARTIFACT_OUTPUT} output to roll out: fromStep must name a training step, or a step that writes {ARTIFACT_OUTPUT}")
        })
}

/// The name a training step's SageMaker job is derived from (with the run's
/// UID and the training spec): one job per attempt.
fn training_owner_name(step: &str, attempt: i32) -> String {
    format!("{step}-{attempt}")
}

/// Whether a rolled-out AIModel is Ready at (or past) `generation`, and if
/// not, why.
fn model_ready(model: &AIModel, generation: i64) -> Result<(), String> {
    let status = model.status.as_ref();
    let observed = status.and_then(|s| s.observed_generation).unwrap_or(0);
    let ready = status.and_then(|s| find(&s.conditions, "Ready"));
    if observed < generation {
        return Err(format!(
            "its controller has not observed generation {generation} yet (observedGeneration {observed})"
        ));
    }
    match ready {
        Some(c)
            if c.status == ConditionStatus::True
                && c.observed_generation.is_none_or(|g| g >= generation) =>
        {
            Ok(())
        }
        Some(c) => Err(format!(
            "Ready is {:?} ({}): {}",
            c.status, c.reason, c.message
        )),
        None => Err("it has no Ready condition yet".to_string()),
    }
}

/// How long to wait before looking at a rollout again: often at first, then
/// less so, at most every 30 seconds.
fn rollout_poll(elapsed: TimeDelta) -> Duration {
    Duration::from_secs(
        u64::try_from(elapsed.num_seconds() / 10)
            .unwrap_or(0)
            .clamp(2, 30),
    )
}

/// One reconcile of one run.
struct Pass<'a> {
    ctx: &'a Context,
    api: Api<PipelineRun>,
    /// The run as last read or written.
    run: PipelineRun,
    namespace: String,
    name: String,
    uid: String,
    now: DateTime<Utc>,
    events: Vec<(EventType, &'static str, String)>,
    recheck: Option<Duration>,
    /// The run's pods, listed once per pass when a Job step needs them.
    pods: Option<Vec<Pod>>,
}

/// Reconciles one PipelineRun.
pub async fn reconcile(name: &str, namespace: &str, ctx: &Context) -> Result<Action> {
    let api: Api<PipelineRun> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(run) = api.get_opt(name).await? else {
        return Ok(Action::await_change());
    };
    let uid = run
        .uid()
        .ok_or_else(|| Error::NotReady("the PipelineRun has no UID yet".into()))?;
    let mut pass = Pass {
        ctx,
        api,
        run,
        namespace: namespace.to_string(),
        name: name.to_string(),
        uid,
        now: Utc::now(),
        events: Vec::new(),
        recheck: None,
        pods: None,
    };
    if pass.run.metadata.deletion_timestamp.is_some() {
        return pass.finalize().await;
    }
    let mut status = pass.run.status.clone().unwrap_or_default();
    status.observed_generation = pass.run.metadata.generation;
    if !is_finished(status.phase) {
        let ready = status.pipeline_spec.is_some() || pass.start(&mut status).await?;
        if ready {
            pass.advance(&mut status).await?;
        }
    }
    pass.write_status(&status).await?;
    if pass.has_finalizer() && !pass.training_in_flight(&status) {
        pass.set_finalizer(false).await?;
    }
    pass.publish().await;
    if is_finished(status.phase) {
        return pass.expire(&status).await;
    }
    Ok(pass.action())
}

impl Pass<'_> {
    fn recheck_in(&mut self, after: Duration) {
        self.recheck = Some(self.recheck.map_or(after, |r| r.min(after)));
    }

    fn recheck_at(&mut self, time: DateTime<Utc>) {
        // A little after, so that the time has surely come.
        self.recheck_in(to_std(time - self.now) + Duration::from_millis(200));
    }

    fn action(&self) -> Action {
        Action::requeue(self.recheck.map_or(RESYNC, |r| r.min(RESYNC)))
    }

    fn event(&mut self, type_: EventType, reason: &'static str, note: impl Into<String>) {
        self.events.push((type_, reason, note.into()));
    }

    async fn publish(&mut self) {
        for (type_, reason, note) in std::mem::take(&mut self.events) {
            self.ctx.event(&self.run, type_, reason, note).await;
        }
    }

    fn has_finalizer(&self) -> bool {
        self.run.finalizers().iter().any(|f| f == FINALIZER)
    }

    /// Adds or removes the finalizer, with the resourceVersion read as a precondition.
    async fn set_finalizer(&mut self, present: bool) -> Result<()> {
        if self.has_finalizer() == present {
            return Ok(());
        }
        let mut list: Vec<String> = self
            .run
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect();
        if present {
            list.push(FINALIZER.to_string());
        }
        let patch = json!({
            "metadata": {
                "finalizers": list,
                "resourceVersion": self.run.resource_version(),
            }
        });
        self.run = self
            .api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    fn training_in_flight(&self, status: &PipelineRunStatus) -> bool {
        let Some(spec) = status.pipeline_spec.as_ref() else {
            return false;
        };
        status.steps.iter().any(|s| {
            s.phase == StepPhase::Running
                && spec
                    .steps
                    .iter()
                    .chain(spec.finally.iter())
                    .any(|step| step.name == s.name && step.training.is_some())
        })
    }

    /// Writes the status when it changed, with the resourceVersion read as a
    /// precondition: a pass that worked from an old view gets a conflict and
    /// is redone instead of overwriting a newer status.
    async fn write_status(&mut self, status: &PipelineRunStatus) -> Result<()> {
        if self.run.status.as_ref() == Some(status) {
            return Ok(());
        }
        let patch = json!({
            "apiVersion": PipelineRun::api_version(&()),
            "kind": PipelineRun::kind(&()),
            "metadata": {
                "name": self.name,
                "resourceVersion": self.run.resource_version(),
            },
            "status": status,
        });
        self.run = self
            .api
            .patch_status(
                &self.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        Ok(())
    }

    /// A run being deleted: stops its SageMaker training jobs, then lets it go.
    async fn finalize(&mut self) -> Result<Action> {
        if !self.has_finalizer() {
            return Ok(Action::await_change());
        }
        let status = self.run.status.clone().unwrap_or_default();
        let mut waiting: Option<Duration> = None;
        if let Some(spec) = status.pipeline_spec.as_ref() {
            for s in status
                .steps
                .iter()
                .filter(|s| s.phase == StepPhase::Running)
            {
                let training = spec
                    .steps
                    .iter()
                    .chain(spec.finally.iter())
                    .find(|step| step.name == s.name)
                    .and_then(|step| step.training.as_ref());
                if let (Some(training), Some(job)) = (training, s.job_name.as_deref())
                    && let CleanupOutcome::RequeueAfter { after, .. } =
                        self.stop_training(training, job).await?
                {
                    waiting = Some(waiting.map_or(after, |w| w.min(after)));
                }
            }
        }
        match waiting {
            Some(after) => Ok(Action::requeue(after)),
            None => {
                self.set_finalizer(false).await?;
                Ok(Action::await_change())
            }
        }
    }

    async fn stop_training(
        &self,
        training: &SageMakerTraining,
        job_name: &str,
    ) -> Result<CleanupOutcome> {
        let api = self.ctx.sagemaker(training.region.as_deref()).await?;
        let status = TrainingStatus {
            job_name: job_name.to_string(),
            job_status: Some("InProgress".into()),
            artifact_uri: None,
            failure_reason: None,
        };
        Ok(crate::sagemaker::cleanup::stop_training(api.as_ref(), &status).await?)
    }

    /// A finished run: deleted once its TTL has passed.
    async fn expire(&mut self, status: &PipelineRunStatus) -> Result<Action> {
        let Some(ttl) = status
            .pipeline_spec
            .as_ref()
            .and_then(|s| s.ttl_seconds_after_finished)
        else {
            return Ok(Action::await_change());
        };
        let finished = parse_time(status.completion_time.as_deref()).unwrap_or(self.now);
        let expires = finished + TimeDelta::try_seconds(ttl).unwrap_or(TimeDelta::MAX);
        if expires > self.now {
            return Ok(Action::requeue(
                to_std(expires - self.now) + Duration::from_millis(200),
            ));
        }
        delete_ignoring_missing(&self.api, &self.name).await?;
        tracing::info!(ttl, "deleted a finished run whose TTL passed");
        Ok(Action::await_change())
    }

    /// Fails the run before any step ran.
    fn fail_at_start(&mut self, status: &mut PipelineRunStatus, reason: &str, message: String) {
        let now = scheduler::format_time(self.now);
        status.phase = RunPhase::Failed;
        status.start_time.get_or_insert(now.clone());
        status.completion_time = Some(now);
        status.duration = Some(format_duration(TimeDelta::zero()));
        set_condition(
            &mut status.conditions,
            NewCondition::no(SUCCEEDED, reason, message.clone()),
            self.run.metadata.generation,
        );
        let reason: &'static str = match reason {
            "InvalidGraph" => "InvalidGraph",
            "ParameterMissing" => "ParameterMissing",
            "InvalidParameter" => "InvalidParameter",
            _ => "InvalidResume",
        };
        self.event(EventType::Warning, reason, message);
    }

    /// The run waits for something it refers to.
    fn wait_at_start(&mut self, status: &mut PipelineRunStatus, reason: &str, message: String) {
        status.phase = RunPhase::Pending;
        set_condition(
            &mut status.conditions,
            NewCondition::new(SUCCEEDED, ConditionStatus::Unknown, reason, message),
            self.run.metadata.generation,
        );
        self.recheck_in(WAIT_FOR_REFERENCE);
    }

    /// The first pass: snapshots the pipeline, resolves the params, plans a
    /// resume. Returns whether the run is ready to advance (false: it waits or
    /// has failed, and `status` says so).
    async fn start(&mut self, status: &mut PipelineRunStatus) -> Result<bool> {
        let pipeline_name = self.run.spec.pipeline_ref.name.clone();
        let pipelines: Api<Pipeline> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let Some(pipeline) = pipelines.get_opt(&pipeline_name).await? else {
            let message = format!(
                "pipeline {pipeline_name} does not exist in namespace {}: create it (the run starts when it does) or fix spec.pipelineRef",
                self.namespace
            );
            self.wait_at_start(status, "PipelineNotFound", message);
            return Ok(false);
        };
        let spec = pipeline.spec.clone();
        status.pipeline_spec = Some(spec.clone());

        let mut previous: Option<(String, PipelineRunStatus)> = None;
        if let Some(from) = self.run.spec.resume_from.clone() {
            if from == self.name {
                self.fail_at_start(
                    status,
                    "InvalidResume",
                    "a run cannot resume itself: name an earlier run in spec.resumeFrom".into(),
                );
                return Ok(false);
            }
            let Some(earlier) = self.api.get_opt(&from).await? else {
                let message = format!(
                    "spec.resumeFrom names run {from}, which does not exist in namespace {}",
                    self.namespace
                );
                self.fail_at_start(status, "InvalidResume", message);
                return Ok(false);
            };
            if earlier.spec.pipeline_ref.name != pipeline_name {
                let message = format!(
                    "spec.resumeFrom names run {from} of pipeline {}, not of {pipeline_name}: resume a run of the same pipeline",
                    earlier.spec.pipeline_ref.name
                );
                self.fail_at_start(status, "InvalidResume", message);
                return Ok(false);
            }
            let earlier_status = earlier.status.unwrap_or_default();
            if !is_finished(earlier_status.phase) {
                let message = format!(
                    "waiting for run {from} (named in spec.resumeFrom) to finish; cancel it to resume sooner"
                );
                status.pipeline_spec = None;
                self.wait_at_start(status, "WaitingForResumeFrom", message);
                return Ok(false);
            }
            previous = Some((from, earlier_status));
        }

        let graph = match graph::validate(&spec) {
            Ok(graph) => graph,
            Err(e) => {
                let message = format!("pipeline {pipeline_name}: {e}");
                self.fail_at_start(status, e.reason(), message);
                return Ok(false);
            }
        };
        // A resumed run keeps the earlier run's param values unless it gives its own.
        let mut given: Vec<ParamValue> = previous
            .iter()
            .flat_map(|(_, p)| p.params.iter())
            .filter(|(k, _)| spec.params.iter().any(|p| &p.name == *k))
            .filter(|(k, _)| !self.run.spec.params.iter().any(|p| &p.name == *k))
            .map(|(k, v)| ParamValue {
                name: k.clone(),
                value: v.clone(),
            })
            .collect();
        given.extend(self.run.spec.params.iter().cloned());
        let params = match params::resolve_params(&spec.params, &given) {
            Ok(params) => params,
            Err(e) => {
                let message = format!("pipeline {pipeline_name}: {e}");
                self.fail_at_start(status, e.reason(), message);
                return Ok(false);
            }
        };
        status.params = params;
        status.steps = match &previous {
            Some((_, earlier)) => scheduler::resume_plan(&spec, &earlier.steps),
            None => graph.initial_statuses(),
        };
        status.phase = RunPhase::Running;
        status.start_time = Some(scheduler::format_time(self.now));
        let mut note = format!("started pipeline {pipeline_name}: {} steps", graph.len());
        if let Some((from, _)) = &previous {
            let reused: Vec<&str> = status
                .steps
                .iter()
                .filter(|s| s.phase == StepPhase::Reused)
                .map(|s| s.name.as_str())
                .collect();
            if reused.is_empty() {
                note.push_str(&format!(
                    "; resuming {from}: no step can be reused, all run again"
                ));
            } else {
                note.push_str(&format!(
                    "; resuming {from}: reusing {}, running the rest again",
                    reused.join(", ")
                ));
            }
        }
        self.event(EventType::Normal, "Started", note);
        Ok(true)
    }

    /// Observes the running steps, then carries out what the scheduler says.
    async fn advance(&mut self, status: &mut PipelineRunStatus) -> Result<()> {
        let Some(spec) = status.pipeline_spec.clone() else {
            return Ok(());
        };
        let graph = match graph::validate(&spec) {
            Ok(graph) => graph,
            Err(e) => {
                self.fail_at_start(status, e.reason(), e.to_string());
                return Ok(());
            }
        };
        let started = parse_time(status.start_time.as_deref()).unwrap_or(self.now);
        let deadline = graph.deadline(started);
        let deadline_passed = deadline.is_some_and(|d| d <= self.now);
        if let Some(d) = deadline.filter(|d| *d > self.now) {
            self.recheck_at(d);
        }
        let stopping = self.run.spec.cancel || deadline_passed;

        // 1. What became of the running steps.
        let jobs = self.list_jobs().await?;
        let running: Vec<StepStatus> = status
            .steps
            .iter()
            .filter(|s| s.phase == StepPhase::Running)
            .cloned()
            .collect();
        for s in running {
            let Some(step) = graph.step(&s.name) else {
                continue;
            };
            let outputs = scheduler::step_outputs(&status.steps);
            let observed = self
                .observe(step, &s, &status.params, &outputs, &jobs)
                .await?;
            self.record(&graph, status, &s.name, observed, stopping);
        }

        // 2. What to do next, until nothing is left to do in this pass.
        let mut blocked: BTreeSet<String> = BTreeSet::new();
        for _ in 0..graph.len() * 4 + 4 {
            let actions = {
                let state = RunState {
                    steps: &status.steps,
                    params: &status.params,
                    cancelled: self.run.spec.cancel,
                    deadline_passed,
                };
                scheduler::plan(&graph, &state, self.now)
            };
            let mut acted = false;
            for action in actions {
                match &action {
                    scheduler::Action::Start { step, attempt }
                    | scheduler::Action::StartFinally { step, attempt } => {
                        if blocked.contains(step) {
                            continue;
                        }
                        let Some(definition) = graph.step(step) else {
                            continue;
                        };
                        let outputs = scheduler::step_outputs(&status.steps);
                        acted = true;
                        match self
                            .start_step(definition, *attempt, &status.params, &outputs)
                            .await?
                        {
                            StartOutcome::Started { job_name, observed } => {
                                scheduler::apply(&mut status.steps, &action, self.now);
                                if let Some(s) = status.steps.iter_mut().find(|s| &s.name == step) {
                                    s.job_name = job_name;
                                }
                                self.record(&graph, status, step, observed, stopping);
                            }
                            StartOutcome::Failed(message) => {
                                scheduler::apply(&mut status.steps, &action, self.now);
                                self.record(
                                    &graph,
                                    status,
                                    step,
                                    Observed::Failed(message),
                                    stopping,
                                );
                            }
                            StartOutcome::Blocked(message) => {
                                blocked.insert(step.clone());
                                if let Some(s) = status.steps.iter_mut().find(|s| &s.name == step) {
                                    s.message = Some(message);
                                }
                                self.recheck_in(RETRY_REFUSED);
                            }
                        }
                    }
                    scheduler::Action::Retry { not_before, .. } => {
                        acted = true;
                        scheduler::apply(&mut status.steps, &action, self.now);
                        self.recheck_at(*not_before);
                    }
                    scheduler::Action::Skip { .. } => {
                        acted = true;
                        scheduler::apply(&mut status.steps, &action, self.now);
                    }
                    scheduler::Action::Stop { step, .. } => {
                        acted = true;
                        if let (Some(definition), Some(s)) = (
                            graph.step(step),
                            status.steps.iter().find(|s| &s.name == step).cloned(),
                        ) {
                            self.stop_step(definition, &s).await?;
                        }
                        scheduler::apply(&mut status.steps, &action, self.now);
                    }
                    scheduler::Action::Finish {
                        phase,
                        reason,
                        message,
                    } => {
                        self.finish(&graph, status, *phase, *reason, message.clone());
                        return Ok(());
                    }
                }
            }
            if !acted {
                break;
            }
        }

        let state = RunState {
            steps: &status.steps,
            params: &status.params,
            cancelled: self.run.spec.cancel,
            deadline_passed,
        };
        let progress = scheduler::progress(&graph, &state);
        let message = running_message(&graph, &status.steps, &progress);
        status.progress = Some(progress);
        status.phase = RunPhase::Running;
        // Set when the run finishes: a duration written now would be stale on the next look.
        status.duration = None;
        set_condition(
            &mut status.conditions,
            NewCondition::new(SUCCEEDED, ConditionStatus::Unknown, "Running", message),
            self.run.metadata.generation,
        );
        if let Some(t) = scheduler::next_retry_time(&status.steps) {
            self.recheck_at(t);
        }
        Ok(())
    }

    /// Records what was observed of a running step, with an event when it failed.
    fn record(
        &mut self,
        graph: &Graph,
        status: &mut PipelineRunStatus,
        name: &str,
        observed: Observed,
        stopping: bool,
    ) {
        match observed {
            Observed::Running { message, recheck } => {
                if let Some(s) = status.steps.iter_mut().find(|s| s.name == name) {
                    s.message = message;
                }
                if let Some(after) = recheck {
                    self.recheck_in(after);
                }
            }
            Observed::Succeeded(outputs) => {
                scheduler::record_succeeded(&mut status.steps, name, outputs, self.now);
            }
            Observed::Failed(message) => {
                scheduler::record_failed(&mut status.steps, name, &message, self.now);
                let Some(step) = graph.step(name) else {
                    return;
                };
                let attempts = status
                    .steps
                    .iter()
                    .find(|s| s.name == name)
                    .map_or(1, |s| s.attempts.max(1));
                let max = retry::max_attempts(step);
                let may_retry = graph.is_finally(name) || !stopping;
                if may_retry && attempts < max {
                    let delay = step
                        .retries
                        .as_ref()
                        .map_or(TimeDelta::zero(), |r| retry::backoff(r, attempts));
                    self.event(
                        EventType::Warning,
                        "StepRetrying",
                        format!(
                            "step {name}: attempt {attempts} of {max} failed: {message}; next attempt in {}",
                            format_duration(delay)
                        ),
                    );
                } else {
                    let after = if attempts > 1 {
                        format!(" after {attempts} attempts")
                    } else {
                        String::new()
                    };
                    self.event(
                        EventType::Warning,
                        "StepFailed",
                        format!("step {name} failed{after}: {message}"),
                    );
                }
            }
        }
    }

    fn finish(
        &mut self,
        graph: &Graph,
        status: &mut PipelineRunStatus,
        phase: RunPhase,
        reason: FinishReason,
        message: String,
    ) {
        let started = parse_time(status.start_time.as_deref()).unwrap_or(self.now);
        status.phase = phase;
        status.completion_time = Some(scheduler::format_time(self.now));
        status.duration = Some(format_duration(self.now - started));
        let state = RunState {
            steps: &status.steps,
            params: &status.params,
            cancelled: self.run.spec.cancel,
            deadline_passed: false,
        };
        status.progress = Some(scheduler::progress(graph, &state));
        let condition = if phase == RunPhase::Succeeded {
            NewCondition::yes(SUCCEEDED, reason.as_str(), message.clone())
        } else {
            NewCondition::no(SUCCEEDED, reason.as_str(), message.clone())
        };
        set_condition(
            &mut status.conditions,
            condition,
            self.run.metadata.generation,
        );
        let (type_, event_reason) = match reason {
            FinishReason::Succeeded => (EventType::Normal, "Succeeded"),
            FinishReason::StepFailed => (EventType::Warning, "Failed"),
            FinishReason::Timeout => (EventType::Warning, "Timeout"),
            FinishReason::Cancelled => (EventType::Normal, "Cancelled"),
        };
        let duration = status.duration.clone().unwrap_or_default();
        self.event(type_, event_reason, format!("{message} ({duration})"));
    }

    async fn list_jobs(&self) -> Result<BTreeMap<String, Job>> {
        let api: Api<Job> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let selector = format!("{RUN_LABEL}={}", jobs::label_value(&self.name));
        Ok(api
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .into_iter()
            .map(|job| (job.name_any(), job))
            .collect())
    }

    async fn pods_of(&mut self, step: &str, attempt: i32) -> Result<Vec<Pod>> {
        if self.pods.is_none() {
            let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
            let selector = format!("{RUN_LABEL}={}", jobs::label_value(&self.name));
            self.pods = Some(
                api.list(&ListParams::default().labels(&selector))
                    .await?
                    .items,
            );
        }
        let attempt = attempt.to_string();
        Ok(self
            .pods
            .iter()
            .flatten()
            .filter(|p| {
                let labels = p.labels();
                labels.get(STEP_LABEL).map(String::as_str) == Some(step)
                    && labels.get(ATTEMPT_LABEL) == Some(&attempt)
            })
            .cloned()
            .collect())
    }

    async fn observe(
        &mut self,
        step: &PipelineStep,
        s: &StepStatus,
        params: &BTreeMap<String, String>,
        outputs: &StepOutputs,
        jobs: &BTreeMap<String, Job>,
    ) -> Result<Observed> {
        match kind(step) {
            StepKind::Job => {
                let Some(job_name) = s.job_name.as_deref() else {
                    return Ok(Observed::Failed(
                        "no Job was recorded for the attempt".into(),
                    ));
                };
                let Some(job) = jobs.get(job_name) else {
                    return Ok(Observed::Failed(format!(
                        "its Job {job_name} was deleted before it finished"
                    )));
                };
                let pods = self.pods_of(&step.name, s.attempts).await?;
                Ok(match job_outcome(job, &pods, step.timeout_seconds) {
                    JobOutcome::Running(message) => Observed::Running {
                        message,
                        recheck: None,
                    },
                    JobOutcome::Succeeded(outputs) => Observed::Succeeded(outputs),
                    JobOutcome::Failed(message) => Observed::Failed(message),
                })
            }
            StepKind::Training(training) => {
                self.observe_training(step, training, s, params, outputs)
                    .await
            }
            StepKind::Rollout(rollout) => {
                self.observe_rollout(step, rollout, s, params, outputs)
                    .await
            }
        }
    }

    fn cap_poll(&self, after: Duration) -> Duration {
        self.ctx
            .settings
            .sagemaker_max_poll
            .map_or(after, |cap| after.min(cap))
    }

    /// Turns a pass of the training saga into what it means for the step.
    fn training_observed(&mut self, step: &str, outcome: TrainingOutcome) -> Observed {
        for event in &outcome.events {
            self.events.push((
                event.type_,
                event.reason,
                format!("step {step}: {}", event.message),
            ));
        }
        if let Some(artifact) = outcome.artifact_uri() {
            return Observed::Succeeded(BTreeMap::from([
                (ARTIFACT_OUTPUT.to_string(), artifact.to_string()),
                (
                    TRAINING_JOB_OUTPUT.to_string(),
                    outcome.status.job_name.clone(),
                ),
            ]));
        }
        if outcome.terminal {
            return Observed::Failed(outcome.condition.message);
        }
        Observed::Running {
            message: Some(outcome.condition.message),
            recheck: Some(self.cap_poll(outcome.requeue_after.unwrap_or(TRAINING_POLL))),
        }
    }

    async fn observe_training(
        &mut self,
        step: &PipelineStep,
        training: &SageMakerTraining,
        s: &StepStatus,
        params: &BTreeMap<String, String>,
        outputs: &StepOutputs,
    ) -> Result<Observed> {
        let spec = match substituted_training(training, params, outputs) {
            Ok(spec) => spec,
            Err(why) => return Ok(Observed::Failed(why)),
        };
        if let Some(limit) = step.timeout_seconds {
            let started = attempt_started(s, self.now);
            if self.now - started >= TimeDelta::try_seconds(limit).unwrap_or(TimeDelta::MAX) {
                if let Some(job) = s.job_name.as_deref() {
                    self.stop_training(&spec, job).await?;
                }
                return Ok(Observed::Failed(format!(
                    "timed out after {limit}s (the step's timeoutSeconds); the SageMaker training job was asked to stop"
                )));
            }
            self.recheck_at(started + TimeDelta::try_seconds(limit).unwrap_or(TimeDelta::MAX));
        }
        let api = match self.ctx.sagemaker(spec.region.as_deref()).await {
            Ok(api) => api,
            Err(e) => {
                return Ok(Observed::Running {
                    message: Some(format!("{e}; retrying")),
                    recheck: Some(self.cap_poll(TRAINING_POLL)),
                });
            }
        };
        let previous = s.job_name.as_ref().map(|job| TrainingStatus {
            job_name: job.clone(),
            job_status: Some("InProgress".into()),
            artifact_uri: None,
            failure_reason: None,
        });
        let owner = training_owner_name(&step.name, s.attempts.max(1));
        match reconcile_training(
            api.as_ref(),
            &self.uid,
            &self.namespace,
            &owner,
            &spec,
            previous.as_ref(),
        )
        .await
        {
            Ok(outcome) => Ok(self.training_observed(&step.name, outcome)),
            Err(e) => Ok(Observed::Running {
                message: Some(format!("SageMaker: {e}; retrying")),
                recheck: Some(self.cap_poll(TRAINING_POLL)),
            }),
        }
    }

    async fn observe_rollout(
        &mut self,
        step: &PipelineStep,
        rollout: &RolloutAction,
        s: &StepStatus,
        params: &BTreeMap<String, String>,
        outputs: &StepOutputs,
    ) -> Result<Observed> {
        let uri = match rollout_source(rollout, params, outputs) {
            Ok(uri) => uri,
            Err(why) => return Ok(Observed::Failed(why)),
        };
        let models: Api<AIModel> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let Some(mut model) = models.get_opt(&rollout.model).await? else {
            return Ok(Observed::Failed(format!(
                "AIModel {} does not exist in namespace {}: create it or fix rollout.model",
                rollout.model, self.namespace
            )));
        };
        if model.spec.source.as_ref().map(|s| s.uri.as_str()) != Some(uri.as_str()) {
            let patch = json!({
                "apiVersion": AIModel::api_version(&()),
                "kind": AIModel::kind(&()),
                "metadata": {
                    "name": rollout.model,
                    "annotations": { ROLLED_OUT_BY_ANNOTATION: self.name },
                },
                "spec": { "source": { "uri": uri } },
            });
            match models
                .patch(
                    &rollout.model,
                    &PatchParams::apply(ROLLOUT_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await
            {
                Ok(patched) => {
                    model = patched;
                    self.event(
                        EventType::Normal,
                        "RolloutStarted",
                        format!(
                            "step {}: AIModel {} now has source {uri} (generation {})",
                            step.name,
                            rollout.model,
                            model.metadata.generation.unwrap_or_default()
                        ),
                    );
                }
                Err(kube::Error::Api(e)) if e.code == 422 || e.code == 400 => {
                    return Ok(Observed::Failed(format!(
                        "AIModel {} refused source {uri}: {}",
                        rollout.model, e.message
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let generation = model.metadata.generation.unwrap_or(0);
        let why = match model_ready(&model, generation) {
            Ok(()) => {
                return Ok(Observed::Succeeded(BTreeMap::from([
                    ("model".to_string(), rollout.model.clone()),
                    ("source".to_string(), uri),
                    ("generation".to_string(), generation.to_string()),
                ])));
            }
            Err(why) => why,
        };
        let limit = step
            .timeout_seconds
            .map_or(rollout.ready_timeout_seconds, |t| {
                t.min(rollout.ready_timeout_seconds)
            });
        let started = attempt_started(s, self.now);
        let elapsed = self.now - started;
        if elapsed >= TimeDelta::try_seconds(limit).unwrap_or(TimeDelta::MAX) {
            return Ok(Observed::Failed(format!(
                "AIModel {} was not Ready within {limit}s of setting source {uri}: {why}",
                rollout.model
            )));
        }
        Ok(Observed::Running {
            message: Some(format!(
                "waiting for AIModel {} to be Ready with source {uri} (generation {generation}): {why}",
                rollout.model
            )),
            recheck: Some(rollout_poll(elapsed)),
        })
    }

    async fn start_step(
        &mut self,
        step: &PipelineStep,
        attempt: i32,
        params: &BTreeMap<String, String>,
        outputs: &StepOutputs,
    ) -> Result<StartOutcome> {
        match kind(step) {
            StepKind::Job => self.start_job(step, attempt, params, outputs).await,
            StepKind::Training(training) => {
                let spec = match substituted_training(training, params, outputs) {
                    Ok(spec) => spec,
                    Err(why) => return Ok(StartOutcome::Failed(why)),
                };
                // The job lives outside the cluster: hold the run until it is stopped.
                self.set_finalizer(true).await?;
                let api = match self.ctx.sagemaker(spec.region.as_deref()).await {
                    Ok(api) => api,
                    Err(e) => return Ok(StartOutcome::Blocked(format!("{e}; retrying"))),
                };
                let owner = training_owner_name(&step.name, attempt);
                match reconcile_training(
                    api.as_ref(),
                    &self.uid,
                    &self.namespace,
                    &owner,
                    &spec,
                    None,
                )
                .await
                {
                    Ok(outcome) => {
                        let job_name = Some(outcome.status.job_name.clone());
                        let observed = self.training_observed(&step.name, outcome);
                        Ok(StartOutcome::Started { job_name, observed })
                    }
                    Err(e) => Ok(StartOutcome::Blocked(format!("SageMaker: {e}; retrying"))),
                }
            }
            StepKind::Rollout(_) => Ok(StartOutcome::Started {
                job_name: None,
                // Observed at once on the next pass, which sets the source.
                observed: Observed::Running {
                    message: Some("setting the AIModel's source".into()),
                    recheck: Some(Duration::from_millis(100)),
                },
            }),
        }
    }

    async fn start_job(
        &mut self,
        step: &PipelineStep,
        attempt: i32,
        params: &BTreeMap<String, String>,
        outputs: &StepOutputs,
    ) -> Result<StartOutcome> {
        let plugin = match &step.plugin {
            Some(action) => {
                let plugins: Api<Plugin> =
                    Api::namespaced(self.ctx.client.clone(), &self.namespace);
                plugins.get_opt(&action.name).await?
            }
            None => None,
        };
        let job = match jobs::build_step_job(
            &self.run,
            step,
            attempt,
            params,
            outputs,
            plugin.as_ref(),
        ) {
            Ok(job) => job,
            Err(e) => return Ok(StartOutcome::Failed(e.to_string())),
        };
        let job_name = job.name_any();
        let api: Api<Job> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        match api.create(&PostParams::default(), &job).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.reason == "AlreadyExists" => {
                // An earlier pass created it, unless a deleted run of the same name did.
                let existing = api.get_opt(&job_name).await?;
                let ours = existing.as_ref().is_some_and(|j| {
                    j.owner_references()
                        .iter()
                        .any(|o| o.uid == self.uid && o.controller == Some(true))
                });
                if !ours {
                    return Ok(StartOutcome::Blocked(format!(
                        "Job {job_name} exists and belongs to something else (a deleted run of the same name?): waiting for it to go away"
                    )));
                }
            }
            Err(kube::Error::Api(e)) if e.code == 400 || e.code == 422 => {
                return Ok(StartOutcome::Failed(format!(
                    "the API server refused its Job: {}",
                    e.message
                )));
            }
            Err(kube::Error::Api(e)) if e.code == 403 => {
                return Ok(StartOutcome::Blocked(format!(
                    "the API server refused its Job for now: {}; retrying",
                    e.message
                )));
            }
            Err(e) => return Err(e.into()),
        }
        Ok(StartOutcome::Started {
            job_name: Some(job_name),
            observed: Observed::running(),
        })
    }

    /// Stops a running step: deletes its Job, or asks SageMaker to stop its
    /// training job. A rollout step has nothing running to stop.
    async fn stop_step(&mut self, step: &PipelineStep, s: &StepStatus) -> Result<()> {
        let Some(job_name) = s.job_name.as_deref() else {
            return Ok(());
        };
        match kind(step) {
            StepKind::Job => {
                let api: Api<Job> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
                delete_ignoring_missing(&api, job_name).await?;
            }
            StepKind::Training(training) => {
                self.stop_training(training, job_name).await?;
            }
            StepKind::Rollout(_) => {}
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use aleph_crds::aimodel::AIModel;

    #[test]
    fn durations_read_like_kubectl_ages() {
        assert_eq!(format_duration(TimeDelta::seconds(0)), "0s");
        assert_eq!(format_duration(TimeDelta::seconds(45)), "45s");
        assert_eq!(format_duration(TimeDelta::seconds(252)), "4m12s");
        assert_eq!(format_duration(TimeDelta::seconds(7384)), "2h3m4s");
        assert_eq!(format_duration(TimeDelta::seconds(273_600)), "3d4h");
        assert_eq!(format_duration(TimeDelta::seconds(-5)), "0s");
    }

    fn model(yaml: &str) -> AIModel {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const MODEL: &str = r#"
apiVersion: aleph.dev/v1alpha1
kind: AIModel
metadata: {name: m, namespace: ns, generation: 3}
spec:
  source: {uri: "s3://b/new"}
"#;

    #[test]
    fn a_model_is_ready_only_at_the_generation_of_the_rollout() {
        let mut m = model(MODEL);
        let err = model_ready(&m, 3).unwrap_err();
        assert!(err.contains("not observed generation 3"), "{err}");
        m = model(&format!(
            "{MODEL}status:\n  observedGeneration: 2\n  conditions:\n    - {{type: Ready, status: \"True\", reason: Serving, message: ok, lastTransitionTime: \"2026-01-01T00:00:00Z\"}}\n"
        ));
        assert!(model_ready(&m, 3).is_err(), "Ready for an older generation");
        m = model(&format!(
            "{MODEL}status:\n  observedGeneration: 3\n  conditions:\n    - {{type: Ready, status: \"False\", reason: Progressing, message: rolling, lastTransitionTime: \"2026-01-01T00:00:00Z\"}}\n"
        ));
        let err = model_ready(&m, 3).unwrap_err();
        assert!(
            err.contains("Progressing") && err.contains("rolling"),
            "{err}"
        );
        m = model(&format!(
            "{MODEL}status:\n  observedGeneration: 3\n  conditions:\n    - {{type: Ready, status: \"True\", reason: Serving, message: ok, lastTransitionTime: \"2026-01-01T00:00:00Z\", observedGeneration: 2}}\n"
        ));
        assert!(
            model_ready(&m, 3).is_err(),
            "a condition of an older generation"
        );
        m = model(&format!(
            "{MODEL}status:\n  observedGeneration: 4\n  conditions:\n    - {{type: Ready, status: \"True\", reason: Serving, message: ok, lastTransitionTime: \"2026-01-01T00:00:00Z\", observedGeneration: 4}}\n"
        ));
        assert_eq!(model_ready(&m, 3), Ok(()));
    }

    #[test]
    fn rollout_sources_come_from_the_literal_or_the_training_output() {
        let params = BTreeMap::from([("v".to_string(), "7".to_string())]);
        let outputs = StepOutputs::from([(
            "train".to_string(),
            BTreeMap::from([(
                ARTIFACT_OUTPUT.to_string(),
                "s3://b/out/model.tar.gz".to_string(),
            )]),
        )]);
        let literal = RolloutAction {
            model: "m".into(),
            source: Some("hf://acme/model@v$(params.v)".into()),
            from_step: None,
            ready_timeout_seconds: 60,
        };
        assert_eq!(
            rollout_source(&literal, &params, &outputs).unwrap(),
            "hf://acme/model@v7"
        );
        let from = RolloutAction {
            source: None,
            from_step: Some("train".into()),
            ..literal.clone()
        };
        assert_eq!(
            rollout_source(&from, &params, &outputs).unwrap(),
            "s3://b/out/model.tar.gz"
        );
        let missing = RolloutAction {
            from_step: Some("prep".into()),
            ..from
        };
        let err = rollout_source(&missing, &params, &outputs).unwrap_err();
        assert!(err.contains("step prep has no artifactUri"), "{err}");
    }

    #[test]
    fn training_hyperparameters_are_substituted() {
        let spec: SageMakerTraining = serde_json::from_value(json!({
            "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/xgb:1",
            "roleArn": "arn:aws:iam::123456789012:role/sm",
            "instanceType": "ml.m5.large",
            "outputS3Uri": "s3://b/out",
            "hyperparameters": {"rounds": "$(params.rounds)", "eta": "0.1"},
        }))
        .unwrap();
        let params = BTreeMap::from([("rounds".to_string(), "50".to_string())]);
        let done = substituted_training(&spec, &params, &StepOutputs::new()).unwrap();
        assert_eq!(done.hyperparameters["rounds"], "50");
        assert_eq!(done.hyperparameters["eta"], "0.1");
        assert!(substituted_training(&spec, &BTreeMap::new(), &StepOutputs::new()).is_err());
    }

    #[test]
    fn rollouts_are_polled_often_then_less() {
        assert_eq!(rollout_poll(TimeDelta::seconds(0)), Duration::from_secs(2));
        assert_eq!(
            rollout_poll(TimeDelta::seconds(100)),
            Duration::from_secs(10)
        );
        assert_eq!(
            rollout_poll(TimeDelta::seconds(3600)),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn the_running_message_names_running_and_retrying_steps() {
        let spec: aleph_crds::pipeline::PipelineSpec = serde_json::from_value(json!({
            "steps": [
                {"name": "a", "container": {"image": "x"}},
                {"name": "b", "container": {"image": "x"}},
                {"name": "c", "container": {"image": "x"}},
            ]
        }))
        .unwrap();
        let graph = graph::validate(&spec).unwrap();
        let steps = vec![
            StepStatus {
                name: "a".into(),
                phase: StepPhase::Succeeded,
                ..StepStatus::default()
            },
            StepStatus {
                name: "b".into(),
                phase: StepPhase::Running,
                ..StepStatus::default()
            },
            StepStatus {
                name: "c".into(),
                phase: StepPhase::Retrying,
                ..StepStatus::default()
            },
        ];
        assert_eq!(
            running_message(&graph, &steps, "1/3"),
            "1/3 steps finished; running: b; waiting to retry: c"
        );
        let mut blocked = steps.clone();
        blocked[1].message = Some("no AWS region; retrying".into());
        assert_eq!(
            running_message(&graph, &blocked, "1/3"),
            "1/3 steps finished; running: b (no AWS region; retrying); waiting to retry: c"
        );
        blocked[1].phase = StepPhase::Pending;
        assert_eq!(
            running_message(&graph, &blocked, "1/3"),
            "1/3 steps finished; cannot start: b (no AWS region; retrying); waiting to retry: c"
        );
    }
}
