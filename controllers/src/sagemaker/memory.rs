//! An in-memory SageMaker for the sagas' unit tests: no network, no cluster.
//!
//! It keeps training jobs, Models, EndpointConfigs and Endpoints in a `Mutex`
//! and answers like SageMaker does, with the errors the real adapter's
//! [`classify`] makes of SageMaker's answers:
//!
//! - a create of an existing name is [`SageMakerError::AlreadyExists`]
//!   (`ResourceInUse` for training jobs, "Cannot create already existing ..."
//!   for the rest);
//! - a describe, stop, update or delete of a missing name is
//!   [`SageMakerError::NotFound`], and so is a create that refers to a missing
//!   Model or EndpointConfig;
//! - stopping a job that is not InProgress, or updating an endpoint that is
//!   busy, is a `ValidationException` ([`SageMakerError::Terminal`]).
//!
//! Time does not pass by itself: a training job stays InProgress until
//! [`MemorySageMaker::finish_training`], a stopped one Stopping until
//! [`MemorySageMaker::finish_stopping`], and an endpoint Creating or Updating
//! until [`MemorySageMaker::settle_endpoint`]. Deletes remove at once.
//!
//! Every call is counted per operation ([`MemorySageMaker::calls`]), and
//! [`MemorySageMaker::fail_next`] makes the next call of an operation fail.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use futures::future::BoxFuture;

use super::{
    CreateEndpointConfigRequest, CreateEndpointRequest, CreateModelRequest,
    CreateTrainingJobRequest, Endpoint, EndpointConfig, EndpointState, Model, SageMakerApi,
    SageMakerError, SmResult, TrainingJob, TrainingJobState, classify,
};

const ARN_PREFIX: &str = "arn:aws:sagemaker:us-east-1:123456789012";

/// A failure to inject, turned into a [`SageMakerError`] by [`classify`] from
/// what SageMaker would answer.
#[derive(Clone, Debug)]
pub(crate) enum Fault {
    /// `ThrottlingException`, HTTP 400: recoverable.
    Throttled,
    /// HTTP 500 `InternalFailure`: recoverable.
    ServerError,
    /// `ValidationException` with this message: terminal (unless the message
    /// says not found or already exists).
    Validation(String),
}

/// How a training job ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum JobEnd {
    /// Completed; the artifact is `<output>/<job>/output/model.tar.gz`.
    Completed,
    /// Failed with this reason.
    Failed(String),
}

/// A training job as the memory keeps it.
#[derive(Clone, Debug)]
pub(crate) struct StoredJob {
    /// The request that created it.
    pub request: CreateTrainingJobRequest,
    /// What Describe answers.
    pub job: TrainingJob,
}

/// A Model as the memory keeps it.
#[derive(Clone, Debug)]
pub(crate) struct StoredModel {
    /// The request that created it.
    pub request: CreateModelRequest,
}

/// An EndpointConfig as the memory keeps it.
#[derive(Clone, Debug)]
pub(crate) struct StoredConfig {
    /// The request that created it.
    pub request: CreateEndpointConfigRequest,
}

#[derive(Default)]
struct State {
    jobs: BTreeMap<String, StoredJob>,
    models: BTreeMap<String, StoredModel>,
    configs: BTreeMap<String, StoredConfig>,
    endpoints: BTreeMap<String, Endpoint>,
    calls: BTreeMap<&'static str, usize>,
    faults: BTreeMap<&'static str, VecDeque<Fault>>,
}

/// The in-memory SageMaker.
#[derive(Default)]
pub(crate) struct MemorySageMaker {
    state: Mutex<State>,
}

/// SageMaker's answer for a missing resource: a `ValidationException` whose
/// message says so, which [`classify`] makes [`SageMakerError::NotFound`].
fn not_found(operation: &'static str, message: String) -> SageMakerError {
    let error = validation(operation, message);
    debug_assert!(error.is_not_found(), "{error:?}");
    error
}

/// A `ValidationException`, classified as the real adapter does.
fn validation(operation: &'static str, message: String) -> SageMakerError {
    classify(
        operation,
        Some(400),
        Some("ValidationException"),
        Some(&message),
    )
}

