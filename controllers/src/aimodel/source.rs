//! Where a model's weights come from: its source URI, parsed, and where the
//! serving container finds them. No client.

/// Where the serving container finds the weights.
pub const MODEL_DIR: &str = "/models";

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

/// The GGUF file llama.cpp loads, when the source names one: an `s3://`
/// object `*.gguf` (downloaded under its own name) or a `pvc://` path to one
/// (mounted as the file itself). `None` when the arguments must say.
pub fn gguf_path(source: &Source) -> Option<String> {
    match source {
        Source::S3 { uri } if uri.ends_with(".gguf") => {
            let file = uri.rsplit('/').next().unwrap_or_default();
            Some(format!("{MODEL_DIR}/{file}"))
        }
        Source::Pvc { path, .. } if path.ends_with(".gguf") => Some(MODEL_DIR.to_string()),
        _ => None,
    }
}
