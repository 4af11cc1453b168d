//! What a Pipeline's steps share and how a run talks to people: workspaces
//! (volumes the steps mount), fan-out over a list, approval gates and webhook
//! notifications. The fields live in [`crate::pipeline`]'s types.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{QUANTITY_MAX_LENGTH, SecretKeyRef, positive_quantity};

/// A named volume the steps of a pipeline share; each run binds it
/// (`PipelineRun.spec.workspaces`) to a claim of its own or an existing one.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceDeclaration {
    /// The workspace's name, which steps mount and runs bind.
    #[schemars(
        length(min = 1, max = 32),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$")
    )]
    pub name: String,
    /// What the steps keep there.
    pub description: Option<String>,
    /// The claim a run makes when it binds the workspace to nothing itself
    /// (scheduled runs, for example); a run that binds none of its own and
    /// finds no template here fails at start.
    pub volume_claim_template: Option<ClaimTemplate>,
}

/// A workspace a step mounts.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceMount {
    /// A workspace of the pipeline's `spec.workspaces`.
    #[schemars(length(min = 1, max = 32))]
    pub name: String,
    /// Where it is mounted; `/workspace/NAME` when unset.
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^/.*$"))]
    pub mount_path: Option<String>,
    /// Mount it read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// What a run binds a workspace to: a new claim of its own, made from a
/// template, or an existing claim.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.volumeClaimTemplate) != has(self.persistentVolumeClaim)").message("bind a workspace to exactly one of volumeClaimTemplate and persistentVolumeClaim"))]
#[x_kube(validation = Rule::new("!self.keep || has(self.volumeClaimTemplate)").message("keep is for a claim the run makes (volumeClaimTemplate): an existing claim is never deleted").field_path(".keep"))]
pub struct WorkspaceBinding {
    /// The pipeline's workspace.
    #[schemars(length(min = 1, max = 32))]
    pub name: String,
    /// A claim made for this run (`<run>-<workspace>`), deleted with the run
    /// unless `keep` is set.
    pub volume_claim_template: Option<ClaimTemplate>,
    /// An existing claim in the run's namespace; never deleted by the run.
    pub persistent_volume_claim: Option<ExistingClaim>,
    /// Keep the run's claim when the run is deleted.
    #[serde(default)]
    pub keep: bool,
}

/// The claim a run makes for a workspace.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimTemplate {
    /// The volume's size, for example `1Gi`.
    #[x_kube(validation = positive_quantity("storage", "1Gi"))]
    #[schemars(extend("maxLength" = QUANTITY_MAX_LENGTH))]
    pub storage: k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    /// `ReadWriteOnce` (the default: the steps that use it are placed on the
    /// node where the first ran), `ReadWriteMany` or `ReadOnlyMany`.
    #[serde(default = "default_access_mode")]
    pub access_mode: AccessMode,
    /// The StorageClass; the cluster's default when unset.
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

fn default_access_mode() -> AccessMode {
    AccessMode::ReadWriteOnce
}

/// A volume's access mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum AccessMode {
    /// Mounted read-write by the pods of one node.
    #[default]
    ReadWriteOnce,
    /// Mounted read-write by pods on many nodes.
    ReadWriteMany,
    /// Mounted read-only by pods on many nodes.
    ReadOnlyMany,
}

impl AccessMode {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadWriteOnce => "ReadWriteOnce",
            Self::ReadWriteMany => "ReadWriteMany",
            Self::ReadOnlyMany => "ReadOnlyMany",
        }
    }
}

/// An existing claim.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExistingClaim {
    /// The claim's name, in the run's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
}

/// What became of a run's workspace.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceStatus {
    /// The workspace.
    pub name: String,
    /// The claim behind it.
    pub claim_name: String,
    /// Whether the run made the claim (and deletes it with itself unless kept).
    #[serde(default)]
    pub owned: bool,
    /// The claim's access modes, as the run read or made them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<String>,
    /// For a ReadWriteOnce workspace: the node its first step ran on, where
    /// every later step that mounts it is placed.
    pub node: Option<String>,
}

