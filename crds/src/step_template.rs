//! `StepTemplate` and `ClusterStepTemplate`: a container or plugin step
//! written once, with typed params of its own, that the steps of many
//! pipelines use by name (`PipelineStep.template`, a [`TemplateRef`]).
//!
//! Templates are versioned by name: a new version is a new object
//! (`tokenize-v2` beside `tokenize-v1`), so a pipeline moves to it by
//! changing its reference, and a run keeps the expansion it started with.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::kind_status;
use crate::pipeline::{ContainerAction, ParamSpec, ParamValue, PluginAction, RetryPolicy};
use crate::pipeline_data::WorkspaceMount;

/// Declares the spec of a step-template kind: both kinds have the same
/// fields and rules, and differ only in scope (given with the `#[kube]`
/// attributes in `$meta`).
macro_rules! step_template_spec {
    (
        $(#[$meta:meta])*
        pub struct $name:ident;
    ) => {
        #[serde_with::skip_serializing_none]
        #[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
        $(#[$meta])*
        #[serde(rename_all = "camelCase")]
        #[x_kube(validation = Rule::new("has(self.container) != has(self.plugin)").message("a step template has exactly one action: container or plugin"))]
        pub struct $name {
            /// The template's own params, used as `$(params.NAME)` in its
            /// fields (not the params of the pipelines that use it). A step
            /// gives their values in `template.params`; defaults fill the rest.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
            #[schemars(length(max = 32))]
            pub params: Vec<ParamSpec>,
            /// What the template does and what its params mean, for the
            /// people who write pipelines with it.
            #[schemars(length(max = 4096))]
            pub description: Option<String>,
            /// Run a container. `$(params.NAME)` of the template's params is
            /// substituted in the image, the command, the args and env values.
            pub container: Option<ContainerAction>,
            /// Run a `job`-mode Plugin (in the namespace of the run that uses
            /// the template). `$(params.NAME)` is substituted in the args.
            pub plugin: Option<PluginAction>,
            /// Retries of a failed attempt; a step that sets its own retries
            /// overrides these.
            pub retries: Option<RetryPolicy>,
            /// The longest one attempt may run, in seconds; a step that sets
            /// its own overrides it.
            #[schemars(range(min = 1, max = 604800))]
            pub timeout_seconds: Option<i64>,
            /// Workspaces the step mounts; every pipeline that uses the
            /// template must declare them in its `spec.workspaces`. A step's
            /// own mount of the same workspace overrides the template's.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            #[schemars(length(max = 8))]
            pub workspaces: Vec<WorkspaceMount>,
            /// Annotations on the step's pods; `$(params.NAME)` is substituted
            /// in the values. A step's own annotation of the same key
            /// overrides the template's.
            #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
            #[schemars(extend("maxProperties" = 32))]
            pub pod_annotations: BTreeMap<String, String>,
        }
    };
}

step_template_spec! {
    /// A step written once and used by the steps of the pipelines in its
    /// namespace (`template: {name: NAME}`).
    #[kube(
        group = "aleph.dev",
        version = "v1alpha1",
        kind = "StepTemplate",
        plural = "steptemplates",
        shortname = "stpl",
        category = "aleph",
        namespaced,
        status = "StepTemplateStatus",
        doc = "A container or plugin step with typed params, written once and used by the steps of the Pipelines in its namespace (template: {name: NAME}). Versioned by name: publish a changed template as a new object (tokenize-v2), not by editing the one pipelines use; a run keeps the expansion it started with.",
        printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
        printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", priority = 1),
        printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
    )]
    pub struct StepTemplateSpec;
}

step_template_spec! {
    /// A step written once and used by the steps of pipelines in every
    /// namespace (`template: {kind: ClusterStepTemplate, name: NAME}`).
    #[kube(
        group = "aleph.dev",
        version = "v1alpha1",
        kind = "ClusterStepTemplate",
        plural = "clustersteptemplates",
        shortname = "cstpl",
        category = "aleph",
        status = "StepTemplateStatus",
        doc = "A container or plugin step with typed params, written once and used by the steps of Pipelines in every namespace (template: {kind: ClusterStepTemplate, name: NAME}). Versioned by name: publish a changed template as a new object (tokenize-v2), not by editing the one pipelines use; a run keeps the expansion it started with.",
        printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
        printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", priority = 1),
        printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
    )]
    pub struct ClusterStepTemplateSpec;
}

