//! Refusing, at `kubectl apply`, a Pipeline whose step names a template that
//! does not exist.
//!
//! An admission policy cannot look objects up, so the operator keeps an
//! index of the templates that exist: the ConfigMap `aleph-step-templates` in
//! its own namespace, one key per namespace (its StepTemplates' names) and
//! [`CLUSTER_KEY`] (the ClusterStepTemplates' names), each value the names
//! between spaces. The policy `aleph-pipeline-templates` takes the index as
//! its param and refuses a Pipeline that adds a reference to a template the
//! index does not hold. A reference the Pipeline already had is not checked
//! again, so a Pipeline whose template was deleted can still be edited (its
//! `Ready` says the template is missing).
//!
//! The index follows the templates through watches, within a fraction of a
//! second; a Pipeline applied in the same breath as its template can be
//! refused and succeeds when applied again. Tools that apply everything at
//! once, in their own order (a Helm chart that ships both kinds), annotate
//! the Pipeline `aleph.dev/template-check: Deferred`: the check then waits for
//! the operator, which reports a missing template in the Pipeline's `Ready`
//! and holds its runs until the template exists.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use aleph_crds::step_template::{ClusterStepTemplate, StepTemplate};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MatchResources, ParamKind, ParamRef, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, Validation, Variable,
};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};

use crate::Context;
use crate::apply::{apply_if_changed, standard_labels};
use crate::tenant::build::{PolicyRules, cluster_wide_meta, policy_with_binding, resource_rule};

/// The index ConfigMap's name, in the operator's namespace.
pub const INDEX_NAME: &str = "aleph-step-templates";
/// The policy's (and its binding's) name.
pub const POLICY_NAME: &str = "aleph-pipeline-templates";
/// The index's key for ClusterStepTemplates (no namespace has a `_`).
pub const CLUSTER_KEY: &str = "_cluster";
/// The annotation that leaves the check to the operator.
pub const DEFER_ANNOTATION: &str = "aleph.dev/template-check";
/// [`DEFER_ANNOTATION`]'s value that does.
pub const DEFERRED: &str = "Deferred";

/// The index's data: for each namespace with StepTemplates (and for
/// [`CLUSTER_KEY`]), the names, sorted, each between spaces (` a b `), so
/// that a policy finds `name` as ` name `.
pub fn index_data<'a>(
    namespaced: impl IntoIterator<Item = (&'a str, &'a str)>,
    cluster: impl IntoIterator<Item = &'a str>,
) -> BTreeMap<String, String> {
    let mut names: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (namespace, name) in namespaced {
        names.entry(namespace).or_default().insert(name);
    }
    for name in cluster {
        names.entry(CLUSTER_KEY).or_default().insert(name);
    }
    names
        .into_iter()
        .map(|(key, names)| {
            let mut value = String::from(" ");
            for name in names {
                value.push_str(name);
                value.push(' ');
            }
            (key.to_string(), value)
        })
        .collect()
}

