//! What the schema cannot check about an AIModel: the parts of its source URI,
//! the pairing of source and engine, and names its children take. No client.

use aleph_crds::aimodel::{AIModel, ModelRuntime, RuntimeEngine};
use kube::ResourceExt;

/// Where a model's weights come from, parsed from its URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A Hugging Face Hub repository, at a revision (branch, tag or commit) or the default one.
    HuggingFace {
        /// `org/name`.
        repo: String,
        /// The revision after `@`, if any.
        revision: Option<String>,
    },
    /// An S3 prefix, or one object (a `.tar.gz` archive is unpacked).
    S3 {
        /// The `s3://` URI.
        uri: String,
    },
    /// A path inside a PersistentVolumeClaim of the namespace; mounted as it is.
    Pvc {
        /// The claim.
        claim: String,
        /// The path inside it; the whole volume when empty.
        path: String,
    },
    /// An Ollama library model, pulled by Ollama.
    Ollama {
        /// `name[:tag]`.
        name: String,
    },
    /// An OCI image holding the weights under `/models` (a "model car").
    Oci {
        /// The image reference, without `oci://`.
        image: String,
    },
}

impl Source {
    /// Parses a source URI; the error names what is wrong.
    pub fn parse(uri: &str) -> Result<Self, String> {
        let (scheme, rest) = uri.split_once("://").ok_or_else(|| {
            format!("{uri:?} has no scheme: use hf://, s3://, pvc://, ollama:// or oci://")
        })?;
        match scheme {
            "hf" => {
                let (repo, revision) = match rest.split_once('@') {
                    Some((repo, revision)) => (repo, Some(revision)),
                    None => (rest, None),
                };
                let mut parts = repo.split('/');
                let (Some(org), Some(name), None) = (parts.next(), parts.next(), parts.next())
                else {
                    return Err(format!("{uri:?} is not hf://org/name[@revision]"));
                };
                if org.is_empty() || name.is_empty() {
                    return Err(format!("{uri:?} is not hf://org/name[@revision]"));
                }
                if revision.is_some_and(str::is_empty) {
                    return Err(format!("{uri:?} has an empty revision after @"));
                }
                Ok(Source::HuggingFace {
                    repo: repo.to_string(),
                    revision: revision.map(str::to_string),
                })
            }
            "s3" => {
                let bucket = rest.split('/').next().unwrap_or_default();
                if bucket.len() < 3 || bucket.len() > 63 {
                    return Err(format!("{uri:?}: an S3 bucket name has 3 to 63 characters"));
                }
                Ok(Source::S3 {
                    uri: uri.to_string(),
                })
            }
            "pvc" => {
                let (claim, path) = rest.split_once('/').unwrap_or((rest, ""));
                if claim.is_empty() || claim.len() > 253 {
                    return Err(format!("{uri:?} is not pvc://claim[/path]"));
                }
                let path = path.trim_matches('/');
                if path.split('/').any(|segment| segment == "..") {
                    return Err(format!("{uri:?}: the path may not contain .."));
                }
                Ok(Source::Pvc {
                    claim: claim.to_string(),
                    path: path.to_string(),
                })
            }
            "ollama" => {
                if rest.is_empty() || rest.contains('/') {
                    return Err(format!("{uri:?} is not ollama://name[:tag]"));
                }
                Ok(Source::Ollama {
                    name: rest.to_string(),
                })
            }
            "oci" => {
                if !rest.contains('/') {
                    return Err(format!(
                        "{uri:?} is not oci://registry/repository[:tag|@digest]"
                    ));
                }
                Ok(Source::Oci {
                    image: rest.to_string(),
                })
            }
            other => Err(format!(
                "{uri:?}: unknown scheme {other}://; use hf://, s3://, pvc://, ollama:// or oci://"
            )),
        }
    }

    /// Whether the weights are copied into the model cache (a `pvc://` source is mounted as is).
    pub fn is_downloaded(&self) -> bool {
        !matches!(self, Source::Pvc { .. })
    }

    /// The Hugging Face repository, the name the model is best known by.
    pub fn repo_id(&self) -> Option<&str> {
        match self {
            Source::HuggingFace { repo, .. } => Some(repo),
            _ => None,
        }
    }
}

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
            if super::runtime::gguf_path(&source).is_none()
                && !runtime
                    .args
                    .iter()
                    .any(|a| a == "--model" || a == "-m" || a.starts_with("--model=")) =>
        {
            return Err(error(
                field,
                format!(
                    "llama.cpp serves one GGUF file, and {uri} does not name one: use a source ending in .gguf (s3://bucket/path/model.gguf, pvc://claim/path/model.gguf) or pass runtime.args [--model, {}/<file>.gguf]",
                    super::runtime::MODEL_DIR
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
