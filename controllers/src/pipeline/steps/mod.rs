//! The step drivers: how a step of each kind is started, observed and
//! stopped. A container or plugin step runs a Job ([`job`]), a training step
//! a SageMaker training job ([`sagemaker`]), a rollout step sets an AIModel's
//! source and waits for it to be Ready ([`rollout`]).
//!
//! A driver only reports what it did or found ([`StartOutcome`],
//! [`Observed`]): the run's reconciler records it in the step statuses
//! through the [`scheduler`](super::scheduler).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aleph_crds::pipeline::{PipelineRunStatus, PipelineSpec, PipelineStep, StepPhase, StepStatus};
use aleph_crds::pipeline_data::WorkspaceStatus;
use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::Job;

use super::params::StepOutputs;
use super::pass::Pass;
use crate::conditions::parse_time;
use crate::error::Result;

pub mod fan_out;
pub mod gate;
pub mod job;
pub mod rollout;
pub mod sagemaker;

/// What a pass found out about a running step.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Observed {
    /// Still running; what it waits for, and when to look again.
    Running {
        message: Option<String>,
        recheck: Option<Duration>,
    },
    /// Succeeded with these outputs.
    Succeeded(BTreeMap<String, String>),
    /// Not run: these outputs of an earlier run were reused (memoization);
    /// the message says which run.
    Reused {
        outputs: BTreeMap<String, String>,
        message: String,
    },
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
pub(super) enum StartOutcome {
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

/// What a pass knows of its run that a step may use.
pub(super) struct Values<'a> {
    /// The run's params.
    pub params: &'a BTreeMap<String, String>,
    /// The outputs of the steps that succeeded.
    pub outputs: StepOutputs,
    /// The run's Jobs by name, as listed at the start of the pass.
    pub jobs: &'a BTreeMap<String, Job>,
    /// The claims behind the run's workspaces.
    pub workspaces: &'a [WorkspaceStatus],
    /// ReadWriteOnce workspaces that a running step mounts and whose node is
    /// not known yet: a step that mounts one waits until it is.
    pub unplaced: BTreeSet<String>,
    /// The pipeline's parallelism.
    pub parallelism: Option<usize>,
    /// The pipeline spec the run executes.
    pub spec: Option<&'a PipelineSpec>,
    /// The steps' statuses (the artifacts they left).
    pub steps: &'a [StepStatus],
}

impl<'a> Values<'a> {
    /// The values as the run's `status` has them now.
    pub fn of(status: &'a PipelineRunStatus, jobs: &'a BTreeMap<String, Job>) -> Self {
        let spec = status.pipeline_spec.as_ref();
        let unplaced = status
            .workspaces
            .iter()
            .filter(|w| w.node.is_none())
            .filter(|w| {
                w.access_modes
                    .iter()
                    .any(|m| m.starts_with("ReadWriteOnce"))
            })
            .filter(|w| {
                status
                    .steps
                    .iter()
                    .filter(|s| s.phase == StepPhase::Running)
                    .filter_map(|s| {
                        spec.and_then(|spec| {
                            spec.steps
                                .iter()
                                .chain(spec.finally.iter())
                                .find(|d| d.name == s.name)
                        })
                    })
                    .any(|d| d.workspaces.iter().any(|m| m.name == w.name))
            })
            .map(|w| w.name.clone())
            .collect();
        Self {
            params: &status.params,
            outputs: super::scheduler::step_outputs(&status.steps),
            jobs,
            workspaces: &status.workspaces,
            unplaced,
            parallelism: spec
                .and_then(|s| s.parallelism)
                .map(|p| usize::try_from(p.max(1)).unwrap_or(1)),
            spec,
            steps: &status.steps,
        }
    }
}

/// Starts, observes and stops one step, within one pass of its run.
pub(super) trait StepDriver {
    /// Starts attempt `attempt` of the step.
    async fn start(&mut self, attempt: i32, values: &Values<'_>) -> Result<StartOutcome>;
    /// What became of the step's running attempt, whose status is `s`.
    async fn observe(&mut self, s: &StepStatus, values: &Values<'_>) -> Result<Observed>;
    /// Stops the running attempt, whose Job or SageMaker job is `job_name`.
    async fn stop(&mut self, job_name: &str) -> Result<()>;
}

/// The driver of a step, by the kind of action it runs.
pub(super) enum Driver<'p, 'c> {
    /// A container or plugin: a Job.
    Job(job::JobStep<'p, 'c>),
    /// A SageMaker training job.
    Training(sagemaker::TrainingStep<'p, 'c>),
    /// An AIModel rollout.
    Rollout(rollout::RolloutStep<'p, 'c>),
    /// An approval gate.
    Approval(gate::ApprovalStep<'p, 'c>),
    /// A webhook message.
    Notify(gate::NotifyStep<'p, 'c>),
}

/// The driver of `step` for the pass `pass`.
pub(super) fn driver<'p, 'c>(pass: &'p mut Pass<'c>, step: &'p PipelineStep) -> Driver<'p, 'c> {
    if let Some(training) = &step.training {
        Driver::Training(sagemaker::TrainingStep {
            pass,
            step,
            training,
        })
    } else if let Some(rollout) = &step.rollout {
        Driver::Rollout(rollout::RolloutStep {
            pass,
            step,
            rollout,
        })
    } else if let Some(approval) = &step.approval {
        Driver::Approval(gate::ApprovalStep {
            pass,
            step,
            approval,
        })
    } else if let Some(notify) = &step.notify {
        Driver::Notify(gate::NotifyStep { pass, step, notify })
    } else {
        Driver::Job(job::JobStep { pass, step })
    }
}

/// Calls the same method of whichever driver a step has.
macro_rules! dispatch {
    ($driver:expr, $d:ident => $call:expr) => {
        match $driver {
            Driver::Job($d) => $call,
            Driver::Training($d) => $call,
            Driver::Rollout($d) => $call,
            Driver::Approval($d) => $call,
            Driver::Notify($d) => $call,
        }
    };
}

impl StepDriver for Driver<'_, '_> {
    async fn start(&mut self, attempt: i32, values: &Values<'_>) -> Result<StartOutcome> {
        dispatch!(self, d => d.start(attempt, values).await)
    }

    async fn observe(&mut self, s: &StepStatus, values: &Values<'_>) -> Result<Observed> {
        dispatch!(self, d => d.observe(s, values).await)
    }

    async fn stop(&mut self, job_name: &str) -> Result<()> {
        dispatch!(self, d => d.stop(job_name).await)
    }
}

/// When the current attempt of a step started.
fn attempt_started(s: &StepStatus, now: DateTime<Utc>) -> DateTime<Utc> {
    parse_time(s.attempt_times.last().map(String::as_str))
        .or_else(|| parse_time(s.start_time.as_deref()))
        .unwrap_or(now)
}
