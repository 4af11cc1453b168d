//! `Pipeline` and `PipelineRun`: DAGs of steps (containers, job plugins,
//! SageMaker training, model rollouts), run on demand or on a schedule.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{ComputeResources, EnvVar, SageMakerTraining, kind_status};
use crate::pipeline_artifacts::{ArtifactRef, ArtifactStore, StepArtifacts};
use crate::pipeline_data::{
    Approval, ApprovalAction, ForEach, Notification, NotificationStatus, NotifyAction,
    WorkspaceBinding, WorkspaceDeclaration, WorkspaceMount, WorkspaceStatus,
};
use crate::step_template::TemplateRef;

/// A DAG of steps with typed params, retries with backoff, `finally` steps, a
/// parallelism cap, a deadline and an optional cron schedule.
#[serde_with::skip_serializing_none]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "aleph.dev",
    version = "v1alpha1",
    kind = "Pipeline",
    plural = "pipelines",
    shortname = "pl",
    category = "aleph",
    namespaced,
    status = "PipelineStatus",
    doc = "A DAG of steps (containers, job plugins, SageMaker training, model rollouts) run on demand or on a schedule.",
    printcolumn(name = "Steps", type_ = "integer", json_path = ".status.stepCount"),
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule.cron"),
    printcolumn(name = "Last Run", type_ = "string", json_path = ".status.lastRun"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 40").message("a Pipeline name is at most 40 characters, so that run and job names stay valid")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.finally) || self.finally.all(f, !self.steps.exists(s, s.name == f.name))").message("a finally step's name must differ from every step's name").field_path(".finally"))]
#[x_kube(validation = Rule::new("self.steps.all(s, s.dependsOn.all(d, self.steps.exists(t, t.name == d)))").message("every dependsOn entry of a step must name a step of spec.steps (not a finally step)").field_path(".steps"))]
#[x_kube(validation = Rule::new("!has(self.finally) || self.finally.all(f, f.dependsOn.all(d, self.finally.exists(t, t.name == d)))").message("a finally step may depend only on other finally steps: they all run after every step anyway").field_path(".finally"))]
#[x_kube(validation = Rule::new("self.steps.all(s, !has(s.workspaces) || s.workspaces.all(w, has(self.workspaces) && self.workspaces.exists(d, d.name == w.name)))").message("every workspace a step mounts must be declared in spec.workspaces").field_path(".steps"))]
#[x_kube(validation = Rule::new("!has(self.finally) || self.finally.all(s, !has(s.workspaces) || s.workspaces.all(w, has(self.workspaces) && self.workspaces.exists(d, d.name == w.name)))").message("every workspace a finally step mounts must be declared in spec.workspaces").field_path(".finally"))]
#[x_kube(validation = Rule::new("self.steps.all(s, !has(s.forEach) || !has(s.forEach.param) || (has(self.params) && self.params.exists(p, p.name == s.forEach.param && p.type == 'list')))").message("forEach.param must name a param of type list: a fan-out runs over a list").field_path(".steps"))]
#[x_kube(validation = Rule::new("self.steps.all(s, !has(s.forEach) || !has(s.forEach.fromOutput) || s.dependsOn.exists(d, s.forEach.fromOutput.startsWith('steps.' + d + '.outputs.')))").message("forEach.fromOutput must name an output of a step in the step's dependsOn").field_path(".steps"))]
#[x_kube(validation = Rule::new("has(self.artifactStore) || (self.steps.all(s, !has(s.artifacts)) && (!has(self.finally) || self.finally.all(s, !has(s.artifacts))))").message("steps with artifacts need spec.artifactStore: the bucket they go to").field_path(".artifactStore"))]
#[x_kube(validation = Rule::new("self.steps.all(s, !has(s.artifacts) || !has(s.artifacts.inputs) || s.artifacts.inputs.all(i, self.steps.exists(t, t.name != s.name && has(t.artifacts) && has(t.artifacts.outputs) && t.artifacts.outputs.exists(o, i.from == 'steps.' + t.name + '.artifacts.' + o.name))))").message("every input artifact must name an output artifact of another step: steps.STEP.artifacts.NAME").field_path(".steps"))]
pub struct PipelineSpec {
    /// Typed parameters; runs supply values, defaults fill the rest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[schemars(length(max = 32))]
    pub params: Vec<ParamSpec>,
    /// The steps, run as their dependencies succeed.
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[schemars(length(min = 1, max = 32))]
    pub steps: Vec<PipelineStep>,
    /// Steps that always run once the others have finished, whatever happened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[schemars(length(max = 8))]
    pub finally: Vec<PipelineStep>,
    /// The most steps running at once; unlimited when unset.
    #[schemars(range(min = 1, max = 100))]
    pub parallelism: Option<i32>,
    /// The longest a run may take, in seconds; it then fails with Timeout (finally steps still run).
    #[schemars(range(min = 1, max = 2592000))]
    pub deadline_seconds: Option<i64>,
    /// Create runs on a cron schedule.
    pub schedule: Option<PipelineSchedule>,
    /// Delete finished runs (and their Jobs) after this many seconds.
    #[schemars(range(min = 0, max = 31536000))]
    pub ttl_seconds_after_finished: Option<i64>,
    /// Volumes the steps share; each run binds every one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[schemars(length(max = 8))]
    pub workspaces: Vec<WorkspaceDeclaration>,
    /// Webhooks told when a run succeeds, fails or waits for an approval.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub notifications: Vec<Notification>,
    /// Where the steps' artifacts go.
    pub artifact_store: Option<ArtifactStore>,
    /// The ServiceAccount the pods of container steps run as (and the
    /// containers that move their artifacts): one bound to a cloud identity
    /// reads and writes the artifact store without static keys. The
    /// namespace's `default` when unset; plugin steps run as their plugin's.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
        length(max = 253)
    )]
    pub service_account_name: Option<String>,
}

