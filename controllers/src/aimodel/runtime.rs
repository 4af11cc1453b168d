//! The serving engines: for each, the image, command and arguments, port,
//! probes and environment of the serving container. No client.
//!
//! The weights are always at [`MODEL_DIR`] inside the serving container (the
//! model cache, a `pvc://` volume, or a per-pod copy), so every engine loads
//! from a local path and none downloads at start.

use aleph_crds::aimodel::{ModelRuntime, RuntimeEngine};

pub use super::source::{MODEL_DIR, Source, gguf_path};

/// The vLLM image when the spec names none.
pub const VLLM_IMAGE: &str = "docker.io/vllm/vllm-openai:v0.11.0";
/// The Ollama image when the spec names none.
pub const OLLAMA_IMAGE: &str = "docker.io/ollama/ollama:0.12.6";
/// The Text Generation Inference image when the spec names none.
pub const TGI_IMAGE: &str = "ghcr.io/huggingface/text-generation-inference:3.3.6";
/// The Triton Inference Server image when the spec names none.
pub const TRITON_IMAGE: &str = "nvcr.io/nvidia/tritonserver:25.09-py3";
/// The llama.cpp server image when the spec names none: build b11312 (commit
/// 0c1e57098), the version `e2e/images` builds locally as
/// `aleph.local/llama-server:b11312`.
pub const LLAMACPP_IMAGE: &str = "ghcr.io/ggml-org/llama.cpp:server-b11312";
/// The port llama.cpp's server listens on.
const LLAMACPP_PORT: i32 = 8080;

/// How long and how often a probe looks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeTiming {
    /// The HTTP path.
    pub path: String,
    /// Seconds between looks.
    pub period_seconds: i32,
    /// Failed looks in a row before the probe fails.
    pub failure_threshold: i32,
    /// Seconds one look may take.
    pub timeout_seconds: i32,
}

impl ProbeTiming {
    fn new(path: &str, period_seconds: i32, failure_threshold: i32, timeout_seconds: i32) -> Self {
        Self {
            path: path.to_string(),
            period_seconds,
            failure_threshold,
            timeout_seconds,
        }
    }

    /// A startup probe for an engine that loads weights onto GPUs.
    fn loading(path: &str) -> Self {
        Self::new(path, LOAD_PERIOD, LOAD_FAILURES, 5)
    }

    /// A readiness probe, every 5 s.
    fn ready(path: &str) -> Self {
        Self::new(path, 5, 3, 5)
    }

    /// A liveness probe, every 15 s.
    fn live(path: &str) -> Self {
        Self::new(path, 15, 4, 10)
    }
}

/// The serving container of one engine for one model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeProfile {
    /// The engine.
    pub engine: RuntimeEngine,
    /// The container's name (the engine's).
    pub container: &'static str,
    /// The image.
    pub image: String,
    /// The entrypoint, when the image's is not the server.
    pub command: Option<Vec<String>>,
    /// The arguments: the engine's, then the spec's.
    pub args: Vec<String>,
    /// The HTTP port.
    pub port: i32,
    /// Startup probe: long enough to load the weights.
    pub startup: ProbeTiming,
    /// Readiness probe.
    pub readiness: ProbeTiming,
    /// Liveness probe.
    pub liveness: ProbeTiming,
    /// Literal environment the engine needs.
    pub env: Vec<(String, String)>,
    /// Whether the API is OpenAI-compatible under `/v1`.
    pub openai: bool,
}

/// The startup budget of engines that load weights onto GPUs: 30 minutes.
const LOAD_PERIOD: i32 = 10;
const LOAD_FAILURES: i32 = 180;
/// The same 30 minutes, looked at every 2 s: llama.cpp loads small models in
/// a second or two, and a 10 s period would make every rollout 10 s slower.
const QUICK_LOAD_PERIOD: i32 = 2;
const QUICK_LOAD_FAILURES: i32 = 900;

/// Whether `args` set `flag` (`--flag value`, `--flag=value`, or one of its
/// short forms).
fn sets(args: &[String], flags: &[&str]) -> bool {
    args.iter().any(|arg| {
        flags.iter().any(|f| {
            arg == f
                || arg
                    .strip_prefix(f)
                    .is_some_and(|rest| rest.starts_with('='))
        })
    })
}

