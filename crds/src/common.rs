//! Types shared by several kinds: conditions, references, policies and the
//! SageMaker training job shape used by both `AIModel` and `Pipeline` steps.

use std::collections::BTreeMap;

use kube::KubeSchema;
use kube::core::{Message, Rule};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every Aleph kind.
pub const GROUP: &str = "aleph.dev";
/// The API version of every Aleph kind.
pub const VERSION: &str = "v1alpha1";

/// Whether a condition holds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// The operator cannot tell yet.
    #[default]
    Unknown,
}

impl ConditionStatus {
    /// `True` when `value` holds, `False` otherwise.
    pub fn from_bool(value: bool) -> Self {
        if value { Self::True } else { Self::False }
    }
}

/// One aspect of an object's state, in the shape Kubernetes uses everywhere.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The aspect this condition reports on, for example `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Whether the condition holds: True, False or Unknown.
    pub status: ConditionStatus,
    /// A CamelCase word that programs can switch on, for example `Unschedulable`.
    pub reason: String,
    /// What happened and, where something is wrong, what to do about it.
    #[serde(default)]
    pub message: String,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
    /// The `metadata.generation` this condition was computed from.
    pub observed_generation: Option<i64>,
}

/// Declares the status struct of a kind. Every kind's status starts with the same two fields:
/// `observedGeneration` and `conditions` (a list map keyed by `type`), documented by the doc
/// comment written before `conditions;`; the kind's own fields follow.
macro_rules! kind_status {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(#[doc = $conditions_doc:literal])+
            conditions;
            $($fields:tt)*
        }
    ) => {
        $(#[$meta])*
        #[serde_with::skip_serializing_none]
        #[derive(
            ::serde::Serialize,
            ::serde::Deserialize,
            Clone,
            Debug,
            PartialEq,
            ::schemars::JsonSchema,
            Default,
        )]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            /// The generation this status describes.
            pub observed_generation: Option<i64>,
            $(#[doc = $conditions_doc])+
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
            pub conditions: Vec<$crate::common::Condition>,
            $($fields)*
        }
    };
}
pub(crate) use kind_status;

/// A reference to a key of a Secret in the object's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key inside the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A reference to a whole Secret in the object's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// What happens to what the operator made outside Kubernetes (or to tenant
/// namespaces) when the object is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum DeletionPolicy {
    /// Delete what was made.
    #[default]
    Delete,
    /// Keep what was made; only the Kubernetes object goes away.
    Retain,
}

/// An environment variable for a container: a literal value or a Secret key.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.value) != has(self.secretKeyRef)").message("set exactly one of value and secretKeyRef"))]
pub struct EnvVar {
    /// The variable's name.
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.-]*$")
    )]
    pub name: String,
    /// A literal value.
    pub value: Option<String>,
    /// A key of a Secret in the same namespace; the value never appears in status or logs.
    pub secret_key_ref: Option<SecretKeyRef>,
}

/// The longest string a quantity field takes. Besides refusing nonsense, it
/// bounds the API server's cost estimate of the field's CEL rule: without it an
/// int-or-string value is estimated at the size of a whole request, and the rule
/// of a quantity inside a list (a Pipeline's steps) goes over the budget.
pub const QUANTITY_MAX_LENGTH: u32 = 64;

/// The rule of a quantity field of at least zero. A `Quantity` is
/// `x-kubernetes-int-or-string`, which the API server checks for nothing more
/// than being an integer or a string: `lots` or `-1Gi` would be stored and only
/// fail when the operator writes the ResourceQuota, LimitRange or pod.
/// `field` names the field in the message, `example` is a good value.
pub fn non_negative_quantity(field: &str, example: &str) -> Rule {
    Rule::new(
        "type(self) == int ? self >= 0 : isQuantity(self) && !quantity(self).isLessThan(quantity('0'))",
    )
    .message(Message::Message(format!(
        "{field} must be a Kubernetes quantity of at least 0, for example {example}"
    )))
}

/// The rule of a quantity field greater than zero (a volume's size: the API
/// server refuses a PersistentVolumeClaim of size 0).
pub fn positive_quantity(field: &str, example: &str) -> Rule {
    Rule::new(
        "type(self) == int ? self > 0 : isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))",
    )
    .message(Message::Message(format!(
        "{field} must be a Kubernetes quantity greater than 0, for example {example}"
    )))
}

/// The rule that a default request is not above its default limit, for the
/// object holding both (a LimitRange would be refused at reconcile time). A
/// value that is not a quantity is left to its own field's rule.
pub fn request_within_limit(request: &str, limit: &str, path: &str) -> Rule {
    let q = |f: &str| {
        format!("(type(self.{f}) == int ? quantity(string(self.{f})) : quantity(self.{f}))")
    };
    let valid = |f: &str| format!("(type(self.{f}) == int || isQuantity(self.{f}))");
    Rule::new(format!(
        "!has(self.{request}) || !has(self.{limit}) || !{} || !{} || !{}.isGreaterThan({})",
        valid(request),
        valid(limit),
        q(request),
        q(limit)
    ))
    .message(Message::Message(format!(
        "{path}.{request} must not be greater than {path}.{limit}"
    )))
}