/// A typed parameter.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type != 'enum' || (has(self.values) && size(self.values) > 0)").message("an enum param needs values").field_path(".values"))]
#[x_kube(validation = Rule::new("self.type == 'enum' || !has(self.values) || size(self.values) == 0").message("values is only for enum params").field_path(".values"))]
#[x_kube(validation = Rule::new("!has(self.default) || self.type != 'int' || self.default.matches('^-?[0-9]+$')").message("the default of an int param must be an integer").field_path(".default"))]
#[x_kube(validation = Rule::new("!has(self.default) || self.type != 'bool' || self.default in ['true', 'false']").message("the default of a bool param must be true or false").field_path(".default"))]
#[x_kube(validation = Rule::new("!has(self.default) || self.type != 'enum' || (has(self.values) && self.default in self.values)").message("the default of an enum param must be one of its values").field_path(".default"))]
#[x_kube(validation = Rule::new("!has(self.default) || self.type != 'list' || self.default.matches('^\\\\s*\\\\[[\\\\s\\\\S]*\\\\]\\\\s*$')").message("the default of a list param must be a JSON array of strings, for example [\"a\", \"b\"]").field_path(".default"))]
pub struct ParamSpec {
    /// The param's name, used as `$(params.NAME)` in step fields.
    #[schemars(regex(pattern = r"^[a-zA-Z_][a-zA-Z0-9_-]{0,62}$"))]
    pub name: String,
    /// string, int, bool or enum.
    #[serde(rename = "type", default)]
    pub type_: ParamType,
    /// The value when a run gives none; a run must give one when unset.
    #[schemars(length(max = 4096))]
    pub default: Option<String>,
    /// The allowed values of an enum param.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub values: Vec<String>,
    /// What the param means.
    pub description: Option<String>,
}

