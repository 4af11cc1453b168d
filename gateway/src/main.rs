//! `aleph-gateway`: serves the OpenAI-compatible API (`run`) or makes an API
//! key (`keygen`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aleph_gateway::k8s::{self, WatchOptions};
use aleph_gateway::static_config::StaticConfig;
use aleph_gateway::{Gateway, GatewayConfig, GatewayState, RoutingMode, SystemClock};
use clap::{Parser, Subcommand, ValueEnum};
use prometheus_client::registry::Registry;
use rand::RngCore;

#[derive(Debug, Parser)]
#[command(name = "aleph-gateway", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API.
    Run(Box<RunArgs>),
    /// Print a new API key and, on the next line, its SHA-256 (what is stored).
    Keygen,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Routing {
    /// The ready endpoint with the fewest requests in flight.
    LeastInFlight,
    /// Consistent hashing of the prompt's first characters, with bounded loads.
    PrefixHash,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Where the API listens.
    #[arg(long, env = "ALEPH_GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Where `/metrics` is served.
    #[arg(long, env = "ALEPH_GATEWAY_METRICS", default_value = "0.0.0.0:9090")]
    metrics_listen: SocketAddr,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Seconds to connect to an engine before trying another endpoint.
    #[arg(long, default_value_t = 2.0)]
    connect_timeout: f64,
    /// Seconds an engine may take to send its response headers.
    #[arg(long, default_value_t = 300.0)]
    response_header_timeout: f64,
    /// Seconds a whole exchange may last, streaming included.
    #[arg(long, default_value_t = 900.0)]
    request_timeout: f64,
    /// `Retry-After` seconds when a model has no ready endpoint.
    #[arg(long, default_value_t = 5)]
    retry_after: u64,
    /// How many gateway replicas share each tenant limit: each enforces 1/N.
    #[arg(long, env = "ALEPH_GATEWAY_REPLICAS", default_value_t = 1)]
    replicas_share: u64,
    /// How an endpoint is picked within a track.
    #[arg(long, value_enum, default_value_t = Routing::LeastInFlight)]
    routing: Routing,
    /// Prompt characters hashed in prefix-hash mode.
    #[arg(long, default_value_t = 256)]
    prefix_chars: usize,
    /// ε of prefix-hash mode: an endpoint above (1 + ε) times the average load is skipped.
    #[arg(long, default_value_t = 0.25)]
    prefix_load_factor: f64,
    /// A JSON file of tenants, keys and models (see `static_config`), for
    /// running without Kubernetes; the state counts as synced once it is read.
    /// Without it, the state comes from the cluster (in-cluster configuration
    /// or kubeconfig).
    #[arg(long)]
    static_config: Option<PathBuf>,
    /// Watch AIModels, key Secrets and EndpointSlices in this namespace only
    /// (Tenants are cluster-wide); all namespaces when unset. Unused with
    /// `--static-config`.
    #[arg(long, env = "ALEPH_GATEWAY_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// A tracing filter: `info`, `aleph_gateway=debug,info`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log_level: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // kube's TLS uses ring; built beside the operator (whose AWS SDK brings
    // aws-lc-rs), rustls would not know which to take.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Keygen => {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            let key = format!(
                "sk-aleph-{}",
                bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
            println!("{key}");
            println!("{}", aleph_gateway::hash_key(&key));
            std::process::ExitCode::SUCCESS
        }
        Command::Run(args) => match run(*args).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("aleph-gateway: {error}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

fn seconds(name: &str, value: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value).map_err(|e| format!("--{name}: {e}"))
}

async fn run(args: RunArgs) -> Result<(), Box<dyn std::error::Error>> {
    init_logs(&args.log_level);
    let config = GatewayConfig {
        max_body_bytes: args.max_body_bytes,
        connect_timeout: seconds("connect-timeout", args.connect_timeout)?,
        response_header_timeout: seconds("response-header-timeout", args.response_header_timeout)?,
        request_timeout: seconds("request-timeout", args.request_timeout)?,
        retry_after: Duration::from_secs(args.retry_after),
        replicas_share: args.replicas_share,
        routing: match args.routing {
            Routing::LeastInFlight => RoutingMode::LeastInFlight,
            Routing::PrefixHash => RoutingMode::PrefixHash {
                prefix_chars: args.prefix_chars,
                load_factor: args.prefix_load_factor,
            },
        },
    };
    let state = Arc::new(GatewayState::new());
    let watches = if let Some(path) = &args.static_config {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        state.replace(StaticConfig::from_json(&text)?.into_snapshot()?);
        state.mark_synced();
        tracing::info!(path = %path.display(), "static configuration loaded");
        None
    } else {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| format!("no Kubernetes client (and no --static-config): {e}"))?;
        let options = WatchOptions {
            namespace: args.watch_namespace.clone(),
        };
        tracing::info!(
            namespace = args.watch_namespace.as_deref().unwrap_or("(all)"),
            "watching the cluster"
        );
        Some(tokio::spawn(k8s::watch(client, options, state.clone())))
    };
    let mut registry = Registry::default();
    let gateway = Gateway::new(config, state, Arc::new(SystemClock), &mut registry);
    let registry = Arc::new(registry);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let api = aleph_gateway::api::bind(args.listen).await?;
    let metrics = aleph_gateway::api::bind(args.metrics_listen).await?;
    tracing::info!(api = %args.listen, metrics = %args.metrics_listen, "listening");
    let api = tokio::spawn(
        axum::serve(api, gateway.router())
            .with_graceful_shutdown(stopped())
            .into_future(),
    );
    let metrics = tokio::spawn(
        axum::serve(metrics, aleph_gateway::api::metrics_router(registry))
            .with_graceful_shutdown(stopped())
            .into_future(),
    );
    wait_for_signal().await;
    tracing::info!("shutting down: finishing the requests in flight");
    let _ = stop_tx.send(true);
    if let Some(watches) = watches {
        watches.abort();
    }
    api.await??;
    metrics.await??;
    Ok(())
}

fn init_logs(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_env_filter(filter)
        .init();
}

/// SIGTERM (what Kubernetes sends) or Ctrl-C.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
