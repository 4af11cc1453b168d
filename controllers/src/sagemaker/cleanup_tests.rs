//! Cleanup against the in-memory SageMaker.

use super::*;
use crate::sagemaker::memory::fixtures::{
    ARTIFACT_V1, NAME, NAMESPACE, OTHER_OWNER, OWNER, SERVE_IMAGE, foreign_endpoint, serving_spec,
    training_spec,
};
use crate::sagemaker::memory::{Fault, JobEnd, MemorySageMaker};
use crate::sagemaker::naming::model_name;
use crate::sagemaker::{CreateModelRequest, SagaOwner, reconcile_endpoint, reconcile_training};

/// The object `name` of the owner `uid`, as the sagas know it.
fn saga_owner<'a>(uid: &'a str, name: &'a str) -> SagaOwner<'a> {
    SagaOwner {
        uid,
        namespace: NAMESPACE,
        name,
    }
}

/// Starts a training job for `owner`; returns its status.
async fn start_training(api: &MemorySageMaker, owner: &str, name: &str) -> TrainingStatus {
    reconcile_training(api, saga_owner(owner, name), &training_spec(), None)
        .await
        .expect("started")
        .status
}

/// Creates an endpoint for `owner`; returns its status (Creating).
async fn create_endpoint(api: &MemorySageMaker, owner: &str, name: &str) -> EndpointStatus {
    reconcile_endpoint(
        api,
        saga_owner(owner, name),
        &serving_spec(),
        ARTIFACT_V1,
        None,
        None,
    )
    .await
    .expect("created")
    .status
    .expect("a status")
}

/// A completed job and an endpoint in service for `owner`.
async fn trained_and_serving(
    api: &MemorySageMaker,
    owner: &str,
    name: &str,
) -> (TrainingStatus, EndpointStatus) {
    let training = start_training(api, owner, name).await;
    api.finish_training(&training.job_name, JobEnd::Completed);
    let mut endpoint = create_endpoint(api, owner, name).await;
    api.settle_endpoint(&endpoint.name);
    endpoint.state = Some("InService".into());
    (training, endpoint)
}

/// Cleans up `OWNER`'s resources under [`DeletionPolicy::Delete`].
async fn delete(
    api: &MemorySageMaker,
    training: Option<&TrainingStatus>,
    endpoint: Option<&EndpointStatus>,
) -> SmResult<CleanupOutcome> {
    cleanup(api, OWNER, training, endpoint, DeletionPolicy::Delete).await
}

