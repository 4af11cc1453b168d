//! The endpoint saga against the in-memory SageMaker.

use super::*;
use crate::sagemaker::memory::fixtures::{
    ARTIFACT_V1, ARTIFACT_V2, FRAUD, NAME, NAMESPACE, OWNER, SERVE_IMAGE, foreign_endpoint,
    serving_spec,
};
use crate::sagemaker::memory::{Fault, MemorySageMaker};

async fn pass(
    api: &MemorySageMaker,
    serving: &SageMakerServing,
    artifact: &str,
    status: Option<&EndpointStatus>,
    adopt: Option<&str>,
) -> EndpointOutcome {
    reconcile_endpoint(api, FRAUD, serving, artifact, status, adopt)
        .await
        .expect("a pass without a recoverable error")
}

fn reasons(outcome: &EndpointOutcome) -> Vec<&'static str> {
    outcome.events.iter().map(|e| e.reason).collect()
}

/// The Model and EndpointConfig names the saga derives for an artifact.
fn names_for(serving: &SageMakerServing, artifact: &str) -> (String, String) {
    let model = model_name(OWNER, NAME, SERVE_IMAGE, artifact, &serving.role_arn);
    let config = endpoint_config_name(OWNER, NAME, &model, serving);
    (model, config)
}

/// Creates the endpoint on `artifact` and brings it into service.
async fn in_service(api: &MemorySageMaker, serving: &SageMakerServing) -> EndpointStatus {
    let creating = pass(api, serving, ARTIFACT_V1, None, None).await;
    let status = creating.status.expect("a status");
    api.settle_endpoint(&status.name);
    let serving_now = pass(api, serving, ARTIFACT_V1, Some(&status), None).await;
    assert!(serving_now.in_service(), "{serving_now:?}");
    serving_now.status.expect("a status")
}

#[tokio::test]
async fn creates_model_config_and_endpoint_once_and_reports_in_service() {
    let api = MemorySageMaker::new();
    let serving = serving_spec();
    let endpoint = endpoint_name(NAMESPACE, NAME, &serving);
    let (model, config) = names_for(&serving, ARTIFACT_V1);

    let first = pass(&api, &serving, ARTIFACT_V1, None, None).await;
    assert_eq!(reasons(&first), ["EndpointCreating"]);
    assert_eq!(first.condition.status, ConditionStatus::False);
    assert_eq!(first.condition.reason, "EndpointCreating");
    assert_eq!(first.requeue_after, Some(REQUEUE_CHANGING));
    assert!(!first.in_service());
    let status = first.status.clone().expect("a status");
    assert_eq!(status.name, endpoint);
    assert_eq!(status.state.as_deref(), Some("Creating"));
    assert_eq!(status.model_name.as_deref(), Some(model.as_str()));
    assert_eq!(status.config_name.as_deref(), Some(config.as_str()));
    assert_eq!(
        status.arn,
        api.endpoint(&endpoint).and_then(|e| e.arn),
        "the ARN CreateEndpoint returned"
    );

    // What was asked of SageMaker.
    let model_request = api.model(&model).expect("the Model").request;
    assert_eq!(model_request.image, SERVE_IMAGE);
    assert_eq!(model_request.model_data_url.as_deref(), Some(ARTIFACT_V1));
    assert_eq!(model_request.role_arn, serving.role_arn);
    let config_request = api.endpoint_config(&config).expect("the config").request;
    assert_eq!(config_request.model_name, model);
    assert_eq!(config_request.variant_name, "AllTraffic");
    assert_eq!(config_request.instance_type, "ml.m5.large");
    assert_eq!(config_request.initial_instance_count, 1);
    assert_eq!(
        api.endpoint(&endpoint).and_then(|e| e.config_name),
        Some(config.clone())
    );

    // While Creating: wait, with or without the status (a lost status write).
    let waiting = pass(&api, &serving, ARTIFACT_V1, Some(&status), None).await;
    assert_eq!(waiting.condition.reason, "EndpointCreating");
    assert!(waiting.events.is_empty());
    let lost = pass(&api, &serving, ARTIFACT_V1, None, None).await;
    assert_eq!(lost.condition.reason, "EndpointCreating");
    let recovered = lost.status.expect("a status");
    assert_eq!(recovered.config_name.as_deref(), Some(config.as_str()));
    assert_eq!(recovered.model_name.as_deref(), Some(model.as_str()));

    api.settle_endpoint(&endpoint);
    let up = pass(&api, &serving, ARTIFACT_V1, Some(&status), None).await;
    assert!(up.in_service(), "{up:?}");
    assert_eq!(up.condition.status, ConditionStatus::True);
    assert_eq!(reasons(&up), ["EndpointInService"]);
    assert_eq!(up.requeue_after, Some(REQUEUE_STEADY));
    assert!(!up.terminal);
    let up_status = up.status.clone().expect("a status");
    assert_eq!(up_status.state.as_deref(), Some("InService"));

    // Steady: no event, nothing made again.
    let steady = pass(&api, &serving, ARTIFACT_V1, Some(&up_status), None).await;
    assert!(steady.in_service());
    assert!(steady.events.is_empty());
    assert_eq!(steady.status, Some(up_status));
    assert_eq!(
        (
            api.calls("CreateModel"),
            api.calls("CreateEndpointConfig"),
            api.calls("CreateEndpoint"),
            api.calls("UpdateEndpoint"),
        ),
        (1, 1, 1, 0)
    );
    assert_eq!(api.model_names(), vec![model]);
    assert_eq!(api.endpoint_config_names(), vec![config]);
    assert_eq!(api.endpoint_names(), vec![endpoint]);
}

