//! A run's workspaces: which claim backs each of the pipeline's workspaces,
//! the claims a run makes for itself, and the volumes, mounts and placement
//! of the steps that mount them. Pure: no client.
//!
//! A ReadWriteOnce volume can be mounted by the pods of one node only, so the
//! first step that mounts one records its node in the run's status
//! (`status.workspaces[].node`), and every later step that mounts it is
//! placed there (a required node affinity on `metadata.name`).

use std::collections::BTreeMap;

use aleph_crds::keys::RUN_LABEL;
use aleph_crds::pipeline::{PipelineRun, PipelineSpec, PipelineStep};
use aleph_crds::pipeline_data::{ClaimTemplate, WorkspaceStatus};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod,
    Volume, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::build::{STEP_CONTAINER, label_value};
use crate::names::bounded_name;
use crate::workload::mount;

/// Where a workspace is mounted when the step does not say.
pub const MOUNT_ROOT: &str = "/workspace";
/// Annotation on a claim a run made: the run's uid (a kept claim has no
/// owner reference to tell whose it is).
pub const RUN_UID_ANNOTATION: &str = "aleph.dev/pipelinerun-uid";

/// Why a run's workspaces cannot be bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkspaceError {
    /// The pipeline declares a workspace the run binds to nothing.
    #[error(
        "workspace {name} is bound to nothing: bind it in spec.workspaces (a volumeClaimTemplate or a persistentVolumeClaim), or give it a volumeClaimTemplate in the pipeline"
    )]
    Unbound {
        /// The workspace.
        name: String,
    },
    /// The run binds a workspace the pipeline does not declare.
    #[error("spec.workspaces binds {name}, which pipeline {pipeline} does not declare")]
    Undeclared {
        /// The workspace.
        name: String,
        /// The pipeline.
        pipeline: String,
    },
}

/// One workspace as the run binds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Bound {
    /// The workspace.
    pub name: String,
    /// The claim behind it.
    pub claim_name: String,
    /// The claim the run makes (None: an existing claim).
    pub template: Option<ClaimTemplate>,
    /// Whether the run's claim stays when the run goes.
    pub keep: bool,
}

/// The claim a run makes for a workspace: `<run>-<workspace>`.
pub fn claim_name(run: &str, workspace: &str) -> String {
    bounded_name(&format!("{run}-{workspace}"), 253)
}

/// What backs each workspace of `spec` in `run`: the run's own binding, else
/// the pipeline's claim template.
pub fn bind(run: &PipelineRun, spec: &PipelineSpec) -> Result<Vec<Bound>, WorkspaceError> {
    let run_name = run.metadata.name.as_deref().unwrap_or_default();
    if let Some(extra) = run
        .spec
        .workspaces
        .iter()
        .find(|b| !spec.workspaces.iter().any(|w| w.name == b.name))
    {
        return Err(WorkspaceError::Undeclared {
            name: extra.name.clone(),
            pipeline: run.spec.pipeline_ref.name.clone(),
        });
    }
    spec.workspaces
        .iter()
        .map(|declared| {
            let binding = run.spec.workspaces.iter().find(|b| b.name == declared.name);
            let own = |template: &ClaimTemplate, keep: bool| Bound {
                name: declared.name.clone(),
                claim_name: claim_name(run_name, &declared.name),
                template: Some(template.clone()),
                keep,
            };
            match binding {
                Some(b) => match (&b.volume_claim_template, &b.persistent_volume_claim) {
                    (Some(t), _) => Ok(own(t, b.keep)),
                    (None, Some(existing)) => Ok(Bound {
                        name: declared.name.clone(),
                        claim_name: existing.claim_name.clone(),
                        template: None,
                        keep: true,
                    }),
                    (None, None) => Err(WorkspaceError::Unbound {
                        name: declared.name.clone(),
                    }),
                },
                None => declared
                    .volume_claim_template
                    .as_ref()
                    .map(|t| own(t, false))
                    .ok_or_else(|| WorkspaceError::Unbound {
                        name: declared.name.clone(),
                    }),
            }
        })
        .collect()
}

/// The claim a run makes for `bound`, owned by the run unless kept (a kept
/// claim carries the run's uid in an annotation instead).
pub fn claim(run: &PipelineRun, bound: &Bound, template: &ClaimTemplate) -> PersistentVolumeClaim {
    let run_name = run.metadata.name.clone().unwrap_or_default();
    let uid = run.metadata.uid.clone().unwrap_or_default();
    let owner = OwnerReference {
        api_version: format!(
            "{}/{}",
            aleph_crds::common::GROUP,
            aleph_crds::common::VERSION
        ),
        kind: "PipelineRun".into(),
        name: run_name.clone(),
        uid: uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(bound.claim_name.clone()),
            namespace: run.metadata.namespace.clone(),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    "aleph-operator".to_string(),
                ),
                (RUN_LABEL.to_string(), label_value(&run_name)),
            ])),
            annotations: Some(BTreeMap::from([(RUN_UID_ANNOTATION.to_string(), uid)])),
            owner_references: (!bound.keep).then(|| vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec![template.access_mode.as_str().to_string()]),
            storage_class_name: template.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    template.storage.clone(),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

