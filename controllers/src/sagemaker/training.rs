//! The training saga: one SageMaker training job per training spec, exactly once.
//!
//! Each call looks before it acts: Describe the job named after the owner and
//! the spec; create it only when SageMaker says it does not exist; a duplicate
//! name on create means an earlier attempt got through, so Describe again. A
//! spec change gives a new name and so a new job; the previous job, if still
//! running, is stopped first.

use std::time::Duration;

use aleph_crds::conditions::TRAINED;
use aleph_crds::{ConditionStatus, SageMakerTraining, TrainingStatus};

use super::naming::training_job_name;
use super::{
    CreateTrainingJobRequest, REQUEUE_CHANGING, REQUEUE_TRAINING, SagaOutcome, SagaOwner,
    SageMakerApi, SageMakerError, SageMakerEvent, SmResult, TrainingInput, TrainingJob,
    TrainingJobState,
};
use crate::conditions::NewCondition;

/// What one pass of the training saga found and did; the status is the one
/// to record in `status.training`.
pub type TrainingOutcome = SagaOutcome<TrainingStatus>;

impl TrainingOutcome {
    /// Whether the job completed; then [`TrainingOutcome::artifact_uri`] is the model.
    pub fn completed(&self) -> bool {
        self.status.job_status.as_deref() == Some("Completed")
    }

    /// The trained model's artifact, once completed.
    pub fn artifact_uri(&self) -> Option<&str> {
        if self.completed() {
            self.status.artifact_uri.as_deref()
        } else {
            None
        }
    }
}