/// A Hugging Face engine (vLLM, TGI), given as its engine, container name and
/// image: the image's entrypoint serves, `/health` answers once the weights
/// are on the GPUs, the Hub stays offline (the weights are local), and the
/// variable `no_telemetry` turns the engine's usage reports off.
fn hugging_face_engine(
    (engine, container, image): (RuntimeEngine, &'static str, &str),
    args: Vec<String>,
    port: i32,
    no_telemetry: &str,
) -> RuntimeProfile {
    RuntimeProfile {
        engine,
        container,
        image: image.to_string(),
        command: None,
        args,
        port,
        startup: ProbeTiming::loading("/health"),
        readiness: ProbeTiming::ready("/health"),
        liveness: ProbeTiming::live("/health"),
        env: vec![
            ("HF_HUB_OFFLINE".into(), "1".into()),
            (no_telemetry.into(), "1".into()),
        ],
        openai: true,
    }
}

/// The serving container of `runtime` for a model called `served_name`,
/// loaded from `source`, on `gpus` GPUs.
pub fn profile(
    runtime: &ModelRuntime,
    source: &Source,
    served_name: &str,
    gpus: i32,
) -> RuntimeProfile {
    let shards = gpus.max(1);
    let mut profile = match runtime.engine {
        RuntimeEngine::Vllm => {
            let mut args = vec![
                "--model".to_string(),
                MODEL_DIR.to_string(),
                "--served-model-name".to_string(),
                served_name.to_string(),
            ];
            if let Some(repo) = source.repo_id()
                && repo != served_name
            {
                args.push(repo.to_string());
            }
            args.extend([
                "--host".to_string(),
                "0.0.0.0".to_string(),
                "--port".to_string(),
                "8000".to_string(),
                "--tensor-parallel-size".to_string(),
                shards.to_string(),
            ]);
            let vllm = (RuntimeEngine::Vllm, "vllm", VLLM_IMAGE);
            hugging_face_engine(vllm, args, 8000, "VLLM_NO_USAGE_STATS")
        }
        RuntimeEngine::Tgi => {
            let mut args = vec![
                "--model-id".to_string(),
                MODEL_DIR.to_string(),
                "--hostname".to_string(),
                "0.0.0.0".to_string(),
                "--port".to_string(),
                "8080".to_string(),
            ];
            if shards > 1 {
                args.extend(["--num-shard".to_string(), shards.to_string()]);
            }
            let tgi = (RuntimeEngine::Tgi, "tgi", TGI_IMAGE);
            hugging_face_engine(tgi, args, 8080, "HF_HUB_DISABLE_TELEMETRY")
        }
        RuntimeEngine::Triton => RuntimeProfile {
            engine: RuntimeEngine::Triton,
            container: "triton",
            image: TRITON_IMAGE.to_string(),
            command: Some(vec!["tritonserver".to_string()]),
            args: vec![
                format!("--model-repository={MODEL_DIR}"),
                "--http-port=8000".to_string(),
                "--grpc-port=8001".to_string(),
                "--metrics-port=8002".to_string(),
            ],
            port: 8000,
            startup: ProbeTiming::loading("/v2/health/ready"),
            readiness: ProbeTiming::ready("/v2/health/ready"),
            liveness: ProbeTiming::live("/v2/health/live"),
            env: Vec::new(),
            openai: false,
        },
        RuntimeEngine::Ollama => {
            let env = vec![
                ("OLLAMA_HOST".into(), "0.0.0.0:11434".into()),
                ("OLLAMA_MODELS".into(), MODEL_DIR.into()),
                // The store is mounted read-only: never prune it.
                ("OLLAMA_NOPRUNE".into(), "1".into()),
                ("OLLAMA_KEEP_ALIVE".into(), "-1".into()),
            ];
            RuntimeProfile {
                engine: RuntimeEngine::Ollama,
                container: "ollama",
                image: OLLAMA_IMAGE.to_string(),
                command: Some(vec!["/bin/ollama".to_string()]),
                args: vec!["serve".to_string()],
                port: 11434,
                // Ollama answers at once and loads a model on its first request.
                startup: ProbeTiming::new("/", 5, 60, 5),
                readiness: ProbeTiming::ready("/api/tags"),
                liveness: ProbeTiming::live("/"),
                env,
                openai: true,
            }
        }
        RuntimeEngine::Llamacpp => {
            let mut args = Vec::new();
            // The spec's arguments may name the file or the served names
            // themselves; the engine's then stay out of the way.
            if !sets(&runtime.args, &["--model", "-m"])
                && let Some(path) = gguf_path(source)
            {
                args.extend(["--model".to_string(), path]);
            }
            if !sets(&runtime.args, &["--alias", "-a"]) {
                args.extend(["--alias".to_string(), served_name.to_string()]);
            }
            args.extend([
                "--host".to_string(),
                "0.0.0.0".to_string(),
                "--port".to_string(),
                LLAMACPP_PORT.to_string(),
                // Every layer on the GPUs when there are any; none otherwise.
                "--n-gpu-layers".to_string(),
                if gpus > 0 { "999" } else { "0" }.to_string(),
                // Prometheus metrics at /metrics (requests in flight, tokens).
                "--metrics".to_string(),
            ]);
            RuntimeProfile {
                engine: RuntimeEngine::Llamacpp,
                container: "llama-server",
                image: LLAMACPP_IMAGE.to_string(),
                command: None,
                args,
                port: LLAMACPP_PORT,
                // /health answers 503 while the model loads, 200 once it serves.
                startup: ProbeTiming::new("/health", QUICK_LOAD_PERIOD, QUICK_LOAD_FAILURES, 5),
                readiness: ProbeTiming::new("/health", 2, 3, 5),
                liveness: ProbeTiming::live("/health"),
                env: Vec::new(),
                openai: true,
            }
        }
        RuntimeEngine::Custom => {
            let path = runtime.health_path.clone().unwrap_or_else(|| "/".into());
            RuntimeProfile {
                engine: RuntimeEngine::Custom,
                container: "server",
                image: String::new(),
                command: None,
                args: Vec::new(),
                port: runtime.port.unwrap_or(8080),
                startup: ProbeTiming::loading(&path),
                readiness: ProbeTiming::ready(&path),
                liveness: ProbeTiming::live(&path),
                env: vec![("MODEL_DIR".into(), MODEL_DIR.into())],
                openai: false,
            }
        }
    };
    if let Some(image) = &runtime.image {
        profile.image = image.clone();
    }
    if let Some(port) = runtime.port
        && port != profile.port
    {
        retarget_port(&mut profile, port);
    }
    if let Some(path) = &runtime.health_path {
        profile.startup.path = path.clone();
        profile.readiness.path = path.clone();
        profile.liveness.path = path.clone();
    }
    profile.args.extend(runtime.args.iter().cloned());
    profile
}

/// Moves a built-in engine to another port: its port argument and its environment.
fn retarget_port(profile: &mut RuntimeProfile, port: i32) {
    let old = profile.port.to_string();
    let mut next_is_port = false;
    for arg in &mut profile.args {
        if next_is_port {
            *arg = port.to_string();
            next_is_port = false;
        } else if arg == "--port" {
            next_is_port = true;
        } else if let Some(rest) = arg.strip_prefix("--http-port=")
            && rest == old
        {
            *arg = format!("--http-port={port}");
        }
    }
    for (name, value) in &mut profile.env {
        if name == "OLLAMA_HOST" {
            *value = format!("0.0.0.0:{port}");
        }
    }
    profile.port = port;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hf() -> Source {
        Source::HuggingFace {
            repo: "org/model".into(),
            revision: None,
        }
    }

    /// The argument after `flag`.
    fn arg_after<'a>(p: &'a RuntimeProfile, flag: &str) -> Option<&'a str> {
        let i = p.args.iter().position(|a| a == flag)?;
        Some(p.args[i + 1].as_str())
    }

    #[test]
    fn vllm_shards_over_the_gpus_and_keeps_user_args_last() {
        let runtime = ModelRuntime {
            args: vec!["--max-model-len=8192".into()],
            ..ModelRuntime::default()
        };
        let p = profile(&runtime, &hf(), "chat", 4);
        assert_eq!(arg_after(&p, "--tensor-parallel-size"), Some("4"));
        assert_eq!(
            p.args.last().map(String::as_str),
            Some("--max-model-len=8192")
        );
        assert!(p.args.contains(&"org/model".to_string()));
        assert!(p.startup.period_seconds * p.startup.failure_threshold >= 1800);
    }

    #[test]
    fn llamacpp_loads_the_named_gguf_and_yields_to_the_spec() {
        let runtime = ModelRuntime {
            engine: RuntimeEngine::Llamacpp,
            ..ModelRuntime::default()
        };
        let s3 = Source::S3 {
            uri: "s3://models/tiny/chat.gguf".into(),
        };
        let p = profile(&runtime, &s3, "chat", 0);
        assert_eq!(
            p.args,
            [
                "--model",
                "/models/chat.gguf",
                "--alias",
                "chat",
                "--host",
                "0.0.0.0",
                "--port",
                "8080",
                "--n-gpu-layers",
                "0",
                "--metrics"
            ]
        );
        assert_eq!(p.startup.path, "/health");
        assert!(p.startup.period_seconds * p.startup.failure_threshold >= 1800);
        let pvc = Source::Pvc {
            claim: "weights".into(),
            path: "tiny/chat.gguf".into(),
        };
        assert_eq!(gguf_path(&pvc).as_deref(), Some("/models"));
        let own = ModelRuntime {
            engine: RuntimeEngine::Llamacpp,
            args: vec!["--model=/models/x.gguf".into(), "-a".into(), "c2".into()],
            port: Some(9000),
            ..ModelRuntime::default()
        };
        let p = profile(&own, &s3, "chat", 2);
        assert!(!p.args.contains(&"/models/chat.gguf".to_string()));
        assert!(!p.args.contains(&"--alias".to_string()));
        assert_eq!(p.port, 9000);
        assert_eq!(arg_after(&p, "--port"), Some("9000"));
        assert_eq!(arg_after(&p, "--n-gpu-layers"), Some("999"));
    }

    #[test]
    fn a_custom_port_moves_the_engine_argument() {
        let runtime = ModelRuntime {
            engine: RuntimeEngine::Tgi,
            port: Some(9000),
            ..ModelRuntime::default()
        };
        let p = profile(&runtime, &hf(), "m", 1);
        assert_eq!(p.port, 9000);
        assert_eq!(arg_after(&p, "--port"), Some("9000"));
        assert!(!p.args.contains(&"--num-shard".to_string()));
    }
}
