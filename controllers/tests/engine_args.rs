//! The command lines Aleph gives the GPU serving engines it cannot run here
//! (vLLM, TGI, Triton), checked against each pinned version's own list of
//! options (`tests/fixtures/engines`, one file per pinned image; each file
//! says where it was read from): no unknown flag, no flag that takes a value
//! left without one, no value given to a flag that takes none, and no bare
//! positional argument the engine would refuse or misread.
//!
//! Only the engine's own arguments are checked: `runtime.args` is the user's
//! business and stays empty here.

use std::collections::{BTreeMap, BTreeSet};

use aleph_controllers::aimodel::runtime::{self, RuntimeProfile};
use aleph_controllers::aimodel::validate::Source;
use aleph_crds::aimodel::{AIModel, RuntimeEngine};
use kube::ResourceExt;

/// How many values an option takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arity {
    /// None: a boolean or store-true flag (`--flag`).
    Flag,
    /// Exactly one (`--flag value` or `--flag=value`).
    One,
    /// One or more (argparse `nargs='+'`; `value...` in a fixture).
    OneOrMore,
    /// Zero or one (argparse `nargs='?'`; `[value]` in a fixture).
    Optional,
}

/// What the engine does with an argument that is neither an option nor an
/// option's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Positionals {
    /// Refuses it (clap without positionals; getopt's "Unexpected argument").
    Refused,
    /// `vllm serve [model_tag]`: one positional, the model. vLLM 0.11 moves
    /// `--model X` into that slot before parsing, so with `--model` there is
    /// room for none.
    VllmModelTag,
}

/// One engine's command-line grammar.
#[derive(Debug)]
struct Grammar {
    name: &'static str,
    options: BTreeMap<String, Arity>,
    /// vLLM's parser reads `--max_model_len` as `--max-model-len`.
    underscores: bool,
    positionals: Positionals,
}

impl Grammar {
    fn for_engine(engine: RuntimeEngine) -> Self {
        let (name, file, underscores, positionals) = match engine {
            RuntimeEngine::Vllm => (
                "vLLM v0.11.0 (`vllm serve`)",
                "vllm-v0.11.0.txt",
                true,
                Positionals::VllmModelTag,
            ),
            RuntimeEngine::Tgi => (
                "TGI 3.3.6 (`text-generation-launcher`)",
                "tgi-3.3.6.txt",
                false,
                Positionals::Refused,
            ),
            RuntimeEngine::Triton => (
                "Triton 25.09 (`tritonserver`)",
                "triton-25.09.txt",
                false,
                Positionals::Refused,
            ),
            other => panic!("no option fixture for {other:?}"),
        };
        Self {
            name,
            options: fixture(file),
            underscores,
            positionals,
        }
    }

    /// The option as the fixture spells it.
    fn canonical(&self, written: &str) -> String {
        match written.strip_prefix("--") {
            Some(rest) if self.underscores => format!("--{}", rest.replace('_', "-")),
            _ => written.to_string(),
        }
    }
}

