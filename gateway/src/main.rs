//! `aleph-gateway`: serves the OpenAI-compatible API (`run`) or makes an API
//! key (`keygen`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aleph_gateway::auth::oidc::{OidcConfig, OidcVerifier};
use aleph_gateway::auth::token_review::{TokenReviewConfig, TokenReviewer};
use aleph_gateway::k8s::{self, WatchOptions};
use aleph_gateway::static_config::StaticConfig;
use aleph_gateway::{
    Authenticators, Gateway, GatewayConfig, GatewayState, RoutingMode, SystemClock,
};
use aleph_util::signal::wait_for_signal;
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
    /// Seconds a request for a model that scales from zero (AIModel
    /// `spec.autoscaling.minReplicas: 0`) may wait for its first ready
    /// replica before a 503.
    #[arg(long, default_value_t = 300.0)]
    cold_start_timeout: f64,
    /// Requests that may wait so, per model; more get 503 at once.
    #[arg(long, default_value_t = 256)]
    cold_start_queue: usize,
    /// Seconds a connection to an engine stays open while idle, for the
    /// next request to the same endpoint.
    #[arg(long, default_value_t = 30.0)]
    upstream_idle_timeout: f64,
    /// Idle connections kept per engine endpoint.
    #[arg(long, default_value_t = 1024)]
    upstream_idle_connections: usize,
    /// Seconds the gateway, told to stop (SIGTERM), keeps accepting and
    /// serving while not ready, before it finishes the requests in flight and
    /// exits: long enough for kube-proxy and clients to stop sending it
    /// connections. The pod's grace period must be longer.
    #[arg(long, default_value_t = 5.0)]
    drain_seconds: f64,
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
    /// Check bearer tokens that are neither API keys nor the OIDC issuer's
    /// with a TokenReview (a ServiceAccount acts for the tenant of its
    /// namespace). Needs the cluster (not with `--static-config`) and RBAC
    /// `create` on `tokenreviews`.
    #[arg(long, env = "ALEPH_GATEWAY_TOKEN_REVIEW", default_value_t = true, action = clap::ArgAction::Set)]
    token_review: bool,
    /// Audiences a Kubernetes token must be for (one of them), comma-separated;
    /// none: the API server's own.
    #[arg(
        long,
        env = "ALEPH_GATEWAY_TOKEN_REVIEW_AUDIENCES",
        value_delimiter = ','
    )]
    token_review_audiences: Vec<String>,
    /// Seconds a TokenReview's answer is kept (by the token's SHA-256).
    #[arg(long, default_value_t = 30)]
    token_review_cache_seconds: u64,
    /// The OIDC issuer whose tokens are accepted, exactly as their `iss`
    /// says; unset: no OIDC.
    #[arg(long, env = "ALEPH_GATEWAY_OIDC_ISSUER_URL")]
    oidc_issuer_url: Option<String>,
    /// The client id the OIDC tokens' `aud` must include.
    #[arg(long, env = "ALEPH_GATEWAY_OIDC_AUDIENCE")]
    oidc_audience: Option<String>,
    /// The claim naming the user, matched against Tenant owners of kind User.
    #[arg(long, env = "ALEPH_GATEWAY_OIDC_USERNAME_CLAIM", default_value = "sub")]
    oidc_username_claim: String,
    /// The claim listing the user's groups, matched against owners of kind Group.
    #[arg(
        long,
        env = "ALEPH_GATEWAY_OIDC_GROUPS_CLAIM",
        default_value = "groups"
    )]
    oidc_groups_claim: String,
    /// PEM certificates the issuer's TLS certificate must chain to (instead
    /// of the system's).
    #[arg(long, env = "ALEPH_GATEWAY_OIDC_CA_FILE")]
    oidc_ca_file: Option<PathBuf>,
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
        cold_start_timeout: seconds("cold-start-timeout", args.cold_start_timeout)?,
        cold_start_queue: args.cold_start_queue,
        upstream_idle_timeout: seconds("upstream-idle-timeout", args.upstream_idle_timeout)?,
        upstream_idle_per_endpoint: args.upstream_idle_connections,
    };
    let drain = seconds("drain-seconds", args.drain_seconds)?;
    let mut authenticators = Authenticators::default();
    if let Some(issuer) = &args.oidc_issuer_url {
        let mut oidc = OidcConfig::new(issuer, args.oidc_audience.clone().unwrap_or_default());
        oidc.username_claim.clone_from(&args.oidc_username_claim);
        oidc.groups_claim.clone_from(&args.oidc_groups_claim);
        oidc.ca_file.clone_from(&args.oidc_ca_file);
        let verifier = Arc::new(OidcVerifier::new(oidc)?);
        if issuer.starts_with("http://") {
            tracing::warn!(%issuer, "the OIDC issuer is plain HTTP: its keys can be tampered with on the way");
        }
        tracing::info!(%issuer, "accepting OIDC tokens");
        tokio::spawn({
            let verifier = verifier.clone();
            async move { verifier.warm_up().await }
        });
        authenticators.oidc = Some(verifier);
    }
    let state = Arc::new(GatewayState::new());
    let watches = if let Some(path) = &args.static_config {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        state.replace(StaticConfig::from_json(&text)?.into_snapshot()?);
        state.mark_synced();
        tracing::info!(path = %path.display(), "static configuration loaded");
        if args.token_review {
            tracing::info!(
                "no TokenReview without the cluster: Kubernetes tokens are not accepted"
            );
        }
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
        if args.token_review {
            let review = TokenReviewConfig {
                audiences: args
                    .token_review_audiences
                    .iter()
                    .filter(|a| !a.is_empty())
                    .cloned()
                    .collect(),
                cache_ttl: Duration::from_secs(args.token_review_cache_seconds),
                ..TokenReviewConfig::default()
            };
            tracing::info!(audiences = ?review.audiences, "accepting Kubernetes tokens (TokenReview)");
            authenticators.token_review =
                Some(Arc::new(TokenReviewer::new(client.clone(), review)));
        }
        Some(tokio::spawn(k8s::watch(client, options, state.clone())))
    };
    let mut registry = Registry::default();
    let gateway = Gateway::with_authenticators(
        config,
        state,
        Arc::new(SystemClock),
        &mut registry,
        authenticators,
    );
    let registry = Arc::new(registry);

    let api = tokio::net::TcpListener::bind(args.listen).await?;
    let metrics = tokio::net::TcpListener::bind(args.metrics_listen).await?;
    tracing::info!(api = %api.local_addr()?, metrics = %metrics.local_addr()?, "listening");
    let served =
        aleph_gateway::server::serve(gateway, api, metrics, registry, wait_for_signal(), drain)
            .await;
    if let Some(watches) = watches {
        watches.abort();
    }
    served?;
    tracing::info!("stopped");
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