/// A param's type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// Any string.
    #[default]
    String,
    /// An integer.
    Int,
    /// true or false.
    Bool,
    /// One of `values`.
    Enum,
    /// A JSON array of strings, for example `["en", "fr"]`; what `forEach`
    /// runs over.
    List,
}

/// One step of a pipeline: exactly one action, with dependencies, a condition,
/// retries and a timeout.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.container), has(self.plugin), has(self.training), has(self.rollout), has(self.approval), has(self.notify), has(self.template)].filter(x, x).size() == 1").message("a step has exactly one action: container, plugin, training, rollout, approval, notify or template"))]
#[x_kube(validation = Rule::new("!has(self.forEach) || has(self.container) || has(self.plugin) || has(self.template)").message("forEach is for container and plugin steps, and for template steps, which expand into one").field_path(".forEach"))]
#[x_kube(validation = Rule::new("!has(self.workspaces) || has(self.container) || has(self.plugin) || has(self.template)").message("workspaces are mounted by container and plugin steps, which run pods, and by template steps, which expand into one").field_path(".workspaces"))]
#[x_kube(validation = Rule::new("!has(self.approval) || !has(self.retries)").message("an approval step is not retried: a rejection is final").field_path(".retries"))]
#[x_kube(validation = Rule::new("!has(self.artifacts) || has(self.container) || has(self.plugin) || has(self.template)").message("artifacts are for container, plugin and template steps, which run pods").field_path(".artifacts"))]
#[x_kube(validation = Rule::new("!has(self.artifacts) || !has(self.forEach)").message("a fan-out step cannot have artifacts: give them to a step before or after it").field_path(".artifacts"))]
#[x_kube(validation = Rule::new("!has(self.memoize) || !self.memoize || ((has(self.container) || has(self.plugin) || has(self.template)) && !has(self.forEach))").message("memoize is for container, plugin and template steps without forEach").field_path(".memoize"))]
#[x_kube(validation = Rule::new("!has(self.artifacts) || !has(self.artifacts.inputs) || self.artifacts.inputs.all(i, self.dependsOn.exists(d, i.from.startsWith('steps.' + d + '.artifacts.')))").message("an input artifact must come from a step in dependsOn").field_path(".artifacts.inputs"))]
#[x_kube(validation = Rule::new("!self.dependsOn.exists(d, d == self.name)").message("a step cannot depend on itself").field_path(".dependsOn"))]
#[x_kube(validation = Rule::new("!has(self.podAnnotations) || has(self.container) || has(self.plugin) || has(self.template)").message("podAnnotations is only for container and plugin steps, which run pods, and for template steps, which expand into one").field_path(".podAnnotations"))]
pub struct PipelineStep {
    /// The step's name, unique in the pipeline.
    #[schemars(
        length(min = 1, max = 32),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$")
    )]
    pub name: String,
    /// Steps that must succeed before this one starts.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[schemars(length(max = 16), inner(length(max = 32)))]
    pub depends_on: Vec<String>,
    /// Run only when this holds, for example `params.deploy == 'true'` or
    /// `steps.evaluate.outputs.accuracy != '0'`; skipped otherwise.
    #[schemars(regex(
        pattern = r"^(params\.[a-zA-Z_][a-zA-Z0-9_-]*|steps\.[a-z0-9-]+\.outputs\.[a-zA-Z0-9_-]+) (==|!=) '[^']*'$"
    ))]
    pub when: Option<String>,
    /// Retries of a failed attempt, with exponential backoff between them.
    pub retries: Option<RetryPolicy>,
    /// The longest one attempt may run, in seconds.
    #[schemars(range(min = 1, max = 604800))]
    pub timeout_seconds: Option<i64>,
    /// Run a container.
    pub container: Option<ContainerAction>,
    /// Run a `job`-mode Plugin.
    pub plugin: Option<PluginAction>,
    /// Run a SageMaker training job; its artifact URI becomes the output `artifactUri`.
    pub training: Option<SageMakerTraining>,
    /// Point an AIModel at a new source and wait for it to be Ready.
    pub rollout: Option<RolloutAction>,
    /// Wait until a user approves (or rejects) in the run's `spec.approvals`.
    pub approval: Option<ApprovalAction>,
    /// Post a message to a webhook; retried with backoff (3 retries from 5 s
    /// when `retries` is unset).
    pub notify: Option<NotifyAction>,
    /// Run a StepTemplate or ClusterStepTemplate (a container or plugin
    /// step written once), with values for its params. The run expands it
    /// when it starts and keeps that expansion in `status.pipelineSpec`.
    pub template: Option<TemplateRef>,
    /// Run the step once per item (`$(item)` in its fields), as separate
    /// Jobs; its output `results` is the JSON array of the instances' outputs.
    pub for_each: Option<ForEach>,
    /// Workspaces the step mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub workspaces: Vec<WorkspaceMount>,
    /// Artifacts the step takes from earlier steps and leaves for later ones,
    /// in `spec.artifactStore`.
    pub artifacts: Option<StepArtifacts>,
    /// Reuse the outputs and artifacts of an earlier run of this pipeline
    /// whose step had the same image, command, args, env and input artifacts
    /// (the step is then `Reused` and runs no pod). What a step reads from a
    /// workspace is not part of that: pass its digest as an argument.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub memoize: bool,
    /// Annotations on the pods of a container, plugin or template step (for
    /// example a service mesh's or an autoscaler's); `$(params.NAME)` and
    /// `$(steps.STEP.outputs.KEY)` are substituted in the values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub pod_annotations: BTreeMap<String, String>,
}

