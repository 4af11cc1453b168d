//! The operator's autoscaler for `spec.autoscaling.targetConcurrency`, and the
//! tenants' usage summary, both from aleph-gateway's measurements.
//!
//! Every `interval` the operator reads `/metrics` of every gateway pod (found
//! by label, in any namespace), sums the requests in flight per AIModel
//! (queued ones included: a request waiting at zero replicas is demand), and
//! sets the replicas of each model's stable Deployment by the rule of
//! [`decide`] through the scale subresource. A change shows in the model's
//! `status.autoscaler` and as an Event. The same samples feed the Tenants'
//! `status.gatewayUsage` (see [`usage`]). Only the leader writes.
//!
//! CPU-utilisation autoscaling stays with the HorizontalPodAutoscaler.

pub mod decide;
pub mod scrape;
pub mod usage;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aleph_crds::aimodel::{AIModel, AutoscalerStatus, ServingBackend};
use aleph_crds::keys::{MODEL_LABEL, TRACK_LABEL};
use aleph_crds::tenant::{Tenant, UsageTotals};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::Context;

use decide::{Decision, History, Load, Means, Policy, decide};
use scrape::{GatewaySample, ModelKey, Scraper};
use usage::Ledger;

/// The field manager of the autoscaler's writes.
pub const MANAGER: &str = "aleph-autoscaler";
/// The label selector of aleph-gateway's pods (the chart's).
pub const DEFAULT_GATEWAY_SELECTOR: &str = "app.kubernetes.io/name=aleph-gateway";
/// The gateway's metrics port when its pod names none `metrics`.
const DEFAULT_METRICS_PORT: u16 = 9090;

/// How the autoscaler runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Between two looks at the gateways.
    pub interval: Duration,
    /// Which pods are gateways.
    pub gateway_selector: String,
    /// Between two writes of a tenant's usage.
    pub usage_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            gateway_selector: DEFAULT_GATEWAY_SELECTOR.to_string(),
            usage_interval: Duration::from_secs(10),
        }
    }
}

/// A store fed by a watch whose objects lose what the autoscaler never reads.
fn watched<K>(
    api: Api<crate::lean::Lean<K>>,
    config: watcher::Config,
    trim: fn(&mut K),
) -> (Store<K>, futures::future::BoxFuture<'static, ()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, stream) = crate::runner::cached_watch(api, config, trim);
    let drive = async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(error) = event {
                tracing::debug!(%error, "autoscaler watch");
            }
        }
    };
    (reader, Box::pin(drive))
}

fn trim_pod(p: &mut Pod) {
    if let Some(spec) = p.spec.as_mut() {
        spec.volumes = None;
        for c in &mut spec.containers {
            c.env = None;
            c.args = None;
            c.volume_mounts = None;
        }
    }
}

/// The watches the autoscaler reads. Its models, their stable Deployments
/// and the Tenants are read from the caches of the AIModel and Tenant
/// controllers on the same context ([`crate::aimodel::serving_caches`],
/// [`crate::tenant::tenant_cache`]), which watch the operator's own scope
/// (its namespaces and label selector): a second copy of each would double
/// the memory they take.
struct Stores {
    gateways: Store<Pod>,
}

/// Runs until `shutdown` resolves. The models and tenants are those the
/// controllers of `ctx` watch (the operator's own scope): a model or tenant
/// outside it is left alone.
pub async fn run(
    ctx: Arc<Context>,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let (gateways, watch) = watched(
        Api::all(ctx.client.clone()),
        crate::runner::watch_config().labels(&settings.gateway_selector),
        trim_pod,
    );
    let stores = Stores { gateways };
    let work = looks(&ctx, &settings, &stores);
    tokio::select! {
        () = watch => {}
        () = work => {}
        () = shutdown => {}
    }
}

