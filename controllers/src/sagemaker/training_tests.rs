//! The training saga against the in-memory SageMaker.

use kube::runtime::events::EventType;

use super::*;
use crate::sagemaker::RecoverableKind;
use crate::sagemaker::memory::fixtures::{FRAUD, NAME, OWNER, training_spec};
use crate::sagemaker::memory::{Fault, JobEnd, MemorySageMaker};

/// One pass of the saga for the fixtures' owner.
async fn try_pass(
    api: &MemorySageMaker,
    spec: &SageMakerTraining,
    status: Option<&TrainingStatus>,
) -> SmResult<TrainingOutcome> {
    reconcile_training(api, FRAUD, spec, status).await
}

/// One pass that must not fail.
async fn pass(
    api: &MemorySageMaker,
    spec: &SageMakerTraining,
    status: Option<&TrainingStatus>,
) -> TrainingOutcome {
    try_pass(api, spec, status)
        .await
        .expect("a pass without a recoverable error")
}

/// The in-memory SageMaker after a first pass over the fixture's spec has
/// started its job.
async fn started() -> (MemorySageMaker, SageMakerTraining, TrainingOutcome) {
    let api = MemorySageMaker::new();
    let spec = training_spec();
    let first = pass(&api, &spec, None).await;
    (api, spec, first)
}

fn reasons(outcome: &TrainingOutcome) -> Vec<&'static str> {
    outcome.events.iter().map(|e| e.reason).collect()
}

#[tokio::test]
async fn two_passes_without_a_status_create_one_job() {
    let api = MemorySageMaker::new();
    let spec = training_spec();
    let job = training_job_name(OWNER, NAME, &spec);

    let first = pass(&api, &spec, None).await;
    assert_eq!(first.status.job_name, job);
    assert_eq!(first.status.job_status.as_deref(), Some("InProgress"));
    assert_eq!(reasons(&first), ["TrainingStarted"]);
    assert_eq!(first.condition.status, ConditionStatus::False);
    assert_eq!(first.condition.reason, "TrainingInProgress");
    assert_eq!(first.requeue_after, Some(REQUEUE_CHANGING));
    assert!(!first.terminal);

    // The status write was lost: the next pass finds the job by its name.
    let second = pass(&api, &spec, None).await;
    assert_eq!(api.calls("CreateTrainingJob"), 1);
    assert_eq!(api.training_job_names(), vec![job.clone()]);
    assert_eq!(second.status, first.status);
    assert!(second.events.is_empty(), "{:?}", second.events);
    assert_eq!(second.condition.reason, "TrainingInProgress");
    assert!(
        second.condition.message.contains("(Starting)"),
        "the secondary status is shown: {}",
        second.condition.message
    );
    assert_eq!(second.requeue_after, Some(REQUEUE_TRAINING));

    // The request carries the spec and the owner's tags next to the spec's.
    let request = api.training_job(&job).expect("the job").request;
    assert_eq!(request, create_request(&job, FRAUD, &spec));
    assert_eq!(request.tags.get("team").map(String::as_str), Some("risk"));
    assert_eq!(
        request.tags.get("aleph.dev/owner-uid").map(String::as_str),
        Some(OWNER)
    );
    assert_eq!(request.inputs.len(), 1);
    assert_eq!(
        request.hyperparameters.get("num_round").map(String::as_str),
        Some("50")
    );
}

#[tokio::test]
async fn a_duplicate_on_create_looks_at_the_job_an_earlier_attempt_made() {
    let api = MemorySageMaker::new();
    let spec = training_spec();
    let job = training_job_name(OWNER, NAME, &spec);
    // An earlier attempt created the job, but this pass's Describe still misses it.
    api.create_training_job(&create_request(&job, FRAUD, &spec))
        .await
        .expect("created");
    api.fail_next(
        "DescribeTrainingJob",
        Fault::Validation("Requested resource not found.".into()),
    );

    let outcome = pass(&api, &spec, None).await;
    assert_eq!(api.calls("CreateTrainingJob"), 2, "the saga tried once");
    assert_eq!(api.calls("DescribeTrainingJob"), 2, "and described again");
    assert_eq!(api.training_job_names(), vec![job]);
    assert!(outcome.events.is_empty(), "no second TrainingStarted");
    assert_eq!(outcome.status.job_status.as_deref(), Some("InProgress"));
    assert_eq!(outcome.status.failure_reason, None);
}