/// Advances the training job of one owner by one step.
///
/// `owner` is the owning object; `status` is
/// what the previous pass recorded (or `None`). Errors that retrying may fix
/// ([`SageMakerError::Recoverable`]) are returned as `Err` so the caller backs
/// off; everything else, including SageMaker rejecting the spec, is an `Ok`
/// outcome.
pub async fn reconcile_training(
    api: &dyn SageMakerApi,
    owner: SagaOwner<'_>,
    spec: &SageMakerTraining,
    status: Option<&TrainingStatus>,
) -> SmResult<TrainingOutcome> {
    let job_name = training_job_name(owner.uid, owner.name, spec);
    let mut events = Vec::new();

    // A previous spec's job: stop it if it is still running.
    if let Some(prev) = status.filter(|s| s.job_name != job_name)
        && let Some(event) = stop_superseded(api, prev).await?
    {
        events.push(event);
    }
    let prev = status.filter(|s| s.job_name == job_name);

    // SageMaker rejected this very spec before: say so again without calling it.
    if let Some(prev) = prev.filter(|p| p.job_status.is_none() && p.failure_reason.is_some()) {
        return Ok(rejected(
            prev.clone(),
            prev.failure_reason.clone().unwrap_or_default(),
            events,
            false,
        ));
    }

    let job = match api.describe_training_job(&job_name).await {
        Ok(job) => job,
        Err(e) if e.is_not_found() => {
            let request = create_request(&job_name, owner, spec);
            match api.create_training_job(&request).await {
                Ok(_) => {
                    events.push(SageMakerEvent::normal(
                        "TrainingStarted",
                        format!("Started SageMaker training job {job_name}"),
                    ));
                    return Ok(TrainingOutcome::recheck(
                        TrainingStatus {
                            job_name: job_name.clone(),
                            job_status: Some("InProgress".into()),
                            artifact_uri: None,
                            failure_reason: None,
                        },
                        NewCondition::no(
                            TRAINED,
                            "TrainingInProgress",
                            format!("SageMaker training job {job_name} started"),
                        ),
                        REQUEUE_CHANGING,
                        events,
                    ));
                }
                // An earlier attempt got through (the name is ours alone): look at it.
                Err(e) if e.is_already_exists() => api.describe_training_job(&job_name).await?,
                // Rejected, or something it refers to does not exist.
                Err(e) if e.is_terminal() || e.is_not_found() => {
                    let status = TrainingStatus {
                        job_name: job_name.clone(),
                        job_status: None,
                        artifact_uri: None,
                        failure_reason: Some(rejection(&e)),
                    };
                    let reason = status.failure_reason.clone().unwrap_or_default();
                    return Ok(rejected(status, reason, events, true));
                }
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    Ok(observed(job, spec, prev, events))
}

/// Stops the job of a superseded spec if it may still be running. Returns the
/// event to publish when it asked SageMaker to stop it.
async fn stop_superseded(
    api: &dyn SageMakerApi,
    prev: &TrainingStatus,
) -> SmResult<Option<SageMakerEvent>> {
    let known_final = prev
        .job_status
        .as_deref()
        .map(TrainingJobState::parse)
        .is_some_and(|s| s.is_final());
    // Rejected at creation: there is no job.
    let never_created = prev.job_status.is_none() && prev.failure_reason.is_some();
    if known_final || never_created {
        return Ok(None);
    }
    let job = match api.describe_training_job(&prev.job_name).await {
        Ok(job) => job,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    if job.state != TrainingJobState::InProgress {
        return Ok(None);
    }
    match api.stop_training_job(&prev.job_name).await {
        // Terminal: it finished between the two calls.
        Ok(()) => Ok(Some(SageMakerEvent::normal(
            "TrainingStopped",
            format!(
                "Stopped SageMaker training job {}: the training spec changed",
                prev.job_name
            ),
        ))),
        Err(e) if e.is_not_found() || e.is_terminal() => Ok(None),
        Err(e) => Err(e),
    }
}

fn rejected(
    status: TrainingStatus,
    reason: String,
    events: Vec<SageMakerEvent>,
    first: bool,
) -> TrainingOutcome {
    let mut events = events;
    let message = format!(
        "SageMaker rejected training job {}: {reason}. Fix spec.training; the job is retried when the spec changes",
        status.job_name
    );
    if first {
        events.push(SageMakerEvent::warning("TrainingRejected", message.clone()));
    }
    TrainingOutcome::terminal(
        status,
        NewCondition::no(TRAINED, "TrainingRejected", message),
        events,
    )
}

/// The condition, terminal flag and requeue of a job that ended without a
/// model: `False` for good, and a warning event when the state is news.
fn ended(
    reason: &'static str,
    message: String,
    changed: bool,
    events: &mut Vec<SageMakerEvent>,
) -> (NewCondition, bool, Option<Duration>) {
    if changed {
        events.push(SageMakerEvent::warning(reason, message.clone()));
    }
    (NewCondition::no(TRAINED, reason, message), true, None)
}

/// The outcome for a job as Describe reported it.
fn observed(
    job: TrainingJob,
    spec: &SageMakerTraining,
    prev: Option<&TrainingStatus>,
    mut events: Vec<SageMakerEvent>,
) -> TrainingOutcome {
    let was = prev
        .and_then(|p| p.job_status.as_deref())
        .map(TrainingJobState::parse);
    let changed = was.as_ref() != Some(&job.state);
    let name = job.name.clone();
    let mut status = TrainingStatus {
        job_name: job.name.clone(),
        job_status: Some(job.state.as_str().to_string()),
        artifact_uri: None,
        failure_reason: None,
    };
    let (condition, terminal, requeue_after) = match &job.state {
        TrainingJobState::InProgress => {
            let detail = job
                .secondary_status
                .as_deref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default();
            (
                NewCondition::no(
                    TRAINED,
                    "TrainingInProgress",
                    format!("SageMaker training job {name} is running{detail}"),
                ),
                false,
                Some(REQUEUE_TRAINING),
            )
        }
        TrainingJobState::Completed => {
            // SageMaker writes the artifact to <output>/<job>/output/model.tar.gz.
            let artifact = job.model_artifacts.clone().unwrap_or_else(|| {
                format!(
                    "{}/{name}/output/model.tar.gz",
                    spec.output_s3_uri.trim_end_matches('/')
                )
            });
            status.artifact_uri = Some(artifact.clone());
            if changed {
                events.push(SageMakerEvent::normal(
                    "TrainingCompleted",
                    format!("SageMaker training job {name} completed; the model is at {artifact}"),
                ));
            }
            (
                NewCondition::yes(
                    TRAINED,
                    "TrainingCompleted",
                    format!("SageMaker training job {name} completed; the model is at {artifact}"),
                ),
                false,
                None,
            )
        }
        TrainingJobState::Failed => {
            let reason = job
                .failure_reason
                .clone()
                .unwrap_or_else(|| "no reason given".into());
            status.failure_reason = Some(reason.clone());
            let message = format!(
                "SageMaker training job {name} failed: {reason}. Fix the cause and change spec.training to start a new job"
            );
            ended("TrainingFailed", message, changed, &mut events)
        }
        TrainingJobState::Stopping => (
            NewCondition::no(
                TRAINED,
                "TrainingStopping",
                format!("SageMaker training job {name} is stopping"),
            ),
            false,
            Some(REQUEUE_CHANGING),
        ),
        TrainingJobState::Stopped => {
            status.failure_reason = job.failure_reason.clone();
            let message = format!(
                "SageMaker training job {name} was stopped before it completed; change spec.training to start a new job"
            );
            ended("TrainingStopped", message, changed, &mut events)
        }
        TrainingJobState::Other(state) => (
            NewCondition::new(
                TRAINED,
                ConditionStatus::Unknown,
                "TrainingStatusUnknown",
                format!("SageMaker training job {name} is in state {state}"),
            ),
            false,
            Some(REQUEUE_TRAINING),
        ),
    };
    TrainingOutcome {
        status,
        condition,
        terminal,
        requeue_after,
        events,
    }
}

/// The CreateTrainingJob request for a spec.
pub fn create_request(
    job_name: &str,
    owner: SagaOwner<'_>,
    spec: &SageMakerTraining,
) -> CreateTrainingJobRequest {
    let mut tags = spec.tags.clone();
    tags.extend(owner.tags());
    let (security_group_ids, subnets) = match &spec.vpc {
        Some(vpc) => (vpc.security_group_ids.clone(), vpc.subnets.clone()),
        None => (Vec::new(), Vec::new()),
    };
    CreateTrainingJobRequest {
        job_name: job_name.to_string(),
        image: spec.image.clone(),
        role_arn: spec.role_arn.clone(),
        instance_type: spec.instance_type.clone(),
        instance_count: spec.instance_count,
        volume_size_gb: spec.volume_size_gb,
        max_runtime_seconds: spec.max_runtime_seconds,
        spot_max_wait_seconds: spec.spot.as_ref().map(|s| s.max_wait_seconds),
        hyperparameters: spec.hyperparameters.clone(),
        inputs: spec
            .inputs
            .iter()
            .map(|c| TrainingInput {
                channel_name: c.name.clone(),
                s3_uri: c.s3_uri.clone(),
                content_type: c.content_type.clone(),
            })
            .collect(),
        output_s3_uri: spec.output_s3_uri.clone(),
        kms_key_id: spec.kms_key_id.clone(),
        security_group_ids,
        subnets,
        tags,
    }
}

/// SageMaker's code and message of a rejected request.
pub(crate) fn rejection(error: &SageMakerError) -> String {
    match error {
        SageMakerError::Terminal { code, message, .. } => format!("{code}: {message}"),
        SageMakerError::NotFound { message, .. } => format!("ResourceNotFound: {message}"),
        other => other.message().to_string(),
    }
}

#[cfg(test)]
#[path = "training_tests.rs"]
mod tests;