/// The index ConfigMap in `namespace` holding `data`.
pub fn index(namespace: &str, data: BTreeMap<String, String>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(INDEX_NAME.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(standard_labels("steptemplate", "index")),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// A CEL expression: the steps and finally steps of `obj` (`object` or
/// `oldObject`) that use a template, as their `template` fields.
fn template_refs(obj: &str) -> String {
    format!(
        "((has({obj}.spec.steps) ? {obj}.spec.steps : []) + \
         (has({obj}.spec.finally) ? {obj}.spec.finally : []))\
         .filter(s, has(s.template)).map(s, s.template)"
    )
}

/// A CEL expression: the kind `r` (a step's `template`) names.
const KIND_OF: &str = "(has(r.kind) ? r.kind : 'StepTemplate')";

/// The policy, reading the index in `index_namespace`, and its binding,
/// limited to `namespaces` when the operator watches only those.
pub fn policy(
    index_namespace: &str,
    namespaces: &[String],
) -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let old_kind = KIND_OF.replace("r.", "o.");
    let in_index = format!(
        "({KIND_OF} == 'ClusterStepTemplate' ? '{CLUSTER_KEY}' : request.namespace) in params.data && \
         params.data[{KIND_OF} == 'ClusterStepTemplate' ? '{CLUSTER_KEY}' : request.namespace]\
         .contains(' ' + r.name + ' ')"
    );
    let rules = PolicyRules {
        rules: vec![resource_rule(
            aleph_crds::common::GROUP,
            "*",
            &["CREATE", "UPDATE"],
            &["pipelines"],
        )],
        match_conditions: vec![MatchCondition {
            name: "not-deferred".into(),
            expression: format!(
                "!has(object.metadata.annotations) || \
                 !('{DEFER_ANNOTATION}' in object.metadata.annotations) || \
                 object.metadata.annotations['{DEFER_ANNOTATION}'] != '{DEFERRED}'"
            ),
        }],
        variables: vec![
            Variable {
                name: "refs".into(),
                expression: template_refs("object"),
            },
            Variable {
                name: "oldRefs".into(),
                expression: format!("oldObject == null ? [] : {}", template_refs("oldObject")),
            },
            Variable {
                name: "missing".into(),
                expression: format!(
                    "params == null ? [] : variables.refs.filter(r, \
                     !variables.oldRefs.exists(o, o.name == r.name && {old_kind} == {KIND_OF}) && \
                     !(has(params.data) && {in_index}))"
                ),
            },
        ],
        validations: vec![Validation {
            expression: "size(variables.missing) == 0".into(),
            message_expression: Some(format!(
                "'no such step template: ' + variables.missing.map(r, {KIND_OF} == 'ClusterStepTemplate' ? \
                 'ClusterStepTemplate ' + r.name : 'StepTemplate ' + r.name + ' in namespace ' + request.namespace)\
                 .join(', ') + '. Create the template first (one created a moment ago is known within seconds: \
                 apply again), or annotate the Pipeline {DEFER_ANNOTATION}: {DEFERRED} to let its runs wait for it'"
            )),
            reason: Some("Invalid".into()),
            ..Validation::default()
        }],
    };
    let binding_resources = (!namespaces.is_empty()).then(|| MatchResources {
        namespace_selector: Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "kubernetes.io/metadata.name".into(),
                operator: "In".into(),
                values: Some(namespaces.to_vec()),
            }]),
            ..LabelSelector::default()
        }),
        ..MatchResources::default()
    });
    let (mut policy, mut binding) =
        policy_with_binding(cluster_wide_meta(POLICY_NAME), rules, binding_resources);
    if let Some(spec) = policy.spec.as_mut() {
        spec.param_kind = Some(ParamKind {
            api_version: Some("v1".into()),
            kind: Some("ConfigMap".into()),
        });
        // An error of the policy itself (never of a Pipeline) must not stop
        // every Pipeline: the operator still checks the templates.
        spec.failure_policy = Some("Ignore".into());
    }
    if let Some(spec) = binding.spec.as_mut() {
        spec.param_ref = Some(ParamRef {
            name: Some(INDEX_NAME.into()),
            namespace: Some(index_namespace.into()),
            // Before the operator first writes the index, nothing is refused.
            parameter_not_found_action: Some("Allow".into()),
            ..ParamRef::default()
        });
    }
    (policy, binding)
}

type Templates = Store<PartialObjectMeta<StepTemplate>>;
type ClusterTemplates = Store<PartialObjectMeta<ClusterStepTemplate>>;

/// The index's data from what the watches hold.
fn data_of(namespaced: &[Templates], cluster: &ClusterTemplates) -> BTreeMap<String, String> {
    let templates: Vec<_> = namespaced.iter().flat_map(Store::state).collect();
    let cluster_templates = cluster.state();
    index_data(
        templates.iter().filter_map(|t| {
            Some((
                t.metadata.namespace.as_deref()?,
                t.metadata.name.as_deref()?,
            ))
        }),
        cluster_templates
            .iter()
            .filter_map(|t| t.metadata.name.as_deref()),
    )
}

/// Whether `store`'s watch has listed everything once.
fn listed<K: kube::Resource + Clone + 'static>(store: &Store<K>) -> bool
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}

/// Keeps the index and the policy until `shutdown` resolves: watches the
/// templates (in `namespaces`, all when empty; ClusterStepTemplates always)
/// and, while this replica leads, writes the index when they change.
pub async fn run(
    ctx: Arc<Context>,
    index_namespace: String,
    namespaces: Vec<String>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let client = ctx.client.clone();
    let config = crate::runner::watch_config();
    let mut changes = Vec::new();
    let mut namespaced: Vec<Templates> = Vec::new();
    // Metadata only: names are all the index needs.
    let scopes: Vec<Api<PartialObjectMeta<StepTemplate>>> = if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|n| Api::namespaced(client.clone(), n))
            .collect()
    };
    for api in scopes {
        let (reader, writer) = reflector::store();
        namespaced.push(reader);
        changes.push(
            watcher(api, config.clone())
                .default_backoff()
                .reflect(writer)
                .map(|_| ())
                .boxed(),
        );
    }
    let (cluster, writer) = reflector::store();
    changes.push(
        watcher(
            Api::<PartialObjectMeta<ClusterStepTemplate>>::all(client.clone()),
            config,
        )
        .default_backoff()
        .reflect(writer)
        .map(|_| ())
        .boxed(),
    );
    let mut changes = futures::stream::select_all(changes);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &index_namespace);
    let mut leading = ctx.leader.subscribe();
    let mut keeper = Keeper {
        ctx: &ctx,
        configmaps,
        index_namespace: &index_namespace,
        namespaces: &namespaces,
        written: None,
        policy_applied: false,
    };
    let mut retry = false;
    futures::pin_mut!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            change = changes.next() => {
                if change.is_none() {
                    return;
                }
                // A burst of changes (a whole directory applied) is one write.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while let Some(Some(())) = changes.next().now_or_never() {}
            }
            changed = leading.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(Duration::from_secs(5)), if retry => {}
        }
        let ready = namespaced.iter().all(listed) && listed(&cluster);
        // Until every watch has listed, the index would lack templates that
        // exist, and refuse their Pipelines.
        if !ready || !ctx.leader.is_leader() {
            continue;
        }
        retry = match keeper.keep(data_of(&namespaced, &cluster)).await {
            Ok(()) => false,
            Err(error) => {
                tracing::warn!(%error, "the step template index could not be written: Pipelines naming a template created since are refused until it is; retrying in 5 s");
                true
            }
        };
    }
}

