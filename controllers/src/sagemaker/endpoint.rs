//! The endpoint saga: Model, then EndpointConfig, then Endpoint, exactly once.
//!
//! Names are derived (see [`super::naming`]): the Model from the image, the
//! artifact and the role; the EndpointConfig from the Model and the variant's
//! shape. A pass looks at the endpoint first and only then acts:
//!
//! - missing: make the Model and the EndpointConfig (each only if missing) and
//!   create the endpoint;
//! - running another config: make the new Model and EndpointConfig and update
//!   the endpoint;
//! - in service on the desired config: delete the config and Model it ran
//!   before (recorded in the status), and report Serving;
//! - creating or updating: wait.
//!
//! `status.modelName` and `status.configName` only ever name resources this
//! owner made, so cleanup never deletes anything else; an adopted endpoint's
//! original config and Model are left alone.

use std::time::Duration;

use aleph_crds::conditions::SERVING;
use aleph_crds::{ConditionStatus, EndpointStatus, SageMakerServing};

use super::cleanup::{CleanupOutcome, cleanup_endpoint, sweep};
use super::naming::{endpoint_config_name, endpoint_name, is_owned, is_valid_name, model_name};
use super::{
    CreateEndpointConfigRequest, CreateEndpointRequest, CreateModelRequest, Endpoint,
    EndpointState, REQUEUE_CHANGING, REQUEUE_STEADY, SagaOutcome, SagaOwner, SageMakerApi,
    SageMakerError, SageMakerEvent, SmResult,
};
use crate::conditions::NewCondition;

/// How long to wait after asking SageMaker to delete a failed endpoint.
const REQUEUE_REPLACING: Duration = Duration::from_secs(10);

/// What one pass of the endpoint saga found and did; the status is the one to
/// record in `status.endpoint`, `None` when this owner has no endpoint (for
/// example when the name is taken by someone else's).
pub type EndpointOutcome = SagaOutcome<Option<EndpointStatus>>;

impl EndpointOutcome {
    /// Whether the endpoint serves the desired model.
    pub fn in_service(&self) -> bool {
        self.condition.reason == "EndpointInService"
    }

    /// The endpoint's name, when this owner has one.
    pub fn endpoint_name(&self) -> Option<&str> {
        self.status.as_ref().map(|s| s.name.as_str())
    }
}

/// What this pass wants.
struct Desired<'a> {
    owner: SagaOwner<'a>,
    serving: &'a SageMakerServing,
    model_data_url: Option<&'a str>,
    endpoint: String,
    model: String,
    config: String,
}

/// Advances the SageMaker endpoint of one owner by one step.
///
/// `serving` is `spec.sagemaker`; `model_data_url` the artifact to serve (the
/// training job's, or the source's `s3://` URI; empty when the image holds the
/// model); `status` what the previous pass recorded. `adopt` names an existing
/// endpoint to take over (moved to this owner's config, then managed and, with
/// `Delete`, deleted like one this owner created); without it an existing
/// endpoint that this owner did not make is left alone and reported as a
/// conflict.
///
/// Errors that retrying may fix are returned as `Err`; SageMaker rejecting a
/// request is a terminal `Ok` outcome.
pub async fn reconcile_endpoint(
    api: &dyn SageMakerApi,
    owner: SagaOwner<'_>,
    serving: &SageMakerServing,
    model_data_url: &str,
    status: Option<&EndpointStatus>,
    adopt: Option<&str>,
) -> SmResult<EndpointOutcome> {
    let endpoint = match (adopt, &serving.endpoint_name) {
        (Some(adopt), Some(explicit)) if adopt != explicit => {
            return Ok(invalid(
                status,
                format!(
                    "the endpoint to adopt, {adopt}, differs from spec.sagemaker.endpointName {explicit}; \
                     make them the same or remove one"
                ),
            ));
        }
        (Some(adopt), _) => adopt.to_string(),
        (None, _) => endpoint_name(owner.namespace, owner.name, serving),
    };
    if !is_valid_name(&endpoint) {
        return Ok(invalid(
            status,
            format!(
                "{endpoint:?} is not a valid SageMaker endpoint name (letters, digits and inner hyphens, at most 63)"
            ),
        ));
    }
    let model_data_url = Some(model_data_url).filter(|u| !u.is_empty());
    let model = model_name(
        owner.uid,
        owner.name,
        &serving.image,
        model_data_url.unwrap_or_default(),
        &serving.role_arn,
    );
    let config = endpoint_config_name(owner.uid, owner.name, &model, serving);
    let desired = Desired {
        owner,
        serving,
        model_data_url,
        endpoint,
        model,
        config,
    };
    match advance(api, &desired, status, adopt).await {
        Err(e) if rejects_spec(&e) => Ok(rejected(status, &e)),
        other => other,
    }
}

