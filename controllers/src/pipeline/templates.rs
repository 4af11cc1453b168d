//! Step templates expanded into the steps that use them: pure functions, no
//! client.
//!
//! A step with `template` names a StepTemplate (in the pipeline's namespace)
//! or a ClusterStepTemplate and gives values for the template's own params.
//! [`expand_pipeline`] replaces every such step by the template's container
//! or plugin action, with those values in place of the template's
//! `$(params.NAME)` and the step's own fields laid over the template's. A
//! value is inserted as written, as if the pipeline's author had written it
//! in the template's field: the pipeline's references in it
//! (`$(params.NAME)`, `$(steps.STEP.outputs.KEY)`, `$(item)`) stay, are
//! checked by [`graph::validate`](super::graph::validate) on the expanded
//! spec and are substituted when the step runs, like those of any step.
//!
//! [`check_template`] is a template's own validity (its `Ready` condition).
//! Every `$(...)` is read by [`params`]' parser: one grammar for all.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use aleph_crds::pipeline::{ParamSpec, ParamType, PipelineSpec, PipelineStep};
use aleph_crds::step_template::{StepTemplateSpec, TemplateKind, TemplateRef};

use super::params::{self, Reference, StepOutputs};

/// A template as steps name it: its kind and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TemplateKey {
    /// StepTemplate (namespaced) or ClusterStepTemplate.
    pub kind: TemplateKind,
    /// The template's name.
    pub name: String,
}

impl TemplateKey {
    /// The template `reference` names.
    pub fn of(reference: &TemplateRef) -> Self {
        Self {
            kind: reference.kind,
            name: reference.name.clone(),
        }
    }
}

impl fmt::Display for TemplateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.name)
    }
}

/// The templates the steps (and finally steps) of `spec` use.
pub fn referenced(spec: &PipelineSpec) -> BTreeSet<TemplateKey> {
    spec.steps
        .iter()
        .chain(spec.finally.iter())
        .filter_map(|s| s.template.as_ref())
        .map(TemplateKey::of)
        .collect()
}

/// Whether a step (or finally step) of `spec` uses the template `name` of `kind`.
pub fn uses(spec: &PipelineSpec, kind: TemplateKind, name: &str) -> bool {
    spec.steps
        .iter()
        .chain(spec.finally.iter())
        .filter_map(|s| s.template.as_ref())
        .any(|t| t.kind == kind && t.name == name)
}

/// What is wrong with a template, or with how a step uses it. The messages
/// read after "the template cannot be used: " or "step S cannot use T: ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Neither container nor plugin.
    #[error("it has no action: set container or plugin")]
    NoAction,
    /// Both container and plugin.
    #[error("it sets both container and plugin: a template has exactly one action")]
    TwoActions,
    /// Two params share a name.
    #[error("it declares param {name} twice: give each param its own name")]
    DuplicateParam {
        /// The name.
        name: String,
    },
    /// A param's declaration cannot be used (its default, an enum without values).
    #[error("its param {name} is invalid: {why}")]
    InvalidDeclaration {
        /// The param.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// A `$(...)` in the template's fields that the template cannot resolve.
    #[error("{field}: {why}")]
    BadReference {
        /// The field, for example `container.args[1]`.
        field: String,
        /// The reference and what is wrong with it.
        why: String,
    },
    /// A param with no default that the step gives no value.
    #[error(
        "its param {name} has no default and the step gives no value: set it in the step's template.params"
    )]
    MissingValue {
        /// The param.
        name: String,
    },
    /// The step gives a value to a param the template does not declare.
    #[error("the step's template.params gives {name}, which the template does not declare ({})",
        if .declared.is_empty() { "it declares no params".to_string() } else { format!("it declares {}", .declared.join(", ")) })]
    UnknownParam {
        /// The name the step gives.
        name: String,
        /// The template's params.
        declared: Vec<String>,
    },
    /// The step gives a param's value twice.
    #[error("the step's template.params gives {name} more than once: give it once")]
    RepeatedValue {
        /// The param.
        name: String,
    },
    /// A value that does not fit its param.
    #[error("the value of its param {name} is invalid: {why}")]
    InvalidValue {
        /// The param.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// The step sets an action of its own besides `template`.
    #[error("the step also sets {action}: a step with template has no other action")]
    StepHasAction {
        /// The step's other action.
        action: &'static str,
    },
    /// The template mounts a workspace the pipeline does not declare.
    #[error(
        "it mounts workspace {name}, which the pipeline does not declare: declare it in the pipeline's spec.workspaces"
    )]
    UndeclaredWorkspace {
        /// The workspace.
        name: String,
    },
}

