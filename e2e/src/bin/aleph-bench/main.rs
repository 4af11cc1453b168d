//! `aleph-bench`: how fast Aleph converges, how much it asks of the API
//! server, how little memory it needs, against the floor a plain client reaches.
//!
//! ```text
//! make bench BENCH_ARGS="--sizes 100 --idle-seconds 30"
//! ```
//!
//! It starts once Aleph's CRDs have been established long enough for
//! kube-controller-manager to know them (its quota controller and garbage
//! collector look for new resources every 30 s). Then, for each size N, it
//! measures, on the cluster `KUBECONFIG` points at (the local control plane
//! of `e2e/cluster`, whose kwok runs the pods):
//!
//! 1. the floor: a plain client (the operator's QPS and burst, as many workers
//!    as the operator has reconcilers) writes what the reconcilers would write
//!    for N Tenants and for N AIModels, and waits for the same readiness (the
//!    AIModels' Deployments available; the Tenants' children written, and
//!    apart, their quotas counted by the controller manager);
//! 2. Aleph: an operator process (`$ALEPH_OPERATOR_BIN`) is started, N Tenants
//!    and then N AIModels are created, each timed until all report Ready, with
//!    the operator's requests by verb from its `/metrics`;
//! 3. the operator's writes during an idle window, and its peak resident memory;
//! 4. a restart with every object present: process start to the first
//!    reconcile, to every object reconciled once, and the writes of that resync;
//! 5. from the API server's own `/metrics`: the operator's share of all the
//!    requests it answered in each phase, and how many watches the operator
//!    holds open (the API server's open watches before and after it stopped);
//! 6. how convergence time, requests per object and peak memory grow from
//!    one size to the next, against linear growth.
//!
//! The floor (`--floor-sizes`) and the idle window (`--idle-at`) are measured
//! at the sizes up to 1,000 unless told otherwise, so that a run up to
//! N = 5,000 spends its time on what grows.
//!
//! Then it prints one Markdown table. The objects are left in place: the
//! cluster of `make bench` is thrown away afterwards.

mod aimodels;
mod nodes;
mod observe;
mod table;
mod tenants;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aleph_e2e::{OperatorOptions, OperatorProcess, PRIVATE_OPERATOR_LABEL, host};
use clap::{Parser, ValueEnum};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota, ServiceAccount};
use kube::Resource;
use kube::api::{Api, Patch, PatchParams, PostParams};
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use observe::{ReadyWatch, converge};
use table::{
    Convergence, Cpu, KindFigures, QuotaTimes, Requests, Setup, Share, SizeFigures, delta,
};

/// The label on everything the benchmark makes for Aleph: the run's id.
const BENCH_LABEL: &str = "aleph.dev/bench";
/// The label on everything the floor writes.
const FLOOR_LABEL: &str = "aleph.dev/bench-floor";
/// The field manager of the benchmark's own writes.
const FIELD_MANAGER: &str = "aleph-bench";
/// The largest size at which the floor and the idle window are measured by default.
const DEFAULT_FULL_UP_TO: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("Kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("building the objects: {0}")]
    Build(#[from] aleph_controllers::Error),
    #[error("{0}")]
    Setup(String),
    #[error("writing the report: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Kind {
    Tenants,
    Aimodels,
}

/// How the floor writes the children ([`post`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum FloorWrites {
    Create,
    Apply,
}