fn ready<'a, T: Send + 'a>(result: SmResult<T>) -> BoxFuture<'a, SmResult<T>> {
    Box::pin(std::future::ready(result))
}

/// SageMaker's refusal to create `what` (for example `model`) under a name
/// that is taken.
fn already_exists(operation: &'static str, what: &str, arn: &str) -> SageMakerError {
    validation(
        operation,
        format!("Cannot create already existing {what} \"{arn}\"."),
    )
}

/// SageMaker's answer for a Model that does not exist.
fn no_model(operation: &'static str, name: &str) -> SageMakerError {
    not_found(
        operation,
        format!("Could not find model \"{ARN_PREFIX}:model/{name}\"."),
    )
}

/// SageMaker's answer for an EndpointConfig that does not exist.
fn no_config(operation: &'static str, name: &str) -> SageMakerError {
    not_found(
        operation,
        format!("Could not find endpoint configuration \"{name}\"."),
    )
}

/// SageMaker's answer for an Endpoint that does not exist.
fn no_endpoint(operation: &'static str, name: &str) -> SageMakerError {
    not_found(operation, format!("Could not find endpoint \"{name}\"."))
}

/// The names among `stored` that contain `name_contains`, in order.
fn names_containing<V>(stored: &BTreeMap<String, V>, name_contains: &str) -> Vec<String> {
    stored
        .keys()
        .filter(|n| n.contains(name_contains))
        .cloned()
        .collect()
}

