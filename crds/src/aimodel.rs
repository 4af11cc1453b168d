//! `AIModel`: a model served on the cluster's GPU nodes or on a SageMaker
//! endpoint, optionally trained on SageMaker first.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    ComputeResources, DeletionPolicy, EnvVar, QUANTITY_MAX_LENGTH, SageMakerTraining, SecretRef,
    kind_status, one, positive_quantity,
};

/// A model to serve: where its weights come from, which runtime serves it, on
/// which GPUs, how many replicas (or autoscaling), an optional canary, and
/// optionally a SageMaker training job whose artifact becomes the source.
#[serde_with::skip_serializing_none]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "aleph.dev",
    version = "v1alpha1",
    kind = "AIModel",
    plural = "aimodels",
    shortname = "aim",
    category = "aleph",
    namespaced,
    status = "AIModelStatus",
    doc = "A model served on the cluster's GPU nodes or on a SageMaker endpoint, optionally trained on SageMaker first.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Runtime", type_ = "string", description = "what serves the model: its engine, or sagemaker", json_path = ".status.runtime"),
    printcolumn(name = "GPUs", type_ = "integer", json_path = ".spec.resources.gpus"),
    printcolumn(name = "Replicas", type_ = "string", description = "ready/desired replicas", json_path = ".status.replicaSummary"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 52").message("an AIModel name is at most 52 characters, so that its children's names are valid")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.source) || has(self.training)").message("set source, or training whose artifact becomes the source"))]
#[x_kube(validation = Rule::new("!has(self.autoscaling) || !has(self.replicas)").message("replicas and autoscaling are exclusive: remove replicas to autoscale, or autoscaling to scale by hand").field_path(".replicas"))]
#[x_kube(validation = Rule::new("self.backend != 'SageMaker' || has(self.sagemaker)").message("backend SageMaker needs the sagemaker section").field_path(".sagemaker"))]
#[x_kube(validation = Rule::new("self.backend == 'SageMaker' || !has(self.sagemaker)").message("the sagemaker section is only for backend SageMaker").field_path(".sagemaker"))]
#[x_kube(validation = Rule::new("!has(self.autoscaling) || self.autoscaling.minReplicas > 0 || !has(self.canary)").message("a canary's replicas are a share of minReplicas: scale to zero without a canary, or keep minReplicas at least 1").field_path(".autoscaling.minReplicas"))]
#[x_kube(validation = Rule::new("self.backend != 'SageMaker' || !has(self.canary)").message("canary is only supported on the Kubernetes backend").field_path(".canary"))]
#[x_kube(validation = Rule::new("!has(self.autoscaling) || !has(self.autoscaling.targetCpuUtilization) || (has(self.resources) && has(self.resources.cpu))").message("targetCpuUtilization is a share of the CPU request: set resources.cpu").field_path(".autoscaling.targetCpuUtilization"))]
#[x_kube(validation = Rule::new("!has(self.resources) || !has(self.resources.gpuProduct) || (has(self.resources.gpus) && self.resources.gpus > 0)").message("gpuProduct needs gpus of at least 1").field_path(".resources.gpuProduct"))]
#[x_kube(validation = Rule::new("!has(self.runtime) || !has(self.runtime.engine) || self.runtime.engine != 'llamacpp' || !has(self.source) || self.source.uri.endsWith('.gguf') || (has(self.runtime.args) && self.runtime.args.exists(a, a == '--model' || a == '-m' || a.startsWith('--model=')))").message("llama.cpp serves one GGUF file: name it in source.uri (for example s3://bucket/path/model.gguf), or pass runtime.args [--model, /models/<file>.gguf]").field_path(".source.uri"))]
pub struct AIModelSpec {
    /// Where the model's weights come from. Optional when `training` produces them.
    pub source: Option<ModelSource>,
    /// The serving runtime.
    #[serde(default)]
    pub runtime: ModelRuntime,
    /// CPU, memory and GPUs of each serving replica.
    #[serde(default)]
    pub resources: ComputeResources,
    /// Fixed number of serving replicas (default 1); `kubectl scale` sets it.
    /// Exclusive with `autoscaling`.
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Autoscaling on the gateway's requests in flight (to and from zero) or on CPU utilisation.
    pub autoscaling: Option<Autoscaling>,
    /// The model cache: weights are downloaded once into a PersistentVolumeClaim
    /// shared by every model with the same source in the namespace.
    #[serde(default)]
    pub cache: ModelCache,
    /// A canary: another source and/or runtime that gets a share of the traffic.
    pub canary: Option<Canary>,
    /// Where the model is served: Kubernetes (Deployment, Service) or SageMaker (endpoint).
    #[serde(default)]
    pub backend: ServingBackend,
    /// A SageMaker training job; its artifact becomes the model's source.
    pub training: Option<SageMakerTraining>,
    /// SageMaker serving (backend SageMaker only).
    pub sagemaker: Option<SageMakerServing>,
    /// Whether SageMaker resources are deleted with the AIModel (Delete) or kept (Retain).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// The ServiceAccount that the serving pods and the download Job run as:
    /// one bound to a cloud identity (EKS IRSA or Pod Identity, GKE or Azure
    /// workload identity) reads an `s3://` (or other cloud) source without
    /// static keys. The namespace's `default` when unset.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
        length(max = 253)
    )]
    pub service_account_name: Option<String>,
    /// Annotations on the serving pods (stable and canary), for example a
    /// service mesh's or a cost tool's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub pod_annotations: BTreeMap<String, String>,
}

