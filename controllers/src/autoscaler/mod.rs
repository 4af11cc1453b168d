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
use aleph_crds::tenant::{Tenant, UsageTotals};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::Context;
use crate::aimodel::build::{MODEL_LABEL, TRACK_LABEL};
use decide::{Decision, History, Load, Policy, decide};
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
    api: Api<K>,
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

fn trim_deployment(d: &mut Deployment) {
    if let Some(spec) = d.spec.as_mut() {
        spec.template = Default::default();
    }
    d.status = None;
}

fn trim_model(m: &mut AIModel) {
    m.status = None;
}

fn trim_tenant(t: &mut Tenant) {
    t.status = None;
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

/// The watches the autoscaler reads.
struct Stores {
    models: Vec<Store<AIModel>>,
    deployments: Vec<Store<Deployment>>,
    tenants: Store<Tenant>,
    gateways: Store<Pod>,
}

/// Runs until `shutdown` resolves. `selector` and `namespaces` are the
/// operator's own scope: a model or tenant outside them is left alone.
pub async fn run(
    ctx: Arc<Context>,
    settings: Settings,
    selector: Option<String>,
    namespaces: Vec<String>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let client = ctx.client.clone();
    let with = |config: watcher::Config| match &selector {
        Some(s) => config.labels(s),
        None => config,
    };
    let mut drivers = Vec::new();
    let scopes: Vec<Option<&str>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().map(|n| Some(n.as_str())).collect()
    };
    let mut models = Vec::new();
    let mut deployments = Vec::new();
    for scope in scopes {
        let (model_api, deployment_api) = match scope {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
        let (store, drive) = watched(model_api, with(crate::runner::watch_config()), trim_model);
        models.push(store);
        drivers.push(drive);
        let stable = format!("{TRACK_LABEL}=stable,{MODEL_LABEL}");
        let (store, drive) = watched(
            deployment_api,
            crate::runner::watch_config().labels(&stable),
            trim_deployment,
        );
        deployments.push(store);
        drivers.push(drive);
    }
    let (tenants, drive) = watched(
        Api::all(client.clone()),
        with(crate::runner::watch_config()),
        trim_tenant,
    );
    drivers.push(drive);
    let (gateways, drive) = watched(
        Api::all(client.clone()),
        crate::runner::watch_config().labels(&settings.gateway_selector),
        trim_pod,
    );
    drivers.push(drive);
    let stores = Stores {
        models,
        deployments,
        tenants,
        gateways,
    };
    let watches = futures::future::join_all(drivers);
    let work = looks(&ctx, &settings, &stores);
    tokio::select! {
        _ = watches => {}
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
    let mut ledger = Ledger::default();
    let mut last_flush = Instant::now();
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
        for (pod, sample) in pods.iter().zip(samples) {
            let uid = pod.uid().unwrap_or_default();
            alive.insert(uid.clone());
            let sample = match sample {
                Ok(sample) => sample,
                Err(error) => {
                    tracing::debug!(%error, "a gateway's metrics could not be read");
                    complete = false;
                    continue;
                }
            };
            for (key, value) in &sample.inflight {
                *load.entry(key.clone()).or_default() += value.max(0.0);
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
        if !ctx.leader.is_leader() {
            // The leader counts and scales; a standby only keeps its
            // baselines current for when it takes over.
            let _ = ledger.take();
            continue;
        }
        scale_models(ctx, stores, &mut histories, &load, complete, now).await;
        if last_flush.elapsed() >= settings.usage_interval {
            last_flush = Instant::now();
            write_usage(ctx, stores, &mut ledger).await;
        }
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
    stores: &Stores,
    histories: &mut HashMap<ModelKey, History>,
    load: &HashMap<ModelKey, f64>,
    complete: bool,
    now: Instant,
) {
    let stable: HashMap<ModelKey, Arc<Deployment>> = stores
        .deployments
        .iter()
        .flat_map(Store::state)
        .filter_map(|d| {
            let model = d.labels().get(MODEL_LABEL)?.clone();
            Some(((d.namespace()?, model), d))
        })
        .collect();
    let mut live = HashSet::new();
    for model in stores.models.iter().flat_map(Store::state) {
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
        let measured = Load {
            in_flight: load.get(&key).copied().unwrap_or(0.0),
            complete,
        };
        if let Some(decision) = decide(&policy, history, current, measured, now) {
            apply_decision(
                ctx,
                &model,
                &deployment.name_any(),
                current,
                &measured,
                decision,
            )
            .await;
        }
    }
    histories.retain(|key, _| live.contains(key));
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
async fn write_usage(ctx: &Context, stores: &Stores, ledger: &mut Ledger) {
    let growth: BTreeMap<String, UsageTotals> = ledger.take();
    let api: Api<Tenant> = Api::all(ctx.client.clone());
    for (name, totals) in growth {
        let reference = reflector::ObjectRef::<Tenant>::new(&name);
        if stores.tenants.get(&reference).is_none() {
            // Not a tenant this operator serves (or gone): not ours to count.
            continue;
        }
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
        if let Err(error) = result {
            tracing::debug!(tenant = %name, %error, "usage not written yet; adding it next time");
            ledger.restore(name, totals);
        }
    }
}