impl MemorySageMaker {
    /// An empty SageMaker.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("the memory SageMaker's lock")
    }

    /// Counts a call of `operation` and fails it when a fault is queued.
    fn enter(&self, operation: &'static str) -> Result<MutexGuard<'_, State>, SageMakerError> {
        let mut state = self.lock();
        *state.calls.entry(operation).or_default() += 1;
        if let Some(fault) = state
            .faults
            .get_mut(operation)
            .and_then(VecDeque::pop_front)
        {
            return Err(match fault {
                Fault::Throttled => classify(
                    operation,
                    Some(400),
                    Some("ThrottlingException"),
                    Some("Rate exceeded"),
                ),
                Fault::ServerError => classify(
                    operation,
                    Some(500),
                    Some("InternalFailure"),
                    Some("We encountered an internal error. Please try again."),
                ),
                Fault::Validation(message) => validation(operation, message),
            });
        }
        Ok(state)
    }

    /// Makes the next call of `operation` (for example `"CreateTrainingJob"`)
    /// fail with `fault`; queued faults are used one per call, in order.
    pub(crate) fn fail_next(&self, operation: &'static str, fault: Fault) {
        self.lock()
            .faults
            .entry(operation)
            .or_default()
            .push_back(fault);
    }

    /// How many times `operation` was called, failed calls included.
    pub(crate) fn calls(&self, operation: &str) -> usize {
        self.lock()
            .calls
            .get(operation)
            .copied()
            .unwrap_or_default()
    }

    /// How many calls were made in all.
    pub(crate) fn total_calls(&self) -> usize {
        self.lock().calls.values().sum()
    }

    /// Forgets the call counts.
    pub(crate) fn reset_calls(&self) {
        self.lock().calls.clear();
    }

    /// The training job of this name.
    pub(crate) fn training_job(&self, name: &str) -> Option<StoredJob> {
        self.lock().jobs.get(name).cloned()
    }

    /// The names of all training jobs.
    pub(crate) fn training_job_names(&self) -> Vec<String> {
        self.lock().jobs.keys().cloned().collect()
    }

    /// Ends a job that is InProgress.
    pub(crate) fn finish_training(&self, name: &str, end: JobEnd) {
        let mut state = self.lock();
        let stored = state.jobs.get_mut(name).expect("the training job exists");
        assert_eq!(
            stored.job.state,
            TrainingJobState::InProgress,
            "only a running job can finish"
        );
        match end {
            JobEnd::Completed => {
                stored.job.state = TrainingJobState::Completed;
                stored.job.secondary_status = Some("Completed".into());
                stored.job.model_artifacts = Some(format!(
                    "{}/{name}/output/model.tar.gz",
                    stored.request.output_s3_uri.trim_end_matches('/')
                ));
            }
            JobEnd::Failed(reason) => {
                stored.job.state = TrainingJobState::Failed;
                stored.job.secondary_status = Some("Failed".into());
                stored.job.failure_reason = Some(reason);
            }
        }
    }

    /// Moves a Stopping job to Stopped.
    pub(crate) fn finish_stopping(&self, name: &str) {
        let mut state = self.lock();
        let stored = state.jobs.get_mut(name).expect("the training job exists");
        assert_eq!(
            stored.job.state,
            TrainingJobState::Stopping,
            "only a stopping job can stop"
        );
        stored.job.state = TrainingJobState::Stopped;
        stored.job.secondary_status = Some("Stopped".into());
    }

    /// The Model of this name.
    pub(crate) fn model(&self, name: &str) -> Option<StoredModel> {
        self.lock().models.get(name).cloned()
    }

    /// The names of all Models.
    pub(crate) fn model_names(&self) -> Vec<String> {
        self.lock().models.keys().cloned().collect()
    }

    /// The EndpointConfig of this name.
    pub(crate) fn endpoint_config(&self, name: &str) -> Option<StoredConfig> {
        self.lock().configs.get(name).cloned()
    }

    /// The names of all EndpointConfigs.
    pub(crate) fn endpoint_config_names(&self) -> Vec<String> {
        self.lock().configs.keys().cloned().collect()
    }

    /// The Endpoint of this name.
    pub(crate) fn endpoint(&self, name: &str) -> Option<Endpoint> {
        self.lock().endpoints.get(name).cloned()
    }

    /// The names of all Endpoints.
    pub(crate) fn endpoint_names(&self) -> Vec<String> {
        self.lock().endpoints.keys().cloned().collect()
    }

    /// Finishes what an endpoint is doing: Creating becomes InService, and
    /// Updating becomes InService on the config it was moving to.
    pub(crate) fn settle_endpoint(&self, name: &str) {
        let mut state = self.lock();
        let endpoint = state.endpoints.get_mut(name).expect("the endpoint exists");
        match endpoint.state {
            EndpointState::Creating => {}
            EndpointState::Updating => {
                endpoint.config_name = endpoint.pending_config_name.take();
            }
            ref other => panic!("endpoint {name} is {}, not changing", other.as_str()),
        }
        endpoint.state = EndpointState::InService;
    }

    /// Makes an endpoint that is Creating fail.
    pub(crate) fn fail_endpoint(&self, name: &str, reason: &str) {
        let mut state = self.lock();
        let endpoint = state.endpoints.get_mut(name).expect("the endpoint exists");
        assert_eq!(endpoint.state, EndpointState::Creating);
        endpoint.state = EndpointState::Failed;
        endpoint.failure_reason = Some(reason.to_string());
    }

    /// An endpoint, its config and Model that someone else made.
    pub(crate) fn seed_foreign_endpoint(&self, endpoint: &str, config: &str, model: &str) {
        let mut state = self.lock();
        state.models.insert(
            model.to_string(),
            StoredModel {
                request: CreateModelRequest {
                    name: model.to_string(),
                    image: "foreign-image".into(),
                    model_data_url: None,
                    role_arn: "arn:aws:iam::123456789012:role/foreign".into(),
                    tags: BTreeMap::new(),
                },
            },
        );
        state.configs.insert(
            config.to_string(),
            StoredConfig {
                request: CreateEndpointConfigRequest {
                    name: config.to_string(),
                    variant_name: "AllTraffic".into(),
                    model_name: model.to_string(),
                    instance_type: "ml.m5.large".into(),
                    initial_instance_count: 1,
                    tags: BTreeMap::new(),
                },
            },
        );
        let arn = format!("{ARN_PREFIX}:endpoint/{endpoint}");
        let record = endpoint_record(endpoint, arn, EndpointState::InService, config);
        state.endpoints.insert(endpoint.to_string(), record);
    }
}