async fn advance(
    api: &dyn SageMakerApi,
    desired: &Desired<'_>,
    status: Option<&EndpointStatus>,
    adopt: Option<&str>,
) -> SmResult<EndpointOutcome> {
    let mut events = Vec::new();

    // The endpoint was renamed: delete the previous one first.
    if let Some(prev) = status.filter(|s| s.name != desired.endpoint) {
        let keep = [desired.config.as_str(), desired.model.as_str()];
        match cleanup_endpoint(api, desired.owner.uid, prev, &keep).await? {
            CleanupOutcome::Done => events.push(SageMakerEvent::normal(
                "EndpointDeleted",
                format!(
                    "Deleted SageMaker endpoint {}: the endpoint is now {}",
                    prev.name, desired.endpoint
                ),
            )),
            CleanupOutcome::RequeueAfter { after, waiting_for } => {
                return Ok(EndpointOutcome::recheck(
                    Some(prev.clone()),
                    not_serving(
                        "EndpointRenaming",
                        format!(
                            "waiting for {waiting_for} before creating {}",
                            desired.endpoint
                        ),
                    ),
                    after,
                    events,
                ));
            }
        }
    }
    let prev = status.filter(|s| s.name == desired.endpoint);

    let found = match api.describe_endpoint(&desired.endpoint).await {
        Ok(found) => found,
        Err(e) if e.is_not_found() => return create(api, desired, prev, events).await,
        Err(e) => return Err(e),
    };
    observe(api, desired, prev, found, adopt, events).await
}

/// Creates the endpoint (and its Model and EndpointConfig when missing).
async fn create(
    api: &dyn SageMakerApi,
    desired: &Desired<'_>,
    prev: Option<&EndpointStatus>,
    mut events: Vec<SageMakerEvent>,
) -> SmResult<EndpointOutcome> {
    ensure_model(api, desired).await?;
    ensure_config(api, desired).await?;
    let request = CreateEndpointRequest {
        name: desired.endpoint.clone(),
        config_name: desired.config.clone(),
        tags: desired.owner.tags(),
    };
    let arn = match api.create_endpoint(&request).await {
        Ok(arn) => arn,
        Err(e) if e.is_already_exists() => {
            // Someone (an earlier attempt of ours, or not) made it meanwhile: look at it.
            let found = api.describe_endpoint(&desired.endpoint).await?;
            return observe(api, desired, prev, found, None, events).await;
        }
        Err(e) => return Err(e),
    };
    events.push(SageMakerEvent::normal(
        "EndpointCreating",
        format!(
            "Creating SageMaker endpoint {} with config {}",
            desired.endpoint, desired.config
        ),
    ));
    // A previous endpoint of this name is gone: what it ran is unused now.
    if prev.is_some_and(|p| p.config_name.is_some()) {
        sweep(
            api,
            desired.owner.uid,
            &[desired.config.as_str(), desired.model.as_str()],
        )
        .await?;
    }
    Ok(EndpointOutcome::recheck(
        Some(EndpointStatus {
            name: desired.endpoint.clone(),
            arn: Some(arn),
            state: Some(EndpointState::Creating.as_str().to_string()),
            model_name: Some(desired.model.clone()),
            config_name: Some(desired.config.clone()),
        }),
        not_serving(
            "EndpointCreating",
            format!("SageMaker is creating endpoint {}", desired.endpoint),
        ),
        REQUEUE_CHANGING,
        events,
    ))
}

