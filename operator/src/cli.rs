//! Command line: every flag can also be set by an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Aleph: run AI on Kubernetes — tenants, models, plugins and pipelines.
#[derive(Debug, Parser)]
#[command(name = "aleph-operator", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controllers.
    Run(Box<RunArgs>),
    /// Print every CustomResourceDefinition as YAML.
    Crds(CrdsArgs),
}

#[derive(Debug, Args)]
pub struct CrdsArgs {
    /// Write one file per kind into this directory instead of printing.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Namespaces to watch, comma-separated; all when empty (Tenants are cluster-scoped and always watched).
    #[arg(
        long,
        env = "ALEPH_NAMESPACES",
        value_delimiter = ',',
        default_value = ""
    )]
    pub namespaces: Vec<String>,
    /// Reconcile only the objects matching this label selector, for example
    /// `aleph.dev/shard=a` to split the work between operator instances.
    #[arg(long, env = "ALEPH_WATCH_LABEL_SELECTOR")]
    pub watch_label_selector: Option<String>,
    /// Objects reconciled at once per controller.
    #[arg(long, env = "ALEPH_CONCURRENCY", default_value_t = 4)]
    pub concurrency: u16,
    /// Milliseconds an object's reconcile waits for more events about it (the
    /// burst of watch events a reconcile's own writes cause), so a burst makes
    /// one reconcile rather than several; 0 reconciles at once. Every
    /// reaction waits this long, the first after a start included.
    #[arg(long, env = "ALEPH_DEBOUNCE_MS", default_value_t = 250)]
    pub debounce_ms: u64,
    /// How every watch reads what exists when it starts: `paged` (LIST in
    /// pages, then WATCH) or `streaming` (one WATCH that sends the existing
    /// objects first, one at a time: less memory at start; needs the API
    /// server's `WatchList` feature, on by default from Kubernetes 1.34).
    #[arg(long, env = "ALEPH_INITIAL_LISTS", value_enum, default_value_t = InitialLists::Paged)]
    pub initial_lists: InitialLists,
    /// Sustained requests per second to the Kubernetes API.
    #[arg(long, env = "ALEPH_KUBE_QPS", default_value_t = 50.0)]
    pub kube_qps: f64,
    /// Burst of requests to the Kubernetes API.
    #[arg(long, env = "ALEPH_KUBE_BURST", default_value_t = 100)]
    pub kube_burst: u32,
    /// Log filter, for example `info` or `aleph_controllers=debug,info`.
    #[arg(long, env = "ALEPH_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, env = "ALEPH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// Address of /metrics, /livez and /readyz.
    #[arg(long, env = "ALEPH_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Elect a leader through a Lease; only the leader writes.
    #[arg(long, env = "ALEPH_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Refuse, at apply, a Pipeline that names a step template that does not
    /// exist: keep the index of templates (ConfigMap `aleph-step-templates` in
    /// the Lease's namespace) and the admission policy that reads it. One
    /// operator per cluster keeps them; others beside it (a second operator
    /// for a shard) turn this off.
    #[arg(long, env = "ALEPH_STEP_TEMPLATE_ADMISSION", default_value_t = true, action = clap::ArgAction::Set)]
    pub step_template_admission: bool,
    /// The Lease's name.
    #[arg(long, env = "ALEPH_LEASE_NAME", default_value = "aleph-operator")]
    pub lease_name: String,
    /// The Lease's namespace; the pod's namespace (POD_NAMESPACE) or `default`.
    #[arg(long, env = "ALEPH_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// How long a lease is valid without renewal, in seconds.
    #[arg(long, env = "ALEPH_LEASE_DURATION", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// How often the leader renews (and others retry), in seconds.
    #[arg(long, env = "ALEPH_LEASE_RETRY", default_value_t = 2)]
    pub lease_retry_seconds: u64,
    /// The AWS region when a resource names none.
    #[arg(long, env = "AWS_REGION")]
    pub aws_region: Option<String>,
    /// The longest wait, in seconds, between two looks at a SageMaker training
    /// job or endpoint that is changing; by default 30 to 300 seconds by state.
    #[arg(long, env = "ALEPH_SAGEMAKER_MAX_POLL_SECONDS")]
    pub sagemaker_max_poll_seconds: Option<u64>,
    /// The image of the model cache's downloads from `hf://` and `s3://` sources.
    #[arg(long, env = "ALEPH_MODEL_CACHE_IMAGE", default_value = aleph_controllers::context::DEFAULT_MODEL_CACHE_IMAGE)]
    pub model_cache_image: String,
    /// aleph-gateway's OpenAI-compatible base URL (`http://NAME.NAMESPACE.svc.cluster.local/v1`),
    /// shown in the status of every model it serves.
    #[arg(long, env = "ALEPH_GATEWAY_URL")]
    pub gateway_url: Option<String>,
    /// The label selector of aleph-gateway's pods, whose `/metrics` drive
    /// `targetConcurrency` autoscaling and the Tenants' usage summary.
    #[arg(long, env = "ALEPH_GATEWAY_POD_SELECTOR", default_value = aleph_controllers::autoscaler::DEFAULT_GATEWAY_SELECTOR)]
    pub gateway_pod_selector: String,
    /// Milliseconds between two looks of the autoscaler at the gateways.
    #[arg(long, env = "ALEPH_AUTOSCALE_INTERVAL_MS", default_value_t = 2000)]
    pub autoscale_interval_ms: u64,
    /// Seconds between two writes of a Tenant's usage summary.
    #[arg(long, env = "ALEPH_USAGE_INTERVAL_SECONDS", default_value_t = 10)]
    pub usage_interval_seconds: u64,
    /// Impersonate this user for every request (to run with a ServiceAccount's exact permissions).
    #[arg(long, env = "ALEPH_IMPERSONATE")]
    pub impersonate: Option<String>,
}

/// How watches read what exists when they start (`--initial-lists`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InitialLists {
    /// LIST in pages, then WATCH.
    Paged,
    /// One WATCH with `sendInitialEvents`.
    Streaming,
}
