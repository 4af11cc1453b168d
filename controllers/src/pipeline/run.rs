//! The PipelineRun reconciler: runs the steps of one run in dependency order.
//!
//! Each pass reads the run fresh from the API server (the cache may not have
//! caught up with the previous pass's status write), then:
//!
//! 1. on the first pass (see `start`), snapshots the Pipeline's spec into
//!    `status.pipelineSpec`, resolves the params and, for `resumeFrom`, reuses
//!    the steps that succeeded in the earlier run; an invalid graph or params
//!    fail the run at once (`InvalidGraph`, `ParameterMissing`, ...);
//! 2. looks at every running step through its kind's driver (see
//!    [`steps`]): its Job (and pod, for the outputs in the termination
//!    message), its SageMaker training job, or the AIModel it rolls out;
//! 3. asks [`scheduler::plan`] what to do next and does it: starts steps
//!    (creates Jobs, starts training jobs, patches AIModels), stops them,
//!    finishes the run;
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

use aleph_crds::conditions::SUCCEEDED;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aleph_crds::common::ConditionStatus;
use aleph_crds::keys::RUN_LABEL;
use aleph_crds::pipeline::{PipelineRun, PipelineRunStatus, RunPhase, StepPhase, StepStatus};
use aleph_crds::pipeline_data::{DeliveryPhase, RunEvent};
use chrono::TimeDelta;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::artifacts;
use super::build;
use super::graph::{self, Graph};
use super::pass::Pass;
use super::pass::to_std;
use super::retry;
use super::scheduler::{self, FinishReason, RunState};
use super::steps::{self, Observed, StartOutcome, StepDriver, Values, sagemaker};
use crate::apply::{MANAGER, delete_ignoring_missing};
use crate::conditions::{NewCondition, parse_time, set_condition};
use crate::context::Context;
use crate::error::{Result, uid_of};
use crate::sagemaker::CleanupOutcome;

mod bind;
pub(crate) mod collect;
mod notifications;
mod start;

/// How often a run waiting for its Pipeline (or its resumeFrom run) looks again.
const WAIT_FOR_REFERENCE: Duration = Duration::from_secs(10);
/// How often a step whose Job the API server refused for now is tried again.
const RETRY_REFUSED: Duration = Duration::from_secs(10);

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

/// Reconciles one PipelineRun.
pub async fn reconcile(name: &str, namespace: &str, ctx: &Context) -> Result<Action> {
    let api: Api<PipelineRun> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(run) = api.get_opt(name).await? else {
        return Ok(Action::await_change());
    };
    let uid = uid_of(&run)?;
    let mut pass = Pass::new(ctx, api, run, namespace, name, uid);
    if pass.run.metadata.deletion_timestamp.is_some() {
        return pass.finalize().await;
    }
    let mut status = pass.run.status.clone().unwrap_or_default();
    status.observed_generation = pass.run.metadata.generation;
    let was_finished = is_finished(status.phase);
    if !was_finished {
        let ready = status.pipeline_spec.is_some() || pass.start(&mut status).await?;
        if ready {
            pass.advance(&mut status).await?;
        }
        if is_finished(status.phase) {
            let event = if status.phase == RunPhase::Succeeded {
                RunEvent::Succeeded
            } else {
                RunEvent::Failed
            };
            pass.queue_notifications(&mut status, event, None);
        }
    }
    pass.deliver_notifications(&mut status).await?;
    pass.write_status(&status).await?;
    if pass.has_finalizer() && !pass.training_in_flight(&status) && !has_artifacts(&status) {
        pass.set_finalizer(false).await?;
    }
    pass.publish().await;
    if is_finished(status.phase) {
        if status
            .notifications
            .iter()
            .any(|n| n.phase == DeliveryPhase::Pending)
        {
            return Ok(pass.action());
        }
        return pass.expire(&status).await;
    }
    Ok(pass.action())
}

