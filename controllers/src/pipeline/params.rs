//! Run params and substitutions: resolving a run's param values against the
//! pipeline's typed [`ParamSpec`]s, and replacing `$(params.NAME)` and
//! `$(steps.STEP.outputs.KEY)` in step fields. Pure functions, no client.

use std::collections::BTreeMap;

use aleph_crds::pipeline::{ParamSpec, ParamType, ParamValue};

/// Step name -> that step's outputs, as read from the steps that succeeded.
pub type StepOutputs = BTreeMap<String, BTreeMap<String, String>>;

/// Why a run's params cannot be used. `reason()` is the run's condition reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// A param with no default was not given.
    #[error("param {name} has no default and the run gives no value: set it in spec.params")]
    ParameterMissing {
        /// The param.
        name: String,
    },
    /// A value does not fit the param (or the run names a param the pipeline lacks).
    #[error("param {name} is invalid: {why}")]
    InvalidParameter {
        /// The param.
        name: String,
        /// What is wrong with it.
        why: String,
    },
}

impl ParamError {
    /// The CamelCase reason for the run's `Succeeded` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ParameterMissing { .. } => "ParameterMissing",
            Self::InvalidParameter { .. } => "InvalidParameter",
        }
    }
}

/// The params a run uses: the run's values, checked against their types, and
/// the pipeline's defaults for the rest.
///
/// A value the pipeline does not declare, or a param given twice, is an
/// [`ParamError::InvalidParameter`]; a param with neither a value nor a
/// default is [`ParamError::ParameterMissing`]. Defaults are checked too, so a
/// spec that skipped admission cannot slip a bad value through.
pub fn resolve_params(
    specs: &[ParamSpec],
    given: &[ParamValue],
) -> Result<BTreeMap<String, String>, ParamError> {
    let mut values: BTreeMap<&str, &str> = BTreeMap::new();
    for value in given {
        if !specs.iter().any(|s| s.name == value.name) {
            return Err(ParamError::InvalidParameter {
                name: value.name.clone(),
                why: "the pipeline declares no such param".into(),
            });
        }
        if values.insert(&value.name, &value.value).is_some() {
            return Err(ParamError::InvalidParameter {
                name: value.name.clone(),
                why: "given more than once".into(),
            });
        }
    }
    let mut resolved = BTreeMap::new();
    for spec in specs {
        if resolved.contains_key(&spec.name) {
            continue;
        }
        let value = match (values.get(spec.name.as_str()), &spec.default) {
            (Some(v), _) => (*v).to_string(),
            (None, Some(default)) => default.clone(),
            (None, None) => {
                return Err(ParamError::ParameterMissing {
                    name: spec.name.clone(),
                });
            }
        };
        check_type(spec, &value).map_err(|why| ParamError::InvalidParameter {
            name: spec.name.clone(),
            why,
        })?;
        resolved.insert(spec.name.clone(), value);
    }
    Ok(resolved)
}

/// Whether `value` fits the type of the param `spec` declares; `Err` says why not.
pub fn check_type(spec: &ParamSpec, value: &str) -> Result<(), String> {
    match spec.type_ {
        ParamType::String => Ok(()),
        ParamType::Int => {
            let digits = value.strip_prefix('-').unwrap_or(value);
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                value
                    .parse::<i64>()
                    .map(|_| ())
                    .map_err(|_| format!("{value:?} is out of the 64-bit integer range"))
            } else {
                Err(format!("{value:?} is not an integer"))
            }
        }
        ParamType::Bool => match value {
            "true" | "false" => Ok(()),
            _ => Err(format!("{value:?} is not true or false")),
        },
        ParamType::List => parse_list(value).map(|_| ()),
        ParamType::Enum => {
            if spec.values.iter().any(|v| v == value) {
                Ok(())
            } else {
                Err(format!(
                    "{value:?} is not one of {}",
                    spec.values.join(", ")
                ))
            }
        }
    }
}

/// A list param's value (or a step output a fan-out runs over): a JSON
/// array of strings; numbers and booleans are taken as their text.
pub fn parse_list(value: &str) -> Result<Vec<String>, String> {
    let parsed: serde_json::Value = serde_json::from_str(value)
        .map_err(|e| format!("{} is not a JSON array: {e}", shorten(value)))?;
    let serde_json::Value::Array(items) = parsed else {
        return Err(format!("{} is not a JSON array", shorten(value)));
    };
    items
        .into_iter()
        .map(|item| match item {
            serde_json::Value::String(s) => Ok(s),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            serde_json::Value::Bool(b) => Ok(b.to_string()),
            other => Err(format!(
                "its items must be strings, numbers or booleans, not {other}"
            )),
        })
        .collect()
}

fn shorten(value: &str) -> String {
    let cut: String = value.chars().take(64).collect();
    if cut.len() < value.len() {
        format!("{cut:?}...")
    } else {
        format!("{cut:?}")
    }
}