/// Retries and their backoff.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxDelaySeconds >= self.initialDelaySeconds").message("maxDelaySeconds must be at least initialDelaySeconds").field_path(".maxDelaySeconds"))]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    #[schemars(range(min = 0, max = 20))]
    pub limit: i32,
    /// Delay before the first retry, in seconds.
    #[serde(default = "default_initial_delay")]
    #[schemars(range(min = 0, max = 3600))]
    pub initial_delay_seconds: i64,
    /// Factor the delay grows by on each retry.
    #[serde(default = "default_factor")]
    #[schemars(range(min = 1, max = 10))]
    pub factor: i32,
    /// The longest delay, in seconds.
    #[serde(default = "default_max_delay")]
    #[schemars(range(min = 0, max = 86400))]
    pub max_delay_seconds: i64,
}

fn default_initial_delay() -> i64 {
    10
}
fn default_factor() -> i32 {
    2
}
fn default_max_delay() -> i64 {
    300
}

/// A container step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerAction {
    /// The image.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// The command; the image's entrypoint when empty. `$(params.NAME)` and
    /// `$(steps.STEP.outputs.KEY)` are substituted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// The arguments, with the same substitutions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// CPU, memory and GPUs.
    #[serde(default)]
    pub resources: ComputeResources,
}

/// A step that runs a `job`-mode Plugin.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginAction {
    /// The Plugin's name, in the run's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Arguments appended to the plugin's own, with substitutions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

/// A step that rolls an AIModel to a new source.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.source) != has(self.fromStep)").message("set exactly one of source and fromStep"))]
pub struct RolloutAction {
    /// The AIModel's name, in the run's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub model: String,
    /// The new source URI, with substitutions.
    pub source: Option<String>,
    /// Take the source from this earlier step's `artifactUri` output.
    pub from_step: Option<String>,
    /// How long to wait for the model to be Ready, in seconds.
    #[serde(default = "default_rollout_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub ready_timeout_seconds: i64,
}

fn default_rollout_timeout() -> i64 {
    1800
}