/// Where a model's weights come from.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSource {
    /// `hf://org/name[@revision]`, `s3://bucket/prefix`, `pvc://claim/path`,
    /// `ollama://name[:tag]` or `oci://registry/repository[:tag|@digest]`.
    #[schemars(regex(
        pattern = r"^(hf://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?|ollama://[a-z0-9][a-z0-9._-]*(:[A-Za-z0-9._-]+)?|oci://[a-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+([:@][A-Za-z0-9._:-]+)?)$"
    ))]
    #[schemars(length(max = 512))]
    pub uri: String,
    /// A Secret whose keys become the download's environment (for example
    /// `HF_TOKEN`, or `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`).
    pub credentials_secret: Option<SecretRef>,
}

/// A serving runtime.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.engine != 'custom' || (has(self.image) && has(self.port))").message("a custom runtime needs image and port"))]
pub struct ModelRuntime {
    /// The engine: vllm, ollama, tgi, triton, llamacpp or custom.
    #[serde(default)]
    pub engine: RuntimeEngine,
    /// The image; each built-in engine has a default.
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Extra arguments appended to the engine's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128), inner(length(max = 4096)))]
    pub args: Vec<String>,
    /// The port the runtime serves on; each built-in engine has a default.
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// The readiness path; each built-in engine has a default.
    #[schemars(regex(pattern = r"^/.*$"))]
    pub health_path: Option<String>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
}

/// A serving engine.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeEngine {
    /// vLLM, OpenAI-compatible API; tensor parallelism follows the GPU count.
    #[default]
    Vllm,
    /// Ollama.
    Ollama,
    /// Hugging Face Text Generation Inference.
    Tgi,
    /// NVIDIA Triton Inference Server.
    Triton,
    /// llama.cpp's `llama-server`: OpenAI-compatible, serves one GGUF file, on
    /// CPUs (`gpus: 0`) or GPUs.
    Llamacpp,
    /// Your own image, port and health path.
    Custom,
}