/// Why a pipeline's steps cannot be expanded. `reason()` is the condition reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// A step names a template that does not exist.
    #[error("step {step} uses {template}, which does not exist{}: create it, or name an existing one in the step's template{}",
        .namespace.as_deref().map(|n| format!(" in namespace {n}")).unwrap_or_default(),
        if .template.kind == TemplateKind::StepTemplate { " (a ClusterStepTemplate needs kind: ClusterStepTemplate)" } else { "" })]
    NotFound {
        /// The step.
        step: String,
        /// The template it names.
        template: TemplateKey,
        /// Where a StepTemplate was looked for; `None` for a ClusterStepTemplate.
        namespace: Option<String>,
    },
    /// A template that cannot be expanded into a step.
    #[error("step {step} cannot use {template}: {error}")]
    Invalid {
        /// The step.
        step: String,
        /// The template it names.
        template: TemplateKey,
        /// What is wrong.
        error: TemplateError,
    },
}

impl ExpandError {
    /// The CamelCase reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "TemplateNotFound",
            Self::Invalid { .. } => "InvalidTemplate",
        }
    }
}

/// A param type with its article, as messages write it: `an int`.
fn a_type(type_: ParamType) -> &'static str {
    match type_ {
        ParamType::String => "a string",
        ParamType::Int => "an int",
        ParamType::Bool => "a bool",
        ParamType::Enum => "an enum",
        ParamType::List => "a list",
    }
}

/// The fields of a template where its `$(params.NAME)` are substituted, each
/// with the name messages give it.
fn template_fields(spec: &StepTemplateSpec) -> Vec<(String, &str)> {
    let mut fields = Vec::new();
    if let Some(c) = &spec.container {
        fields.push(("container.image".to_string(), c.image.as_str()));
        for (i, text) in c.command.iter().enumerate() {
            fields.push((format!("container.command[{i}]"), text.as_str()));
        }
        for (i, text) in c.args.iter().enumerate() {
            fields.push((format!("container.args[{i}]"), text.as_str()));
        }
        for var in &c.env {
            if let Some(value) = &var.value {
                fields.push((format!("container.env {}", var.name), value.as_str()));
            }
        }
    }
    if let Some(p) = &spec.plugin {
        for (i, text) in p.args.iter().enumerate() {
            fields.push((format!("plugin.args[{i}]"), text.as_str()));
        }
    }
    for (key, value) in &spec.pod_annotations {
        fields.push((format!("podAnnotations {key}"), value.as_str()));
    }
    fields
}

/// Checks a template on its own: exactly one action, params with distinct
/// names and usable defaults, and every `$(...)` in its fields one of its own
/// params. A template refers to nothing of the pipelines that use it: those
/// pass step outputs and items in as param values.
pub fn check_template(spec: &StepTemplateSpec) -> Result<(), TemplateError> {
    match (&spec.container, &spec.plugin) {
        (None, None) => return Err(TemplateError::NoAction),
        (Some(_), Some(_)) => return Err(TemplateError::TwoActions),
        _ => {}
    }
    let mut declared = BTreeSet::new();
    for param in &spec.params {
        if !declared.insert(param.name.as_str()) {
            return Err(TemplateError::DuplicateParam {
                name: param.name.clone(),
            });
        }
        let invalid = |why: String| TemplateError::InvalidDeclaration {
            name: param.name.clone(),
            why,
        };
        if param.type_ == ParamType::Enum && param.values.is_empty() {
            return Err(invalid("an enum param needs values".into()));
        }
        if let Some(default) = &param.default {
            if !params::references(default).is_ok_and(|r| r.is_empty()) {
                return Err(invalid(format!(
                    "its default {default:?} holds a $(...) reference, but a default is used as written: give such a value in the step's template.params instead"
                )));
            }
            params::check_type(param, default)
                .map_err(|why| invalid(format!("its default {why}")))?;
        }
    }
    for (field, text) in template_fields(spec) {
        let refs = params::references(text).map_err(|e| TemplateError::BadReference {
            field: field.clone(),
            why: e.to_string(),
        })?;
        for reference in refs {
            let why = match &reference {
                Reference::Param(name) if declared.contains(name.as_str()) => continue,
                Reference::Param(_) => {
                    "the template declares no such param: declare it in spec.params"
                }
                Reference::StepOutput { .. } => {
                    "a template cannot name the steps of the pipelines that use it: use a param of its own here, and give $(steps.STEP.outputs.KEY) as that param's value in the step's template.params"
                }
                Reference::Item => {
                    "a template has no item of its own: use a param here, and give $(item) as that param's value in the template.params of a step with forEach"
                }
            };
            return Err(TemplateError::BadReference {
                field,
                why: format!("{reference} is not available: {why}"),
            });
        }
    }
    Ok(())
}

