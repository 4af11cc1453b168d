use super::*;

use aleph_crds::pipeline::ParamValue;

use crate::pipeline::graph::{self, GraphError};
use crate::pipeline::params::ITEM_KEY;

/// A container template with a param of each type, a `$$(` escape, a
/// Secret env var, retries, a timeout, a workspace and pod annotations.
const TOKENIZE: &str = r#"
description: Splits a corpus into tokens.
params:
  - {name: corpus, description: where the text is}
  - {name: lang, type: enum, values: [en, fr, de], default: en}
  - {name: shards, type: int, default: "4"}
  - {name: lowercase, type: bool, default: "false"}
  - {name: stopwords, type: list, default: "[]"}
container:
  image: aleph.local/busybox:dev
  command: [sh, -c]
  args: ["tokenize --in $(params.corpus) --lang=$(params.lang) --shards $(params.shards) --lower=$(params.lowercase) --stop '$(params.stopwords)' > $$(params.corpus)"]
  env:
    - {name: LANG_CODE, value: "$(params.lang)"}
    - name: TOKEN
      secretKeyRef: {name: hub, key: token}
retries: {limit: 2}
timeoutSeconds: 600
workspaces: [{name: data, mountPath: /data}]
podAnnotations: {example.com/lang: "$(params.lang)", example.com/team: nlp}
"#;

/// A pipeline whose `tokenize` step runs TOKENIZE once per language.
const PIPELINE: &str = r#"
params:
  - {name: dataset}
  - {name: n, type: int, default: "8"}
  - {name: langs, type: list, default: '["en", "fr"]'}
workspaces: [{name: data}, {name: scratch}]
steps:
  - name: fetch
    container: {image: busybox}
  - name: tokenize
    dependsOn: [fetch]
    when: "params.dataset != ''"
    forEach: {param: langs}
    template:
      name: tokenize-v1
      params:
        - {name: corpus, value: "$(steps.fetch.outputs.path)/$(params.dataset)"}
        - {name: lang, value: "$(item)"}
        - {name: shards, value: "$(params.n)"}
    retries: {limit: 5}
    workspaces: [{name: data, mountPath: /override, readOnly: true}, {name: scratch}]
    podAnnotations: {example.com/team: search}
"#;

fn template(yaml: &str) -> StepTemplateSpec {
    serde_saphyr::from_str(yaml).unwrap()
}

fn pipeline(yaml: &str) -> PipelineSpec {
    serde_saphyr::from_str(yaml).unwrap()
}

fn key(kind: TemplateKind, name: &str) -> TemplateKey {
    TemplateKey {
        kind,
        name: name.into(),
    }
}

/// TOKENIZE as the namespace's `tokenize-v1`, and `more` besides.
fn found(more: &[(TemplateKind, &str, &str)]) -> BTreeMap<TemplateKey, StepTemplateSpec> {
    let mut templates = BTreeMap::new();
    templates.insert(
        key(TemplateKind::StepTemplate, "tokenize-v1"),
        template(TOKENIZE),
    );
    for (kind, name, yaml) in more {
        templates.insert(key(*kind, name), template(yaml));
    }
    templates
}

fn expand(spec: &PipelineSpec) -> Result<PipelineSpec, ExpandError> {
    expand_pipeline(spec, "team-a", &found(&[]))
}

/// PIPELINE's tokenize step with its template's params replaced by `params`.
fn with_values(params: &[(&str, &str)]) -> PipelineSpec {
    let mut spec = pipeline(PIPELINE);
    if let Some(t) = spec.steps[1].template.as_mut() {
        t.params = params
            .iter()
            .map(|(name, value)| ParamValue {
                name: name.to_string(),
                value: value.to_string(),
            })
            .collect();
    }
    spec
}

