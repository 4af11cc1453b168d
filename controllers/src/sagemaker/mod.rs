//! SageMaker: the port (a trait) the reconcilers use, and its adapter on aws-sdk-sagemaker.
//!
//! - [`SageMakerApi`] is the port: the SageMaker operations the operator needs, with request and response types of our own and one error
//!   type, [`SageMakerError`], that says whether retrying can help.
//! - [`aws::AwsSageMaker`] is the adapter on the real SDK.
//! - [`training`], [`endpoint`] and [`cleanup`] are the sagas: async functions
//!   over `&dyn SageMakerApi` that advance one step per call, idempotently, and
//!   return the status to record, a condition, events and when to look again.
//! - [`naming`] derives every SageMaker name from the owner's UID and its spec,
//!   so that retries, restarts and conflicts never make a second resource.

pub mod aws;
pub mod cleanup;
pub mod endpoint;
mod error;
#[cfg(test)]
pub(crate) mod memory;
pub mod naming;
pub mod training;

use std::collections::BTreeMap;
use std::time::Duration;

use aleph_crds::ConditionStatus;
use futures::future::BoxFuture;
use kube::runtime::events::EventType;

use crate::conditions::NewCondition;

pub use cleanup::{CleanupOutcome, cleanup, endpoint_for_cleanup, training_for_cleanup};
pub use endpoint::{EndpointOutcome, reconcile_endpoint};
pub use error::{RecoverableKind, SageMakerError, classify};
pub use training::{TrainingOutcome, reconcile_training};

/// The result of one SageMaker call.
pub type SmResult<T> = std::result::Result<T, SageMakerError>;

/// The SageMaker operations the operator uses. Implemented by
/// [`aws::AwsSageMaker`] on the real SDK; tests point that adapter at moto or
/// at the in-repo fake server.
pub trait SageMakerApi: Send + Sync {
    /// Starts a training job; returns its ARN.
    fn create_training_job<'a>(
        &'a self,
        request: &'a CreateTrainingJobRequest,
    ) -> BoxFuture<'a, SmResult<String>>;
    /// Describes a training job.
    fn describe_training_job<'a>(&'a self, name: &'a str) -> BoxFuture<'a, SmResult<TrainingJob>>;
    /// Asks SageMaker to stop a training job (it moves to Stopping, then Stopped).
    fn stop_training_job<'a>(&'a self, name: &'a str) -> BoxFuture<'a, SmResult<()>>;

    /// Creates a Model; returns its ARN.
    fn create_model<'a>(
        &'a self,
        request: &'a CreateModelRequest,
    ) -> BoxFuture<'a, SmResult<String>>;
    /// Describes a Model.
    fn describe_model<'a>(&'a self, name: &'a str) -> BoxFuture<'a, SmResult<Model>>;
    /// Deletes a Model.
    fn delete_model<'a>(&'a self, name: &'a str) -> BoxFuture<'a, SmResult<()>>;
    /// The names of the Models whose name contains `name_contains`.
    fn list_models<'a>(&'a self, name_contains: &'a str) -> BoxFuture<'a, SmResult<Vec<String>>>;

    /// Creates an EndpointConfig; returns its ARN.
    fn create_endpoint_config<'a>(
        &'a self,
        request: &'a CreateEndpointConfigRequest,
    ) -> BoxFuture<'a, SmResult<String>>;
    /// Describes an EndpointConfig.
    fn describe_endpoint_config<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, SmResult<EndpointConfig>>;
    /// Deletes an EndpointConfig.
    fn delete_endpoint_config<'a>(&'a self, name: &'a str) -> BoxFuture<'a, SmResult<()>>;
    /// The names of the EndpointConfigs whose name contains `name_contains`.
    fn list_endpoint_configs<'a>(
        &'a self,
        name_contains: &'a str,
    ) -> BoxFuture<'a, SmResult<Vec<String>>>;

    /// Creates an Endpoint; returns its ARN.
    fn create_endpoint<'a>(
        &'a self,
        request: &'a CreateEndpointRequest,
    ) -> BoxFuture<'a, SmResult<String>>;
    /// Describes an Endpoint.
    fn describe_endpoint<'a>(&'a self, name: &'a str) -> BoxFuture<'a, SmResult<Endpoint>>;
    /// Moves an Endpoint to another EndpointConfig; returns its ARN.
    fn update_endpoint<'a>(
        &'a self,
        name: &'a str,
        config_name: &'a str,
    ) -> BoxFuture<'a, SmResult<String>>;
    /// Deletes an Endpoint.
    fn delete_endpoint<'a>(&'a self, name: &'a str) -> BoxFuture<'a, SmResult<()>>;
}

/// One input channel of a training job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainingInput {
    /// The channel's name, for example `train`.
    pub channel_name: String,
    /// The S3 prefix holding the channel's data.
    pub s3_uri: String,
    /// MIME type of the data.
    pub content_type: Option<String>,
}