#[tokio::test]
async fn an_image_only_model_has_no_artifact() {
    let api = MemorySageMaker::new();
    let serving = serving_spec();
    let outcome = pass(&api, &serving, "", None, None).await;
    let model = outcome.status.and_then(|s| s.model_name).expect("a Model");
    assert_eq!(
        api.model(&model).expect("the Model").request.model_data_url,
        None
    );
}

#[tokio::test]
async fn a_new_artifact_updates_the_endpoint_to_a_new_config_then_deletes_the_old() {
    let api = MemorySageMaker::new();
    let serving = serving_spec();
    let v1 = in_service(&api, &serving).await;
    let (model_v2, config_v2) = names_for(&serving, ARTIFACT_V2);

    let updating = pass(&api, &serving, ARTIFACT_V2, Some(&v1), None).await;
    assert_eq!(reasons(&updating), ["EndpointUpdating"]);
    assert_eq!(updating.condition.reason, "EndpointUpdating");
    assert_eq!(
        updating.condition.status,
        ConditionStatus::True,
        "it serves the old model meanwhile"
    );
    assert!(!updating.in_service());
    assert_eq!(updating.requeue_after, Some(REQUEUE_CHANGING));
    let endpoint = api.endpoint(&v1.name).expect("the endpoint");
    assert_eq!(endpoint.state, EndpointState::Updating);
    assert_eq!(endpoint.pending_config_name, Some(config_v2.clone()));
    let status = updating.status.clone().expect("a status");
    assert_eq!(
        status.config_name, v1.config_name,
        "the status names the running config until the update is done"
    );
    assert_eq!(status.state.as_deref(), Some("Updating"));
    assert_eq!(api.model_names().len(), 2);
    assert_eq!(api.endpoint_config_names().len(), 2);

    // While Updating: wait; no second update.
    let waiting = pass(&api, &serving, ARTIFACT_V2, Some(&status), None).await;
    assert_eq!(waiting.condition.reason, "EndpointUpdating");
    assert!(waiting.events.is_empty());
    assert_eq!(api.calls("UpdateEndpoint"), 1);

    api.settle_endpoint(&v1.name);
    let done = pass(&api, &serving, ARTIFACT_V2, Some(&status), None).await;
    assert!(done.in_service(), "{done:?}");
    assert_eq!(reasons(&done), ["EndpointInService"]);
    let done_status = done.status.expect("a status");
    assert_eq!(done_status.config_name.as_deref(), Some(config_v2.as_str()));
    assert_eq!(done_status.model_name.as_deref(), Some(model_v2.as_str()));
    assert_eq!(
        api.model_names(),
        vec![model_v2],
        "the old Model is deleted"
    );
    assert_eq!(
        api.endpoint_config_names(),
        vec![config_v2],
        "the old config is deleted"
    );
    assert_eq!(api.calls("CreateEndpoint"), 1);
    assert_eq!(api.calls("UpdateEndpoint"), 1);
}

#[tokio::test]
async fn a_recoverable_error_is_returned_and_the_next_pass_creates_no_duplicate() {
    let api = MemorySageMaker::new();
    let serving = serving_spec();
    api.fail_next("CreateEndpoint", Fault::Throttled);
    let err = reconcile_endpoint(&api, FRAUD, &serving, ARTIFACT_V1, None, None)
        .await
        .expect_err("throttled");
    assert!(err.is_recoverable(), "{err:?}");
    assert_eq!(err.operation(), "CreateEndpoint");
    assert!(api.endpoint_names().is_empty());
    let condition = crate::sagemaker::recoverable_condition(SERVING, "endpoint", &err);
    assert_eq!(condition.status, ConditionStatus::Unknown);
    assert_eq!(condition.reason, "SageMakerThrottled");

    let outcome = pass(&api, &serving, ARTIFACT_V1, None, None).await;
    assert_eq!(reasons(&outcome), ["EndpointCreating"]);
    assert_eq!(
        api.calls("CreateModel"),
        1,
        "the Model made before is reused"
    );
    assert_eq!(api.calls("CreateEndpointConfig"), 1);
    assert_eq!(api.endpoint_names().len(), 1);
}