#[tokio::test]
async fn completion_is_reported_with_the_artifact() {
    let (api, spec, started) = started().await;
    let job = started.status.job_name.clone();
    let running = pass(&api, &spec, Some(&started.status)).await;
    assert!(!running.completed());
    assert_eq!(running.artifact_uri(), None);

    api.finish_training(&job, JobEnd::Completed);
    let done = pass(&api, &spec, Some(&running.status)).await;
    let artifact = format!("s3://aleph-unit/models/{job}/output/model.tar.gz");
    assert!(done.completed(), "{done:?}");
    assert_eq!(done.artifact_uri(), Some(artifact.as_str()));
    assert_eq!(done.status.job_status.as_deref(), Some("Completed"));
    assert_eq!(done.condition.status, ConditionStatus::True);
    assert_eq!(done.condition.reason, "TrainingCompleted");
    assert!(done.condition.message.contains(&artifact));
    assert_eq!(reasons(&done), ["TrainingCompleted"]);
    assert_eq!(done.requeue_after, None);
    assert!(!done.terminal);

    // Steady: the same outcome, no second event, nothing created.
    let again = pass(&api, &spec, Some(&done.status)).await;
    assert!(again.events.is_empty());
    assert_eq!(again.status, done.status);
    assert_eq!(api.calls("CreateTrainingJob"), 1);
}

#[tokio::test]
async fn a_failed_job_reports_its_reason_and_is_terminal() {
    let (api, spec, started) = started().await;
    let reason = "AlgorithmError: ran out of memory";
    api.finish_training(&started.status.job_name, JobEnd::Failed(reason.into()));

    let failed = pass(&api, &spec, Some(&started.status)).await;
    assert_eq!(failed.status.job_status.as_deref(), Some("Failed"));
    assert_eq!(failed.status.failure_reason.as_deref(), Some(reason));
    assert_eq!(failed.status.artifact_uri, None);
    assert!(!failed.completed());
    assert_eq!(failed.condition.status, ConditionStatus::False);
    assert_eq!(failed.condition.reason, "TrainingFailed");
    assert!(failed.condition.message.contains(reason));
    assert!(failed.terminal);
    assert_eq!(failed.requeue_after, None);
    assert_eq!(reasons(&failed), ["TrainingFailed"]);
    assert_eq!(failed.events[0].type_, EventType::Warning);

    // Nothing retries the same spec: no new job, no second warning.
    let again = pass(&api, &spec, Some(&failed.status)).await;
    assert!(again.terminal && again.events.is_empty());
    assert_eq!(api.calls("CreateTrainingJob"), 1);
}

#[tokio::test]
async fn a_spec_change_stops_the_running_job_and_starts_one_new() {
    let (api, spec, first) = started().await;
    let running = pass(&api, &spec, Some(&first.status)).await;
    let old = running.status.job_name.clone();

    let mut changed = spec.clone();
    changed
        .hyperparameters
        .insert("num_round".into(), "80".into());
    let second = pass(&api, &changed, Some(&running.status)).await;
    let new = training_job_name(OWNER, NAME, &changed);
    assert_ne!(new, old);
    assert_eq!(second.status.job_name, new);
    assert_eq!(second.status.job_status.as_deref(), Some("InProgress"));
    assert_eq!(reasons(&second), ["TrainingStopped", "TrainingStarted"]);
    assert_eq!(
        api.training_job(&old).map(|j| j.job.state),
        Some(TrainingJobState::Stopping)
    );
    assert_eq!(
        api.training_job(&new).map(|j| j.job.state),
        Some(TrainingJobState::InProgress)
    );

    // Later passes touch neither job again.
    let mut status = second.status.clone();
    for _ in 0..3 {
        let outcome = pass(&api, &changed, Some(&status)).await;
        assert!(outcome.events.is_empty());
        status = outcome.status;
    }
    assert_eq!(api.calls("CreateTrainingJob"), 2);
    assert_eq!(api.calls("StopTrainingJob"), 1);
}

#[tokio::test]
async fn a_spec_change_after_completion_leaves_the_old_job_alone() {
    let (api, spec, first) = started().await;
    api.finish_training(&first.status.job_name, JobEnd::Completed);
    let done = pass(&api, &spec, Some(&first.status)).await;
    api.reset_calls();

    let mut changed = spec.clone();
    changed.instance_type = "ml.m5.2xlarge".into();
    let second = pass(&api, &changed, Some(&done.status)).await;
    assert_eq!(reasons(&second), ["TrainingStarted"]);
    assert_eq!(api.calls("StopTrainingJob"), 0);
    assert_eq!(
        api.calls("DescribeTrainingJob"),
        1,
        "only the new job is described"
    );
    assert_eq!(
        api.training_job(&done.status.job_name).map(|j| j.job.state),
        Some(TrainingJobState::Completed)
    );
}