impl From<ClusterStepTemplateSpec> for StepTemplateSpec {
    fn from(spec: ClusterStepTemplateSpec) -> Self {
        let ClusterStepTemplateSpec {
            params,
            description,
            container,
            plugin,
            retries,
            timeout_seconds,
            workspaces,
            pod_annotations,
        } = spec;
        Self {
            params,
            description,
            container,
            plugin,
            retries,
            timeout_seconds,
            workspaces,
            pod_annotations,
        }
    }
}

kind_status! {
    /// What the operator observed of a step template.
    pub struct StepTemplateStatus {
        /// Ready: whether the template's params, their defaults and its
        /// `$(params.NAME)` references are valid, and why not.
        conditions;
    }
}

/// Which kind of template a step uses.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema, Default,
)]
pub enum TemplateKind {
    /// A StepTemplate in the pipeline's namespace.
    #[default]
    StepTemplate,
    /// A ClusterStepTemplate, shared by every namespace.
    ClusterStepTemplate,
}

impl TemplateKind {
    /// The kind's name, as the API and messages write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StepTemplate => "StepTemplate",
            Self::ClusterStepTemplate => "ClusterStepTemplate",
        }
    }
}

/// The step template a step runs, and the values of the template's params.
/// The step's own `dependsOn`, `when`, `forEach`, `retries`,
/// `timeoutSeconds`, `workspaces` and `podAnnotations` apply to it, and
/// override the template's.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("template.name must be a template's name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, for example tokenize-v2").field_path(".name"))]
#[x_kube(validation = Rule::new("!has(self.params) || self.params.all(p, self.params.exists_one(q, q.name == p.name))").message("template.params names a param more than once: give each param one value").field_path(".params"))]
pub struct TemplateRef {
    /// The template's name. Templates are versioned by name: to move to a
    /// new version, name it here (for example `tokenize-v2`).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `StepTemplate` (in the pipeline's namespace; the default) or
    /// `ClusterStepTemplate`.
    #[serde(default)]
    pub kind: TemplateKind,
    /// Values of the template's params; its defaults fill the rest. A value
    /// may use the pipeline's `$(params.NAME)`, `$(steps.STEP.outputs.KEY)`
    /// and, in a step with `forEach`, `$(item)`: they are substituted when
    /// the step runs, as in the step's own fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub params: Vec<ParamValue>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::CustomResourceExt;

    use super::*;

    /// The schema of a kind's spec, without its description (which says
    /// where the kind's templates are used).
    fn spec_schema(crd: &CustomResourceDefinition) -> serde_json::Value {
        let version = serde_json::to_value(&crd.spec.versions[0]).unwrap();
        let mut spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"].clone();
        spec.as_object_mut().unwrap().remove("description");
        spec
    }

    #[test]
    fn both_kinds_have_one_spec_and_differ_in_scope() {
        let namespaced = StepTemplate::crd();
        let cluster = ClusterStepTemplate::crd();
        assert_eq!(namespaced.spec.scope, "Namespaced");
        assert_eq!(cluster.spec.scope, "Cluster");
        assert_eq!(
            namespaced.spec.names.short_names,
            Some(vec!["stpl".to_string()])
        );
        assert_eq!(
            cluster.spec.names.short_names,
            Some(vec!["cstpl".to_string()])
        );
        for crd in [&namespaced, &cluster] {
            assert_eq!(crd.spec.names.categories, Some(vec!["aleph".to_string()]));
        }
        let schema = spec_schema(&namespaced);
        assert_eq!(schema, spec_schema(&cluster));
        assert_eq!(
            schema["x-kubernetes-validations"][0]["message"],
            "a step template has exactly one action: container or plugin"
        );
    }

    #[test]
    fn a_template_ref_names_a_namespaced_template_by_default() {
        let reference: TemplateRef =
            serde_json::from_value(serde_json::json!({"name": "tokenize-v2"})).unwrap();
        assert_eq!(reference.kind, TemplateKind::StepTemplate);
        assert!(reference.params.is_empty());
        assert_eq!(
            serde_json::to_value(&reference).unwrap(),
            serde_json::json!({"name": "tokenize-v2", "kind": "StepTemplate"})
        );
    }
}