/// Run a step once per item of a list.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.items), has(self.param), has(self.fromOutput)].filter(x, x).size() == 1").message("forEach takes exactly one of items, param and fromOutput"))]
pub struct ForEach {
    /// A literal list; `$(params.NAME)` and `$(steps.STEP.outputs.KEY)` are
    /// substituted in each item.
    #[schemars(length(min = 1, max = 128), inner(length(max = 1024)))]
    pub items: Option<Vec<String>>,
    /// A param of type `list` (a JSON array of strings).
    #[schemars(length(min = 1, max = 63))]
    pub param: Option<String>,
    /// An output of an earlier step holding a JSON array, as
    /// `steps.STEP.outputs.KEY`; the step must be in `dependsOn`.
    #[schemars(regex(pattern = r"^steps\.[a-z0-9-]+\.outputs\.[a-zA-Z0-9_-]+$"))]
    pub from_output: Option<String>,
    /// Instances running at once; the pipeline's `parallelism` (or no
    /// limit) when unset.
    #[schemars(range(min = 1, max = 100))]
    pub parallelism: Option<i32>,
    /// How many instances may fail while the step still succeeds.
    #[serde(default)]
    #[schemars(range(min = 0, max = 128))]
    pub allowed_failures: i32,
}

/// A gate: the run waits here until a user approves or rejects it in
/// `PipelineRun.spec.approvals`.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalAction {
    /// What the approver is asked, with substitutions.
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
    /// How long to wait for a decision, in seconds; the step then fails.
    #[serde(default = "default_approval_timeout")]
    #[schemars(range(min = 1, max = 2592000))]
    pub timeout_seconds: i64,
}

fn default_approval_timeout() -> i64 {
    86_400
}

/// A decision on an approval step. The API server takes it only from the
/// user it names (the policy `aleph-pipelinerun-approvals`), and only from a
/// user allowed to update the run.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    /// The approval step.
    #[schemars(length(min = 1, max = 32))]
    pub step: String,
    /// Approve or Reject.
    pub decision: Decision,
    /// Who decides: the requesting user's name, exactly as the API server
    /// knows it (`kubectl auth whoami`).
    #[schemars(length(min = 1, max = 253))]
    pub user: String,
    /// Why.
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
}

/// An approval decision.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Decision {
    /// Let the run go on.
    Approve,
    /// Fail the step.
    Reject,
}

/// A step that posts a message to a webhook (Slack-compatible JSON).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotifyAction {
    /// The key of a Secret (in the run's namespace) that holds the webhook's URL.
    pub webhook: SecretKeyRef,
    /// The message, with substitutions.
    #[schemars(length(min = 1, max = 4096))]
    pub message: String,
}

/// A webhook told about a run's outcome.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// The events to tell about.
    #[schemars(length(min = 1, max = 3))]
    pub on: Vec<RunEvent>,
    /// The key of a Secret (in the run's namespace) that holds the webhook's URL.
    pub webhook: SecretKeyRef,
}

/// A moment of a run worth telling about.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum RunEvent {
    /// The run succeeded.
    Succeeded,
    /// The run failed, timed out or was cancelled.
    Failed,
    /// An approval step is waiting for a decision.
    ApprovalNeeded,
}

impl RunEvent {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::ApprovalNeeded => "ApprovalNeeded",
        }
    }
}

/// The delivery of one notification.
#[serde_with::skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct NotificationStatus {
    /// Which: `EVENT/INDEX`, or `ApprovalNeeded/STEP/INDEX`, INDEX counting
    /// the entries of `spec.notifications` from 0.
    pub name: String,
    /// Pending (a delivery is due or waits to be retried), Delivered or Failed.
    #[serde(default)]
    pub phase: DeliveryPhase,
    /// Deliveries tried.
    #[serde(default)]
    pub attempts: i32,
    /// When the last one was tried (RFC 3339).
    pub last_attempt_time: Option<String>,
    /// When the next may be tried (RFC 3339).
    pub next_attempt_time: Option<String>,
    /// What happened last.
    pub message: Option<String>,
}

/// Where a delivery stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum DeliveryPhase {
    /// Due, or waiting to be retried.
    #[default]
    Pending,
    /// The webhook answered 2xx.
    Delivered,
    /// Every attempt failed.
    Failed,
}