/// CreateTrainingJob's input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateTrainingJobRequest {
    /// The job's name.
    pub job_name: String,
    /// The training image.
    pub image: String,
    /// The IAM role SageMaker assumes.
    pub role_arn: String,
    /// The instance type.
    pub instance_type: String,
    /// Number of instances.
    pub instance_count: i32,
    /// ML storage volume per instance, GB.
    pub volume_size_gb: i32,
    /// Longest run time, seconds.
    pub max_runtime_seconds: i64,
    /// Managed spot training: the longest wait plus run time, seconds.
    pub spot_max_wait_seconds: Option<i64>,
    /// Hyperparameters.
    pub hyperparameters: BTreeMap<String, String>,
    /// Input channels.
    pub inputs: Vec<TrainingInput>,
    /// Where the artifact goes.
    pub output_s3_uri: String,
    /// KMS key for output and volume.
    pub kms_key_id: Option<String>,
    /// VPC security groups (empty: no VPC).
    pub security_group_ids: Vec<String>,
    /// VPC subnets (empty: no VPC).
    pub subnets: Vec<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// A training job's state, as SageMaker's TrainingJobStatus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrainingJobState {
    /// Running.
    InProgress,
    /// Finished; the artifact is in S3.
    Completed,
    /// Failed; see the failure reason.
    Failed,
    /// A stop was asked for.
    Stopping,
    /// Stopped before completion.
    Stopped,
    /// A state this operator does not know.
    Other(String),
}

impl TrainingJobState {
    /// Parses SageMaker's TrainingJobStatus.
    pub fn parse(value: &str) -> Self {
        match value {
            "InProgress" => Self::InProgress,
            "Completed" => Self::Completed,
            "Failed" => Self::Failed,
            "Stopping" => Self::Stopping,
            "Stopped" => Self::Stopped,
            other => Self::Other(other.to_string()),
        }
    }

    /// SageMaker's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::InProgress => "InProgress",
            Self::Completed => "Completed",
            Self::Failed => "Failed",
            Self::Stopping => "Stopping",
            Self::Stopped => "Stopped",
            Self::Other(other) => other,
        }
    }

    /// Whether the job will not change any more.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Stopped)
    }
}

/// DescribeTrainingJob's output, the parts the operator uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainingJob {
    /// The job's name.
    pub name: String,
    /// The job's ARN.
    pub arn: Option<String>,
    /// The job's state.
    pub state: TrainingJobState,
    /// SageMaker's SecondaryStatus, for example `Downloading` or `Training`.
    pub secondary_status: Option<String>,
    /// Why the job failed.
    pub failure_reason: Option<String>,
    /// The model artifact (`s3://.../model.tar.gz`), once Completed.
    pub model_artifacts: Option<String>,
}

/// CreateModel's input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateModelRequest {
    /// The Model's name.
    pub name: String,
    /// The inference image.
    pub image: String,
    /// The model artifact; none when the image holds the model.
    pub model_data_url: Option<String>,
    /// The IAM role the Model runs as.
    pub role_arn: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// DescribeModel's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    /// The Model's name.
    pub name: String,
    /// The Model's ARN.
    pub arn: Option<String>,
    /// The primary container's image.
    pub image: Option<String>,
    /// The primary container's model artifact.
    pub model_data_url: Option<String>,
}

/// CreateEndpointConfig's input: one production variant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateEndpointConfigRequest {
    /// The EndpointConfig's name.
    pub name: String,
    /// The variant's name.
    pub variant_name: String,
    /// The Model the variant serves.
    pub model_name: String,
    /// The instance type.
    pub instance_type: String,
    /// Number of instances.
    pub initial_instance_count: i32,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// DescribeEndpointConfig's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointConfig {
    /// The EndpointConfig's name.
    pub name: String,
    /// The EndpointConfig's ARN.
    pub arn: Option<String>,
    /// The Models its production variants serve.
    pub model_names: Vec<String>,
}

/// CreateEndpoint's input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateEndpointRequest {
    /// The Endpoint's name.
    pub name: String,
    /// The EndpointConfig it starts with.
    pub config_name: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// An endpoint's state, as SageMaker's EndpointStatus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointState {
    /// Being created.
    Creating,
    /// Serving.
    InService,
    /// Moving to another EndpointConfig.
    Updating,
    /// SageMaker maintenance.
    SystemUpdating,
    /// An update is being rolled back.
    RollingBack,
    /// Not serving.
    OutOfService,
    /// Being deleted.
    Deleting,
    /// Failed; see the failure reason.
    Failed,
    /// A state this operator does not know.
    Other(String),
}

impl EndpointState {
    /// Parses SageMaker's EndpointStatus.
    pub fn parse(value: &str) -> Self {
        match value {
            "Creating" => Self::Creating,
            "InService" => Self::InService,
            "Updating" => Self::Updating,
            "SystemUpdating" => Self::SystemUpdating,
            "RollingBack" => Self::RollingBack,
            "OutOfService" => Self::OutOfService,
            "Deleting" => Self::Deleting,
            "Failed" => Self::Failed,
            other => Self::Other(other.to_string()),
        }
    }