/// Set once from `--floor-writes apply`: [`post`] applies.
static FLOOR_APPLIES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Benchmarks the Aleph operator against a plain client's floor.
#[derive(Debug, Parser)]
#[command(name = "aleph-bench", version)]
struct Args {
    /// The sizes N: Tenants and AIModels each.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    sizes: Vec<usize>,
    /// The sizes at which the floor is measured (the others show "not
    /// measured", and no ratio), or `none`; by default those of --sizes up to 1,000.
    #[arg(long, value_parser = size_list)]
    floor_sizes: Option<SizeList>,
    /// The sizes after whose convergence the idle window is counted, or
    /// `none`; by default those of --sizes up to 1,000.
    #[arg(long, value_parser = size_list)]
    idle_at: Option<SizeList>,
    /// The kinds to measure.
    #[arg(long, value_delimiter = ',', default_value = "tenants,aimodels")]
    kinds: Vec<Kind>,
    /// Seconds of idleness, after convergence, during which the operator's writes are counted.
    #[arg(long, default_value_t = 300)]
    idle_seconds: u64,
    /// The operator's `--kube-qps`; the floor client keeps to the same.
    #[arg(long, default_value_t = 500.0)]
    kube_qps: f64,
    /// The operator's `--kube-burst`; the floor client keeps to the same.
    #[arg(long, default_value_t = 1000)]
    kube_burst: u32,
    /// The operator's `--concurrency` (reconciles at once per controller).
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
    /// Parallel workers of the floor client; by default the operator's concurrency.
    #[arg(long)]
    floor_workers: Option<usize>,
    /// How the floor writes each child: `create` (a POST, the least a
    /// client can send) or `apply` (a server-side apply, as the operator
    /// writes): the two floors' difference is the API server's cost of apply.
    #[arg(long, value_enum, default_value_t = FloorWrites::Create)]
    floor_writes: FloorWrites,
    /// Creates at once when the benchmark creates the Tenants and AIModels.
    #[arg(long, default_value_t = 32)]
    creators: usize,
    /// Give up waiting for readiness after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_seconds: u64,
    /// Give up waiting for readiness when no object got ready for this many seconds.
    #[arg(long, default_value_t = 180)]
    stall_seconds: u64,
    /// The operator's `--initial-lists` (`paged` or `streaming`).
    #[arg(long, default_value = "paged")]
    initial_lists: String,
    /// The operator's `--log-level` (its log file is named in the progress lines).
    #[arg(long, default_value = "info")]
    operator_log_level: String,
    /// Also write the report (the machine, the command and the table) to this file.
    #[arg(long)]
    output: Option<PathBuf>,
}

/// One size of one run: its id (in names and labels), N, and an unthrottled
/// client for the benchmark's own requests.
#[derive(Clone)]
pub struct Run {
    pub id: String,
    pub n: usize,
    pub client: kube::Client,
}

impl Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("id", &self.id)
            .field("n", &self.n)
            .finish_non_exhaustive()
    }
}

impl Run {
    /// Labels of the objects made for Aleph (and only for this run's operator).
    pub fn aleph_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (BENCH_LABEL.to_string(), self.id.clone()),
            (PRIVATE_OPERATOR_LABEL.to_string(), self.id.clone()),
        ])
    }

    /// The selector of the objects made for Aleph.
    pub fn aleph_selector(&self) -> String {
        format!("{BENCH_LABEL}={}", self.id)
    }

    /// Labels of the floor's objects.
    pub fn floor_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(FLOOR_LABEL.to_string(), self.id.clone())])
    }

    /// The selector of the floor's objects.
    pub fn floor_selector(&self) -> String {
        format!("{FLOOR_LABEL}={}", self.id)
    }
}

/// Creates `obj` with the benchmark's field manager (with `--floor-writes
/// apply`, applies it).
pub async fn post<K>(api: &Api<K>, obj: &K) -> Result<()>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    if FLOOR_APPLIES.load(std::sync::atomic::Ordering::Relaxed) {
        let name = obj.meta().name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await?;
        return Ok(());
    }
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    api.create(&pp, obj).await?;
    Ok(())
}

/// Runs `f` on every item, `concurrency` at a time; the first error stops it.
pub async fn create_all<T, F, Fut>(items: Vec<T>, concurrency: usize, f: F) -> Result<()>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    futures::stream::iter(items.into_iter().map(f))
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// A client keeping to `qps` and `burst` like the operator's, with its own request counters.
fn limited_client(config: kube::Config, qps: f64, burst: u32) -> Result<(kube::Client, Registry)> {
    let metrics = Arc::new(aleph_controllers::metrics::Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let client = aleph_controllers::client::build_client(config, metrics, qps, burst)?;
    Ok((client, registry))
}

fn requests_of(registry: &Registry) -> Requests {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        return Requests::new();
    }
    observe::requests_by_verb(&text)
}