/// The loop of looks.
async fn looks(ctx: &Context, settings: &Settings, stores: &Stores) {
    let scraper = Scraper::new(settings.interval.min(Duration::from_secs(2)));
    let started = chrono::Utc::now();
    let mut histories: HashMap<ModelKey, History> = HashMap::new();
    let mut arrivals: HashMap<(String, ModelKey), f64> = HashMap::new();
    let mut means: Means<(String, ModelKey)> = Means::default();
    let mut ledger = Ledger::default();
    let mut last_flush = Instant::now();
    // What each autoscaled model was last told about unread gateways, and
    // the tenants whose usage could not be written (each told once).
    let mut reported: HashMap<ModelKey, String> = HashMap::new();
    let mut usage_failing: HashSet<String> = HashSet::new();
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let pods: Vec<Arc<Pod>> = stores
            .gateways
            .state()
            .into_iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect();
        let samples = futures::future::join_all(pods.iter().map(|pod| {
            let scraper = &scraper;
            async move {
                let Some(addr) = metrics_addr(pod) else {
                    return Err(format!("{} has no IP yet", pod.name_any()));
                };
                scraper.scrape(addr).await
            }
        }))
        .await;
        let now = Instant::now();
        let mut load: HashMap<ModelKey, f64> = HashMap::new();
        let mut complete = !pods.is_empty();
        let mut alive = HashSet::new();
        let mut unread = Vec::new();
        for (pod, sample) in pods.iter().zip(samples) {
            let uid = pod.uid().unwrap_or_default();
            alive.insert(uid.clone());
            let sample = match sample {
                Ok(sample) => sample,
                Err(error) => {
                    tracing::debug!(%error, "a gateway's metrics could not be read");
                    unread.push((
                        format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()),
                        error,
                    ));
                    complete = false;
                    continue;
                }
            };
            let models: HashSet<&ModelKey> = sample
                .inflight
                .keys()
                .chain(sample.inflight_seconds.keys())
                .collect();
            for key in models {
                let point = sample.inflight.get(key).copied().unwrap_or(0.0);
                let seconds = sample.inflight_seconds.get(key).copied();
                let mean = means.mean((uid.clone(), key.clone()), seconds, point, now);
                *load.entry(key.clone()).or_default() += mean.max(0.0);
            }
            note_arrivals(&mut arrivals, &mut histories, &uid, &sample, now);
            let new_replica = pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .is_some_and(|t| t.0.as_second() >= started.timestamp());
            ledger.observe(&uid, new_replica, &sample);
        }
        ledger.retain(|pod| alive.contains(pod));
        arrivals.retain(|(pod, _), _| alive.contains(pod));
        means.retain(|(pod, _)| alive.contains(pod));
        if !ctx.leader.is_leader() {
            // The leader counts and scales; a standby only keeps its
            // baselines current for when it takes over.
            let _ = ledger.take();
            continue;
        }
        let gap = MetricsGap::of(&settings.gateway_selector, pods.len(), unread);
        let measured = Measured {
            load: &load,
            complete,
            gap: gap.as_ref(),
        };
        scale_models(ctx, &mut histories, &mut reported, &measured, now).await;
        if last_flush.elapsed() >= settings.usage_interval {
            last_flush = Instant::now();
            write_usage(ctx, &mut ledger, &mut usage_failing).await;
        }
    }
}

/// What one look at the gateways measured.
struct Measured<'a> {
    /// Requests in flight per model, summed over the gateways read.
    load: &'a HashMap<ModelKey, f64>,
    /// Every running gateway was read (and there is at least one).
    complete: bool,
    /// Why not, when not.
    gap: Option<&'a MetricsGap>,
}

/// Gateways whose in-flight counts are missing from a look: the autoscaled
/// models are told (a Warning event when it starts or the set of pods
/// changes, a Normal one when every gateway is read again), since replicas
/// are then never lowered and a model at zero cannot be woken by a request.
#[derive(Debug, PartialEq)]
struct MetricsGap {
    /// What identifies this gap: the unread pods (not their errors, which
    /// may change from one look to the next).
    signature: String,
    message: String,
}

impl MetricsGap {
    fn of(selector: &str, running: usize, mut unread: Vec<(String, String)>) -> Option<Self> {
        if running == 0 {
            return Some(Self {
                signature: String::new(),
                message: format!(
                    "no running aleph-gateway pod (label {selector}): the requests in flight \
                     cannot be measured, so the replicas are left as they are; install the \
                     chart's gateway (gateway.enabled) or use targetCpuUtilization"
                ),
            });
        }
        if unread.is_empty() {
            return None;
        }
        unread.sort();
        let pods: Vec<&str> = unread.iter().map(|(pod, _)| pod.as_str()).collect();
        let (first, error) = &unread[0];
        Some(Self {
            signature: pods.join(","),
            message: format!(
                "the metrics of {} of {running} gateway pods could not be read ({}; {first}: \
                 {error}): replicas are raised on the load seen but not lowered until every \
                 gateway is read",
                unread.len(),
                pods.join(", ")
            ),
        })
    }
}

/// Tells `model` when the gateways it is scaled on stop or start being read
/// in full (see [`MetricsGap`]); `reported` holds what it was last told.
async fn report_gap(
    ctx: &Context,
    model: &AIModel,
    key: &ModelKey,
    reported: &mut HashMap<ModelKey, String>,
    gap: Option<&MetricsGap>,
) {
    match (gap, reported.get(key)) {
        (Some(gap), told) if told != Some(&gap.signature) => {
            reported.insert(key.clone(), gap.signature.clone());
            ctx.event(
                model,
                EventType::Warning,
                "GatewayMetricsUnavailable",
                gap.message.clone(),
            )
            .await;
        }
        (None, Some(_)) => {
            reported.remove(key);
            ctx.event(
                model,
                EventType::Normal,
                "GatewayMetricsRestored",
                "every gateway's requests in flight are read again",
            )
            .await;
        }
        _ => {}
    }
}

