//! The label, annotation and finalizer keys the operator and the gateway put
//! on objects and select them by: one name for each, in one place. They are
//! part of the API: users and other tools select by them too.

/// The finalizer for what Kubernetes cannot collect by itself.
pub const FINALIZER: &str = "aleph.dev/cleanup";
/// Label: the platform the object is part of.
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
/// Label: the tenant an object (a namespace, a Pipeline's Job) belongs to.
pub const TENANT_LABEL: &str = "aleph.dev/tenant";
/// Namespace label: how a namespace became the tenant's, when the operator
/// adopted it (the value is `owner`). Such a namespace is the tenant's although
/// `spec.namespaces` does not list it.
pub const ORIGIN_LABEL: &str = "aleph.dev/origin";
/// Namespace label (`ready`) set once the namespace's ResourceQuota limits
/// what it counts and the API server enforces the tenant's admission rules;
/// until then the quota guard policy refuses pods there, so nothing escapes
/// the quota or the rules.
pub const QUOTA_READY_LABEL: &str = "aleph.dev/quota";
/// Annotation on the objects the operator creates with a server-side dry
/// run to learn whether the API server enforces an admission policy yet: a
/// Service in a tenant namespace, which the tenants' policy refuses (the
/// value is the tenant's name), and a Namespace, which the quota guard
/// refuses.
pub const ADMISSION_PROBE_ANNOTATION: &str = "aleph.dev/admission-probe";
/// Annotation: when the operator last asked the quota controller to count a
/// quota again.
pub const RECOUNT_ANNOTATION: &str = "aleph.dev/recount-requested-at";
/// Node label: the GPU product a node carries (set by NVIDIA's GPU feature discovery).
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";

/// Label every object the operator makes for an AIModel carries (its value is
/// the model's name). The EndpointSlice controller copies a Service's labels
/// onto its EndpointSlices, so the gateway watches only the slices carrying it.
pub const MODEL_LABEL: &str = "aleph.dev/model";
/// Label: the release track of a model's pods and Services (`stable`, `canary`).
pub const TRACK_LABEL: &str = "aleph.dev/track";
/// Label on a model cache's claim, Job and download pod: the hash of the source.
pub const CACHE_LABEL: &str = "aleph.dev/cache";
/// Annotation on a model cache's claim once the weights are in it (`"true"`).
pub const CACHE_READY_ANNOTATION: &str = "aleph.dev/cache-ready";
/// Annotation on a model cache's claim and Job: the source URI.
pub const CACHE_SOURCE_ANNOTATION: &str = "aleph.dev/source";
/// AIModel annotation naming an existing SageMaker endpoint to adopt: the
/// operator moves it to the model's own config and from then on manages it
/// like one it created (and deletes it with `deletionPolicy: Delete`).
pub const ADOPT_ENDPOINT_ANNOTATION: &str = "aleph.dev/adopt-endpoint";

/// Label: the plugin an object belongs to.
pub const PLUGIN_LABEL: &str = "aleph.dev/plugin";
/// Label telling a service plugin's pods from the Job pods of pipeline steps.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// Pod annotation: the plugin version the pod runs.
pub const PLUGIN_VERSION_ANNOTATION: &str = "aleph.dev/plugin-version";
/// Pod annotation: a hash of the plugin release the pod runs.
pub const PLUGIN_RELEASE_ANNOTATION: &str = "aleph.dev/plugin-release";
/// Pod annotation keys with this prefix are the operator's, not a Plugin's.
pub const PLUGIN_ANNOTATION_PREFIX: &str = "aleph.dev/plugin-";

/// Label: the PipelineRun a Job belongs to.
pub const RUN_LABEL: &str = "aleph.dev/pipelinerun";
/// Label: the step a Job runs.
pub const STEP_LABEL: &str = "aleph.dev/step";
/// Label: the attempt a Job is.
pub const ATTEMPT_LABEL: &str = "aleph.dev/attempt";
/// Label: the index of a fan-out (`forEach`) instance's item.
pub const ITEM_LABEL: &str = "aleph.dev/item";
/// Label: the Pipeline of a run.
pub const PIPELINE_LABEL: &str = "aleph.dev/pipeline";
/// Annotation on a scheduled run: the slot it was created for (RFC 3339).
pub const SCHEDULED_AT_ANNOTATION: &str = "aleph.dev/scheduled-at";
/// Annotation a rollout step sets on the AIModel: the run that set its source.
pub const ROLLED_OUT_BY_ANNOTATION: &str = "aleph.dev/rolled-out-by";

/// Label of the Secrets that hold a gateway API key's hash; its value is `"true"`.
pub const GATEWAY_KEY_LABEL: &str = "aleph.dev/gateway-key";
/// Label the EndpointSlice controller puts on each slice: its Service's name.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