/// CPU and memory for a container, as Kubernetes quantities.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ComputeResources {
    /// CPU request and limit, for example `2` or `500m`.
    #[schemars(extend("maxLength" = QUANTITY_MAX_LENGTH))]
    #[x_kube(validation = non_negative_quantity("resources.cpu", "500m or 2"))]
    pub cpu: Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    /// Memory request and limit, for example `16Gi`.
    #[schemars(extend("maxLength" = QUANTITY_MAX_LENGTH))]
    #[x_kube(validation = non_negative_quantity("resources.memory", "16Gi"))]
    pub memory: Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    /// Number of `nvidia.com/gpu` devices, requested and limited alike.
    #[schemars(range(min = 0, max = 64))]
    pub gpus: Option<i32>,
    /// The GPU product the pod must run on, matched against the node label
    /// `nvidia.com/gpu.product`, for example `NVIDIA-H100-80GB-HBM3`.
    #[schemars(length(min = 1, max = 63))]
    pub gpu_product: Option<String>,
}

/// A network destination a workload may reach.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressDestination {
    /// An IP block in CIDR notation, for example `10.0.0.0/8`.
    #[schemars(length(min = 9, max = 43))]
    #[schemars(regex(pattern = r"^[0-9a-fA-F:.]+/[0-9]{1,3}$"))]
    // The pattern lets `10.0.0.0/33` or `010.0.0.0/8` through; the NetworkPolicy
    // write would then fail on every pass.
    #[x_kube(validation = Rule::new("isCIDR(self)").message("cidr must be an IP block in CIDR notation, for example 10.0.0.0/8 or 2001:db8::/32"))]
    pub cidr: String,
    /// TCP ports allowed to that block; all ports when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
}

/// A TCP or UDP port number.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, JsonSchema)]
#[serde(transparent)]
pub struct Port(#[schemars(range(min = 1, max = 65535))] pub i32);

/// A SageMaker training job. The job name is derived from the owning object's
/// UID and this spec, so the same spec never starts two jobs.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.spot) || self.spot.maxWaitSeconds >= self.maxRuntimeSeconds").message("spot.maxWaitSeconds must be at least maxRuntimeSeconds").field_path(".spot.maxWaitSeconds"))]
pub struct SageMakerTraining {
    /// The training image (an ECR URI of an algorithm or your own image).
    #[schemars(length(min = 1, max = 255))]
    pub image: String,
    /// The IAM role SageMaker assumes to run the job.
    #[schemars(regex(pattern = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$"))]
    pub role_arn: String,
    /// The instance type, for example `ml.g5.xlarge`.
    #[schemars(regex(pattern = r"^ml\.[a-z0-9]+\.[a-z0-9]+$"))]
    pub instance_type: String,
    /// Number of instances.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 100))]
    pub instance_count: i32,
    /// Size of each instance's ML storage volume in GB.
    #[serde(default = "default_volume_gb")]
    #[schemars(range(min = 1, max = 16384))]
    pub volume_size_gb: i32,
    /// The longest the job may run before SageMaker stops it, in seconds.
    #[serde(default = "default_max_runtime")]
    #[schemars(range(min = 1, max = 2419200))]
    pub max_runtime_seconds: i64,
    /// Run on managed spot capacity.
    pub spot: Option<SpotTraining>,
    /// Hyperparameters passed to the algorithm, as strings.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hyperparameters: BTreeMap<String, String>,
    /// Input data channels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[schemars(length(max = 20))]
    pub inputs: Vec<TrainingChannel>,
    /// Where SageMaker writes the model artifact, an `s3://` URI.
    #[schemars(regex(pattern = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"))]
    pub output_s3_uri: String,
    /// KMS key for the output and the volume; required by the hipaa and pci compliance profiles.
    #[schemars(length(min = 1, max = 2048))]
    pub kms_key_id: Option<String>,
    /// VPC the training containers run in.
    pub vpc: Option<VpcConfig>,
    /// Tags put on the job.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// AWS region; the operator's default region when unset.
    #[schemars(regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]$"))]
    pub region: Option<String>,
}

/// The default of a count of at least one.
pub(crate) fn one() -> i32 {
    1
}
fn default_volume_gb() -> i32 {
    30
}
fn default_max_runtime() -> i64 {
    86_400
}

/// Managed spot training.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpotTraining {
    /// The longest to wait for spot capacity plus run time, in seconds.
    #[schemars(range(min = 1, max = 4838400))]
    pub max_wait_seconds: i64,
}

/// One input channel of a training job.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainingChannel {
    /// The channel's name as the algorithm expects it, for example `train`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9\.\-_]{1,64}$"))]
    pub name: String,
    /// The S3 prefix holding the channel's data.
    #[schemars(regex(pattern = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"))]
    pub s3_uri: String,
    /// MIME type of the data, for example `text/csv`.
    pub content_type: Option<String>,
}

/// Subnets and security groups for SageMaker containers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VpcConfig {
    /// Security group IDs (`sg-...`).
    #[schemars(length(min = 1, max = 5))]
    pub security_group_ids: Vec<String>,
    /// Subnet IDs (`subnet-...`).
    #[schemars(length(min = 1, max = 16))]
    pub subnets: Vec<String>,
}