/// Whether the run has artifacts to delete when it is deleted.
fn has_artifacts(status: &PipelineRunStatus) -> bool {
    status
        .pipeline_spec
        .as_ref()
        .is_some_and(|spec| artifacts::run_has_artifacts(spec, &status.steps))
}

impl Pass<'_> {
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
                        sagemaker::stop_training(self.ctx, training, job).await?
                {
                    waiting = Some(waiting.map_or(after, |w| w.min(after)));
                }
            }
        }
        if waiting.is_none()
            && has_artifacts(&status)
            && let Some(spec) = status.pipeline_spec.as_ref()
        {
            waiting = self.delete_artifacts(spec).await?;
        }
        match waiting {
            Some(after) => Ok(Action::requeue(after)),
            None => {
                self.set_finalizer(false).await?;
                Ok(Action::await_change())
            }
        }
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

        // 0. The claims behind the workspaces, before any step mounts them.
        match self.bind_workspaces(&spec, status).await? {
            bind::Binding::Ready => {}
            bind::Binding::Invalid(why) => {
                self.fail_at_start(status, "InvalidWorkspaces", why);
                return Ok(());
            }
            bind::Binding::Waiting(why) if !stopping => {
                status.phase = RunPhase::Running;
                set_condition(
                    &mut status.conditions,
                    NewCondition::new(
                        SUCCEEDED,
                        ConditionStatus::Unknown,
                        "WaitingForWorkspaces",
                        why,
                    ),
                    self.run.metadata.generation,
                );
                self.recheck_in(RETRY_REFUSED);
                return Ok(());
            }
            // A run stopped before its claims were there lets the scheduler skip its steps.
            bind::Binding::Waiting(_) => {}
        }

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
            let values = Values::of(status, &jobs);
            let observed = steps::driver(self, step).observe(&s, &values).await?;
            self.record(&graph, status, &s.name, observed, stopping);
        }
        self.place_workspaces(status);

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
                        let values = Values::of(status, &jobs);
                        acted = true;
                        match steps::driver(self, definition)
                            .start(*attempt, &values)
                            .await?
                        {
                            StartOutcome::Started { job_name, observed } => {
                                scheduler::apply(&mut status.steps, &action, self.now);
                                if let Some(s) = status.steps.iter_mut().find(|s| &s.name == step) {
                                    s.job_name = job_name;
                                }
                                if definition.approval.is_some() {
                                    self.queue_notifications(
                                        status,
                                        RunEvent::ApprovalNeeded,
                                        Some(step),
                                    );
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
                        // A step with no Job or SageMaker job has nothing running to stop.
                        if let (Some(definition), Some(job_name)) = (
                            graph.step(step),
                            status
                                .steps
                                .iter()
                                .find(|s| &s.name == step)
                                .and_then(|s| s.job_name.clone()),
                        ) {
                            steps::driver(self, definition).stop(&job_name).await?;
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
                let (outputs, refs) = artifacts::split_refs(outputs);
                scheduler::record_succeeded(&mut status.steps, name, outputs, self.now);
                if let Some(s) = status.steps.iter_mut().find(|s| s.name == name) {
                    s.artifacts = refs;
                }
            }
            Observed::Reused { outputs, message } => {
                let (outputs, refs) = artifacts::split_refs(outputs);
                scheduler::record_succeeded(&mut status.steps, name, outputs, self.now);
                if let Some(s) = status.steps.iter_mut().find(|s| s.name == name) {
                    s.artifacts = refs;
                    s.phase = StepPhase::Reused;
                    s.message = Some(message.clone());
                }
                self.event(
                    EventType::Normal,
                    "StepReused",
                    format!("step {name}: {message}"),
                );
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
                    let delay = retry::delay(step, attempts);
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
        let selector = format!("{RUN_LABEL}={}", build::label_value(&self.name));
        Ok(api
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .into_iter()
            .map(|job| (job.name_any(), job))
            .collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "run_tests.rs"]
mod tests;