/// Whether the pipeline param `given`, passed whole as `$(params.NAME)`, can
/// only hold values of the template param `param`'s type.
fn check_pipeline_param(param: &ParamSpec, given: &ParamSpec) -> Result<(), String> {
    let gets = format!(
        "it gets $(params.{}), {} param of the pipeline",
        given.name,
        a_type(given.type_)
    );
    if param.type_ == ParamType::String {
        return Ok(());
    }
    if given.type_ == ParamType::Enum {
        for value in &given.values {
            params::check_type(param, value)
                .map_err(|why| format!("{gets}, one of whose values {why}"))?;
        }
        return Ok(());
    }
    if given.type_ == param.type_ && param.type_ != ParamType::Enum {
        return Ok(());
    }
    Err(format!(
        "{gets}, but the template's param is {}: give {} param of the pipeline (or a literal value)",
        a_type(param.type_),
        a_type(param.type_)
    ))
}

/// The value of each of the template's params: the step's, else the
/// default. A literal value is checked against its param's type; a value
/// that is one of the pipeline's params, whole, against that param's type; a
/// value with step outputs or `$(item)` is only known when the step runs.
fn resolve_values(
    template: &StepTemplateSpec,
    reference: &TemplateRef,
    pipeline_params: &[ParamSpec],
) -> Result<BTreeMap<String, String>, TemplateError> {
    let mut given: BTreeMap<&str, &str> = BTreeMap::new();
    for value in &reference.params {
        if !template.params.iter().any(|p| p.name == value.name) {
            return Err(TemplateError::UnknownParam {
                name: value.name.clone(),
                declared: template.params.iter().map(|p| p.name.clone()).collect(),
            });
        }
        if given.insert(&value.name, &value.value).is_some() {
            return Err(TemplateError::RepeatedValue {
                name: value.name.clone(),
            });
        }
    }
    let mut values = BTreeMap::new();
    for param in &template.params {
        let value = match (given.get(param.name.as_str()), &param.default) {
            (Some(value), _) => (*value).to_string(),
            (None, Some(default)) => default.clone(),
            (None, None) => {
                return Err(TemplateError::MissingValue {
                    name: param.name.clone(),
                });
            }
        };
        let invalid = |why: String| TemplateError::InvalidValue {
            name: param.name.clone(),
            why,
        };
        let refs = params::references(&value).map_err(|e| invalid(e.to_string()))?;
        match refs.as_slice() {
            [] => params::check_type(param, &value).map_err(invalid)?,
            [whole @ Reference::Param(name)] if value == whole.to_string() => {
                // A param the pipeline does not declare is graph::validate's to report.
                if let Some(given) = pipeline_params.iter().find(|p| &p.name == name) {
                    check_pipeline_param(param, given).map_err(invalid)?;
                }
            }
            _ => {}
        }
        values.insert(param.name.clone(), value);
    }
    Ok(values)
}

/// The first action `step` sets besides `template`, if any.
fn other_action(step: &PipelineStep) -> Option<&'static str> {
    [
        ("container", step.container.is_some()),
        ("plugin", step.plugin.is_some()),
        ("training", step.training.is_some()),
        ("rollout", step.rollout.is_some()),
        ("approval", step.approval.is_some()),
        ("notify", step.notify.is_some()),
    ]
    .into_iter()
    .find_map(|(name, set)| set.then_some(name))
}

/// Replaces the template's `$(params.NAME)` in `text` by their values.
fn fill(
    text: &mut String,
    values: &BTreeMap<String, String>,
    field: impl FnOnce() -> String,
) -> Result<(), TemplateError> {
    *text = params::substitute(text, values, &StepOutputs::new()).map_err(|e| {
        TemplateError::BadReference {
            field: field(),
            why: e.to_string(),
        }
    })?;
    Ok(())
}