/// Autoscaling bounds and targets: on the requests in flight that aleph-gateway
/// measures (`targetConcurrency`, scaled by the operator, down to zero when
/// `minReplicas` is 0), or on CPU utilisation (`targetCpuUtilization`, an
/// autoscaling/v2 HorizontalPodAutoscaler).
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must be at most maxReplicas").field_path(".minReplicas"))]
#[x_kube(validation = Rule::new("has(self.targetCpuUtilization) || has(self.targetConcurrency)").message("set targetConcurrency (requests in flight per replica, measured by aleph-gateway) or targetCpuUtilization (an HPA)"))]
#[x_kube(validation = Rule::new("!has(self.targetCpuUtilization) || !has(self.targetConcurrency)").message("targetConcurrency (scaled on the gateway's requests in flight) and targetCpuUtilization (scaled by an HPA) are exclusive: set one").field_path(".targetCpuUtilization"))]
#[x_kube(validation = Rule::new("self.minReplicas > 0 || has(self.targetConcurrency)").message("scaling to zero (minReplicas 0) needs targetConcurrency: the gateway's requests decide when a replica starts").field_path(".minReplicas"))]
pub struct Autoscaling {
    /// The fewest replicas; 0 (with `targetConcurrency`) stops every replica
    /// after `scaleToZeroAfterSeconds` without requests, and the gateway holds
    /// the next request while one starts.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,
    /// The most replicas.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Target average CPU utilisation, percent of the request (an HPA).
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: Option<i32>,
    /// Target requests in flight per replica, summed over aleph-gateway's
    /// replicas: the operator keeps `ceil(in flight / target)` replicas.
    #[schemars(range(min = 1, max = 10000))]
    pub target_concurrency: Option<i32>,
    /// How long load must stay low before scaling down, in seconds.
    #[serde(default = "default_stabilization")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: i32,
    /// With `minReplicas: 0`: seconds without any request before the last
    /// replica stops.
    #[serde(default = "default_scale_to_zero")]
    #[schemars(range(min = 1, max = 86400))]
    pub scale_to_zero_after_seconds: i32,
}

fn default_stabilization() -> i32 {
    300
}
fn default_scale_to_zero() -> i32 {
    300
}

/// The model cache.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelCache {
    /// Download into a shared PersistentVolumeClaim once (true), or let each pod fetch the model (false).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Size of the cache volume.
    #[serde(default = "default_cache_size")]
    #[schemars(extend("maxLength" = QUANTITY_MAX_LENGTH))]
    #[x_kube(validation = positive_quantity("cache.size", "50Gi"))]
    pub size: Quantity,
    /// StorageClass of the cache volume; the cluster default when unset. The
    /// volume is ReadWriteMany: serving pods on several nodes mount it.
    pub storage_class_name: Option<String>,
    /// How long the download may take before it fails with ModelDownloadFailed, in seconds.
    #[serde(default = "default_download_timeout")]
    #[schemars(range(min = 30, max = 86400))]
    pub download_timeout_seconds: i64,
    /// Annotations on the download Job's pod. The Job is shared by every model
    /// with the same source in the namespace and made once, so the first
    /// model's annotations are the ones it carries.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub pod_annotations: BTreeMap<String, String>,
}