/// Stores `value` under `name` in `table` unless the name is taken, which is
/// `taken(arn)`; answers the new ARN, `<ARN_PREFIX>:<path>/<name>`.
fn insert_new<V>(
    table: &mut BTreeMap<String, V>,
    path: &str,
    name: &str,
    value: V,
    taken: impl FnOnce(&str) -> SageMakerError,
) -> SmResult<String> {
    let arn = format!("{ARN_PREFIX}:{path}/{name}");
    if table.contains_key(name) {
        return Err(taken(&arn));
    }
    table.insert(name.to_string(), value);
    Ok(arn)
}

/// The stored value of `name`, or `missing` when there is none.
fn found<'a, V>(
    table: &'a mut BTreeMap<String, V>,
    name: &str,
    missing: SageMakerError,
) -> SmResult<&'a mut V> {
    table.get_mut(name).ok_or(missing)
}

/// Removes `name`, or answers `missing` when there is none.
fn remove(
    table: &mut BTreeMap<String, impl Sized>,
    name: &str,
    missing: SageMakerError,
) -> SmResult<()> {
    table.remove(name).map(drop).ok_or(missing)
}

/// An Endpoint as Create makes it, or as someone else left it.
fn endpoint_record(name: &str, arn: String, state: EndpointState, config: &str) -> Endpoint {
    Endpoint {
        name: name.to_string(),
        arn: Some(arn),
        state,
        config_name: Some(config.to_string()),
        pending_config_name: None,
        failure_reason: None,
    }
}

/// SageMaker's answer for a training job that does not exist.
fn no_job(operation: &'static str) -> SageMakerError {
    not_found(operation, "Requested resource not found.".into())
}

impl MemorySageMaker {
    /// Counts a call of `operation`, fails it when a fault is queued, and
    /// otherwise answers what `act` makes of the state.
    fn call<'a, T: Send + 'a>(
        &self,
        operation: &'static str,
        act: impl FnOnce(&mut State) -> SmResult<T>,
    ) -> BoxFuture<'a, SmResult<T>> {
        ready(self.enter(operation).and_then(|mut state| act(&mut state)))
    }
}