fn fixture(file: &str) -> BTreeMap<String, Arity> {
    let path = format!(
        "{}/tests/fixtures/engines/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    parse_fixture(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Reads `--flag`, `--flag value`, `--flag value...` and `--flag [value]`
/// lines; `#` lines and blank lines are comments.
fn parse_fixture(text: &str) -> Result<BTreeMap<String, Arity>, String> {
    let mut options = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = index + 1;
        let mut words = line.split_whitespace();
        let flag = words.next().unwrap_or_default();
        let arity = match words.next() {
            None => Arity::Flag,
            Some("value") => Arity::One,
            Some("value...") => Arity::OneOrMore,
            Some("[value]") => Arity::Optional,
            Some(other) => {
                return Err(format!(
                    "line {at}: {other:?} is not value, value... or [value]"
                ));
            }
        };
        if let Some(extra) = words.next() {
            return Err(format!("line {at}: unexpected {extra:?}"));
        }
        if !is_option(flag) || flag.contains('=') {
            return Err(format!("line {at}: {flag:?} is not an option"));
        }
        if options.insert(flag.to_string(), arity).is_some() {
            return Err(format!("line {at}: {flag} is listed twice"));
        }
    }
    if options.is_empty() {
        return Err("no options".into());
    }
    Ok(options)
}

/// Whether an argument is an option (`-x`, `--xy`), not a value such as `-1`.
fn is_option(arg: &str) -> bool {
    arg.len() > 1 && arg.starts_with('-') && arg.parse::<f64>().is_err()
}

/// What the engine would object to in `argv`: empty when it accepts it.
fn problems(grammar: &Grammar, argv: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    let mut bare = Vec::new();
    let mut model_option = false;
    let mut i = 0;
    while i < argv.len() {
        let arg = argv[i].as_str();
        i += 1;
        if !is_option(arg) {
            bare.push(arg);
            continue;
        }
        let (written, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag, Some(value)),
            None => (arg, None),
        };
        let name = grammar.canonical(written);
        let Some(&arity) = grammar.options.get(&name) else {
            found.push(format!(
                "unknown flag {written}: {} has no such option",
                grammar.name
            ));
            continue;
        };
        model_option |= name == "--model";
        let next = argv.get(i).map(String::as_str);
        let next_is_value = next.is_some_and(|a| !is_option(a));
        match (arity, inline) {
            (Arity::Flag, Some(value)) => found.push(format!(
                "boolean flag {written} given the value {value:?}: it takes none"
            )),
            (Arity::Flag, None) if next_is_value => {
                found.push(format!(
                    "boolean flag {written} followed by {:?}: the flag takes no value, so that word would be a stray positional",
                    next.unwrap_or_default()
                ));
                i += 1;
            }
            (Arity::Flag, None) => {}
            (_, Some("")) => found.push(format!("flag {written} given an empty value")),
            // An inline value is the one value, even for nargs='+'.
            (_, Some(_)) => {}
            (Arity::One | Arity::OneOrMore, None) if !next_is_value => {
                found.push(format!(
                    "flag {written} needs a value, but {}",
                    match next {
                        Some(flag) => format!("the next argument is the flag {flag}"),
                        None => "it is the last argument".to_string(),
                    }
                ));
            }
            (Arity::One, None) => i += 1,
            (Arity::OneOrMore, None) => {
                while argv.get(i).is_some_and(|a| !is_option(a)) {
                    i += 1;
                }
            }
            (Arity::Optional, None) => {
                if next_is_value {
                    i += 1;
                }
            }
        }
    }
    let room = match grammar.positionals {
        Positionals::Refused => 0,
        Positionals::VllmModelTag if model_option => 0,
        Positionals::VllmModelTag => 1,
    };
    for arg in bare.iter().skip(room) {
        found.push(match grammar.positionals {
            Positionals::Refused => format!(
                "bare positional argument {arg:?}: {} takes no positional argument and refuses it",
                grammar.name
            ),
            Positionals::VllmModelTag if model_option => format!(
                "bare positional argument {arg:?}: `vllm serve` takes one positional (the model tag) and vLLM 0.11 moves `--model X` into it, so argparse rejects {arg:?} as an unrecognized argument"
            ),
            Positionals::VllmModelTag => format!(
                "bare positional argument {arg:?}: `vllm serve` takes only one positional (the model tag), already given"
            ),
        });
    }
    found
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_string()).collect()
}

/// An AIModel as a user would write it.
fn model(engine: &str, name: &str, uri: &str, gpus: Option<i32>, port: Option<i32>) -> AIModel {
    let port = port.map_or(String::new(), |p| format!("    port: {p}\n"));
    let resources = gpus.map_or(String::new(), |g| format!("  resources:\n    gpus: {g}\n"));
    let yaml = format!(
        "apiVersion: aleph.dev/v1alpha1
kind: AIModel
metadata:
  name: {name}
  namespace: ml
spec:
  source:
    uri: {uri}
  runtime:
    engine: {engine}
{port}{resources}"
    );
    serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{yaml}\n{e}"))
}