/// A cron schedule.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineSchedule {
    /// Five-field cron, for example `0 2 * * *`, or six fields with a
    /// leading seconds field, for example `*/30 * * * * *`.
    #[schemars(regex(pattern = r"^(\S+\s+){4,5}\S+$|^@(hourly|daily|weekly|monthly|yearly)$"))]
    pub cron: String,
    /// IANA time zone, for example `Europe/Paris`; UTC when unset.
    pub time_zone: Option<String>,
    /// What to do when a run is due while another is running.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// Stop creating runs.
    #[serde(default)]
    pub suspend: bool,
    /// Succeeded runs to keep.
    #[serde(default = "default_success_history")]
    #[schemars(range(min = 0, max = 100))]
    pub successful_runs_history_limit: i32,
    /// Failed runs to keep.
    #[serde(default = "default_failed_history")]
    #[schemars(range(min = 0, max = 100))]
    pub failed_runs_history_limit: i32,
    /// Params of scheduled runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<ParamValue>,
}

fn default_success_history() -> i32 {
    3
}
fn default_failed_history() -> i32 {
    1
}

/// What to do with overlapping scheduled runs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum ConcurrencyPolicy {
    /// Runs may overlap.
    #[default]
    Allow,
    /// Skip a due run while one is running.
    Forbid,
    /// Cancel the running one and start the new one.
    Replace,
}

kind_status! {
    /// What the operator observed of a Pipeline.
    pub struct PipelineStatus {
        /// Ready (the graph is valid), and why not.
        conditions;
        /// Number of steps, finally steps included.
        #[serde(default)]
        pub step_count: i32,
        /// The newest run's name.
        pub last_run: Option<String>,
        /// When the schedule last created a run (RFC 3339).
        pub last_schedule_time: Option<String>,
        /// The runs the schedule created that have not finished.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub active: Vec<String>,
    }
}

/// One execution of a Pipeline.
#[serde_with::skip_serializing_none]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "aleph.dev",
    version = "v1alpha1",
    kind = "PipelineRun",
    plural = "pipelineruns",
    shortname = "plr",
    category = "aleph",
    namespaced,
    status = "PipelineRunStatus",
    doc = "One execution of a Pipeline: its steps' Jobs run in dependency order; cancel stops it; resumeFrom reruns only what failed in an earlier run.",
    printcolumn(
        name = "Pipeline",
        type_ = "string",
        json_path = ".spec.pipelineRef.name"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress"),
    printcolumn(name = "Started", type_ = "date", json_path = ".status.startTime"),
    printcolumn(name = "Duration", type_ = "string", json_path = ".status.duration"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Succeeded\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.pipelineRef == oldSelf.pipelineRef").message("pipelineRef is immutable").field_path(".pipelineRef"))]
#[x_kube(validation = Rule::new("self.params == oldSelf.params").message("params are immutable: create a new run").field_path(".params"))]
#[x_kube(validation = Rule::new("!has(oldSelf.resumeFrom) ? !has(self.resumeFrom) : has(self.resumeFrom) && self.resumeFrom == oldSelf.resumeFrom").message("resumeFrom is immutable").field_path(".resumeFrom"))]
#[x_kube(validation = Rule::new("!oldSelf.cancel || self.cancel").message("a cancelled run cannot be uncancelled").field_path(".cancel"))]
#[x_kube(validation = Rule::new("(has(self.workspaces) ? self.workspaces : []) == (has(oldSelf.workspaces) ? oldSelf.workspaces : [])").message("workspaces are immutable: create a new run").field_path(".workspaces"))]
#[x_kube(validation = Rule::new("!has(oldSelf.approvals) || (has(self.approvals) && oldSelf.approvals.all(o, self.approvals.exists(n, n == o)))").message("approvals are a record: add decisions, do not change or remove them").field_path(".approvals"))]
pub struct PipelineRunSpec {
    /// The Pipeline to run, in the same namespace.
    pub pipeline_ref: PipelineRef,
    /// Param values; the pipeline's defaults fill the rest.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[schemars(length(max = 32))]
    pub params: Vec<ParamValue>,
    /// Stop the run: running Jobs are deleted, finally steps run.
    #[serde(default)]
    pub cancel: bool,
    /// An earlier run of the same pipeline: only its steps that did not succeed
    /// (and what depends on them) run again; the others' outputs are reused.
    #[schemars(length(min = 1, max = 253))]
    pub resume_from: Option<String>,
    /// What each of the pipeline's workspaces is bound to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[schemars(length(max = 8))]
    pub workspaces: Vec<WorkspaceBinding>,
    /// Decisions on the run's approval steps, added with
    /// `kubectl patch --type json` (see the README); the latest for a step counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub approvals: Vec<Approval>,
}

/// A reference to a Pipeline.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineRef {
    /// The Pipeline's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A param's value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParamValue {
    /// The param's name.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Its value.
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// A run's phase.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum RunPhase {
    /// Not started.
    #[default]
    Pending,
    /// Steps are running.
    Running,
    /// Every step succeeded (or was skipped by its condition).
    Succeeded,
    /// A step failed, the graph was invalid, or the deadline passed.
    Failed,
    /// Cancelled by the user.
    Cancelled,
}

/// A step's phase.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum StepPhase {
    /// Waiting for its dependencies.
    #[default]
    Pending,
    /// An attempt is running.
    Running,
    /// Waiting out the backoff before a retry.
    Retrying,
    /// Succeeded.
    Succeeded,
    /// Failed after its retries.
    Failed,
    /// Not run: a dependency failed, its condition was false, or the run was cancelled.
    Skipped,
    /// Reused from the run named in `resumeFrom`.
    Reused,
}

