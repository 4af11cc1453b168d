//! What the schema cannot check about an AIModel: the parts of its source URI,
//! the pairing of source and engine, and names its children take. No client.

use aleph_crds::aimodel::{AIModel, ModelRuntime, RuntimeEngine};
use kube::ResourceExt;

pub use super::source::Source;
use super::source::{MODEL_DIR, gguf_path};

/// A spec error: the field at fault and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    /// The field path, for example `spec.source.uri`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn error(field: &str, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Checks a source against the engine that serves it.
pub fn source_for_runtime(
    field: &str,
    uri: &str,
    runtime: &ModelRuntime,
) -> Result<Source, SpecError> {
    let source = Source::parse(uri).map_err(|m| error(field, m))?;
    match (&source, runtime.engine) {
        (Source::Ollama { .. }, RuntimeEngine::Ollama | RuntimeEngine::Custom) => {}
        (Source::Ollama { .. }, engine) => {
            return Err(error(
                field,
                format!(
                    "an ollama:// model is served by the ollama engine, not {}: set runtime.engine: ollama",
                    engine_name(engine)
                ),
            ));
        }
        (_, RuntimeEngine::Ollama) if !matches!(source, Source::Pvc { .. }) => {
            return Err(error(
                field,
                "the ollama engine serves ollama:// models (or a pvc:// volume holding Ollama's model store)",
            ));
        }
        (_, RuntimeEngine::Llamacpp)
            if gguf_path(&source).is_none()
                && !runtime
                    .args
                    .iter()
                    .any(|a| a == "--model" || a == "-m" || a.starts_with("--model=")) =>
        {
            return Err(error(
                field,
                format!(
                    "llama.cpp serves one GGUF file, and {uri} does not name one: use a source ending in .gguf (s3://bucket/path/model.gguf, pvc://claim/path/model.gguf) or pass runtime.args [--model, {}/<file>.gguf]",
                    MODEL_DIR
                ),
            ));
        }
        _ => {}
    }
    Ok(source)
}

/// The engine's name as the spec spells it.
pub fn engine_name(engine: RuntimeEngine) -> &'static str {
    match engine {
        RuntimeEngine::Vllm => "vllm",
        RuntimeEngine::Ollama => "ollama",
        RuntimeEngine::Tgi => "tgi",
        RuntimeEngine::Triton => "triton",
        RuntimeEngine::Llamacpp => "llamacpp",
        RuntimeEngine::Custom => "custom",
    }
}

/// Checks what the schema cannot: the model's name (it names a Service), the
/// sources of the model and of its canary against their engines.
pub fn validate(model: &AIModel, serving_uri: &str) -> Result<(), SpecError> {
    let name = model.name_any();
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(error(
            "metadata.name",
            format!(
                "{name:?} names the model's Service, whose name must start with a letter: recreate the model under another name"
            ),
        ));
    }
    source_for_runtime("spec.source.uri", serving_uri, &model.spec.runtime)?;
    if let Some(canary) = &model.spec.canary {
        let uri = canary
            .source
            .as_ref()
            .map_or(serving_uri, |s| s.uri.as_str());
        let runtime = canary.runtime.as_ref().unwrap_or(&model.spec.runtime);
        let field = if canary.source.is_some() {
            "spec.canary.source.uri"
        } else {
            "spec.canary.runtime.engine"
        };
        source_for_runtime(field, uri, runtime)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme() {
        assert_eq!(
            Source::parse("hf://meta-llama/Llama-3.1-8B-Instruct@main"),
            Ok(Source::HuggingFace {
                repo: "meta-llama/Llama-3.1-8B-Instruct".into(),
                revision: Some("main".into())
            })
        );
        assert_eq!(
            Source::parse("pvc://weights/llama/8b/"),
            Ok(Source::Pvc {
                claim: "weights".into(),
                path: "llama/8b".into()
            })
        );
        assert_eq!(
            Source::parse("pvc://weights"),
            Ok(Source::Pvc {
                claim: "weights".into(),
                path: String::new()
            })
        );
        assert!(matches!(
            Source::parse("s3://bucket/prefix"),
            Ok(Source::S3 { .. })
        ));
        assert!(matches!(
            Source::parse("ollama://llama3.2:1b"),
            Ok(Source::Ollama { .. })
        ));
        assert!(matches!(
            Source::parse("oci://ghcr.io/acme/llama:1"),
            Ok(Source::Oci { .. })
        ));
    }

    #[test]
    fn refuses_malformed_uris() {
        for uri in [
            "hf://only-org",
            "hf://a/b/c",
            "hf://a/b@",
            "s3://ab",
            "pvc://claim/../etc",
            "ollama://a/b",
            "oci://image-without-registry",
            "gs://bucket/x",
            "no-scheme",
        ] {
            assert!(Source::parse(uri).is_err(), "{uri} should be refused");
        }
    }

    #[test]
    fn ollama_sources_need_the_ollama_engine() {
        let vllm = ModelRuntime::default();
        let err = source_for_runtime("spec.source.uri", "ollama://llama3", &vllm)
            .expect_err("vllm cannot serve an ollama model");
        assert_eq!(err.field, "spec.source.uri");
        assert!(err.message.contains("runtime.engine: ollama"));
        let ollama = ModelRuntime {
            engine: RuntimeEngine::Ollama,
            ..ModelRuntime::default()
        };
        assert!(source_for_runtime("f", "ollama://llama3", &ollama).is_ok());
        assert!(source_for_runtime("f", "hf://a/b", &ollama).is_err());
    }
}