/// Writes the index, and the policy once, only when they change.
struct Keeper<'a> {
    ctx: &'a Context,
    configmaps: Api<ConfigMap>,
    index_namespace: &'a str,
    namespaces: &'a [String],
    /// What the index holds, as last read or written.
    written: Option<BTreeMap<String, String>>,
    policy_applied: bool,
}

impl Keeper<'_> {
    async fn keep(&mut self, data: BTreeMap<String, String>) -> kube::Result<()> {
        if self.written.as_ref() != Some(&data) {
            let current = self.configmaps.get_opt(INDEX_NAME).await?;
            // Written even empty: a missing index refuses nothing.
            let held = current.map(|c| c.data.unwrap_or_default());
            if held.as_ref() != Some(&data) {
                // Applied whole: a name this manager wrote before and leaves
                // out now is removed.
                let desired = index(self.index_namespace, data.clone());
                crate::apply::apply(&self.configmaps, &desired).await?;
            }
            self.written = Some(data);
        }
        if !self.policy_applied {
            let (policy, binding) = policy(self.index_namespace, self.namespaces);
            let policies: Api<ValidatingAdmissionPolicy> = Api::all(self.ctx.client.clone());
            let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(self.ctx.client.clone());
            let name = policy.name_any();
            apply_if_changed(&policies, policies.get_opt(&name).await?.as_ref(), &policy).await?;
            apply_if_changed(&bindings, bindings.get_opt(&name).await?.as_ref(), &binding).await?;
            self.policy_applied = true;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_index_holds_every_name_once_between_spaces_by_namespace_and_for_the_cluster() {
        let data = index_data(
            [
                ("team-b", "tok-v2"),
                ("team-a", "x"),
                ("team-b", "tok-v1"),
                ("team-b", "tok-v2"),
            ],
            ["shared", "base"],
        );
        assert_eq!(
            data,
            BTreeMap::from([
                (CLUSTER_KEY.to_string(), " base shared ".to_string()),
                ("team-a".to_string(), " x ".to_string()),
                ("team-b".to_string(), " tok-v1 tok-v2 ".to_string()),
            ])
        );
        // A name is found only whole: `tok` is not in ` tok-v1 tok-v2 `.
        assert!(!data["team-b"].contains(" tok "));
        assert!(index_data([], []).is_empty());
    }

    #[test]
    fn the_binding_reads_the_index_in_the_operator_namespace_and_allows_all_until_it_exists() {
        let (policy, binding) = policy("aleph-system", &[]);
        let spec = binding.spec.unwrap();
        let param = spec.param_ref.unwrap();
        assert_eq!(param.name.as_deref(), Some(INDEX_NAME));
        assert_eq!(param.namespace.as_deref(), Some("aleph-system"));
        assert_eq!(param.parameter_not_found_action.as_deref(), Some("Allow"));
        assert_eq!(spec.match_resources, None);
        assert_eq!(spec.validation_actions, Some(vec!["Deny".to_string()]));
        let spec = policy.spec.unwrap();
        let kind = spec.param_kind.unwrap();
        assert_eq!(
            (kind.api_version.as_deref(), kind.kind.as_deref()),
            (Some("v1"), Some("ConfigMap"))
        );
        let rules = spec.match_constraints.unwrap().resource_rules.unwrap();
        assert_eq!(rules[0].resources, Some(vec!["pipelines".to_string()]));
        assert_eq!(
            rules[0].operations,
            Some(vec!["CREATE".to_string(), "UPDATE".to_string()])
        );
        let conditions = spec.match_conditions.unwrap();
        assert!(conditions[0].expression.contains(DEFER_ANNOTATION));
        assert!(conditions[0].expression.contains(DEFERRED));
        // Steps and finally steps, and only the references a change adds.
        let variables = spec.variables.unwrap();
        assert!(variables[0].expression.contains("object.spec.finally"));
        assert!(variables[2].expression.contains("variables.oldRefs.exists"));
    }

    #[test]
    fn an_operator_of_some_namespaces_checks_only_theirs() {
        let watched = vec!["team-a".to_string(), "team-b".to_string()];
        let (_, binding) = policy("aleph-system", &watched);
        let selector = binding
            .spec
            .unwrap()
            .match_resources
            .unwrap()
            .namespace_selector
            .unwrap();
        let requirement = &selector.match_expressions.unwrap()[0];
        assert_eq!(requirement.key, "kubernetes.io/metadata.name");
        assert_eq!(requirement.operator, "In");
        assert_eq!(requirement.values, Some(watched));
    }
}
