//! The Pipeline (validity and schedules) and PipelineRun (execution)
//! controllers: what each watches, and the reconcile each pass runs. The
//! Pipeline reconciler is in [`super::apply`], the PipelineRun reconciler in
//! [`super::run`]; the step templates' controllers are in
//! [`super::steptemplate`].

use aleph_crds::conditions::SUCCEEDED;
use std::sync::Arc;

use aleph_crds::keys::RUN_LABEL;
use aleph_crds::pipeline::{Pipeline, PipelineRun};
use aleph_crds::step_template::{ClusterStepTemplate, StepTemplate, TemplateKind};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};

use super::apply::reconcile_pipeline;
use super::templates;

use super::run;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::runner::{Reconcile, Watch};

/// The Pipeline controller (validity, schedules) for what `watch` names,
/// woken by the runs of its pipelines and by the step templates they use
/// (a template created, changed or deleted changes whether they are Ready).
pub fn pipeline_controller(
    client: &kube::Client,
    watch: &Watch<'_>,
) -> Controller<DeserializeGuard<Pipeline>> {
    let controller = Controller::new(watch.api(client), watch.primary()).watches(
        watch.api::<DeserializeGuard<PipelineRun>>(client),
        crate::runner::watch_config(),
        |guarded: DeserializeGuard<PipelineRun>| {
            let run = guarded.0.ok()?;
            let namespace = run.namespace()?;
            Some(ObjectRef::new(&run.spec.pipeline_ref.name).within(&namespace))
        },
    );
    let pipelines = controller.store();
    let for_cluster_templates = pipelines.clone();
    controller
        .watches(
            watch.api::<DeserializeGuard<StepTemplate>>(client),
            crate::runner::watch_config(),
            move |guarded: DeserializeGuard<StepTemplate>| {
                let meta = template_meta(&guarded.0);
                using_template(
                    &pipelines,
                    meta.namespace.as_deref(),
                    TemplateKind::StepTemplate,
                    meta.name.as_deref().unwrap_or_default(),
                )
            },
        )
        .watches(
            kube::Api::<DeserializeGuard<ClusterStepTemplate>>::all(client.clone()),
            crate::runner::watch_config(),
            move |guarded: DeserializeGuard<ClusterStepTemplate>| {
                let meta = template_meta(&guarded.0);
                using_template(
                    &for_cluster_templates,
                    None,
                    TemplateKind::ClusterStepTemplate,
                    meta.name.as_deref().unwrap_or_default(),
                )
            },
        )
}

/// A watched template's metadata, whether or not the rest of it decodes: a
/// template that does not decode still wakes the pipelines that use it.
fn template_meta<K: kube::Resource>(
    decoded: &std::result::Result<K, kube::core::error_boundary::InvalidObject>,
) -> ObjectMeta {
    match decoded {
        Ok(template) => template.meta().clone(),
        Err(invalid) => invalid.metadata.clone(),
    }
}

/// The pipelines in the cache that use the template `name` of `kind`: those
/// in `namespace` for a StepTemplate, those anywhere for a cluster one.
fn using_template(
    pipelines: &Store<DeserializeGuard<Pipeline>>,
    namespace: Option<&str>,
    kind: TemplateKind,
    name: &str,
) -> Vec<ObjectRef<DeserializeGuard<Pipeline>>> {
    pipelines
        .state()
        .iter()
        .filter_map(|guarded| guarded.0.as_ref().ok())
        .filter(|p| namespace.is_none() || p.namespace().as_deref() == namespace)
        .filter(|p| templates::uses(&p.spec, kind, name))
        .filter_map(|p| Some(ObjectRef::new(&p.name_any()).within(&p.namespace()?)))
        .collect()
}

/// The PipelineRun controller for what `watch` names, watching its Jobs.
pub fn run_controller(
    client: &kube::Client,
    watch: &Watch<'_>,
) -> Controller<DeserializeGuard<PipelineRun>> {
    Controller::new(watch.api(client), watch.primary()).owns(
        watch.api::<Job>(client),
        crate::runner::watch_config().labels(RUN_LABEL),
    )
}

impl Reconcile for Pipeline {
    const CONTROLLER: &'static str = "pipeline";

    fn conditions(&self) -> &[aleph_crds::Condition] {
        crate::runner::status_conditions(self.status.as_ref(), |s| &s.conditions)
    }

    async fn reconcile(obj: Arc<Self>, ctx: Arc<Context>) -> Result<Action> {
        let namespace = obj
            .namespace()
            .ok_or_else(|| Error::InvalidSpec("a Pipeline without a namespace".into()))?;
        reconcile_pipeline(&obj.name_any(), &namespace, &ctx).await
    }
}

impl Reconcile for PipelineRun {
    const CONTROLLER: &'static str = "pipelinerun";

    fn conditions(&self) -> &[aleph_crds::Condition] {
        crate::runner::status_conditions(self.status.as_ref(), |s| &s.conditions)
    }

    /// A run is `Succeeded=Unknown` while a failed pass is retried; a
    /// finished run's outcome stays as it is.
    fn failure_condition(&self, error: &Error) -> Option<crate::conditions::NewCondition> {
        if self
            .status
            .as_ref()
            .is_some_and(|s| s.completion_time.is_some())
        {
            return None;
        }
        Some(crate::conditions::NewCondition::new(
            SUCCEEDED,
            aleph_crds::ConditionStatus::Unknown,
            error.reason(),
            format!(
                "{}; the operator retries with backoff",
                error.user_message()
            ),
        ))
    }

    async fn reconcile(obj: Arc<Self>, ctx: Arc<Context>) -> Result<Action> {
        let namespace = obj
            .namespace()
            .ok_or_else(|| Error::InvalidSpec("a PipelineRun without a namespace".into()))?;
        run::reconcile(&obj.name_any(), &namespace, &ctx).await
    }
}
