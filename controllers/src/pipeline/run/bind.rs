//! A run's workspaces, before its first step: the claims it makes for
//! itself and the existing ones it mounts.

use aleph_crds::pipeline::{PipelineRunStatus, PipelineSpec};
use aleph_crds::pipeline_data::WorkspaceStatus;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, PostParams};
use kube::runtime::events::EventType;

use super::Pass;
use crate::error::Result;
use crate::pipeline::workspaces;

/// Where a run's workspaces stand.
pub(super) enum Binding {
    /// Every workspace has its claim (`status.workspaces`).
    Ready,
    /// A claim is not there yet, or the API server refused it for now.
    Waiting(String),
    /// The run binds its workspaces wrongly: it fails.
    Invalid(String),
}

impl Pass<'_> {
    /// Binds the run's workspaces once: makes the claims it owns, checks the
    /// existing ones, and records them all in `status.workspaces`.
    pub(super) async fn bind_workspaces(
        &mut self,
        spec: &PipelineSpec,
        status: &mut PipelineRunStatus,
    ) -> Result<Binding> {
        if spec.workspaces.len() == status.workspaces.len() {
            return Ok(Binding::Ready);
        }
        let bound = match workspaces::bind(&self.run, spec) {
            Ok(bound) => bound,
            Err(e) => return Ok(Binding::Invalid(e.to_string())),
        };
        let api: Api<PersistentVolumeClaim> =
            Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let mut recorded = Vec::with_capacity(bound.len());
        let mut made = Vec::new();
        for b in &bound {
            let claim = match &b.template {
                Some(template) => {
                    let wanted = workspaces::claim(&self.run, b, template);
                    match api.create(&PostParams::default(), &wanted).await {
                        Ok(claim) => {
                            made.push(b.claim_name.clone());
                            claim
                        }
                        Err(kube::Error::Api(e)) if e.reason == "AlreadyExists" => {
                            match api.get_opt(&b.claim_name).await? {
                                Some(c) if workspaces::made_by(&c, &self.uid) => c,
                                _ => {
                                    return Ok(Binding::Waiting(format!(
                                        "claim {} of workspace {} exists and is not this run's (a deleted run of the same name kept it?): delete it or rename the run",
                                        b.claim_name, b.name
                                    )));
                                }
                            }
                        }
                        Err(kube::Error::Api(e)) if e.code == 400 || e.code == 422 => {
                            return Ok(Binding::Invalid(format!(
                                "the API server refused claim {} of workspace {}: {}",
                                b.claim_name, b.name, e.message
                            )));
                        }
                        Err(kube::Error::Api(e)) if e.code == 403 => {
                            return Ok(Binding::Waiting(format!(
                                "the API server refused claim {} of workspace {} for now: {}; retrying",
                                b.claim_name, b.name, e.message
                            )));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                None => match api.get_opt(&b.claim_name).await? {
                    Some(claim) => claim,
                    None => {
                        return Ok(Binding::Waiting(format!(
                            "workspace {} is bound to claim {}, which does not exist in namespace {}: create it",
                            b.name, b.claim_name, self.namespace
                        )));
                    }
                },
            };
            recorded.push(WorkspaceStatus {
                name: b.name.clone(),
                claim_name: b.claim_name.clone(),
                owned: b.template.is_some(),
                access_modes: claim.spec.and_then(|s| s.access_modes).unwrap_or_default(),
                node: None,
            });
        }
        if !made.is_empty() {
            self.event(
                EventType::Normal,
                "WorkspacesBound",
                format!("made claims {}", made.join(", ")),
            );
        }
        status.workspaces = recorded;
        Ok(Binding::Ready)
    }

    /// Records where the ReadWriteOnce workspaces of the running steps were
    /// placed, from the pods this pass listed.
    pub(super) fn place_workspaces(&mut self, status: &mut PipelineRunStatus) {
        let Some(spec) = status.pipeline_spec.as_ref() else {
            return;
        };
        let Some(pods) = self.pods.as_ref() else {
            return;
        };
        for step in spec.steps.iter().chain(spec.finally.iter()) {
            if step.workspaces.is_empty() {
                continue;
            }
            let mine: Vec<_> = pods
                .iter()
                .filter(|p| {
                    p.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(aleph_crds::keys::STEP_LABEL))
                        == Some(&step.name)
                })
                .cloned()
                .collect();
            workspaces::record_nodes(step, &mine, &mut status.workspaces);
        }
    }
}