impl SageMakerApi for MemorySageMaker {
    fn create_training_job<'a>(
        &'a self,
        request: &'a CreateTrainingJobRequest,
    ) -> BoxFuture<'a, SmResult<String>> {
        const OP: &str = "CreateTrainingJob";
        self.call(OP, |state| {
            let name = &request.job_name;
            let job = TrainingJob {
                name: name.clone(),
                arn: Some(format!("{ARN_PREFIX}:training-job/{name}")),
                state: TrainingJobState::InProgress,
                secondary_status: Some("Starting".into()),
                failure_reason: None,
                model_artifacts: None,
            };
            let stored = StoredJob {
                request: request.clone(),
                job,
            };
            insert_new(&mut state.jobs, "training-job", name, stored, |arn| {
                classify(
                    OP,
                    Some(400),
                    Some("ResourceInUse"),
                    Some(&format!(
                        "Training job names must be unique within an AWS account and region, and a training job \
                         with this name already exists ({arn})"
                    )),
                )
            })
        })
    }

    fn describe_training_job<'a>(&'a self, name: &'a str) -> BoxFuture<'a, SmResult<TrainingJob>> {
        const OP: &str = "DescribeTrainingJob";
        self.call(OP, |state| {
            found(&mut state.jobs, name, no_job(OP)).map(|s| s.job.clone())
        })
    }

    fn stop_training_job<'a>(&'a self, name: &'a str) -> BoxFuture<'a, SmResult<()>> {
        const OP: &str = "StopTrainingJob";
        self.call(OP, |state| {
            let stored = found(&mut state.jobs, name, no_job(OP))?;
            if stored.job.state != TrainingJobState::InProgress {
                return Err(validation(
                    OP,
                    format!(
                        "The request was rejected because the training job is in status {}.",
                        stored.job.state.as_str()
                    ),
                ));
            }
            stored.job.state = TrainingJobState::Stopping;
            stored.job.secondary_status = Some("Stopping".into());
            Ok(())
        })
    }

    fn create_model<'a>(
        &'a self,
        request: &'a CreateModelRequest,
    ) -> BoxFuture<'a, SmResult<String>> {
        const OP: &str = "CreateModel";
        self.call(OP, |state| {
            let stored = StoredModel {
                request: request.clone(),
            };
            insert_new(&mut state.models, "model", &request.name, stored, |arn| {
                already_exists(OP, "model", arn)
            })
        })
    }

    fn describe_model<'a>(&'a self, name: &'a str) -> BoxFuture<'a, SmResult<Model>> {
        const OP: &str = "DescribeModel";
        self.call(OP, |state| {
            found(&mut state.models, name, no_model(OP, name)).map(|m| Model {
                name: name.to_string(),
                arn: Some(format!("{ARN_PREFIX}:model/{name}")),
                image: Some(m.request.image.clone()),
                model_data_url: m.request.model_data_url.clone(),
            })
        })
    }

    fn delete_model<'a>(&'a self, name: &'a str) -> BoxFuture<'a, SmResult<()>> {
        const OP: &str = "DeleteModel";
        self.call(OP, |state| {
            remove(&mut state.models, name, no_model(OP, name))
        })
    }

    fn list_models<'a>(&'a self, name_contains: &'a str) -> BoxFuture<'a, SmResult<Vec<String>>> {
        self.call("ListModels", |state| {
            Ok(names_containing(&state.models, name_contains))
        })
    }

    fn create_endpoint_config<'a>(
        &'a self,
        request: &'a CreateEndpointConfigRequest,
    ) -> BoxFuture<'a, SmResult<String>> {
        const OP: &str = "CreateEndpointConfig";
        self.call(OP, |state| {
            if !state.models.contains_key(&request.model_name) {
                return Err(no_model(OP, &request.model_name));
            }
            let stored = StoredConfig {
                request: request.clone(),
            };
            let path = "endpoint-config";
            insert_new(&mut state.configs, path, &request.name, stored, |arn| {
                already_exists(OP, "endpoint configuration", arn)
            })
        })
    }

    fn describe_endpoint_config<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, SmResult<EndpointConfig>> {
        const OP: &str = "DescribeEndpointConfig";
        self.call(OP, |state| {
            found(&mut state.configs, name, no_config(OP, name)).map(|c| EndpointConfig {
                name: name.to_string(),
                arn: Some(format!("{ARN_PREFIX}:endpoint-config/{name}")),
                model_names: vec![c.request.model_name.clone()],
            })
        })
    }

    fn delete_endpoint_config<'a>(&'a self, name: &'a str) -> BoxFuture<'a, SmResult<()>> {
        const OP: &str = "DeleteEndpointConfig";
        self.call(OP, |state| {
            remove(&mut state.configs, name, no_config(OP, name))
        })
    }

    fn list_endpoint_configs<'a>(
        &'a self,
        name_contains: &'a str,
    ) -> BoxFuture<'a, SmResult<Vec<String>>> {
        self.call("ListEndpointConfigs", |state| {
            Ok(names_containing(&state.configs, name_contains))
        })
    }

    fn create_endpoint<'a>(
        &'a self,
        request: &'a CreateEndpointRequest,
    ) -> BoxFuture<'a, SmResult<String>> {
        const OP: &str = "CreateEndpoint";
        self.call(OP, |state| {
            let config = &request.config_name;
            if !state.configs.contains_key(config) {
                return Err(no_config(OP, config));
            }
            let name = &request.name;
            let arn = format!("{ARN_PREFIX}:endpoint/{name}");
            let stored = endpoint_record(name, arn, EndpointState::Creating, config);
            insert_new(&mut state.endpoints, "endpoint", name, stored, |arn| {
                already_exists(OP, "endpoint", arn)
            })
        })
    }

    fn describe_endpoint<'a>(&'a self, name: &'a str) -> BoxFuture<'a, SmResult<Endpoint>> {
        const OP: &str = "DescribeEndpoint";
        self.call(OP, |state| {
            found(&mut state.endpoints, name, no_endpoint(OP, name)).cloned()
        })
    }

    fn update_endpoint<'a>(
        &'a self,
        name: &'a str,
        config_name: &'a str,
    ) -> BoxFuture<'a, SmResult<String>> {
        const OP: &str = "UpdateEndpoint";
        self.call(OP, |state| {
            if !state.configs.contains_key(config_name) {
                return Err(no_config(OP, config_name));
            }
            let endpoint = found(&mut state.endpoints, name, no_endpoint(OP, name))?;
            let arn = endpoint.arn.clone().unwrap_or_default();
            if endpoint.state != EndpointState::InService {
                let message = format!("Cannot update in-progress endpoint \"{arn}\".");
                return Err(validation(OP, message));
            }
            endpoint.state = EndpointState::Updating;
            endpoint.pending_config_name = Some(config_name.to_string());
            endpoint.failure_reason = None;
            Ok(arn)
        })
    }

    fn delete_endpoint<'a>(&'a self, name: &'a str) -> BoxFuture<'a, SmResult<()>> {
        const OP: &str = "DeleteEndpoint";
        self.call(OP, |state| {
            remove(&mut state.endpoints, name, no_endpoint(OP, name))
        })
    }
}