#[tokio::test]
async fn a_rejected_request_is_terminal() {
    let api = MemorySageMaker::new();
    let serving = serving_spec();
    api.fail_next(
        "CreateEndpointConfig",
        Fault::Validation("Invalid instance type ml.m5.large for this account".into()),
    );
    let outcome = pass(&api, &serving, ARTIFACT_V1, None, None).await;
    assert!(outcome.terminal);
    assert_eq!(outcome.condition.reason, "EndpointRejected");
    assert!(
        outcome
            .condition
            .message
            .contains("rejected CreateEndpointConfig"),
        "{}",
        outcome.condition.message
    );
    assert!(
        outcome
            .condition
            .message
            .contains("ValidationException: Invalid instance type")
    );
    assert_eq!(reasons(&outcome), ["EndpointRejected"]);
    assert_eq!(outcome.status, None);
    assert!(api.endpoint_names().is_empty());
    assert_eq!(api.calls("CreateEndpoint"), 0);
}

#[tokio::test]
async fn someone_elses_endpoint_of_that_name_is_a_conflict_and_left_alone() {
    let api = MemorySageMaker::new();
    let serving = serving_spec();
    let endpoint = endpoint_name(NAMESPACE, NAME, &serving);
    api.seed_foreign_endpoint(&endpoint, "legacy-config", "legacy-model");

    let outcome = pass(&api, &serving, ARTIFACT_V1, None, None).await;
    assert!(outcome.terminal);
    assert_eq!(outcome.condition.reason, "EndpointNameConflict");
    assert_eq!(outcome.status, None);
    assert_eq!(api.calls("CreateModel"), 0);
    assert_eq!(api.calls("UpdateEndpoint"), 0);
    assert_eq!(
        api.endpoint(&endpoint)
            .and_then(|e| e.config_name)
            .as_deref(),
        Some("legacy-config")
    );
}

#[tokio::test]
async fn an_adopted_endpoint_moves_to_our_config_and_its_own_are_left_alone() {
    let (api, serving) = foreign_endpoint();
    let (model, config) = names_for(&serving, ARTIFACT_V1);

    let moving = pass(&api, &serving, ARTIFACT_V1, None, Some("legacy-fraud")).await;
    assert_eq!(reasons(&moving), ["EndpointUpdating"]);
    let status = moving.status.expect("a status");
    assert_eq!(status.config_name, None, "legacy-config is not ours");
    api.settle_endpoint("legacy-fraud");

    let done = pass(
        &api,
        &serving,
        ARTIFACT_V1,
        Some(&status),
        Some("legacy-fraud"),
    )
    .await;
    assert!(done.in_service(), "{done:?}");
    let done_status = done.status.expect("a status");
    assert_eq!(done_status.config_name.as_deref(), Some(config.as_str()));
    assert_eq!(done_status.model_name.as_deref(), Some(model.as_str()));
    assert_eq!(
        api.model_names(),
        vec![model, "legacy-model".to_string()],
        "the adopted endpoint's Model stays"
    );
    assert_eq!(
        api.endpoint_config_names(),
        vec![config, "legacy-config".to_string()]
    );
    assert_eq!(api.calls("CreateEndpoint"), 0);
}

#[tokio::test]
async fn a_failed_endpoint_is_terminal_until_the_spec_changes_then_replaced() {
    let api = MemorySageMaker::new();
    let serving = serving_spec();
    let creating = pass(&api, &serving, ARTIFACT_V1, None, None).await;
    let status = creating.status.expect("a status");
    api.fail_endpoint(
        &status.name,
        "The primary container did not pass the ping health check",
    );

    let failed = pass(&api, &serving, ARTIFACT_V1, Some(&status), None).await;
    assert!(failed.terminal);
    assert_eq!(failed.condition.reason, "EndpointFailed");
    assert!(failed.condition.message.contains("ping health check"));
    assert_eq!(reasons(&failed), ["EndpointFailed"]);
    let failed_status = failed.status.expect("a status");
    let again = pass(&api, &serving, ARTIFACT_V1, Some(&failed_status), None).await;
    assert!(again.terminal && again.events.is_empty());
    assert_eq!(api.calls("DeleteEndpoint"), 0);

    // A new artifact: the failed endpoint is deleted, then created on the new config.
    let replacing = pass(&api, &serving, ARTIFACT_V2, Some(&failed_status), None).await;
    assert_eq!(reasons(&replacing), ["EndpointReplacing"]);
    assert_eq!(replacing.condition.reason, "EndpointReplacing");
    assert!(!replacing.terminal);
    assert_eq!(api.calls("DeleteEndpoint"), 1);
    assert!(api.endpoint_names().is_empty());
    let replacing_status = replacing.status.expect("a status");
    assert_eq!(replacing_status.state.as_deref(), Some("Deleting"));

    let recreated = pass(&api, &serving, ARTIFACT_V2, Some(&replacing_status), None).await;
    assert_eq!(reasons(&recreated), ["EndpointCreating"]);
    let (model_v2, config_v2) = names_for(&serving, ARTIFACT_V2);
    assert_eq!(
        recreated.status.and_then(|s| s.config_name),
        Some(config_v2.clone())
    );
    assert_eq!(api.model_names(), vec![model_v2], "the v1 Model is swept");
    assert_eq!(api.endpoint_config_names(), vec![config_v2]);
    assert_eq!(api.calls("CreateEndpoint"), 2);
}