/// A `$(...)` reference in a step field.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reference {
    /// `$(params.NAME)`.
    Param(String),
    /// `$(steps.STEP.outputs.KEY)`.
    StepOutput {
        /// The step.
        step: String,
        /// The output's key.
        key: String,
    },
    /// `$(item)`: the item of a `forEach` step's instance.
    Item,
}

/// Where a fan-out instance's item travels among the params given to
/// [`substitute`]: a key no param name can take.
pub const ITEM_KEY: &str = "$(item)";

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Param(name) => write!(f, "$(params.{name})"),
            Self::StepOutput { step, key } => write!(f, "$(steps.{step}.outputs.{key})"),
            Self::Item => f.write_str(ITEM_KEY),
        }
    }
}

/// Why a field could not be substituted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubstitutionError {
    /// `$(params.NAME)` names no param.
    #[error("$(params.{name}) names no param of the pipeline")]
    UnknownParam {
        /// The param.
        name: String,
    },
    /// `$(steps.STEP.outputs.KEY)` names an output that is not there.
    #[error("$(steps.{step}.outputs.{key}) is not available: {why}")]
    UnknownStepOutput {
        /// The step.
        step: String,
        /// The key.
        key: String,
        /// Why not: no such step, it did not succeed, or it wrote no such key.
        why: String,
    },
    /// `$(item)` outside a `forEach` step.
    #[error("$(item) is only for steps with forEach")]
    NoItem,
    /// Text starting with `$(params.` or `$(steps.` that is not a reference.
    #[error("{text:?} is not a valid reference: use $(params.NAME) or $(steps.STEP.outputs.KEY)")]
    Malformed {
        /// The text, up to the end of the field or the closing parenthesis.
        text: String,
    },
}

/// One piece of a parsed field: literal text or a reference.
enum Piece<'a> {
    Text(&'a str),
    Ref(Reference),
}

fn is_param_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn is_step_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

/// Whether `key` may name a step output (the characters `when` accepts).
pub fn is_output_key(key: &str) -> bool {
    !key.is_empty() && key.chars().all(is_param_char)
}

/// Parses what sits inside `$(...)`: `params.NAME` or `steps.STEP.outputs.KEY`.
pub(crate) fn parse_reference(inner: &str) -> Option<Reference> {
    if inner == "item" {
        return Some(Reference::Item);
    }
    if let Some(name) = inner.strip_prefix("params.") {
        let first_ok = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        return (first_ok && name.chars().all(is_param_char))
            .then(|| Reference::Param(name.to_string()));
    }
    let rest = inner.strip_prefix("steps.")?;
    let (step, key) = rest.split_once(".outputs.")?;
    (!step.is_empty() && step.chars().all(is_step_char) && is_output_key(key)).then(|| {
        Reference::StepOutput {
            step: step.to_string(),
            key: key.to_string(),
        }
    })
}

/// Splits a field into text and references. `$(` followed by anything but
/// `params.` or `steps.` is text (a shell's `$(date)` stays as it is), and
/// `$$(` is the Kubernetes escape: it and what follows stay text.
fn parse(input: &str) -> Result<Vec<Piece<'_>>, SubstitutionError> {
    let mut pieces = Vec::new();
    let mut text_start = 0;
    let mut i = 0;
    let bytes = input.as_bytes();
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        if bytes.get(i + 1) == Some(&b'$') {
            i += 2;
            continue;
        }
        let rest = &input[i..];
        if !(rest.starts_with("$(params.")
            || rest.starts_with("$(steps.")
            || rest.starts_with(ITEM_KEY))
        {
            i += 1;
            continue;
        }
        let Some(close) = rest.find(')') else {
            return Err(SubstitutionError::Malformed {
                text: rest.to_string(),
            });
        };
        let inner = &rest[2..close];
        let reference = parse_reference(inner).ok_or_else(|| SubstitutionError::Malformed {
            text: rest[..=close].to_string(),
        })?;
        if text_start < i {
            pieces.push(Piece::Text(&input[text_start..i]));
        }
        pieces.push(Piece::Ref(reference));
        i += close + 1;
        text_start = i;
    }
    if text_start < input.len() {
        pieces.push(Piece::Text(&input[text_start..]));
    }
    Ok(pieces)
}

/// The references in a field, in order (duplicates kept).
pub fn references(input: &str) -> Result<Vec<Reference>, SubstitutionError> {
    Ok(parse(input)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Ref(r) => Some(r),
            Piece::Text(_) => None,
        })
        .collect())
}