/// Where a gateway pod serves `/metrics`.
fn metrics_addr(pod: &Pod) -> Option<SocketAddr> {
    let ip: IpAddr = pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
    let port = pod
        .spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some("metrics"))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(DEFAULT_METRICS_PORT);
    Some(SocketAddr::new(ip, port))
}

/// A model whose arrivals counter grew on any gateway was active.
fn note_arrivals(
    seen: &mut HashMap<(String, ModelKey), f64>,
    histories: &mut HashMap<ModelKey, History>,
    pod: &str,
    sample: &GatewaySample,
    now: Instant,
) {
    for (key, value) in &sample.arrivals {
        let before = seen.insert((pod.to_string(), key.clone()), *value);
        if before.is_some_and(|b| *value != b) {
            histories
                .entry(key.clone())
                .or_insert_with(|| History::new(now))
                .active(now);
        }
    }
}

async fn scale_models(
    ctx: &Context,
    histories: &mut HashMap<ModelKey, History>,
    reported: &mut HashMap<ModelKey, String>,
    measured: &Measured<'_>,
    now: Instant,
) {
    let caches = crate::aimodel::serving_caches(ctx);
    // The stable track's Deployments (`{TRACK_LABEL}=stable,{MODEL_LABEL}`).
    let stable: HashMap<ModelKey, Arc<Deployment>> = caches
        .iter()
        .flat_map(|(_, deployments)| deployments.state())
        .filter(|d| d.labels().get(TRACK_LABEL).map(String::as_str) == Some("stable"))
        .filter_map(|d| {
            let model = d.labels().get(MODEL_LABEL)?.clone();
            Some(((d.namespace()?, model), d))
        })
        .collect();
    let mut live = HashSet::new();
    for guarded in caches.iter().flat_map(|(models, _)| models.state()) {
        // A model that does not match the schema is its controller's to report.
        let Ok(model) = &guarded.0 else {
            continue;
        };
        if model.metadata.deletion_timestamp.is_some()
            || model.spec.backend != ServingBackend::Kubernetes
        {
            continue;
        }
        let Some(policy) = model.spec.autoscaling.as_ref().and_then(Policy::of) else {
            continue;
        };
        let key = (model.namespace().unwrap_or_default(), model.name_any());
        live.insert(key.clone());
        report_gap(ctx, model, &key, reported, measured.gap).await;
        let Some(deployment) = stable.get(&key) else {
            continue;
        };
        // Only a Deployment this model owns (not one of the same name).
        let owned = deployment
            .owner_references()
            .iter()
            .any(|o| Some(o.uid.as_str()) == model.uid().as_deref());
        if !owned {
            continue;
        }
        let current = deployment
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1);
        let history = histories
            .entry(key.clone())
            .or_insert_with(|| History::new(now));
        let load = Load {
            in_flight: measured.load.get(&key).copied().unwrap_or(0.0),
            complete: measured.complete,
        };
        if let Some(decision) = decide(&policy, history, current, load, now) {
            apply_decision(ctx, model, &deployment.name_any(), current, &load, decision).await;
        }
    }
    histories.retain(|key, _| live.contains(key));
    reported.retain(|key, _| live.contains(key));
}