    /// SageMaker's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Creating => "Creating",
            Self::InService => "InService",
            Self::Updating => "Updating",
            Self::SystemUpdating => "SystemUpdating",
            Self::RollingBack => "RollingBack",
            Self::OutOfService => "OutOfService",
            Self::Deleting => "Deleting",
            Self::Failed => "Failed",
            Self::Other(other) => other,
        }
    }

    /// Whether SageMaker is in the middle of a change and accepts no other.
    pub fn is_transitional(&self) -> bool {
        matches!(
            self,
            Self::Creating
                | Self::Updating
                | Self::SystemUpdating
                | Self::RollingBack
                | Self::Other(_)
        )
    }
}

/// DescribeEndpoint's output, the parts the operator uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The Endpoint's name.
    pub name: String,
    /// The Endpoint's ARN.
    pub arn: Option<String>,
    /// Its state.
    pub state: EndpointState,
    /// The EndpointConfig it runs.
    pub config_name: Option<String>,
    /// The EndpointConfig an update in progress moves it to.
    pub pending_config_name: Option<String>,
    /// Why it failed (or why its last update failed).
    pub failure_reason: Option<String>,
}

/// What one pass of a saga found and did: [`TrainingOutcome`] for the
/// training job, [`EndpointOutcome`] for the endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct SagaOutcome<S> {
    /// The status to record (in `status.training` or `status.endpoint`).
    pub status: S,
    /// The saga's condition (`Trained` or `Serving`).
    pub condition: NewCondition,
    /// SageMaker said no for good (a rejected spec, a failed or externally
    /// stopped job, a failed endpoint, a rolled-back update): do not retry
    /// until the spec changes.
    pub terminal: bool,
    /// When to look again; `None` once the outcome is final.
    pub requeue_after: Option<Duration>,
    /// Events to publish.
    pub events: Vec<SageMakerEvent>,
}

impl<S> SagaOutcome<S> {
    /// An outcome that is not terminal: look again after `after`.
    pub fn recheck(
        status: S,
        condition: NewCondition,
        after: Duration,
        events: Vec<SageMakerEvent>,
    ) -> Self {
        Self {
            status,
            condition,
            terminal: false,
            requeue_after: Some(after),
            events,
        }
    }

    /// A terminal outcome: not retried until the spec changes.
    pub fn terminal(status: S, condition: NewCondition, events: Vec<SageMakerEvent>) -> Self {
        Self {
            status,
            condition,
            terminal: true,
            requeue_after: None,
            events,
        }
    }
}

/// A Kubernetes Event the caller should publish.
#[derive(Clone, Debug, PartialEq)]
pub struct SageMakerEvent {
    /// Normal or Warning.
    pub type_: EventType,
    /// A stable CamelCase reason, for example `TrainingStarted`.
    pub reason: &'static str,
    /// What happened.
    pub message: String,
}

impl SageMakerEvent {
    pub(crate) fn normal(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_: EventType::Normal,
            reason,
            message: message.into(),
        }
    }

    pub(crate) fn warning(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_: EventType::Warning,
            reason,
            message: message.into(),
        }
    }
}

/// How long to wait before looking at a resource that is changing.
pub(crate) const REQUEUE_CHANGING: Duration = Duration::from_secs(30);
/// How long to wait before looking at a running training job again.
pub(crate) const REQUEUE_TRAINING: Duration = Duration::from_secs(60);
/// How long to wait before looking at a steady endpoint again, to notice drift.
pub(crate) const REQUEUE_STEADY: Duration = Duration::from_secs(300);

/// The condition `type_` while the saga `what` (for example "training")
/// retries a recoverable error: `Unknown`, with the error's reason.
pub fn recoverable_condition(
    type_: &'static str,
    what: &str,
    error: &SageMakerError,
) -> NewCondition {
    NewCondition::new(
        type_,
        ConditionStatus::Unknown,
        error.reason(),
        format!("SageMaker {what}: {error}; retrying with backoff (Recoverable)"),
    )
}

/// The Kubernetes object a saga works for. Its UID names and tags what the
/// saga makes, so that only this object's resources are ever changed or
/// deleted; its namespace and name are shown in the tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SagaOwner<'a> {
    /// The object's UID.
    pub uid: &'a str,
    /// The object's namespace.
    pub namespace: &'a str,
    /// The object's name.
    pub name: &'a str,
}

impl SagaOwner<'_> {
    /// The tags the operator puts on everything it makes in SageMaker for
    /// this owner.
    pub fn tags(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "app.kubernetes.io/managed-by".to_string(),
                "aleph-operator".to_string(),
            ),
            (
                "aleph.dev/namespace".to_string(),
                self.namespace.to_string(),
            ),
            ("aleph.dev/name".to_string(), self.name.to_string()),
            ("aleph.dev/owner-uid".to_string(), self.uid.to_string()),
        ])
    }
}