impl Default for ModelCache {
    fn default() -> Self {
        Self {
            enabled: true,
            size: default_cache_size(),
            storage_class_name: None,
            download_timeout_seconds: default_download_timeout(),
            pod_annotations: BTreeMap::new(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_cache_size() -> Quantity {
    Quantity("50Gi".into())
}
fn default_download_timeout() -> i64 {
    1800
}

/// A canary version of the model.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.source) || has(self.runtime)").message("a canary changes source, runtime or both"))]
pub struct Canary {
    /// The canary's source; the main source when unset.
    pub source: Option<ModelSource>,
    /// The canary's runtime; the main runtime when unset.
    pub runtime: Option<ModelRuntime>,
    /// Percent of traffic (and of replicas) that goes to the canary. At 100
    /// every replica runs the canary; to promote it for good, move its source
    /// and runtime into the main spec and remove `canary`.
    #[schemars(range(min = 0, max = 100))]
    pub traffic_percent: i32,
}

/// Where a model is served.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum ServingBackend {
    /// A Deployment and Service on the cluster.
    #[default]
    Kubernetes,
    /// A SageMaker endpoint.
    SageMaker,
}

/// Serving on a SageMaker endpoint.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SageMakerServing {
    /// The inference image (ECR URI).
    #[schemars(length(min = 1, max = 255))]
    pub image: String,
    /// The IAM role the SageMaker Model runs as.
    #[schemars(regex(pattern = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$"))]
    pub role_arn: String,
    /// The instance type, for example `ml.g5.2xlarge`.
    #[schemars(regex(pattern = r"^ml\.[a-z0-9]+\.[a-z0-9]+$"))]
    pub instance_type: String,
    /// Instances behind the endpoint.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 100))]
    pub initial_instance_count: i32,
    /// The production variant's name.
    #[serde(default = "default_variant")]
    #[schemars(regex(pattern = r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$"))]
    pub variant_name: String,
    /// The endpoint's name; derived from the namespace and name when unset.
    #[schemars(regex(pattern = r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$"))]
    pub endpoint_name: Option<String>,
    /// AWS region; the operator's default region when unset.
    #[schemars(regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]$"))]
    pub region: Option<String>,
}

fn default_variant() -> String {
    "AllTraffic".into()
}

kind_status! {
    /// What the operator observed of an AIModel.
    pub struct AIModelStatus {
        /// Ready, Progressing, Degraded, Trained, Serving.
        conditions;
        /// Desired serving replicas.
        pub replicas: Option<i32>,
        /// Ready serving replicas.
        pub ready_replicas: Option<i32>,
        /// What serves the model: the engine (`vllm`, `llamacpp`, ...) on the
        /// cluster, or `sagemaker` for a SageMaker endpoint.
        pub runtime: Option<String>,
        /// `ready/desired`, for `kubectl get`.
        pub replica_summary: Option<String>,
        /// The label selector of the serving pods (for the scale subresource).
        pub selector: Option<String>,
        /// Where the model's API answers inside the cluster.
        pub url: Option<String>,
        /// The OpenAI-compatible URL of aleph-gateway, which serves this model to
        /// the keys of its tenant (when the operator knows the gateway's address).
        pub gateway_url: Option<String>,
        /// The `model` to ask the gateway for.
        pub gateway_model: Option<String>,
        /// The source being served (the trained artifact when training is set).
        pub served_source: Option<String>,
        /// The model cache.
        pub cache: Option<CacheStatus>,
        /// The SageMaker training job.
        pub training: Option<TrainingStatus>,
        /// The SageMaker endpoint.
        pub endpoint: Option<EndpointStatus>,
        /// The last decision of the operator's autoscaler (`targetConcurrency`).
        pub autoscaler: Option<AutoscalerStatus>,
    }
}

/// What the autoscaler last decided, from the gateway's measurements.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerStatus {
    /// The replicas it set.
    pub desired_replicas: i32,
    /// The replicas before.
    pub previous_replicas: i32,
    /// Requests in flight (queued included) over every gateway replica when it decided.
    pub in_flight: i64,
    /// When it decided (RFC 3339).
    pub last_scale_time: String,
    /// ScaledUp, ScaledDown, ScaledToZero or ScaledFromZero.
    pub reason: String,
    /// Why, in words.
    pub message: String,
}

/// The model cache's state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheStatus {
    /// The PersistentVolumeClaim holding the weights.
    pub claim_name: String,
    /// Pending, Downloading, Ready or Failed.
    pub phase: String,
}

/// A SageMaker training job's state.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainingStatus {
    /// The job's name (derived from the object's UID and the training spec).
    pub job_name: String,
    /// SageMaker's TrainingJobStatus: InProgress, Completed, Failed, Stopping, Stopped.
    pub job_status: Option<String>,
    /// The model artifact, once Completed.
    pub artifact_uri: Option<String>,
    /// SageMaker's FailureReason, once Failed.
    pub failure_reason: Option<String>,
}

/// A SageMaker endpoint's state.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    /// The endpoint's name.
    pub name: String,
    /// The endpoint's ARN.
    pub arn: Option<String>,
    /// SageMaker's EndpointStatus: Creating, InService, Updating, Failed…
    pub state: Option<String>,
    /// The SageMaker Model in use.
    pub model_name: Option<String>,
    /// The EndpointConfig in use.
    pub config_name: Option<String>,
}