/// Whether a claim is the one this run made (by its uid annotation).
pub fn made_by(claim: &PersistentVolumeClaim, run_uid: &str) -> bool {
    claim
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RUN_UID_ANNOTATION))
        .is_some_and(|u| u == run_uid)
}

fn is_single_node(status: &WorkspaceStatus) -> bool {
    status.access_modes.iter().any(|m| m == "ReadWriteOnce")
        || status.access_modes.iter().any(|m| m == "ReadWriteOncePod")
}

fn volume_name(workspace: &str) -> String {
    format!("ws-{workspace}")
}

/// Adds the step's workspaces to its Job: a volume per workspace, a mount in
/// the step's container, and, for a ReadWriteOnce workspace already placed,
/// the node it lives on. A workspace without a status entry is left out
/// (the run binds every workspace before it starts a step).
pub fn attach(job: &mut Job, step: &PipelineStep, workspaces: &[WorkspaceStatus]) {
    let Some(pod) = job.spec.as_mut().and_then(|s| s.template.spec.as_mut()) else {
        return;
    };
    let mut nodes: Vec<String> = Vec::new();
    for wanted in &step.workspaces {
        let Some(status) = workspaces.iter().find(|w| w.name == wanted.name) else {
            continue;
        };
        let name = volume_name(&wanted.name);
        pod.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: name.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: status.claim_name.clone(),
                read_only: Some(wanted.read_only),
            }),
            ..Volume::default()
        });
        let path = wanted
            .mount_path
            .clone()
            .unwrap_or_else(|| format!("{MOUNT_ROOT}/{}", wanted.name));
        if let Some(container) = pod.containers.iter_mut().find(|c| c.name == STEP_CONTAINER) {
            container
                .volume_mounts
                .get_or_insert_with(Vec::new)
                .push(mount(&name, &path, wanted.read_only));
        }
        if let Some(node) = status.node.as_ref().filter(|_| is_single_node(status))
            && !nodes.contains(node)
        {
            nodes.push(node.clone());
        }
    }
    if nodes.is_empty() {
        return;
    }
    // Two ReadWriteOnce workspaces on two nodes cannot both be mounted: the
    // affinity then names both and no node has both names; the pod stays
    // Pending and the step says why (see `placement_note`).
    let terms = vec![NodeSelectorTerm {
        match_fields: Some(
            nodes
                .iter()
                .map(|node| NodeSelectorRequirement {
                    key: "metadata.name".into(),
                    operator: "In".into(),
                    values: Some(vec![node.clone()]),
                })
                .collect(),
        ),
        ..NodeSelectorTerm::default()
    }];
    pod.affinity
        .get_or_insert_with(Affinity::default)
        .node_affinity = Some(NodeAffinity {
        required_during_scheduling_ignored_during_execution: Some(NodeSelector {
            node_selector_terms: terms,
        }),
        ..NodeAffinity::default()
    });
}

/// Why a step's pod cannot be placed, when its ReadWriteOnce workspaces live
/// on different nodes; None when they can share one.
pub fn placement_conflict(step: &PipelineStep, workspaces: &[WorkspaceStatus]) -> Option<String> {
    let placed: Vec<(&str, &str)> = step
        .workspaces
        .iter()
        .filter_map(|w| workspaces.iter().find(|s| s.name == w.name))
        .filter(|s| is_single_node(s))
        .filter_map(|s| s.node.as_deref().map(|n| (s.name.as_str(), n)))
        .collect();
    let first = placed.first()?;
    let other = placed.iter().find(|(_, node)| *node != first.1)?;
    Some(format!(
        "its ReadWriteOnce workspaces live on different nodes ({} on {}, {} on {}): a pod can mount both only on one node; give one of them ReadWriteMany or use them in different steps",
        first.0, first.1, other.0, other.1
    ))
}

/// Records, for each ReadWriteOnce workspace of `step` not yet placed, the
/// node of the first of `pods` that was scheduled. Returns whether anything changed.
pub fn record_nodes(step: &PipelineStep, pods: &[Pod], workspaces: &mut [WorkspaceStatus]) -> bool {
    let Some(node) = pods
        .iter()
        .find_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
    else {
        return false;
    };
    let mut changed = false;
    for wanted in &step.workspaces {
        if let Some(status) = workspaces
            .iter_mut()
            .find(|w| w.name == wanted.name && w.node.is_none())
            .filter(|w| is_single_node(w))
        {
            status.node = Some(node.clone());
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "workspaces_tests.rs"]
mod tests;
