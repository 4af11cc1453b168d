//! The admission policy `aleph-pipelinerun-approvals`: a decision added to
//! a PipelineRun's `spec.approvals` must name the user who sends it, so the
//! status's `decidedBy` is who really decided. Who may decide at all is
//! plain RBAC: adding a decision is an update of the run.
//!
//! The operator applies the policy once per process, before the first
//! approval step starts waiting; a step cannot wait for a decision until it
//! is in place.

use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use kube::ResourceExt;
use kube::api::Api;

use crate::apply::apply_if_changed;
use crate::tenant::build::{cluster_policy, forbid_saying, resource_rule};

/// The policy's (and its binding's) name.
pub const POLICY_NAME: &str = "aleph-pipelinerun-approvals";

/// The policy and its binding.
pub fn policy() -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    cluster_policy(
        POLICY_NAME,
        vec![resource_rule(
            aleph_crds::common::GROUP,
            "*",
            &["CREATE", "UPDATE"],
            &["pipelineruns"],
        )],
        vec![forbid_saying(
            "!has(object.spec.approvals) || object.spec.approvals.all(a, \
             (oldObject != null && has(oldObject.spec.approvals) && oldObject.spec.approvals.exists(o, o == a)) \
             || a.user == request.userInfo.username)"
                .into(),
            "'a decision added to spec.approvals must name who sends it: set user to ' + request.userInfo.username".into(),
        )],
        None,
    )
}

static APPLIED: AtomicBool = AtomicBool::new(false);

/// Applies the policy and its binding, once per process; the error says
/// why it could not be.
pub async fn ensure(client: &kube::Client) -> Result<(), String> {
    if APPLIED.load(Ordering::SeqCst) {
        return Ok(());
    }
    let (policy, binding) = policy();
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    let applied = async {
        let name = policy.name_any();
        apply_if_changed(&policies, policies.get_opt(&name).await?.as_ref(), &policy).await?;
        apply_if_changed(&bindings, bindings.get_opt(&name).await?.as_ref(), &binding).await?;
        Ok::<(), crate::error::Error>(())
    };
    applied.await.map_err(|e| {
        format!("the admission policy {POLICY_NAME}, which checks who decides, could not be applied: {e}")
    })?;
    APPLIED.store(true, Ordering::SeqCst);
    Ok(())
}
