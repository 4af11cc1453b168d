//! StepTemplates and ClusterStepTemplates: their controllers, which report
//! whether each template can be used (`Ready`, from
//! [`templates::check_template`]), and [`expand`], which reads the templates
//! a pipeline's steps use and expands them, for the Pipeline's `Ready` and
//! for a run's start. The expansion itself is pure, in [`templates`].

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use aleph_crds::common::ConditionStatus;
use aleph_crds::conditions::READY;
use aleph_crds::pipeline::PipelineSpec;
use aleph_crds::step_template::{
    ClusterStepTemplate, StepTemplate, StepTemplateSpec, StepTemplateStatus, TemplateKind,
};
use kube::api::Api;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::templates::{self, ExpandError, TemplateKey};
use crate::apply::patch_status_if_changed;
use crate::conditions::{NewCondition, find, set_condition};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::runner::{Reconcile, Watch};

/// The templates `spec`'s steps use, as the API server has them now:
/// StepTemplates from `namespace`, ClusterStepTemplates from the cluster.
/// One that does not exist is left out (the expansion names it).
pub async fn fetch(
    client: &kube::Client,
    namespace: &str,
    spec: &PipelineSpec,
) -> Result<BTreeMap<TemplateKey, StepTemplateSpec>> {
    let mut found = BTreeMap::new();
    for key in templates::referenced(spec) {
        let template = match key.kind {
            TemplateKind::StepTemplate => {
                Api::<StepTemplate>::namespaced(client.clone(), namespace)
                    .get_opt(&key.name)
                    .await?
                    .map(|t| t.spec)
            }
            TemplateKind::ClusterStepTemplate => Api::<ClusterStepTemplate>::all(client.clone())
                .get_opt(&key.name)
                .await?
                .map(|t| t.spec.into()),
        };
        if let Some(template) = template {
            found.insert(key, template);
        }
    }
    Ok(found)
}

/// `spec` (of a Pipeline in `namespace`) with the steps that use templates
/// expanded: the inner error is a missing or unusable template, the outer
/// one the API server's.
pub async fn expand(
    client: &kube::Client,
    namespace: &str,
    spec: &PipelineSpec,
) -> Result<Result<PipelineSpec, ExpandError>> {
    let found = fetch(client, namespace, spec).await?;
    Ok(templates::expand_pipeline(spec, namespace, &found))
}

/// The StepTemplate controller for what `watch` names.
pub fn controller(
    client: &kube::Client,
    watch: &Watch<'_>,
) -> Controller<DeserializeGuard<StepTemplate>> {
    Controller::new(watch.api(client), watch.primary())
}

/// The ClusterStepTemplate controller: cluster-scoped, whatever namespaces
/// the other controllers watch.
pub fn cluster_controller(
    client: &kube::Client,
    watch: &Watch<'_>,
) -> Controller<DeserializeGuard<ClusterStepTemplate>> {
    Controller::new(Api::all(client.clone()), watch.primary())
}

/// How a step names the template `name` of `kind`.
fn reference(kind: TemplateKind, name: &str) -> String {
    match kind {
        TemplateKind::StepTemplate => format!("template: {{name: {name}}}"),
        TemplateKind::ClusterStepTemplate => {
            format!("template: {{kind: ClusterStepTemplate, name: {name}}}")
        }
    }
}

/// A template's `Ready` condition: whether steps can use it, and how.
pub fn ready_condition(kind: TemplateKind, name: &str, spec: &StepTemplateSpec) -> NewCondition {
    if let Err(e) = templates::check_template(spec) {
        return NewCondition::no(
            READY,
            "InvalidTemplate",
            format!("the template cannot be used: {e}"),
        );
    }
    let action = match (&spec.container, &spec.plugin) {
        (Some(c), _) => format!("a container step ({})", c.image),
        (None, Some(p)) => format!("a step of plugin {}", p.name),
        (None, None) => "a step".to_string(),
    };
    let required: Vec<&str> = spec
        .params
        .iter()
        .filter(|p| p.default.is_none())
        .map(|p| p.name.as_str())
        .collect();
    let params = match spec.params.len() {
        0 => "no params".to_string(),
        n if required.is_empty() => format!("{n} params, all with defaults"),
        n => format!("{n} params ({} required)", required.join(", ")),
    };
    NewCondition::yes(
        READY,
        "Valid",
        format!(
            "{action} with {params}; steps use it with {}",
            reference(kind, name)
        ),
    )
}