/// The error of expanding `spec`, which must be an invalid template.
fn invalid(spec: &PipelineSpec) -> TemplateError {
    match expand(spec) {
        Err(ExpandError::Invalid { error, .. }) => error,
        other => panic!("expected an invalid template, got {other:?}"),
    }
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_template_step_becomes_the_templates_container_step() {
    let spec = pipeline(PIPELINE);
    let expanded = expand(&spec).unwrap();
    let step = &expanded.steps[1];
    assert_eq!(step.name, "tokenize");
    assert!(step.template.is_none());
    assert!(step.plugin.is_none());
    let c = step.container.as_ref().unwrap();
    assert_eq!(c.image, "aleph.local/busybox:dev");
    assert_eq!(c.command, ["sh", "-c"]);
    // The template's params are replaced; the pipeline's references in the
    // values stay, and so does the kubelet's `$$(` escape.
    assert_eq!(
        c.args,
        [
            "tokenize --in $(steps.fetch.outputs.path)/$(params.dataset) --lang=$(item) --shards $(params.n) --lower=false --stop '[]' > $$(params.corpus)"
        ]
    );
    assert_eq!(c.env[0].value.as_deref(), Some("$(item)"));
    assert_eq!(c.env[1].secret_key_ref.as_ref().unwrap().name, "hub");
    // The step's own fields stay.
    assert_eq!(step.depends_on, ["fetch"]);
    assert_eq!(step.when.as_deref(), Some("params.dataset != ''"));
    assert_eq!(
        step.for_each.as_ref().unwrap().param.as_deref(),
        Some("langs")
    );
    // The first step has no template and is left as it is.
    assert_eq!(expanded.steps[0], spec.steps[0]);
    assert_eq!(expanded.params, spec.params);
    assert!(graph::validate(&expanded).is_ok());
}

#[test]
fn the_pipelines_references_in_values_are_substituted_when_the_step_runs() {
    let expanded = expand(&pipeline(PIPELINE)).unwrap();
    let args = &expanded.steps[1].container.as_ref().unwrap().args[0];
    let run_params = map(&[
        ("dataset", "wiki"),
        ("n", "8"),
        ("langs", r#"["en", "fr"]"#),
        (ITEM_KEY, "fr"),
    ]);
    let mut outputs = StepOutputs::new();
    outputs.insert("fetch".into(), map(&[("path", "/data/in")]));
    let got = params::substitute_for_container(args, &run_params, &outputs).unwrap();
    assert_eq!(
        got,
        "tokenize --in /data/in/wiki --lang=fr --shards 8 --lower=false --stop '[]' > $$(params.corpus)"
    );
}

#[test]
fn step_fields_override_the_templates_and_merge_with_them() {
    let expanded = expand(&pipeline(PIPELINE)).unwrap();
    let step = &expanded.steps[1];
    assert_eq!(
        step.retries.as_ref().unwrap().limit,
        5,
        "the step's retries win"
    );
    assert_eq!(
        step.timeout_seconds,
        Some(600),
        "the template's timeout fills in"
    );
    // Workspaces by name: the step's mount of data replaces the template's.
    let mounts: Vec<(&str, Option<&str>, bool)> = step
        .workspaces
        .iter()
        .map(|m| (m.name.as_str(), m.mount_path.as_deref(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        [("data", Some("/override"), true), ("scratch", None, false)]
    );
    // Annotations by key: substituted in the template's, the step's win.
    assert_eq!(
        step.pod_annotations,
        map(&[
            ("example.com/lang", "$(item)"),
            ("example.com/team", "search")
        ])
    );

    let mut plain = pipeline(PIPELINE);
    plain.steps[1].retries = None;
    plain.steps[1].timeout_seconds = Some(30);
    plain.steps[1].workspaces.clear();
    plain.steps[1].pod_annotations.clear();
    let step = expand(&plain).unwrap().steps.remove(1);
    assert_eq!(
        step.retries.as_ref().unwrap().limit,
        2,
        "the template's retries fill in"
    );
    assert_eq!(step.timeout_seconds, Some(30), "the step's timeout wins");
    assert_eq!(step.workspaces.len(), 1);
    assert_eq!(step.workspaces[0].mount_path.as_deref(), Some("/data"));
    assert_eq!(step.pod_annotations["example.com/team"], "nlp");
}

#[test]
fn defaults_fill_the_values_the_step_does_not_give() {
    let expanded = expand(&with_values(&[("corpus", "s3://b/c")])).unwrap();
    let c = expanded.steps[1].container.clone().unwrap();
    assert_eq!(
        c.args[0],
        "tokenize --in s3://b/c --lang=en --shards 4 --lower=false --stop '[]' > $$(params.corpus)"
    );
}

#[test]
fn values_are_inserted_as_written() {
    // Text that is no reference of the pipeline goes in untouched, as if the
    // pipeline's author had written it in the template's field.
    let expanded = expand(&with_values(&[("corpus", "$(HOME)/in $5 $$(params.x)")])).unwrap();
    let args = &expanded.steps[1].container.as_ref().unwrap().args[0];
    assert!(
        args.starts_with("tokenize --in $(HOME)/in $5 $$(params.x) --lang=en"),
        "{args}"
    );
}

#[test]
fn a_plugin_template_fills_its_args() {
    let export = r#"
params: [{name: bucket}, {name: format, default: parquet}]
plugin: {name: exporter, args: ["--to=$(params.bucket)", "--format=$(params.format)"]}
"#;
    let mut spec = pipeline(PIPELINE);
    spec.steps.push(
        serde_saphyr::from_str(
            r#"
name: export
dependsOn: [tokenize]
template:
  name: export
  kind: ClusterStepTemplate
  params: [{name: bucket, value: "s3://out/$(params.dataset)"}]
"#,
        )
        .unwrap(),
    );
    let templates = found(&[(TemplateKind::ClusterStepTemplate, "export", export)]);
    let expanded = expand_pipeline(&spec, "team-a", &templates).unwrap();
    let step = &expanded.steps[2];
    assert!(step.container.is_none());
    let p = step.plugin.as_ref().unwrap();
    assert_eq!(p.name, "exporter");
    assert_eq!(
        p.args,
        ["--to=s3://out/$(params.dataset)", "--format=parquet"]
    );
    assert!(graph::validate(&expanded).is_ok());
}

#[test]
fn finally_steps_expand_too() {
    let mut spec = pipeline(PIPELINE);
    let mut last = spec.steps[1].clone();
    last.name = "cleanup".into();
    last.depends_on.clear();
    last.when = None;
    last.for_each = None;
    if let Some(t) = last.template.as_mut() {
        t.params = vec![ParamValue {
            name: "corpus".into(),
            value: "$(steps.tokenize.outputs.results)".into(),
        }];
    }
    spec.finally.push(last);
    let expanded = expand(&spec).unwrap();
    assert!(expanded.finally[0].container.is_some());
    assert!(graph::validate(&expanded).is_ok());
}

#[test]
fn a_spec_without_templates_comes_back_as_it_is() {
    let spec = crate::pipeline::test_support::dag(&[("a", &[]), ("b", &["a"])], &["z"]);
    assert_eq!(
        expand_pipeline(&spec, "ns", &BTreeMap::new()).unwrap(),
        spec
    );
    assert!(referenced(&spec).is_empty());
}

#[test]
fn a_missing_value_is_an_error_naming_the_param() {
    let spec = with_values(&[("lang", "fr")]);
    let err = expand(&spec).unwrap_err();
    assert_eq!(err.reason(), "InvalidTemplate");
    assert_eq!(
        err.to_string(),
        "step tokenize cannot use StepTemplate tokenize-v1: its param corpus has no default and the step gives no value: set it in the step's template.params"
    );
}

#[test]
fn an_unknown_or_repeated_param_is_an_error() {
    let err = invalid(&with_values(&[("corpus", "x"), ("language", "fr")]));
    assert_eq!(
        err.to_string(),
        "the step's template.params gives language, which the template does not declare (it declares corpus, lang, shards, lowercase, stopwords)"
    );
    let err = invalid(&with_values(&[("corpus", "x"), ("corpus", "y")]));
    assert_eq!(
        err,
        TemplateError::RepeatedValue {
            name: "corpus".into()
        }
    );
}

#[test]
fn literal_values_are_checked_against_their_types() {
    for (name, value, why) in [
        ("shards", "four", "is not an integer"),
        ("shards", "1.5", "is not an integer"),
        ("lowercase", "yes", "is not true or false"),
        ("lang", "es", "is not one of en, fr, de"),
        ("stopwords", "a, b", "is not a JSON array"),
    ] {
        let err = invalid(&with_values(&[("corpus", "x"), (name, value)]));
        assert!(
            matches!(&err, TemplateError::InvalidValue { name: n, why: w } if n == name && w.contains(why)),
            "{name}={value}: {err}"
        );
    }
    assert!(
        expand(&with_values(&[
            ("corpus", "x"),
            ("shards", "-2"),
            ("lang", "de")
        ]))
        .is_ok()
    );
    // A malformed reference in a value is an error too.
    let err = invalid(&with_values(&[("corpus", "$(params.dataset")]));
    assert!(matches!(err, TemplateError::InvalidValue { .. }), "{err}");
}

#[test]
fn a_whole_pipeline_param_must_have_a_fitting_type() {
    // n is an int param of the pipeline: it fits shards (int), not lowercase (bool).
    assert!(expand(&with_values(&[("corpus", "x"), ("shards", "$(params.n)")])).is_ok());
    let err = invalid(&with_values(&[
        ("corpus", "x"),
        ("lowercase", "$(params.n)"),
    ]));
    assert_eq!(
        err.to_string(),
        "the value of its param lowercase is invalid: it gets $(params.n), an int param of the pipeline, but the template's param is a bool: give a bool param of the pipeline (or a literal value)"
    );
    // dataset is a string param: it fits corpus (string) only.
    let err = invalid(&with_values(&[
        ("corpus", "x"),
        ("shards", "$(params.dataset)"),
    ]));
    assert!(
        matches!(err, TemplateError::InvalidValue { ref name, .. } if name == "shards"),
        "{err}"
    );
    // An enum of the pipeline fits when every one of its values does.
    let mut spec = with_values(&[("corpus", "x"), ("lang", "$(params.l)")]);
    spec.params.push(
        serde_saphyr::from_str("{name: l, type: enum, values: [en, fr], default: en}").unwrap(),
    );
    assert!(expand(&spec).is_ok());
    spec.params[3].values.push("it".into());
    let err = invalid(&spec);
    assert!(
        err.to_string().contains("\"it\" is not one of en, fr, de"),
        "{err}"
    );
    // Values known only when the step runs are taken as they are.
    assert!(
        expand(&with_values(&[
            ("corpus", "x"),
            ("shards", "$(steps.fetch.outputs.n)"),
            ("lowercase", "$(item)")
        ]))
        .is_ok()
    );
}

#[test]
fn the_expanded_spec_is_checked_like_any_other() {
    // A value naming a param the pipeline lacks, or a step that does not run
    // before, is found by graph::validate on the expanded spec.
    let expanded = expand(&with_values(&[("corpus", "$(params.nope)")])).unwrap();
    assert!(matches!(
        graph::validate(&expanded),
        Err(GraphError::UnknownReference { step, reference, .. }) if step == "tokenize" && reference == "$(params.nope)"
    ));
    let mut spec = with_values(&[("corpus", "$(steps.fetch.outputs.path)")]);
    spec.steps[1].depends_on.clear();
    let expanded = expand(&spec).unwrap();
    assert!(matches!(
        graph::validate(&expanded),
        Err(GraphError::UnknownReference { step, .. }) if step == "tokenize"
    ));
    // $(item) outside forEach, likewise.
    let mut spec = pipeline(PIPELINE);
    spec.steps[1].for_each = None;
    assert!(graph::validate(&expand(&spec).unwrap()).is_err());
}

#[test]
fn a_missing_template_is_not_found_naming_kind_name_and_namespace() {
    let mut spec = pipeline(PIPELINE);
    if let Some(t) = spec.steps[1].template.as_mut() {
        t.name = "tokenize-v2".into();
    }
    let err = expand(&spec).unwrap_err();
    assert_eq!(err.reason(), "TemplateNotFound");
    assert_eq!(
        err.to_string(),
        "step tokenize uses StepTemplate tokenize-v2, which does not exist in namespace team-a: create it, or name an existing one in the step's template (a ClusterStepTemplate needs kind: ClusterStepTemplate)"
    );
    if let Some(t) = spec.steps[1].template.as_mut() {
        t.name = "tokenize-v1".into();
        t.kind = TemplateKind::ClusterStepTemplate;
    }
    // The namespace's template of that name is not the cluster's.
    let err = expand(&spec).unwrap_err();
    assert_eq!(
        err.to_string(),
        "step tokenize uses ClusterStepTemplate tokenize-v1, which does not exist: create it, or name an existing one in the step's template"
    );
}

#[test]
fn referenced_lists_each_template_once() {
    let mut spec = pipeline(PIPELINE);
    let mut again = spec.steps[1].clone();
    again.name = "again".into();
    spec.steps.push(again.clone());
    if let Some(t) = again.template.as_mut() {
        t.kind = TemplateKind::ClusterStepTemplate;
    }
    spec.finally.push(again);
    let got: Vec<String> = referenced(&spec).iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        [
            "StepTemplate tokenize-v1",
            "ClusterStepTemplate tokenize-v1"
        ]
    );
    assert!(uses(
        &spec,
        TemplateKind::ClusterStepTemplate,
        "tokenize-v1"
    ));
    assert!(!uses(&spec, TemplateKind::ClusterStepTemplate, "other"));
}

#[test]
fn a_step_with_template_and_another_action_is_invalid() {
    let mut spec = pipeline(PIPELINE);
    spec.steps[1].container = spec.steps[0].container.clone();
    assert_eq!(
        invalid(&spec),
        TemplateError::StepHasAction {
            action: "container"
        }
    );
}

#[test]
fn a_templates_workspace_must_be_declared_by_the_pipeline() {
    let mut spec = pipeline(PIPELINE);
    spec.workspaces.retain(|w| w.name != "data");
    spec.steps[1].workspaces.clear();
    assert_eq!(
        invalid(&spec).to_string(),
        "it mounts workspace data, which the pipeline does not declare: declare it in the pipeline's spec.workspaces"
    );
}

#[test]
fn a_template_uses_only_its_own_params() {
    assert_eq!(check_template(&template(TOKENIZE)), Ok(()));
    for (field, why) in [
        (
            "args: [\"$(params.other)\"]",
            "$(params.other) is not available: the template declares no such param",
        ),
        (
            "args: [\"$(steps.fetch.outputs.path)\"]",
            "a template cannot name the steps of the pipelines that use it",
        ),
        ("args: [\"$(item)\"]", "a template has no item of its own"),
        ("args: [\"$(params.x\"]", "is not a valid reference"),
        (
            "env: [{name: A, value: \"$(params.y)\"}]",
            "container.env A: $(params.y)",
        ),
    ] {
        let spec = template(&format!(
            "params: [{{name: x, default: a}}]\ncontainer: {{image: i, {field}}}"
        ));
        let err = check_template(&spec).unwrap_err();
        assert!(
            matches!(err, TemplateError::BadReference { .. }) && err.to_string().contains(why),
            "{field}: {err}"
        );
    }
    let spec = template("plugin: {name: p, args: [\"$(params.z)\"]}\npodAnnotations: {a: b}");
    assert!(
        check_template(&spec)
            .unwrap_err()
            .to_string()
            .starts_with("plugin.args[0]: $(params.z)")
    );
    let spec = template("container: {image: \"$(params.tag)\"}");
    assert!(
        check_template(&spec)
            .unwrap_err()
            .to_string()
            .starts_with("container.image: ")
    );
    let spec = template("container: {image: i}\npodAnnotations: {a: \"$(params.v)\"}");
    assert!(
        check_template(&spec)
            .unwrap_err()
            .to_string()
            .starts_with("podAnnotations a: ")
    );
}

#[test]
fn a_template_checks_its_params_declarations() {
    let cases = [
        (
            "params: [{name: a}, {name: a}]",
            "it declares param a twice: give each param its own name",
        ),
        (
            "params: [{name: n, type: int, default: many}]",
            "its param n is invalid: its default \"many\" is not an integer",
        ),
        (
            "params: [{name: e, type: enum}]",
            "its param e is invalid: an enum param needs values",
        ),
        (
            "params: [{name: d, default: \"$(params.other)\"}]",
            "its param d is invalid: its default \"$(params.other)\" holds a $(...) reference",
        ),
    ];
    for (params, message) in cases {
        let spec = template(&format!("{params}\ncontainer: {{image: i}}"));
        let err = check_template(&spec).unwrap_err();
        assert!(err.to_string().starts_with(message), "{params}: {err}");
    }
}

#[test]
fn a_template_needs_exactly_one_action() {
    assert_eq!(
        check_template(&template("params: []")),
        Err(TemplateError::NoAction)
    );
    assert_eq!(
        check_template(&template("container: {image: i}\nplugin: {name: p}")),
        Err(TemplateError::TwoActions)
    );
    // A step that uses such a template is invalid too.
    let mut templates = found(&[]);
    templates.insert(
        key(TemplateKind::StepTemplate, "tokenize-v1"),
        template("container: {image: i}\nplugin: {name: p}"),
    );
    let err = expand_pipeline(&with_values(&[]), "team-a", &templates).unwrap_err();
    assert_eq!(
        err.to_string(),
        "step tokenize cannot use StepTemplate tokenize-v1: it sets both container and plugin: a template has exactly one action"
    );
}

proptest::proptest! {
    #[test]
    fn expansion_never_panics(value in ".{0,64}", shards in ".{0,8}") {
        let spec = with_values(&[("corpus", &value), ("shards", &shards)]);
        if let Ok(expanded) = expand(&spec) {
            let _ = graph::validate(&expanded);
        }
    }
}

#[test]
fn the_example_template_is_valid_and_expands() {
    let example: aleph_crds::step_template::StepTemplate =
        serde_saphyr::from_str(include_str!("../../../examples/steptemplate.yaml")).unwrap();
    assert_eq!(check_template(&example.spec), Ok(()));
    // The use its comment shows.
    let spec = pipeline(
        r#"
steps:
  - name: fetch
    container: {image: busybox}
  - name: count
    dependsOn: [fetch]
    template:
      name: tokenize-v1
      params:
        - {name: text, value: "$(steps.fetch.outputs.title)"}
"#,
    );
    let mut templates = BTreeMap::new();
    templates.insert(key(TemplateKind::StepTemplate, "tokenize-v1"), example.spec);
    let expanded = expand_pipeline(&spec, "acme-research", &templates).unwrap();
    let c = expanded.steps[1].container.as_ref().unwrap();
    let env: Vec<(&str, Option<&str>)> = c
        .env
        .iter()
        .map(|e| (e.name.as_str(), e.value.as_deref()))
        .collect();
    assert_eq!(
        env,
        [
            ("TEXT", Some("$(steps.fetch.outputs.title)")),
            ("MIN_LENGTH", Some("1"))
        ]
    );
    assert!(graph::validate(&expanded).is_ok());
}
