//! The driver of training steps: each attempt is a SageMaker training job,
//! run by the same saga as an AIModel's training
//! ([`reconcile_training`]). The job lives outside the cluster, so the run
//! holds the finalizer while one runs, and stopping the step (or deleting the
//! run) asks SageMaker to stop it.

use std::collections::BTreeMap;
use std::time::Duration;

use aleph_crds::TrainingStatus;
use aleph_crds::common::SageMakerTraining;
use aleph_crds::pipeline::{PipelineStep, StepStatus};
use chrono::TimeDelta;

use super::{Observed, StartOutcome, StepDriver, Values, attempt_started};
use crate::context::Context;
use crate::error::Result;
use crate::pipeline::params::{self, StepOutputs};
use crate::pipeline::pass::Pass;
use crate::sagemaker::{
    CleanupOutcome, SagaOwner, SageMakerApi, SmResult, reconcile_training,
    training::TrainingOutcome,
};

/// The output of a training step holding the model artifact's URI.
pub const ARTIFACT_OUTPUT: &str = "artifactUri";
/// The output of a training step holding the SageMaker training job's name.
pub const TRAINING_JOB_OUTPUT: &str = "trainingJob";

/// How often a running training job is looked at when nothing caps it lower.
const TRAINING_POLL: Duration = Duration::from_secs(30);

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

/// The name a training step's SageMaker job is derived from (with the run's
/// UID and the training spec): one job per attempt.
fn training_owner_name(step: &str, attempt: i32) -> String {
    format!("{step}-{attempt}")
}

/// Asks SageMaker to stop the training job `job_name`.
pub(in crate::pipeline) async fn stop_training(
    ctx: &Context,
    training: &SageMakerTraining,
    job_name: &str,
) -> Result<CleanupOutcome> {
    let api = ctx.sagemaker(training.region.as_deref()).await?;
    let status = TrainingStatus {
        job_name: job_name.to_string(),
        job_status: Some("InProgress".into()),
        artifact_uri: None,
        failure_reason: None,
    };
    Ok(crate::sagemaker::cleanup::stop_training(api.as_ref(), &status).await?)
}

/// A training step, in one pass.
pub(in crate::pipeline) struct TrainingStep<'p, 'c> {
    pub(in crate::pipeline) pass: &'p mut Pass<'c>,
    pub(in crate::pipeline) step: &'p PipelineStep,
    pub(in crate::pipeline) training: &'p SageMakerTraining,
}

impl TrainingStep<'_, '_> {
    /// A pass of the training saga for attempt `attempt`, whose SageMaker
    /// job is `previous` when a pass already started it.
    async fn saga(
        &self,
        api: &dyn SageMakerApi,
        spec: &SageMakerTraining,
        attempt: i32,
        previous: Option<&TrainingStatus>,
    ) -> SmResult<TrainingOutcome> {
        let owner = training_owner_name(&self.step.name, attempt);
        let owner = SagaOwner {
            uid: &self.pass.uid,
            namespace: &self.pass.namespace,
            name: &owner,
        };
        reconcile_training(api, owner, spec, previous).await
    }

    fn cap_poll(&self, after: Duration) -> Duration {
        self.pass
            .ctx
            .settings
            .sagemaker_max_poll
            .map_or(after, |cap| after.min(cap))
    }

    /// Turns a pass of the training saga into what it means for the step.
    fn training_observed(&mut self, step: &str, outcome: TrainingOutcome) -> Observed {
        for event in &outcome.events {
            self.pass.events.push((
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
}

impl StepDriver for TrainingStep<'_, '_> {
    async fn start(&mut self, attempt: i32, values: &Values<'_>) -> Result<StartOutcome> {
        let (step, training) = (self.step, self.training);
        let spec = match substituted_training(training, values.params, &values.outputs) {
            Ok(spec) => spec,
            Err(why) => return Ok(StartOutcome::Failed(why)),
        };
        // The job lives outside the cluster: hold the run until it is stopped.
        self.pass.set_finalizer(true).await?;
        let api = match self.pass.ctx.sagemaker(spec.region.as_deref()).await {
            Ok(api) => api,
            Err(e) => return Ok(StartOutcome::Blocked(format!("{e}; retrying"))),
        };
        match self.saga(api.as_ref(), &spec, attempt, None).await {
            Ok(outcome) => {
                let job_name = Some(outcome.status.job_name.clone());
                let observed = self.training_observed(&step.name, outcome);
                Ok(StartOutcome::Started { job_name, observed })
            }
            Err(e) => Ok(StartOutcome::Blocked(format!("SageMaker: {e}; retrying"))),
        }
    }

    async fn observe(&mut self, s: &StepStatus, values: &Values<'_>) -> Result<Observed> {
        let (step, training) = (self.step, self.training);
        let spec = match substituted_training(training, values.params, &values.outputs) {
            Ok(spec) => spec,
            Err(why) => return Ok(Observed::Failed(why)),
        };
        if let Some(limit) = step.timeout_seconds {
            let started = attempt_started(s, self.pass.now);
            if self.pass.now - started >= TimeDelta::try_seconds(limit).unwrap_or(TimeDelta::MAX) {
                if let Some(job) = s.job_name.as_deref() {
                    stop_training(self.pass.ctx, &spec, job).await?;
                }
                return Ok(Observed::Failed(format!(
                    "timed out after {limit}s (the step's timeoutSeconds); the SageMaker training job was asked to stop"
                )));
            }
            self.pass
                .recheck_at(started + TimeDelta::try_seconds(limit).unwrap_or(TimeDelta::MAX));
        }
        let api = match self.pass.ctx.sagemaker(spec.region.as_deref()).await {
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
        match self
            .saga(api.as_ref(), &spec, s.attempts.max(1), previous.as_ref())
            .await
        {
            Ok(outcome) => Ok(self.training_observed(&step.name, outcome)),
            Err(e) => Ok(Observed::Running {
                message: Some(format!("SageMaker: {e}; retrying")),
                recheck: Some(self.cap_poll(TRAINING_POLL)),
            }),
        }
    }

    async fn stop(&mut self, job_name: &str) -> Result<()> {
        stop_training(self.pass.ctx, self.training, job_name).await?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "sagemaker_tests.rs"]
mod tests;