/// What the sagas' tests share: an owner and specs.
pub(crate) mod fixtures {
    use aleph_crds::{SageMakerServing, SageMakerTraining};

    use crate::sagemaker::SagaOwner;

    /// The owning object's UID.
    pub(crate) const OWNER: &str = "6f1c2a4e-0000-4000-8000-000000000001";
    /// Another owner's UID.
    pub(crate) const OTHER_OWNER: &str = "6f1c2a4e-0000-4000-8000-000000000002";
    /// The owning object's namespace.
    pub(crate) const NAMESPACE: &str = "ml";
    /// The owning object's name.
    pub(crate) const NAME: &str = "fraud";
    /// The owning object, as the sagas know it.
    pub(crate) const FRAUD: SagaOwner<'static> = SagaOwner {
        uid: OWNER,
        namespace: NAMESPACE,
        name: NAME,
    };
    /// The inference image.
    pub(crate) const SERVE_IMAGE: &str =
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/xgboost-serve:1.7";
    /// A first model artifact.
    pub(crate) const ARTIFACT_V1: &str = "s3://aleph-unit/models/v1/model.tar.gz";
    /// A second model artifact.
    pub(crate) const ARTIFACT_V2: &str = "s3://aleph-unit/models/v2/model.tar.gz";

    /// A training spec with one tag, one hyperparameter and one channel.
    pub(crate) fn training_spec() -> SageMakerTraining {
        serde_json::from_value(serde_json::json!({
            "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/xgboost:1.7",
            "roleArn": "arn:aws:iam::123456789012:role/aleph-training",
            "instanceType": "ml.m5.xlarge",
            "outputS3Uri": "s3://aleph-unit/models/",
            "hyperparameters": {"num_round": "50"},
            "inputs": [{"name": "train", "s3Uri": "s3://aleph-unit/data/train", "contentType": "text/csv"}],
            "tags": {"team": "risk"}
        }))
        .expect("a valid training spec")
    }

    /// SageMaker holding someone else's endpoint `legacy-fraud` (its config
    /// `legacy-config`, its model `legacy-model`), and a serving spec that
    /// names that endpoint.
    pub(crate) fn foreign_endpoint() -> (super::MemorySageMaker, SageMakerServing) {
        let api = super::MemorySageMaker::new();
        api.seed_foreign_endpoint("legacy-fraud", "legacy-config", "legacy-model");
        let mut serving = serving_spec();
        serving.endpoint_name = Some("legacy-fraud".into());
        (api, serving)
    }

    /// A serving spec with a derived endpoint name.
    pub(crate) fn serving_spec() -> SageMakerServing {
        serde_json::from_value(serde_json::json!({
            "image": SERVE_IMAGE,
            "roleArn": "arn:aws:iam::123456789012:role/aleph-serving",
            "instanceType": "ml.m5.large"
        }))
        .expect("a valid serving spec")
    }
}