/// Writes a template's status (its `Ready`) when it changed, with a Warning
/// Event when it turns invalid.
async fn reconcile_template<K>(
    obj: &K,
    api: Api<K>,
    kind: TemplateKind,
    spec: &StepTemplateSpec,
    current: Option<&StepTemplateStatus>,
    ctx: &Context,
) -> Result<Action>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let generation = obj.meta().generation;
    let mut status = current.cloned().unwrap_or_default();
    status.observed_generation = generation;
    let ready = ready_condition(kind, &obj.name_any(), spec);
    let was = find(&status.conditions, READY).map(|c| (c.status, c.reason.clone()));
    let turned_invalid = ready.status == ConditionStatus::False
        && was != Some((ConditionStatus::False, ready.reason.clone()));
    let message = ready.message.clone();
    set_condition(&mut status.conditions, ready, generation);
    patch_status_if_changed(&api, obj, current, &status).await?;
    if turned_invalid {
        ctx.event(obj, EventType::Warning, "InvalidTemplate", message)
            .await;
    }
    Ok(Action::await_change())
}

impl Reconcile for StepTemplate {
    const CONTROLLER: &'static str = "steptemplate";

    fn conditions(&self) -> &[aleph_crds::Condition] {
        crate::runner::status_conditions(self.status.as_ref(), |s| &s.conditions)
    }

    async fn reconcile(obj: Arc<Self>, ctx: Arc<Context>) -> Result<Action> {
        let namespace = obj
            .namespace()
            .ok_or_else(|| Error::InvalidSpec("a StepTemplate without a namespace".into()))?;
        let api: Api<StepTemplate> = Api::namespaced(ctx.client.clone(), &namespace);
        reconcile_template(
            obj.as_ref(),
            api,
            TemplateKind::StepTemplate,
            &obj.spec,
            obj.status.as_ref(),
            &ctx,
        )
        .await
    }
}

impl Reconcile for ClusterStepTemplate {
    const CONTROLLER: &'static str = "clustersteptemplate";

    fn conditions(&self) -> &[aleph_crds::Condition] {
        crate::runner::status_conditions(self.status.as_ref(), |s| &s.conditions)
    }

    async fn reconcile(obj: Arc<Self>, ctx: Arc<Context>) -> Result<Action> {
        let api: Api<ClusterStepTemplate> = Api::all(ctx.client.clone());
        let spec: StepTemplateSpec = obj.spec.clone().into();
        reconcile_template(
            obj.as_ref(),
            api,
            TemplateKind::ClusterStepTemplate,
            &spec,
            obj.status.as_ref(),
            &ctx,
        )
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> StepTemplateSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn a_valid_template_says_how_steps_use_it() {
        let tokenize = spec(
            r#"
params: [{name: corpus}, {name: lang, default: en}]
container: {image: "aleph.local/busybox:dev", args: ["$(params.corpus)", "$(params.lang)"]}
"#,
        );
        let ready = ready_condition(TemplateKind::StepTemplate, "tokenize-v1", &tokenize);
        assert_eq!(ready.status, ConditionStatus::True);
        assert_eq!(
            ready.message,
            "a container step (aleph.local/busybox:dev) with 2 params (corpus required); steps use it with template: {name: tokenize-v1}"
        );
        let export = spec("plugin: {name: exporter}");
        let ready = ready_condition(TemplateKind::ClusterStepTemplate, "export", &export);
        assert_eq!(
            ready.message,
            "a step of plugin exporter with no params; steps use it with template: {kind: ClusterStepTemplate, name: export}"
        );
    }

    #[test]
    fn an_invalid_template_is_not_ready_and_says_why() {
        let bad = spec("container: {image: i, args: [\"$(params.missing)\"]}");
        let ready = ready_condition(TemplateKind::StepTemplate, "t", &bad);
        assert_eq!(ready.status, ConditionStatus::False);
        assert_eq!(ready.reason, "InvalidTemplate");
        assert_eq!(
            ready.message,
            "the template cannot be used: container.args[0]: $(params.missing) is not available: the template declares no such param: declare it in spec.params"
        );
    }

    #[test]
    fn a_cluster_template_reads_as_a_namespaced_one() {
        let cluster: aleph_crds::step_template::ClusterStepTemplateSpec = serde_saphyr::from_str(
            "params: [{name: a}]\nplugin: {name: p, args: [\"$(params.a)\"]}\ntimeoutSeconds: 5",
        )
        .unwrap();
        let namespaced: StepTemplateSpec = cluster.into();
        assert_eq!(
            namespaced,
            spec(
                "params: [{name: a}]\nplugin: {name: p, args: [\"$(params.a)\"]}\ntimeoutSeconds: 5"
            )
        );
    }
}