/// The serving container, as the reconciler builds it (`build::plan`).
fn serving(model: &AIModel) -> RuntimeProfile {
    let uri = &model
        .spec
        .source
        .as_ref()
        .expect("the model has a source")
        .uri;
    let source = Source::parse(uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
    runtime::profile(
        &model.spec.runtime,
        &source,
        &model.name_any(),
        model.spec.resources.gpus.unwrap_or(0),
    )
}

/// The arguments the engine's parser sees: after the image's entrypoint
/// (vLLM, TGI), or after `tritonserver` (Triton, whose entrypoint Aleph
/// replaces).
fn engine_argv(engine: RuntimeEngine, p: &RuntimeProfile) -> Result<Vec<String>, String> {
    match (engine, &p.command) {
        (RuntimeEngine::Vllm | RuntimeEngine::Tgi, None) => Ok(p.args.clone()),
        (RuntimeEngine::Triton, Some(command))
            if command.first().is_some_and(|c| c == "tritonserver") =>
        {
            Ok(command[1..].iter().chain(&p.args).cloned().collect())
        }
        (_, command) => Err(format!(
            "the fixture describes the engine's own CLI, but the profile runs command {command:?}"
        )),
    }
}

/// The port the engine's arguments make it serve HTTP on.
fn http_port(engine: RuntimeEngine, argv: &[String]) -> Option<String> {
    match engine {
        RuntimeEngine::Triton => argv
            .iter()
            .find_map(|a| a.strip_prefix("--http-port=").map(str::to_string)),
        _ => argv
            .iter()
            .position(|a| a == "--port")
            .and_then(|i| argv.get(i + 1).cloned()),
    }
}

const ENGINES: [(RuntimeEngine, &str); 3] = [
    (RuntimeEngine::Vllm, "vllm"),
    (RuntimeEngine::Tgi, "tgi"),
    (RuntimeEngine::Triton, "triton"),
];
const SOURCES: [&str; 4] = [
    "hf://meta-llama/Llama-3.1-8B-Instruct",
    "hf://Qwen/Qwen2.5-7B-Instruct@main",
    "s3://acme-models/llama/8b",
    "pvc://weights/llama/8b",
];
const GPUS: [Option<i32>; 5] = [None, Some(0), Some(1), Some(4), Some(8)];
const PORTS: [Option<i32>; 2] = [None, Some(8443)];

#[test]
fn every_generated_engine_argument_is_one_the_pinned_engine_accepts() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for (engine, spelled) in ENGINES {
        let grammar = Grammar::for_engine(engine);
        for uri in SOURCES {
            for gpus in GPUS {
                for port in PORTS {
                    let m = model(spelled, "chat-model", uri, gpus, port);
                    let p = serving(&m);
                    let case =
                        format!("engine {spelled}, source {uri}, gpus {gpus:?}, port {port:?}");
                    assert_eq!(p.engine, engine, "{case}");
                    assert!(m.spec.runtime.args.is_empty(), "{case}: no user arguments");
                    let argv = match engine_argv(engine, &p) {
                        Ok(argv) => argv,
                        Err(e) => {
                            failures.push(format!("{case}: {e}"));
                            continue;
                        }
                    };
                    let mut wrong = problems(&grammar, &argv);
                    let mut seen = BTreeSet::new();
                    for arg in argv.iter().filter(|a| is_option(a)) {
                        let flag = arg.split_once('=').map_or(arg.as_str(), |(f, _)| f);
                        if !seen.insert(grammar.canonical(flag)) {
                            wrong.push(format!("flag {flag} is given twice"));
                        }
                    }
                    let expected_port = port.unwrap_or(p.port);
                    if p.port != expected_port
                        || http_port(engine, &argv) != Some(expected_port.to_string())
                    {
                        wrong.push(format!(
                            "the profile serves on {} but the arguments set {:?}",
                            p.port,
                            http_port(engine, &argv)
                        ));
                    }
                    if !wrong.is_empty() {
                        failures.push(format!(
                            "{case}: {} would not accept\n      {}\n    because\n      - {}",
                            grammar.name,
                            argv.join(" "),
                            wrong.join("\n      - ")
                        ));
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(
        checked,
        ENGINES.len() * SOURCES.len() * GPUS.len() * PORTS.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} generated command lines are wrong:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

#[test]
fn the_fixtures_describe_the_pinned_images() {
    // A new image needs a new option list: refresh the fixture with it.
    assert!(
        runtime::VLLM_IMAGE.ends_with("vllm-openai:v0.11.0"),
        "{}",
        runtime::VLLM_IMAGE
    );
    assert!(
        runtime::TGI_IMAGE.ends_with("text-generation-inference:3.3.6"),
        "{}",
        runtime::TGI_IMAGE
    );
    assert!(
        runtime::TRITON_IMAGE.contains("tritonserver:25.09"),
        "{}",
        runtime::TRITON_IMAGE
    );
    for (spelled, pinned) in [
        ("vllm", runtime::VLLM_IMAGE),
        ("tgi", runtime::TGI_IMAGE),
        ("triton", runtime::TRITON_IMAGE),
    ] {
        let m = model(spelled, "pinned", "s3://acme-models/x", Some(1), None);
        assert_eq!(
            serving(&m).image,
            pinned,
            "{spelled} runs an image no fixture describes"
        );
    }
}

#[test]
fn the_checker_refuses_what_the_engines_refuse() {
    let vllm = Grammar::for_engine(RuntimeEngine::Vllm);
    let tgi = Grammar::for_engine(RuntimeEngine::Tgi);
    let triton = Grammar::for_engine(RuntimeEngine::Triton);
    let says = |found: &[String], what: &str| {
        assert!(
            found.iter().any(|p| p.contains(what)),
            "expected a problem mentioning {what:?}, got {found:#?}"
        );
    };

    // An unknown flag and a flag left without its value.
    let found = problems(
        &vllm,
        &strings(&["--model", "/models", "--tensor-paralel-size", "2", "--port"]),
    );
    says(&found, "unknown flag --tensor-paralel-size");
    says(
        &found,
        "flag --port needs a value, but it is the last argument",
    );
    let found = problems(&tgi, &strings(&["--model-id", "--port", "8080"]));
    says(
        &found,
        "flag --model-id needs a value, but the next argument is the flag --port",
    );
    // Triton's boolean options take a value; its switches take none.
    let found = problems(
        &triton,
        &strings(&["--strict-readiness", "--disable-auto-complete-config=true"]),
    );
    says(&found, "flag --strict-readiness needs a value");
    says(
        &found,
        "boolean flag --disable-auto-complete-config given the value \"true\"",
    );
    // A value after a boolean flag.
    let found = problems(&tgi, &strings(&["--trust-remote-code", "true"]));
    says(
        &found,
        "boolean flag --trust-remote-code followed by \"true\"",
    );
    let found = problems(&vllm, &strings(&["--enforce-eager=1"]));
    says(&found, "boolean flag --enforce-eager given the value \"1\"");
    // Bare positionals.
    let found = problems(&triton, &strings(&["--model-repository=/models", "resnet"]));
    says(&found, "bare positional argument \"resnet\"");
    let found = problems(
        &vllm,
        &strings(&[
            "--model",
            "/models",
            "--host",
            "0.0.0.0",
            "meta-llama/Llama-3.1-8B",
        ]),
    );
    says(&found, "vLLM 0.11 moves `--model X` into it");
    let found = problems(&vllm, &strings(&["/models", "--port", "8000", "other"]));
    says(&found, "already given");

    // What the engines do accept.
    for (grammar, argv) in [
        (
            &vllm,
            strings(&[
                "/models",
                "--served-model-name",
                "chat",
                "meta-llama/Llama-3.1-8B",
                "--port=8000",
                "--max_model_len",
                "4096",
                "-tp",
                "2",
                "--no-enable-prefix-caching",
                "--hf-token",
            ]),
        ),
        (
            &tgi,
            strings(&[
                "--model-id",
                "/models",
                "-p",
                "8080",
                "--num-shard=2",
                "--json-output",
            ]),
        ),
        (
            &triton,
            strings(&[
                "--model-repository",
                "/models",
                "--http-port=8000",
                "--log-verbose=1",
            ]),
        ),
    ] {
        let found = problems(grammar, &argv);
        assert!(
            found.is_empty(),
            "{}: {argv:?} should pass: {found:#?}",
            grammar.name
        );
    }

    // The fixture format itself.
    assert!(parse_fixture("--x maybe").is_err());
    assert!(parse_fixture("--x\n--x value").is_err());
    assert!(parse_fixture("x value").is_err());
    assert!(parse_fixture("# only a comment").is_err());
    assert_eq!(
        parse_fixture("# c\n--a\n--b value\n--c value...\n--d [value]\n"),
        Ok(BTreeMap::from([
            ("--a".to_string(), Arity::Flag),
            ("--b".to_string(), Arity::One),
            ("--c".to_string(), Arity::OneOrMore),
            ("--d".to_string(), Arity::Optional),
        ]))
    );
}