/// A namespace of the benchmark, once its default ServiceAccount exists (pods need it).
async fn namespace(
    client: &kube::Client,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Result<()> {
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": name, "labels": labels },
    }))
    .map_err(|e| BenchError::Setup(e.to_string()))?;
    post(&Api::all(client.clone()), &ns).await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    let deadline = Instant::now() + Duration::from_secs(120);
    while accounts.get_opt("default").await?.is_none() {
        if Instant::now() > deadline {
            return Err(BenchError::Setup(format!(
                "namespace {name} got no default ServiceAccount in 120 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

fn progress(message: impl AsRef<str>) {
    eprintln!("==> {}", message.as_ref());
}

fn seconds(c: &Convergence) -> String {
    match c {
        Convergence::Done(d) => format!("{:.1} s", d.as_secs_f64()),
        Convergence::TimedOut { ready, after } => {
            format!(
                "gave up after {:.0} s with {ready} ready",
                after.as_secs_f64()
            )
        }
    }
}

/// What the operator has done so far, from its `/metrics`.
#[derive(Debug, Default)]
struct OperatorCounters {
    requests: Requests,
    /// Without the reviews, which store nothing: for the writes.
    may_store: Requests,
    by_resource: Requests,
    reconciles: Requests,
    reconcile_seconds: Requests,
}

impl OperatorCounters {
    async fn read(operator: &OperatorProcess) -> Self {
        let metrics = operator.metrics().await;
        OperatorCounters {
            requests: observe::requests_by_verb(&metrics),
            may_store: observe::requests_that_may_store(&metrics),
            by_resource: observe::requests_by_verb_and_resource(&metrics),
            reconciles: observe::sum_by(&metrics, observe::RECONCILES, "controller"),
            reconcile_seconds: observe::sum_by(&metrics, observe::RECONCILE_SECONDS, "controller"),
        }
    }

    /// The figures of `controller` from `before` to now.
    fn since(
        &self,
        before: &OperatorCounters,
        controller: &str,
        aleph: Convergence,
        floor: Option<Floor>,
    ) -> KindFigures {
        let of = |r: &Requests| r.get(controller).copied().unwrap_or(0.0);
        let (floor, floor_counted, floor_requests, floor_cpu) = match floor {
            Some(f) => (Some(f.took), f.counted, Some(f.requests), f.cpu),
            None => (None, None, None, None),
        };
        KindFigures {
            aleph,
            floor,
            floor_counted,
            quotas: None,
            requests: delta(&before.requests, &self.requests),
            floor_requests,
            by_resource: delta(&before.by_resource, &self.by_resource),
            reconciles: of(&self.reconciles) - of(&before.reconciles),
            reconcile_seconds: of(&self.reconcile_seconds) - of(&before.reconcile_seconds),
            api_share: None,
            api_by_resource: None,
            cpu: None,
            floor_cpu,
        }
    }
}

/// One kind's convergence and the operator's counters around it.
struct Measured {
    /// When the first object was created.
    start: Instant,
    before: OperatorCounters,
    after: OperatorCounters,
    aleph: Convergence,
    /// The API server's requests before and after (WATCH left out).
    api: Option<(ApiCounts, ApiCounts)>,
    /// The CPU the processes used meanwhile.
    cpu: Cpu,
}

/// The floor of one kind: its time, its client's requests, the CPU used.
struct Floor {
    took: Convergence,
    /// Until the controller manager counted the quotas it wrote (Tenants).
    counted: Option<Convergence>,
    requests: Requests,
    cpu: Option<Cpu>,
}

impl Measured {
    /// The figures of `controller`, against the `floor` (if measured).
    fn figures(self, controller: &str, floor: Option<Floor>) -> KindFigures {
        let api_share = self.api.as_ref().map(|(before, after)| Share {
            operator: observe::besides_watches(&delta(&self.before.requests, &self.after.requests)),
            all: after.total - before.total,
        });
        let api_by_resource = self
            .api
            .as_ref()
            .map(|(before, after)| delta(&before.by_resource, &after.by_resource));
        let mut figures = self
            .after
            .since(&self.before, controller, self.aleph, floor);
        figures.api_share = api_share;
        figures.api_by_resource = api_by_resource;
        figures.cpu = Some(self.cpu);
        figures
    }
}

/// The API server's `/metrics` text (the benchmark's kubeconfig may read it;
/// none, with a note, when it may not).
async fn api_server_metrics(client: &kube::Client) -> Option<String> {
    let request = match http::Request::get("/metrics").body(Vec::new()) {
        Ok(request) => request,
        Err(error) => {
            progress(format!("the API server's /metrics: {error}"));
            return None;
        }
    };
    match client.request_text(request).await {
        Ok(text) => Some(text),
        Err(error) => {
            progress(format!(
                "the API server's /metrics could not be read ({error}): no shares or watches"
            ));
            None
        }
    }
}

/// The API server's requests so far (WATCH left out), in all and by verb and resource.
struct ApiCounts {
    total: f64,
    by_resource: Requests,
}

async fn api_server_counts(client: &kube::Client) -> Option<ApiCounts> {
    api_server_metrics(client).await.map(|m| ApiCounts {
        total: observe::apiserver_requests(&m),
        by_resource: observe::apiserver_requests_by_verb_and_resource(&m),
    })
}

/// The API server's requests so far, WATCH left out.
async fn api_server_requests(client: &kube::Client) -> Option<f64> {
    api_server_metrics(client)
        .await
        .map(|m| observe::apiserver_requests(&m))
}

/// The API server's open watches by resource once a stopped client's have
/// closed: read until two reads half a second apart agree (at most 10 s).
async fn settled_watches(client: &kube::Client) -> Option<(Requests, f64)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut last = api_server_metrics(client).await?;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = api_server_metrics(client).await?;
        let watches = observe::apiserver_watches(&now);
        if watches == observe::apiserver_watches(&last) || Instant::now() > deadline {
            return Some((watches, observe::apiserver_requests(&now)));
        }
        last = now;
    }
}

/// Waits until the operator has sent no write for `quiet` (at most `limit`);
/// returns how long that took.
async fn settle(operator: &OperatorProcess, quiet: Duration, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut last = table::writes(&OperatorCounters::read(operator).await.requests);
    let mut since = Instant::now();
    while since.elapsed() < quiet && start.elapsed() < limit {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = table::writes(&OperatorCounters::read(operator).await.requests);
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    start.elapsed()
}

struct Bench {
    args: Args,
    config: kube::Config,
    client: kube::Client,
    run_id: String,
}

impl Bench {
    fn operator_args(&self) -> Vec<String> {
        vec![
            "--leader-elect".into(),
            "false".into(),
            "--kube-qps".into(),
            self.args.kube_qps.to_string(),
            "--kube-burst".into(),
            self.args.kube_burst.to_string(),
            "--concurrency".into(),
            self.args.concurrency.to_string(),
            "--log-level".into(),
            self.args.operator_log_level.clone(),
            "--initial-lists".into(),
            self.args.initial_lists.clone(),
        ]
    }

    fn floor_workers(&self) -> usize {
        self.args
            .floor_workers
            .unwrap_or(usize::from(self.args.concurrency))
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.args.timeout_seconds)
    }

    fn stall(&self) -> Duration {
        Duration::from_secs(self.args.stall_seconds)
    }

    fn measures(&self, kind: Kind) -> bool {
        self.args.kinds.contains(&kind)
    }

    /// Whether the floor is measured at size `n`.
    fn floor_at(&self, n: usize) -> bool {
        at_size(self.args.floor_sizes.as_ref(), n)
    }

    /// Whether the idle window is counted at size `n`.
    fn idle_at(&self, n: usize) -> bool {
        at_size(self.args.idle_at.as_ref(), n)
    }

    /// Creates `n` objects (`kinds`) with `create` and waits until `watch`
    /// sees them all Ready, reading the operator's counters before and after.
    async fn measure(
        &self,
        operator: &OperatorProcess,
        n: usize,
        kinds: &str,
        watch: ReadyWatch,
        create: impl Future<Output = Result<()>>,
    ) -> Result<Measured> {
        let api_before = api_server_counts(&self.client).await;
        let before = OperatorCounters::read(operator).await;
        progress(format!("N={n}: creating {n} {kinds}"));
        let cpu_before = Cpu::now();
        let start = Instant::now();
        create.await?;
        let aleph = converge(watch, start, self.timeout(), self.stall()).await;
        let cpu = Cpu::now().since(&cpu_before);
        let after = OperatorCounters::read(operator).await;
        let api_after = api_server_counts(&self.client).await;
        progress(format!("N={n}: {kinds} Ready: {}", seconds(&aleph)));
        Ok(Measured {
            start,
            before,
            after,
            aleph,
            api: api_before.zip(api_after),
            cpu,
        })
    }

    async fn size(&self, n: usize) -> Result<SizeFigures> {
        let run = Run {
            id: format!("{}-{n}", self.run_id),
            n,
            client: self.client.clone(),
        };
        let mut figures = SizeFigures {
            n,
            ..SizeFigures::default()
        };
        let aleph_models_ns = format!("ab-{}-models", run.id);
        let floor_models_ns = format!("af-{}-models", run.id);

        // The floor first, with no operator running.
        let mut tenant_floor = None;
        let mut model_floor = None;
        let floor = self.floor_at(n);
        if !floor {
            progress(format!("N={n}: no floor at this size (--floor-sizes)"));
        }
        if floor && self.measures(Kind::Tenants) {
            let (client, registry) = limited_client(
                self.config.clone(),
                self.args.kube_qps,
                self.args.kube_burst,
            )?;
            let quotas = ReadyWatch::start(
                Api::<ResourceQuota>::all(self.client.clone()),
                &run.floor_selector(),
                n,
                aleph_controllers::tenant::quota_counted,
            )
            .await;
            progress(format!("N={n}: floor: writing the children of {n} Tenants"));
            let cpu_before = Cpu::now();
            let start = Instant::now();
            tenants::floor(&run, &client, self.floor_workers()).await?;
            let took = Convergence::Done(start.elapsed());
            let cpu = Some(Cpu::now().since(&cpu_before));
            progress(format!("N={n}: floor Tenants: {}", seconds(&took)));
            let counted = converge(quotas, start, self.timeout(), self.stall()).await;
            progress(format!(
                "N={n}: floor Tenants, their quotas counted: {}",
                seconds(&counted)
            ));
            tenant_floor = Some(Floor {
                took,
                counted: Some(counted),
                requests: requests_of(&registry),
                cpu,
            });
        }
        if floor && self.measures(Kind::Aimodels) {
            namespace(&self.client, &floor_models_ns, &run.floor_labels()).await?;
            let (client, registry) = limited_client(
                self.config.clone(),
                self.args.kube_qps,
                self.args.kube_burst,
            )?;
            let watch = ReadyWatch::start(
                Api::<Deployment>::namespaced(self.client.clone(), &floor_models_ns),
                &run.floor_selector(),
                n,
                aimodels::is_available,
            )
            .await;
            progress(format!(
                "N={n}: floor: writing {n} Deployments and Services"
            ));
            let cpu_before = Cpu::now();
            let start = Instant::now();
            aimodels::floor(&run, &client, &floor_models_ns, self.floor_workers()).await?;
            let took = converge(watch, start, self.timeout(), self.stall()).await;
            let cpu = Some(Cpu::now().since(&cpu_before));
            progress(format!(
                "N={n}: floor AIModels (Deployments available): {}",
                seconds(&took)
            ));
            model_floor = Some(Floor {
                took,
                counted: None,
                requests: requests_of(&registry),
                cpu,
            });
        }
        if floor && self.measures(Kind::Tenants) {
            tenants::delete_floor_policies(&run).await?;
        }

        // Aleph.
        let mut operator = OperatorProcess::start(OperatorOptions {
            args: self.operator_args(),
            env: Vec::new(),
            private_label: Some(run.id.clone()),
            name: format!("bench-{}", run.id),
        })
        .await;
        operator.wait_ready(Duration::from_secs(120)).await;
        let pid = operator.pid();
        let sampler = pid.map(observe::MemorySampler::start);
        progress(format!(
            "N={n}: operator started (pid {}, log {})",
            pid.map_or_else(|| "?".to_string(), |p| p.to_string()),
            operator.log_path().display()
        ));

        if self.measures(Kind::Tenants) {
            let watch = ReadyWatch::start(
                Api::<aleph_crds::tenant::Tenant>::all(self.client.clone()),
                &run.aleph_selector(),
                n,
                tenants::is_ready,
            )
            .await;
            let [written, counted] = tenants::quota_watches(&self.client, &run).await;
            let create = tenants::create(&run, self.args.creators);
            let measured = self.measure(&operator, n, "Tenants", watch, create).await?;
            // Both are done by now unless the Tenants did not converge:
            // then they end past the timeout, or once stalled as long as the
            // Tenants may, with how many were written and counted.
            let quotas = QuotaTimes {
                written: converge(written, measured.start, self.timeout(), self.stall()).await,
                counted: converge(counted, measured.start, self.timeout(), self.stall()).await,
            };
            let mut tenant_figures = measured.figures("tenant", tenant_floor);
            tenant_figures.quotas = Some(quotas);
            figures.tenants = Some(tenant_figures);
        }
        if self.measures(Kind::Aimodels) {
            namespace(
                &self.client,
                &aleph_models_ns,
                &BTreeMap::from([(BENCH_LABEL.to_string(), run.id.clone())]),
            )
            .await?;
            let watch = ReadyWatch::start(
                Api::<aleph_crds::aimodel::AIModel>::namespaced(
                    self.client.clone(),
                    &aleph_models_ns,
                ),
                &run.aleph_selector(),
                n,
                aimodels::is_ready,
            )
            .await;
            let create = aimodels::create(&run, &aleph_models_ns, self.args.creators);
            let measured = self
                .measure(&operator, n, "AIModels", watch, create)
                .await?;
            figures.aimodels = Some(measured.figures("aimodel", model_floor));
        }

        // Idle, once the tail of convergence (the events published after the
        // last status write, for one) is over.
        let settled = settle(&operator, Duration::from_secs(10), Duration::from_secs(120)).await;
        progress(format!(
            "N={n}: the operator's writes settled after {settled:.0?}"
        ));
        if self.idle_at(n) {
            let idle = Duration::from_secs(self.args.idle_seconds);
            progress(format!(
                "N={n}: counting the operator's writes for {} s of idleness",
                idle.as_secs()
            ));
            let api_before = api_server_requests(&self.client).await;
            let before = OperatorCounters::read(&operator).await;
            tokio::time::sleep(idle).await;
            let after = OperatorCounters::read(&operator).await;
            let api_after = api_server_requests(&self.client).await;
            let idle_requests = delta(&before.may_store, &after.may_store);
            progress(format!(
                "N={n}: the operator's requests while idle: {:?}",
                delta(&before.by_resource, &after.by_resource)
            ));
            figures.idle_writes = Some(idle_requests);
            figures.idle_share = api_before.zip(api_after).map(|(b, a)| Share {
                operator: observe::besides_watches(&delta(&before.requests, &after.requests)),
                all: a - b,
            });
        } else {
            progress(format!("N={n}: no idle window at this size (--idle-at)"));
        }
        if let Some(sampler) = sampler {
            figures.memory = Some(sampler.finish().await);
        }
        // The watches open with the operator running, and right after it stopped.
        let running = api_server_metrics(&self.client)
            .await
            .map(|m| observe::apiserver_watches(&m));
        operator.kill().await;
        let stopped = settled_watches(&self.client).await;
        if let (Some(running), Some((stopped, _))) = (&running, &stopped) {
            let watches = delta(stopped, running);
            progress(format!(
                "N={n}: the API server's open watches: {:.0} with the operator, {:.0} without",
                running.values().sum::<f64>(),
                stopped.values().sum::<f64>()
            ));
            figures.watches = Some(watches);
        }
        let api_stopped = stopped.map(|(_, requests)| requests);

        // A restart with every object present.
        let expected: BTreeMap<&str, f64> =
            [(Kind::Tenants, "tenant"), (Kind::Aimodels, "aimodel")]
                .into_iter()
                .filter(|(k, _)| self.measures(*k))
                .map(|(_, c)| (c, observe::as_f64(n)))
                .collect();
        // Stopped above: this starts it again.
        operator.restart().await;
        let started = operator.started_at();
        let sampler = operator.pid().map(observe::MemorySampler::start);
        let mut first = None;
        let deadline = started + self.timeout();
        let resync = loop {
            let metrics = operator.metrics().await;
            let reconciles = observe::sum_by(&metrics, observe::RECONCILES, "controller");
            if first.is_none() && reconciles.values().sum::<f64>() > 0.0 {
                first = Some(started.elapsed());
                figures.first_reconcile_in_process =
                    observe::gauge(&metrics, observe::FIRST_RECONCILE);
            }
            if expected
                .iter()
                .all(|(c, want)| reconciles.get(*c).copied().unwrap_or(0.0) >= *want)
            {
                let took = started.elapsed();
                figures.resync_writes = Some(observe::requests_that_may_store(&metrics));
                figures.resync_by_resource = Some(observe::requests_by_verb_and_resource(&metrics));
                let api_after = api_server_requests(&self.client).await;
                figures.resync_share = api_stopped.zip(api_after).map(|(b, a)| Share {
                    operator: observe::besides_watches(&observe::requests_by_verb(&metrics)),
                    all: a - b,
                });
                break Convergence::Done(took);
            }
            if std::time::Instant::now() > deadline {
                break Convergence::TimedOut {
                    ready: observe::count(reconciles.values().sum::<f64>()),
                    after: started.elapsed(),
                };
            }
            let pause = if first.is_none() { 10 } else { 200 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        };
        figures.first_reconcile = first;
        figures.resync = Some(resync);
        // Let the caches settle before reading the peak.
        tokio::time::sleep(Duration::from_secs(5)).await;
        if let Some(sampler) = sampler {
            figures.restart_memory = Some(sampler.finish().await);
        }
        progress(format!(
            "N={n}: restart: first reconcile {:?}, every object reconciled {:?}",
            figures.first_reconcile, figures.resync
        ));
        operator.terminate(Duration::from_secs(10)).await;
        Ok(figures)
    }
}

/// Sizes given on the command line: `100,1000`, or `none`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SizeList(Vec<usize>);

fn size_list(text: &str) -> std::result::Result<SizeList, String> {
    if text.trim() == "none" {
        return Ok(SizeList(Vec::new()));
    }
    text.split(',')
        .map(|n| {
            n.trim()
                .parse::<usize>()
                .map_err(|e| format!("{n:?}: {e} (sizes like 100,1000, or none)"))
        })
        .collect::<std::result::Result<_, _>>()
        .map(SizeList)
}

/// Whether size `n` is among `listed`, or by default (none listed) at most
/// [`DEFAULT_FULL_UP_TO`].
fn at_size(listed: Option<&SizeList>, n: usize) -> bool {
    listed.map_or(n <= DEFAULT_FULL_UP_TO, |sizes| sizes.0.contains(&n))
}

/// The machine: cores, memory, CPU model.
fn machine() -> String {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = observe::status_kib(&meminfo, "MemTotal").map_or(0.0, |k| {
        observe::as_f64(usize::try_from(k).unwrap_or(usize::MAX)) / 1024.0 / 1024.0
    });
    format!(
        "{} cores ({}), {mem_gib:.1} GiB memory, Linux {}",
        host::usable_cores(),
        host::cpu_model(),
        host::kernel_release()
    )
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("aleph-bench: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// How long after a CRD is established kube-controller-manager's quota
/// controller and garbage collector know it: both look for new resources
/// every 30 s.
const DISCOVERY_SETTLED: Duration = Duration::from_secs(40);

/// Waits until the controller manager has found Aleph's CRDs. Before then its
/// quota controller counts no usage for their objects (a quota counted
/// meanwhile lacks those figures, and is counted again when asked) and its
/// garbage collector takes every Tenant that owns something for an owner not
/// seen yet, looking each up: a cluster whose CRDs were just installed would
/// measure that catching up, which a cluster in use does once.
async fn wait_for_discovery(client: &kube::Client) -> Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut established = None;
    for name in ["tenants.aleph.dev", "aimodels.aleph.dev"] {
        let crd = crds.get(name).await?;
        let at = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Established" && c.status == "True")
            .and_then(|c| c.last_transition_time)
            .ok_or_else(|| BenchError::Setup(format!("the CRD {name} is not established")))?;
        established = established.max(Some(at.0));
    }
    let Some(established) = established else {
        return Ok(());
    };
    let since = k8s_openapi::jiff::Timestamp::now().as_millisecond() - established.as_millisecond();
    let since = Duration::from_millis(u64::try_from(since).unwrap_or(0));
    if let Some(wait) = DISCOVERY_SETTLED.checked_sub(since) {
        progress(format!(
            "the CRDs were established {:.0} s ago: waiting {:.0} s for the controller manager to find them (it looks every 30 s)",
            since.as_secs_f64(),
            wait.as_secs_f64()
        ));
        tokio::time::sleep(wait).await;
    }
    Ok(())
}

async fn run(args: Args) -> Result<()> {
    aleph_e2e::install_crypto_provider();
    FLOOR_APPLIES.store(
        args.floor_writes == FloorWrites::Apply,
        std::sync::atomic::Ordering::Relaxed,
    );
    let config = kube::Config::infer().await.map_err(|e| {
        BenchError::Setup(format!(
            "no cluster to benchmark ({e}): set KUBECONFIG or run `make bench`"
        ))
    })?;
    let client = kube::Client::try_from(config.clone())?;
    let run_id = aleph_e2e::unique_name("r")
        .rsplit('-')
        .next()
        .unwrap_or("run")
        .to_lowercase();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let started = k8s_openapi::jiff::Timestamp::now();
    let load_before = host::load_average();
    if args.kinds.contains(&Kind::Aimodels) {
        // A pod per AIModel, and one per Deployment of the floor.
        let floors: usize = args
            .sizes
            .iter()
            .filter(|n| at_size(args.floor_sizes.as_ref(), **n))
            .sum();
        let pods = args.sizes.iter().sum::<usize>() + floors;
        progress(format!("adding fake nodes for {pods} pods"));
        nodes::ensure_nodes(&client, &run_id, pods).await?;
    }
    wait_for_discovery(&client).await?;
    let bench = Bench {
        config,
        client,
        run_id,
        args,
    };
    let mut sizes = Vec::new();
    for n in bench.args.sizes.clone() {
        sizes.push(bench.size(n).await?);
    }
    let setup = Setup {
        operator_flags: bench.operator_args().join(" "),
        floor: format!(
            "a plain client with the operator's QPS and burst ({} / {}) and {} workers, each writing one object's children in order ({})",
            bench.args.kube_qps,
            bench.args.kube_burst,
            bench.floor_workers(),
            match bench.args.floor_writes {
                FloorWrites::Create => "each child created by a POST",
                FloorWrites::Apply => "each child server-side applied, as the operator writes",
            }
        ),
        idle: Duration::from_secs(bench.args.idle_seconds),
    };
    let report = format!(
        "Date: {started}\nMachine: {}\nLoad average before and after: {load_before} / {}\nCommand: `{command}`\n\n{}",
        machine(),
        host::load_average(),
        table::render(&setup, &sizes)
    );
    println!("{report}");
    if let Some(path) = &bench.args.output {
        std::fs::write(path, &report)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_and_idle_windows_default_to_the_sizes_up_to_one_thousand() {
        assert!(at_size(None, 100));
        assert!(at_size(None, 1000));
        assert!(!at_size(None, 5000));
        assert!(at_size(Some(&SizeList(vec![5000])), 5000));
        assert!(!at_size(Some(&SizeList(vec![1000])), 100));
        let args = Args::parse_from([
            "aleph-bench",
            "--sizes",
            "100,1000,5000",
            "--idle-at",
            "1000",
            "--floor-sizes",
            "none",
        ]);
        assert_eq!(args.sizes, [100, 1000, 5000]);
        assert_eq!(args.idle_at, Some(SizeList(vec![1000])));
        assert_eq!(args.floor_sizes, Some(SizeList(Vec::new())));
        assert!(!at_size(args.floor_sizes.as_ref(), 100));
        assert!(size_list("100,x").is_err());
        assert_eq!(size_list("100, 1000"), Ok(SizeList(vec![100, 1000])));
    }
}