kind_status! {
    /// What the operator observed of a PipelineRun.
    pub struct PipelineRunStatus {
        /// Succeeded (Unknown while running), with reasons InvalidGraph,
        /// ParameterMissing, InvalidTemplate, StepFailed, Timeout, Cancelled
        /// (Unknown with TemplateNotFound while a step's template is missing).
        conditions;
        /// The run's phase.
        #[serde(default)]
        pub phase: RunPhase,
        /// Finished steps over all steps, for example `3/7`.
        pub progress: Option<String>,
        /// When the run started (RFC 3339).
        pub start_time: Option<String>,
        /// When the run finished (RFC 3339).
        pub completion_time: Option<String>,
        /// How long the run took, for example `4m12s`.
        pub duration: Option<String>,
        /// The params the run uses, defaults applied.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub params: BTreeMap<String, String>,
        /// The pipeline spec this run executes, copied when it started, with
        /// the step templates its steps use expanded (so a template changed
        /// later does not change the run).
        #[serde(default)]
        #[schemars(schema_with = "preserved_object")]
        pub pipeline_spec: Option<PipelineSpec>,
        /// Each step's state.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
        pub steps: Vec<StepStatus>,
        /// The claims behind the workspaces, and where a ReadWriteOnce one lives.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
        pub workspaces: Vec<WorkspaceStatus>,
        /// The webhook deliveries of `spec.notifications`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
        pub notifications: Vec<NotificationStatus>,
    }
}

/// One step's state in a run.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct StepStatus {
    /// The step's name.
    pub name: String,
    /// Its phase.
    #[serde(default)]
    pub phase: StepPhase,
    /// Attempts started.
    #[serde(default)]
    pub attempts: i32,
    /// When the first attempt started (RFC 3339).
    pub start_time: Option<String>,
    /// When the step finished (RFC 3339).
    pub finish_time: Option<String>,
    /// When the next retry may start (RFC 3339).
    pub next_attempt_time: Option<String>,
    /// Start times of every attempt (RFC 3339).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempt_times: Vec<String>,
    /// What happened.
    pub message: Option<String>,
    /// The Job of the current attempt.
    pub job_name: Option<String>,
    /// Small outputs (at most 4 KiB in all) for later steps.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
    /// The artifacts the step left, with their digests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ArtifactRef>,
}

fn preserved_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true,
    })
}