async fn apply_decision(
    ctx: &Context,
    model: &AIModel,
    deployment: &str,
    current: i32,
    load: &Load,
    decision: Decision,
) {
    let namespace = model.namespace().unwrap_or_default();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = json!({ "spec": { "replicas": decision.desired } });
    if let Err(error) = deployments
        .patch_scale(deployment, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        let message = format!(
            "could not scale {deployment} from {current} to {}: {error}",
            decision.desired
        );
        tracing::warn!(model = %model.name_any(), %message);
        ctx.event(model, EventType::Warning, "ScaleFailed", message)
            .await;
        return;
    }
    tracing::info!(
        model = %model.name_any(),
        namespace,
        from = current,
        to = decision.desired,
        reason = decision.reason,
        "{}",
        decision.message
    );
    let status = AutoscalerStatus {
        desired_replicas: decision.desired,
        previous_replicas: current,
        in_flight: load.in_flight.round() as i64,
        last_scale_time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        reason: decision.reason.to_string(),
        message: decision.message.clone(),
    };
    let models: Api<AIModel> = Api::namespaced(ctx.client.clone(), &namespace);
    let body = json!({
        "apiVersion": AIModel::api_version(&()),
        "kind": AIModel::kind(&()),
        "status": { "autoscaler": status },
    });
    if let Err(error) = models
        .patch_status(
            &model.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
    {
        tracing::warn!(model = %model.name_any(), %error, "could not record the scaling in status");
    }
    ctx.event(model, EventType::Normal, decision.reason, decision.message)
        .await;
}

/// Adds what the tenants used since the last write to their status, with the
/// Tenant's resourceVersion as a precondition (so no two writes add the same
/// growth twice, and none is lost); what cannot be written waits for the next.
///
/// A write that fails for another reason than a newer resourceVersion is
/// told to the Tenant once (a Warning event), until a write succeeds.
async fn write_usage(ctx: &Context, ledger: &mut Ledger, failing: &mut HashSet<String>) {
    let growth: BTreeMap<String, UsageTotals> = ledger.take();
    let tenants = crate::tenant::tenant_cache(ctx);
    let api: Api<Tenant> = Api::all(ctx.client.clone());
    for (name, totals) in growth {
        let reference = reflector::ObjectRef::<DeserializeGuard<Tenant>>::new(&name);
        let Some(guarded) = tenants.as_ref().and_then(|t| t.get(&reference)) else {
            // Not a tenant this operator serves (or gone): not ours to count.
            continue;
        };
        // One that does not match the schema is its controller's to report.
        let Ok(tenant) = &guarded.0 else {
            continue;
        };
        let result = async {
            let tenant = api.get_status(&name).await?;
            let current = tenant
                .status
                .as_ref()
                .and_then(|s| s.gateway_usage.as_ref());
            let usage = usage::accumulate(current, totals, chrono::Utc::now());
            let patch = json!({
                "metadata": { "resourceVersion": tenant.resource_version() },
                "status": { "gatewayUsage": usage },
            });
            api.patch_status(
                &name,
                &PatchParams {
                    field_manager: Some(MANAGER.to_string()),
                    ..PatchParams::default()
                },
                &Patch::Merge(&patch),
            )
            .await
        }
        .await;
        match result {
            Ok(_) => {
                if failing.remove(&name) {
                    ctx.event(
                        tenant,
                        EventType::Normal,
                        "GatewayUsageRecorded",
                        "the gateways' usage is written to status.gatewayUsage again",
                    )
                    .await;
                }
            }
            Err(error) => {
                tracing::debug!(tenant = %name, %error, "usage not written yet; adding it next time");
                let conflict = matches!(&error, kube::Error::Api(s) if s.code == 409);
                if !conflict && failing.insert(name.clone()) {
                    ctx.event(
                        tenant,
                        EventType::Warning,
                        "GatewayUsageNotRecorded",
                        format!(
                            "could not write the gateways' usage to status.gatewayUsage \
                             ({error}); it is kept and added with the next write"
                        ),
                    )
                    .await;
                }
                ledger.restore(name, totals);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unread(pods: &[&str]) -> Vec<(String, String)> {
        pods.iter()
            .map(|p| (p.to_string(), "connection refused".to_string()))
            .collect()
    }

    #[test]
    fn every_gateway_read_is_no_gap() {
        assert_eq!(MetricsGap::of("app=gw", 2, Vec::new()), None);
    }

    #[test]
    fn no_running_gateway_says_so_and_names_the_selector() {
        let gap = MetricsGap::of("app=gw", 0, Vec::new()).expect("a gap");
        assert!(
            gap.message
                .starts_with("no running aleph-gateway pod (label app=gw)")
        );
        assert!(
            gap.message.contains("targetCpuUtilization"),
            "{}",
            gap.message
        );
    }

    #[test]
    fn unread_gateways_are_named_and_their_set_is_the_signature() {
        let gap = MetricsGap::of("app=gw", 3, unread(&["p/b", "p/a"])).expect("a gap");
        assert_eq!(gap.signature, "p/a,p/b");
        assert!(
            gap.message.starts_with(
                "the metrics of 2 of 3 gateway pods could not be read (p/a, p/b; p/a: connection refused)"
            ),
            "{}",
            gap.message
        );
        // Another error from the same pods is the same gap (not told again).
        let mut again = unread(&["p/a", "p/b"]);
        again[0].1 = "timed out".to_string();
        let same = MetricsGap::of("app=gw", 3, again).expect("a gap");
        assert_eq!(same.signature, gap.signature);
        // No gateway at all differs from any set of unread ones.
        let none = MetricsGap::of("app=gw", 0, Vec::new()).expect("a gap");
        assert_ne!(none.signature, gap.signature);
    }
}