fn lookup<'a>(
    reference: &Reference,
    params: &'a BTreeMap<String, String>,
    outputs: &'a StepOutputs,
) -> Result<&'a str, SubstitutionError> {
    match reference {
        Reference::Param(name) => params
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| SubstitutionError::UnknownParam { name: name.clone() }),
        Reference::Item => params
            .get(ITEM_KEY)
            .map(String::as_str)
            .ok_or(SubstitutionError::NoItem),
        Reference::StepOutput { step, key } => {
            let Some(step_outputs) = outputs.get(step) else {
                return Err(SubstitutionError::UnknownStepOutput {
                    step: step.clone(),
                    key: key.clone(),
                    why: format!("step {step} has not succeeded before this one"),
                });
            };
            step_outputs.get(key).map(String::as_str).ok_or_else(|| {
                let known: Vec<&str> = step_outputs.keys().map(String::as_str).collect();
                SubstitutionError::UnknownStepOutput {
                    step: step.clone(),
                    key: key.clone(),
                    why: if known.is_empty() {
                        format!("step {step} wrote no outputs")
                    } else {
                        format!("step {step} wrote only {}", known.join(", "))
                    },
                }
            })
        }
    }
}

fn substitute_with(
    input: &str,
    params: &BTreeMap<String, String>,
    outputs: &StepOutputs,
    escape: impl Fn(&str) -> String,
) -> Result<String, SubstitutionError> {
    let mut out = String::with_capacity(input.len());
    for piece in parse(input)? {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Ref(reference) => out.push_str(&escape(lookup(&reference, params, outputs)?)),
        }
    }
    Ok(out)
}

/// Replaces every `$(params.NAME)` and `$(steps.STEP.outputs.KEY)` in `input`
/// with its value. A reference to a param or output that is not there is an
/// error naming it. Values go in as they are.
pub fn substitute(
    input: &str,
    params: &BTreeMap<String, String>,
    outputs: &StepOutputs,
) -> Result<String, SubstitutionError> {
    substitute_with(input, params, outputs, str::to_string)
}