/// Acts on the endpoint as Describe reported it.
async fn observe(
    api: &dyn SageMakerApi,
    desired: &Desired<'_>,
    prev: Option<&EndpointStatus>,
    found: Endpoint,
    adopt: Option<&str>,
    mut events: Vec<SageMakerEvent>,
) -> SmResult<EndpointOutcome> {
    let owner_uid = desired.owner.uid;
    let owned = |c: &Option<String>| c.as_deref().is_some_and(|c| is_owned(c, owner_uid));
    let ours = adopt == Some(desired.endpoint.as_str())
        || prev.is_some_and(|p| p.config_name.is_some())
        || owned(&found.config_name)
        || owned(&found.pending_config_name);
    if !ours {
        return Ok(EndpointOutcome::terminal(
            None,
            not_serving(
                "EndpointNameConflict",
                format!(
                    "SageMaker endpoint {} exists and was not made for this object; set spec.sagemaker.endpointName \
                     to another name, or adopt the endpoint to take it over",
                    desired.endpoint
                ),
            ),
            events,
        ));
    }

    let mut status = prev.cloned().unwrap_or_else(|| EndpointStatus {
        name: desired.endpoint.clone(),
        arn: None,
        state: None,
        model_name: None,
        config_name: None,
    });
    if found.arn.is_some() {
        status.arn.clone_from(&found.arn);
    }
    status.state = Some(found.state.as_str().to_string());
    let current = found.config_name.clone().filter(|c| is_owned(c, owner_uid));
    let on_desired = found.config_name.as_deref() == Some(desired.config.as_str());
    let was_state = prev.and_then(|p| p.state.as_deref());
    let name = &desired.endpoint;

    match &found.state {
        EndpointState::Deleting => Ok(EndpointOutcome::recheck(
            Some(status),
            not_serving(
                "EndpointDeleting",
                format!(
                    "SageMaker endpoint {name} is being deleted; it is created again once gone"
                ),
            ),
            REQUEUE_CHANGING,
            events,
        )),
        state if state.is_transitional() => {
            if status.config_name.is_none() && current.is_some() {
                status.model_name = model_of(api, desired, prev, current.as_deref()).await?;
                status.config_name = current;
            }
            let condition = match state {
                EndpointState::Creating => not_serving(
                    "EndpointCreating",
                    format!("SageMaker is creating endpoint {name}"),
                ),
                EndpointState::Updating | EndpointState::SystemUpdating => in_service(
                    "EndpointUpdating",
                    format!("SageMaker endpoint {name} serves while it is being updated"),
                ),
                EndpointState::RollingBack => in_service(
                    "EndpointRollingBack",
                    format!("SageMaker is rolling back an update of endpoint {name}"),
                ),
                other => NewCondition::new(
                    SERVING,
                    ConditionStatus::Unknown,
                    "EndpointStatusUnknown",
                    format!("SageMaker endpoint {name} is in state {}", other.as_str()),
                ),
            };
            Ok(EndpointOutcome::recheck(
                Some(status),
                condition,
                REQUEUE_CHANGING,
                events,
            ))
        }
        EndpointState::Failed => {
            let failed_on_desired =
                on_desired || found.pending_config_name.as_deref() == Some(desired.config.as_str());
            if failed_on_desired {
                if status.config_name.is_none() && current.is_some() {
                    status.model_name = model_of(api, desired, prev, current.as_deref()).await?;
                    status.config_name = current;
                }
                let reason = found.failure_reason.as_deref().unwrap_or("no reason given");
                let message = format!(
                    "SageMaker endpoint {name} failed: {reason}. Fix spec.sagemaker (or the model); the endpoint is \
                     replaced when the spec changes"
                );
                if was_state != Some("Failed") {
                    events.push(SageMakerEvent::warning("EndpointFailed", message.clone()));
                }
                return Ok(EndpointOutcome::terminal(
                    Some(status),
                    not_serving("EndpointFailed", message),
                    events,
                ));
            }
            // Failed on an older spec: a failed endpoint cannot be updated, so replace it.
            super::cleanup::deleted(api.delete_endpoint(name).await)?;
            let config = &desired.config;
            let message = format!(
                "Deleting failed SageMaker endpoint {name} to create it again with config {config}"
            );
            events.push(SageMakerEvent::normal("EndpointReplacing", message));
            status.state = Some(EndpointState::Deleting.as_str().to_string());
            Ok(EndpointOutcome::recheck(
                Some(status),
                not_serving(
                    "EndpointReplacing",
                    format!("SageMaker endpoint {name} failed; it is being replaced"),
                ),
                REQUEUE_REPLACING,
                events,
            ))
        }
        // InService, OutOfService.
        state => {
            let serving = *state == EndpointState::InService;
            // The endpoint runs `current` now: what this owner made before it
            // (the config recorded, a superseded or rolled-back attempt) is unused.
            if status.config_name != current {
                let current_model = model_of(api, desired, prev, current.as_deref()).await?;
                let keep: Vec<&str> = [
                    Some(desired.model.as_str()),
                    Some(desired.config.as_str()),
                    current_model.as_deref(),
                    current.as_deref(),
                ]
                .into_iter()
                .flatten()
                .collect();
                sweep(api, desired.owner.uid, &keep).await?;
                status.config_name.clone_from(&current);
                status.model_name = current_model;
            } else if status.model_name.is_none() && current.is_some() {
                status.model_name = model_of(api, desired, prev, current.as_deref()).await?;
            }

            if on_desired {
                let moved =
                    prev.and_then(|p| p.config_name.as_deref()) != Some(desired.config.as_str());
                if serving && (was_state != Some("InService") || moved) {
                    events.push(SageMakerEvent::normal(
                        "EndpointInService",
                        format!("SageMaker endpoint {name} serves model {}", desired.model),
                    ));
                }
                let condition = if serving {
                    in_service(
                        "EndpointInService",
                        format!(
                            "SageMaker endpoint {name} serves model {} (config {})",
                            desired.model, desired.config
                        ),
                    )
                } else {
                    not_serving(
                        "EndpointOutOfService",
                        format!("SageMaker endpoint {name} is out of service"),
                    )
                };
                return Ok(EndpointOutcome::recheck(
                    Some(status),
                    condition,
                    if serving {
                        REQUEUE_STEADY
                    } else {
                        REQUEUE_CHANGING
                    },
                    events,
                ));
            }

            // Runs another config: move it to the desired one.
            ensure_model(api, desired).await?;
            let config_existed = ensure_config(api, desired).await?;
            if let Some(reason) = found
                .failure_reason
                .as_deref()
                .filter(|_| config_existed && serving)
            {
                // The config was made by an earlier pass, which updated the endpoint
                // to it; SageMaker rolled that update back.
                let message = format!(
                    "SageMaker could not update endpoint {name} to config {}: {reason}. It still serves the previous \
                     config; fix spec.sagemaker to try again",
                    desired.config
                );
                if was_state != Some("InService") {
                    events.push(SageMakerEvent::warning(
                        "EndpointUpdateFailed",
                        message.clone(),
                    ));
                }
                return Ok(EndpointOutcome::terminal(
                    Some(status),
                    in_service("EndpointUpdateFailed", message),
                    events,
                ));
            }
            match api.update_endpoint(name, &desired.config).await {
                Ok(_) => {}
                // A retried update whose first attempt got through is refused as
                // "in progress": fine when the endpoint is moving to our config.
                Err(e) if e.is_terminal() => {
                    let now = api.describe_endpoint(name).await?;
                    let target = Some(desired.config.as_str());
                    if now.pending_config_name.as_deref() != target
                        && now.config_name.as_deref() != target
                    {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
            let (from, to) = (
                found.config_name.as_deref().unwrap_or("none"),
                &desired.config,
            );
            let message = format!("Updating SageMaker endpoint {name} from config {from} to {to}");
            events.push(SageMakerEvent::normal("EndpointUpdating", message));
            status.state = Some(EndpointState::Updating.as_str().to_string());
            let condition = if serving {
                let message =
                    format!("SageMaker endpoint {name} serves while it moves to config {to}");
                in_service("EndpointUpdating", message)
            } else {
                let message = format!("SageMaker endpoint {name} is moving to config {to}");
                not_serving("EndpointUpdating", message)
            };
            Ok(EndpointOutcome::recheck(
                Some(status),
                condition,
                REQUEUE_CHANGING,
                events,
            ))
        }
    }
}

/// The endpoint serves: every condition this saga writes is `Serving`.
fn in_service(reason: &str, message: String) -> NewCondition {
    NewCondition::yes(SERVING, reason, message)
}

/// The endpoint does not serve.
fn not_serving(reason: &str, message: String) -> NewCondition {
    NewCondition::no(SERVING, reason, message)
}

/// The Model (of this owner) that `config` serves.
async fn model_of(
    api: &dyn SageMakerApi,
    desired: &Desired<'_>,
    prev: Option<&EndpointStatus>,
    config: Option<&str>,
) -> SmResult<Option<String>> {
    let Some(config) = config else {
        return Ok(None);
    };
    if config == desired.config {
        return Ok(Some(desired.model.clone()));
    }
    if let Some(prev) = prev.filter(|p| p.config_name.as_deref() == Some(config)) {
        return Ok(prev.model_name.clone());
    }
    match api.describe_endpoint_config(config).await {
        Ok(described) => Ok(described
            .model_names
            .into_iter()
            .find(|m| is_owned(m, desired.owner.uid))),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Makes the Model unless it exists; returns whether it existed.
async fn ensure_model(api: &dyn SageMakerApi, desired: &Desired<'_>) -> SmResult<bool> {
    let request = CreateModelRequest {
        name: desired.model.clone(),
        image: desired.serving.image.clone(),
        model_data_url: desired.model_data_url.map(str::to_string),
        role_arn: desired.serving.role_arn.clone(),
        tags: desired.owner.tags(),
    };
    let described = api.describe_model(&desired.model).await;
    ensure(described, || api.create_model(&request)).await
}

/// Makes the EndpointConfig unless it exists; returns whether it existed.
async fn ensure_config(api: &dyn SageMakerApi, desired: &Desired<'_>) -> SmResult<bool> {
    let request = CreateEndpointConfigRequest {
        name: desired.config.clone(),
        variant_name: desired.serving.variant_name.clone(),
        model_name: desired.model.clone(),
        instance_type: desired.serving.instance_type.clone(),
        initial_instance_count: desired.serving.initial_instance_count,
        tags: desired.owner.tags(),
    };
    let described = api.describe_endpoint_config(&desired.config).await;
    ensure(described, || api.create_endpoint_config(&request)).await
}

/// Creates a resource unless `described` found it; returns whether it
/// existed (one that appeared between the two calls counts as existing).
async fn ensure<D, C, F>(described: SmResult<D>, create: impl FnOnce() -> F) -> SmResult<bool>
where
    F: Future<Output = SmResult<C>>,
{
    match described {
        Ok(_) => return Ok(true),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e),
    }
    match create().await {
        Ok(_) => Ok(false),
        Err(e) if e.is_already_exists() => Ok(true),
        Err(e) => Err(e),
    }
}

/// Whether an error means SageMaker will not accept what the spec asks for.
fn rejects_spec(error: &SageMakerError) -> bool {
    let creating = matches!(
        error.operation(),
        "CreateModel" | "CreateEndpointConfig" | "CreateEndpoint" | "UpdateEndpoint"
    );
    error.is_terminal() || (creating && error.is_not_found())
}

fn rejected(status: Option<&EndpointStatus>, error: &SageMakerError) -> EndpointOutcome {
    let message = format!(
        "SageMaker rejected {}: {}. Fix spec.sagemaker; it is retried when the spec changes",
        error.operation(),
        super::training::rejection(error)
    );
    EndpointOutcome::terminal(
        status.cloned(),
        not_serving("EndpointRejected", message.clone()),
        vec![SageMakerEvent::warning("EndpointRejected", message)],
    )
}

fn invalid(status: Option<&EndpointStatus>, message: String) -> EndpointOutcome {
    EndpointOutcome::terminal(
        status.cloned(),
        not_serving("InvalidSpec", message),
        Vec::new(),
    )
}

#[cfg(test)]
#[path = "endpoint_tests.rs"]
mod tests;