#[tokio::test]
async fn a_job_that_finished_before_the_stop_is_not_reported_stopped() {
    let (api, spec, first) = started().await;
    // It completes between the saga's Describe and its Stop.
    api.fail_next(
        "StopTrainingJob",
        Fault::Validation(
            "The request was rejected because the training job is in status Completed.".into(),
        ),
    );
    let mut changed = spec.clone();
    changed.volume_size_gb = 50;
    let second = pass(&api, &changed, Some(&first.status)).await;
    assert_eq!(api.calls("StopTrainingJob"), 1);
    assert_eq!(reasons(&second), ["TrainingStarted"]);
    assert_eq!(api.training_job_names().len(), 2);
}

#[tokio::test]
async fn a_job_stopped_outside_the_operator_is_terminal() {
    let (api, spec, first) = started().await;
    let job = first.status.job_name.clone();
    api.stop_training_job(&job).await.expect("stopped");

    let stopping = pass(&api, &spec, Some(&first.status)).await;
    assert_eq!(stopping.condition.reason, "TrainingStopping");
    assert_eq!(stopping.requeue_after, Some(REQUEUE_CHANGING));
    assert!(!stopping.terminal);

    api.finish_stopping(&job);
    let stopped = pass(&api, &spec, Some(&stopping.status)).await;
    assert_eq!(stopped.status.job_status.as_deref(), Some("Stopped"));
    assert_eq!(stopped.condition.reason, "TrainingStopped");
    assert!(stopped.terminal);
    assert_eq!(stopped.requeue_after, None);
    assert_eq!(reasons(&stopped), ["TrainingStopped"]);
    assert_eq!(api.calls("CreateTrainingJob"), 1);
}

#[tokio::test]
async fn a_recoverable_error_is_returned_and_nothing_is_created() {
    let api = MemorySageMaker::new();
    let spec = training_spec();

    api.fail_next("DescribeTrainingJob", Fault::Throttled);
    let err = try_pass(&api, &spec, None).await.expect_err("throttled");
    assert!(
        matches!(
            err,
            SageMakerError::Recoverable {
                kind: RecoverableKind::Throttled,
                operation: "DescribeTrainingJob",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(api.calls("CreateTrainingJob"), 0);

    api.fail_next("CreateTrainingJob", Fault::ServerError);
    let err = try_pass(&api, &spec, None).await.expect_err("server error");
    assert!(err.is_recoverable(), "{err:?}");
    assert!(api.training_job_names().is_empty());
    let condition = crate::sagemaker::recoverable_condition(TRAINED, "training", &err);
    assert_eq!(condition.status, ConditionStatus::Unknown);
    assert_eq!(condition.reason, "SageMakerUnavailable");

    // Once SageMaker answers again, one job.
    let outcome = pass(&api, &spec, None).await;
    assert_eq!(reasons(&outcome), ["TrainingStarted"]);
    assert_eq!(api.training_job_names().len(), 1);
}

#[tokio::test]
async fn a_rejected_spec_is_terminal_and_not_sent_again() {
    let api = MemorySageMaker::new();
    let spec = training_spec();
    let message =
        "1 validation error detected: Value 'ml.x' at 'resourceConfig.instanceType' failed";
    api.fail_next("CreateTrainingJob", Fault::Validation(message.into()));

    let rejected = pass(&api, &spec, None).await;
    assert!(rejected.terminal);
    assert_eq!(rejected.condition.reason, "TrainingRejected");
    assert_eq!(rejected.status.job_status, None);
    assert_eq!(
        rejected.status.failure_reason.as_deref(),
        Some(format!("ValidationException: {message}").as_str())
    );
    assert_eq!(reasons(&rejected), ["TrainingRejected"]);
    assert!(api.training_job_names().is_empty());

    // The same spec again: no call at all, no second warning.
    api.reset_calls();
    let again = pass(&api, &spec, Some(&rejected.status)).await;
    assert_eq!(api.total_calls(), 0);
    assert!(again.terminal && again.events.is_empty());
    assert_eq!(again.status, rejected.status);

    // A fixed spec starts a job; there is nothing of the rejected one to stop.
    let mut fixed = spec.clone();
    fixed.instance_type = "ml.m5.large".into();
    let started = pass(&api, &fixed, Some(&again.status)).await;
    assert_eq!(reasons(&started), ["TrainingStarted"]);
    assert_eq!(api.calls("StopTrainingJob"), 0);
    assert_eq!(api.calls("DescribeTrainingJob"), 1);
}