/// Like [`substitute`], for a container's `command`, `args` and env values,
/// which the kubelet expands in turn (`$(VAR)` becomes the variable's value,
/// `$$` becomes `$`). Every `$` of an inserted value is doubled so the value
/// reaches the process exactly as given: a param can never pull the value of
/// an env var (a Secret, say) into the arguments.
pub fn substitute_for_container(
    input: &str,
    params: &BTreeMap<String, String>,
    outputs: &StepOutputs,
) -> Result<String, SubstitutionError> {
    substitute_with(input, params, outputs, |v| v.replace('$', "$$"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(name: &str, type_: ParamType, default: Option<&str>, values: &[&str]) -> ParamSpec {
        ParamSpec {
            name: name.into(),
            type_,
            default: default.map(Into::into),
            values: values.iter().map(|v| v.to_string()).collect(),
            description: None,
        }
    }

    fn given(name: &str, value: &str) -> ParamValue {
        ParamValue {
            name: name.into(),
            value: value.into(),
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_fill_what_the_run_does_not_give() {
        let specs = [
            spec("epochs", ParamType::Int, Some("10"), &[]),
            spec("deploy", ParamType::Bool, Some("false"), &[]),
            spec("env", ParamType::Enum, Some("dev"), &["dev", "prod"]),
            spec("note", ParamType::String, None, &[]),
        ];
        let got = resolve_params(&specs, &[given("note", "hi"), given("env", "prod")]).unwrap();
        assert_eq!(
            got,
            map(&[
                ("deploy", "false"),
                ("env", "prod"),
                ("epochs", "10"),
                ("note", "hi")
            ])
        );
    }

    #[test]
    fn a_param_without_value_or_default_is_missing() {
        let specs = [spec("dataset", ParamType::String, None, &[])];
        let err = resolve_params(&specs, &[]).unwrap_err();
        assert_eq!(
            err,
            ParamError::ParameterMissing {
                name: "dataset".into()
            }
        );
        assert_eq!(err.reason(), "ParameterMissing");
        assert!(err.to_string().contains("dataset"));
    }

    #[test]
    fn values_are_checked_against_their_types() {
        let specs = [
            spec("n", ParamType::Int, None, &[]),
            spec("b", ParamType::Bool, Some("true"), &[]),
            spec("e", ParamType::Enum, Some("a"), &["a", "b"]),
        ];
        for (name, value) in [
            ("n", "ten"),
            ("n", ""),
            ("n", "-"),
            ("n", "1.5"),
            ("n", "99999999999999999999"),
            ("b", "yes"),
            ("b", "True"),
            ("e", "c"),
        ] {
            let mut run = vec![given(name, value)];
            if name != "n" {
                run.push(given("n", "1"));
            }
            let err = resolve_params(&specs, &run).unwrap_err();
            assert_eq!(err.reason(), "InvalidParameter", "{name}={value}");
            assert!(
                matches!(&err, ParamError::InvalidParameter { name: n, .. } if n == name),
                "{err}"
            );
        }
        assert!(resolve_params(&specs, &[given("n", "-42")]).is_ok());
    }

    #[test]
    fn a_bad_default_is_invalid() {
        let specs = [spec("n", ParamType::Int, Some("many"), &[])];
        assert!(matches!(
            resolve_params(&specs, &[]),
            Err(ParamError::InvalidParameter { name, .. }) if name == "n"
        ));
    }

    #[test]
    fn unknown_and_repeated_params_are_invalid() {
        let specs = [spec("a", ParamType::String, Some("x"), &[])];
        let err = resolve_params(&specs, &[given("zzz", "1")]).unwrap_err();
        assert!(
            matches!(&err, ParamError::InvalidParameter { name, why } if name == "zzz" && why.contains("no such"))
        );
        let err = resolve_params(&specs, &[given("a", "1"), given("a", "2")]).unwrap_err();
        assert!(matches!(&err, ParamError::InvalidParameter { name, .. } if name == "a"));
    }

    #[test]
    fn substitutes_params_and_outputs() {
        let params = map(&[("epochs", "3"), ("model-name", "llama")]);
        let mut outputs = StepOutputs::new();
        outputs.insert("train".into(), map(&[("artifactUri", "s3://b/m.tar.gz")]));
        let got = substitute(
            "--epochs=$(params.epochs) --name $(params.model-name) --from $(steps.train.outputs.artifactUri)",
            &params,
            &outputs,
        )
        .unwrap();
        assert_eq!(got, "--epochs=3 --name llama --from s3://b/m.tar.gz");
    }

    #[test]
    fn leaves_other_dollar_text_alone() {
        let params = map(&[("x", "1")]);
        let outputs = StepOutputs::new();
        for text in [
            "echo $(date +%s) $HOME $(HOME)",
            "cost: $5",
            "$$(params.x) stays escaped",
            "trailing $",
            "",
        ] {
            assert_eq!(substitute(text, &params, &outputs).unwrap(), text);
        }
        // `$$` is one escaped dollar, then comes a reference, as the kubelet reads it.
        assert_eq!(
            substitute("$$$(params.x)", &params, &outputs).unwrap(),
            "$$1"
        );
        assert_eq!(
            substitute("a$(params.x)$(params.x)b", &params, &outputs).unwrap(),
            "a11b"
        );
    }

    #[test]
    fn unknown_references_are_errors_naming_them() {
        let params = map(&[("x", "1")]);
        let mut outputs = StepOutputs::new();
        outputs.insert("eval".into(), map(&[("accuracy", "0.9")]));
        let err = substitute("$(params.y)", &params, &outputs).unwrap_err();
        assert_eq!(err, SubstitutionError::UnknownParam { name: "y".into() });
        let err = substitute("$(steps.train.outputs.uri)", &params, &outputs).unwrap_err();
        assert!(
            matches!(&err, SubstitutionError::UnknownStepOutput { step, key, .. } if step == "train" && key == "uri")
        );
        let err = substitute("$(steps.eval.outputs.loss)", &params, &outputs).unwrap_err();
        assert!(err.to_string().contains("accuracy"), "{err}");
        for bad in [
            "$(params.x",
            "$(params.)",
            "$(params.1x)",
            "$(steps.a.b)",
            "$(steps.A.outputs.k)",
            "$(steps.a.outputs.)",
        ] {
            assert!(
                matches!(
                    substitute(bad, &params, &outputs),
                    Err(SubstitutionError::Malformed { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn container_substitution_escapes_dollars_in_values() {
        let params = map(&[("p", "$(SECRET) and $$")]);
        let got = substitute_for_container("x=$(params.p) $(HOME)", &params, &StepOutputs::new())
            .unwrap();
        assert_eq!(got, "x=$$(SECRET) and $$$$ $(HOME)");
    }

    #[test]
    fn lists_references() {
        let refs = references("$(params.a) $(steps.s-1.outputs.k_2) $(date)").unwrap();
        assert_eq!(
            refs,
            vec![
                Reference::Param("a".into()),
                Reference::StepOutput {
                    step: "s-1".into(),
                    key: "k_2".into()
                }
            ]
        );
        assert_eq!(refs[1].to_string(), "$(steps.s-1.outputs.k_2)");
    }

    proptest::proptest! {
        #[test]
        fn substitution_never_panics(input in ".{0,64}") {
            let params = map(&[("a", "$x")]);
            let _ = substitute(&input, &params, &StepOutputs::new());
            let _ = substitute_for_container(&input, &params, &StepOutputs::new());
        }

        #[test]
        fn text_without_references_is_unchanged(input in "[^$]{0,64}") {
            let got = substitute(&input, &BTreeMap::new(), &StepOutputs::new()).unwrap();
            proptest::prop_assert_eq!(got, input);
        }
    }
}