/// `step` (which uses `template` through `reference`) as the container or
/// plugin step the template makes of it, in the pipeline `pipeline`.
///
/// The template's action comes with its `$(params.NAME)` replaced; the
/// step's `dependsOn`, `when` and `forEach` stay; its `retries` and
/// `timeoutSeconds` override the template's; its workspaces (by name) and pod
/// annotations (by key) are laid over the template's.
pub fn expand_step(
    step: &PipelineStep,
    reference: &TemplateRef,
    template: &StepTemplateSpec,
    pipeline: &PipelineSpec,
) -> Result<PipelineStep, TemplateError> {
    if let Some(action) = other_action(step) {
        return Err(TemplateError::StepHasAction { action });
    }
    check_template(template)?;
    if let Some(mount) = template
        .workspaces
        .iter()
        .find(|m| !pipeline.workspaces.iter().any(|d| d.name == m.name))
    {
        return Err(TemplateError::UndeclaredWorkspace {
            name: mount.name.clone(),
        });
    }
    let values = resolve_values(template, reference, &pipeline.params)?;

    let mut container = template.container.clone();
    if let Some(c) = container.as_mut() {
        fill(&mut c.image, &values, || "container.image".into())?;
        for (i, text) in c.command.iter_mut().enumerate() {
            fill(text, &values, || format!("container.command[{i}]"))?;
        }
        for (i, text) in c.args.iter_mut().enumerate() {
            fill(text, &values, || format!("container.args[{i}]"))?;
        }
        for var in &mut c.env {
            let name = var.name.clone();
            if let Some(value) = var.value.as_mut() {
                fill(value, &values, || format!("container.env {name}"))?;
            }
        }
    }
    let mut plugin = template.plugin.clone();
    if let Some(p) = plugin.as_mut() {
        for (i, text) in p.args.iter_mut().enumerate() {
            fill(text, &values, || format!("plugin.args[{i}]"))?;
        }
    }
    let mut pod_annotations = template.pod_annotations.clone();
    for (key, value) in pod_annotations.iter_mut() {
        fill(value, &values, || format!("podAnnotations {key}"))?;
    }
    pod_annotations.extend(step.pod_annotations.clone());
    let mut workspaces = template.workspaces.clone();
    for mount in &step.workspaces {
        match workspaces.iter_mut().find(|m| m.name == mount.name) {
            Some(slot) => *slot = mount.clone(),
            None => workspaces.push(mount.clone()),
        }
    }

    // The step's other fields (name, dependsOn, when, forEach, and any added
    // later) carry over as they are.
    let mut expanded = step.clone();
    expanded.template = None;
    expanded.container = container;
    expanded.plugin = plugin;
    expanded.retries = step.retries.clone().or_else(|| template.retries.clone());
    expanded.timeout_seconds = step.timeout_seconds.or(template.timeout_seconds);
    expanded.workspaces = workspaces;
    expanded.pod_annotations = pod_annotations;
    Ok(expanded)
}

/// `spec` with every step (and finally step) that uses a template expanded
/// by [`expand_step`]; `templates` holds the templates found, StepTemplates
/// from `namespace`. The first step whose template is missing or does not
/// expand is the error. A spec without templates comes back as it is.
pub fn expand_pipeline(
    spec: &PipelineSpec,
    namespace: &str,
    templates: &BTreeMap<TemplateKey, StepTemplateSpec>,
) -> Result<PipelineSpec, ExpandError> {
    let mut expanded = spec.clone();
    for step in expanded.steps.iter_mut().chain(expanded.finally.iter_mut()) {
        let Some(reference) = step.template.clone() else {
            continue;
        };
        let key = TemplateKey::of(&reference);
        let Some(template) = templates.get(&key) else {
            let namespace = (key.kind == TemplateKind::StepTemplate).then(|| namespace.to_string());
            return Err(ExpandError::NotFound {
                step: step.name.clone(),
                template: key,
                namespace,
            });
        };
        *step = expand_step(step, &reference, template, spec).map_err(|error| {
            ExpandError::Invalid {
                step: step.name.clone(),
                template: key.clone(),
                error,
            }
        })?;
    }
    Ok(expanded)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "templates_tests.rs"]
mod tests;