#[tokio::test]
async fn delete_removes_what_the_status_names_and_a_second_cleanup_finds_nothing() {
    let api = MemorySageMaker::new();
    let (training, endpoint) = trained_and_serving(&api, OWNER, NAME).await;
    let (_, other_endpoint) = trained_and_serving(&api, OTHER_OWNER, "other").await;
    let other_model = other_endpoint.model_name.clone().expect("a Model");
    let other_config = other_endpoint.config_name.clone().expect("a config");
    // A Model of ours that a superseded pass left behind, named in no status.
    let leftover = model_name(
        OWNER,
        NAME,
        SERVE_IMAGE,
        "s3://aleph-unit/models/v0/model.tar.gz",
        "arn:aws:iam::123456789012:role/aleph-serving",
    );
    api.create_model(&CreateModelRequest {
        name: leftover.clone(),
        image: SERVE_IMAGE.into(),
        model_data_url: None,
        role_arn: "arn:aws:iam::123456789012:role/aleph-serving".into(),
        tags: Default::default(),
    })
    .await
    .expect("a leftover Model");
    api.reset_calls();

    let outcome = delete(&api, Some(&training), Some(&endpoint))
        .await
        .expect("cleanup");
    assert_eq!(outcome, CleanupOutcome::Done);
    assert_eq!(api.endpoint_names(), vec![other_endpoint.name.clone()]);
    assert_eq!(
        api.model_names(),
        vec![other_model],
        "ours, leftover included, are gone"
    );
    assert_eq!(api.endpoint_config_names(), vec![other_config]);
    assert_eq!(api.calls("DeleteEndpoint"), 1);
    assert_eq!(api.calls("DeleteEndpointConfig"), 1);
    assert_eq!(api.calls("DeleteModel"), 2);
    assert_eq!(
        api.calls("StopTrainingJob"),
        0,
        "a completed job is not stopped"
    );
    assert!(
        api.training_job(&training.job_name).is_some(),
        "SageMaker keeps training jobs"
    );

    // Again (the finalizer's removal failed): nothing left to do.
    api.reset_calls();
    let again = delete(&api, Some(&training), Some(&endpoint))
        .await
        .expect("cleanup again");
    assert!(again.is_done());
    assert_eq!(
        (
            api.calls("DeleteEndpoint"),
            api.calls("DeleteEndpointConfig"),
            api.calls("DeleteModel"),
            api.calls("StopTrainingJob"),
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(api.endpoint_names().len(), 1);
    assert_eq!(api.model_names().len(), 1);
}

#[tokio::test]
async fn retain_deletes_nothing() {
    let api = MemorySageMaker::new();
    let training = start_training(&api, OWNER, NAME).await;
    let endpoint = create_endpoint(&api, OWNER, NAME).await;
    api.settle_endpoint(&endpoint.name);
    api.reset_calls();

    let outcome = cleanup(
        &api,
        OWNER,
        Some(&training),
        Some(&endpoint),
        DeletionPolicy::Retain,
    )
    .await
    .expect("cleanup");
    assert!(outcome.is_done());
    assert_eq!(api.total_calls(), 0, "SageMaker is not even asked");
    assert_eq!(api.endpoint_names(), vec![endpoint.name]);
    assert_eq!(api.model_names().len(), 1);
    assert_eq!(api.endpoint_config_names().len(), 1);
    assert_eq!(
        api.training_job(&training.job_name).map(|j| j.job.state),
        Some(TrainingJobState::InProgress),
        "the running job runs on"
    );
}

#[tokio::test]
async fn a_running_job_is_stopped_and_waited_for() {
    let api = MemorySageMaker::new();
    let training = start_training(&api, OWNER, NAME).await;

    let first = delete(&api, Some(&training), None).await.expect("cleanup");
    match &first {
        CleanupOutcome::RequeueAfter { after, waiting_for } => {
            assert_eq!(*after, REQUEUE_DELETING);
            assert!(waiting_for.contains(&training.job_name), "{waiting_for}");
        }
        CleanupOutcome::Done => panic!("cleanup must wait for the job to stop"),
    }
    assert_eq!(
        api.training_job(&training.job_name).map(|j| j.job.state),
        Some(TrainingJobState::Stopping)
    );

    let second = delete(&api, Some(&training), None).await.expect("cleanup");
    assert!(!second.is_done(), "still Stopping");
    assert_eq!(api.calls("StopTrainingJob"), 1, "asked once");

    api.finish_stopping(&training.job_name);
    let third = delete(&api, Some(&training), None).await.expect("cleanup");
    assert!(third.is_done());
    assert_eq!(api.calls("StopTrainingJob"), 1);
}

#[tokio::test]
async fn a_rejected_job_has_nothing_to_stop() {
    let api = MemorySageMaker::new();
    let rejected = TrainingStatus {
        job_name: "aleph-fraud-0123456789".into(),
        job_status: None,
        artifact_uri: None,
        failure_reason: Some("ValidationException: bad instance type".into()),
    };
    let outcome = delete(&api, Some(&rejected), None).await.expect("cleanup");
    assert!(outcome.is_done());
    assert_eq!(api.calls("DescribeTrainingJob"), 0);
    assert_eq!(api.calls("StopTrainingJob"), 0);
}

#[tokio::test]
async fn an_endpoint_that_is_being_created_is_waited_for_then_deleted() {
    let api = MemorySageMaker::new();
    let endpoint = create_endpoint(&api, OWNER, NAME).await;

    let busy = delete(&api, None, Some(&endpoint)).await.expect("cleanup");
    match &busy {
        CleanupOutcome::RequeueAfter { after, waiting_for } => {
            assert_eq!(*after, REQUEUE_BUSY);
            assert!(waiting_for.contains("Creating"), "{waiting_for}");
        }
        CleanupOutcome::Done => panic!("SageMaker cannot delete a Creating endpoint"),
    }
    assert_eq!(api.calls("DeleteEndpoint"), 0);
    assert_eq!(api.model_names().len(), 1, "its Model is still in use");

    api.settle_endpoint(&endpoint.name);
    let done = delete(&api, None, Some(&endpoint)).await.expect("cleanup");
    assert!(done.is_done());
    assert!(api.endpoint_names().is_empty());
    assert!(api.model_names().is_empty());
    assert!(api.endpoint_config_names().is_empty());
}

#[tokio::test]
async fn a_recoverable_error_is_returned_and_the_next_cleanup_finishes() {
    let api = MemorySageMaker::new();
    let (_, endpoint) = trained_and_serving(&api, OWNER, NAME).await;
    api.fail_next("DeleteEndpoint", Fault::Throttled);

    let err = delete(&api, None, Some(&endpoint))
        .await
        .expect_err("throttled");
    assert!(err.is_recoverable(), "{err:?}");
    assert_eq!(api.endpoint_names(), vec![endpoint.name.clone()]);
    assert_eq!(
        api.model_names().len(),
        1,
        "nothing swept before the endpoint is gone"
    );

    let done = delete(&api, None, Some(&endpoint)).await.expect("cleanup");
    assert!(done.is_done());
    assert!(api.endpoint_names().is_empty());
    assert!(api.model_names().is_empty());
}

#[tokio::test]
async fn without_a_recorded_status_the_spec_names_what_to_clean_up() {
    let api = MemorySageMaker::new();
    let spec = training_spec();
    let serving = serving_spec();
    // Both were made, but their status writes were lost.
    start_training(&api, OWNER, NAME).await;
    let made = create_endpoint(&api, OWNER, NAME).await;
    api.settle_endpoint(&made.name);

    let training = training_for_cleanup(None, OWNER, NAME, Some(&spec)).expect("a job");
    let endpoint =
        endpoint_for_cleanup(None, NAMESPACE, NAME, Some(&serving), None).expect("an endpoint");
    assert_eq!(training.job_name, training_job_name(OWNER, NAME, &spec));
    assert_eq!(endpoint.name, made.name);
    assert_eq!(endpoint.config_name, None);

    let first = delete(&api, Some(&training), Some(&endpoint))
        .await
        .expect("cleanup");
    assert!(!first.is_done(), "the job is stopping");
    assert!(
        api.endpoint_names().is_empty(),
        "it runs a config of ours, so it is ours"
    );
    assert!(api.model_names().is_empty());
    assert!(api.endpoint_config_names().is_empty());
    api.finish_stopping(&training.job_name);
    let second = delete(&api, Some(&training), Some(&endpoint))
        .await
        .expect("cleanup");
    assert!(second.is_done());
}

#[tokio::test]
async fn an_endpoint_named_by_the_spec_but_not_ours_is_left_alone() {
    let (api, serving) = foreign_endpoint();

    let endpoint =
        endpoint_for_cleanup(None, NAMESPACE, NAME, Some(&serving), None).expect("an endpoint");
    let outcome = delete(&api, None, Some(&endpoint)).await.expect("cleanup");
    assert!(outcome.is_done());
    assert_eq!(api.calls("DeleteEndpoint"), 0);
    assert_eq!(api.endpoint_names(), vec!["legacy-fraud".to_string()]);
    assert_eq!(api.model_names(), vec!["legacy-model".to_string()]);
    assert_eq!(
        api.endpoint_config_names(),
        vec!["legacy-config".to_string()]
    );
}
