//! The state from the cluster: Tenants, AIModels, API-key Secrets and the
//! EndpointSlices of the models' Services, watched and turned into a
//! [`Snapshot`] by [`build_snapshot`], a pure function of the four lists.
//!
//! - A **tenant** is a Tenant; its limits are `spec.gateway` over the plan's
//!   defaults ([`gateway_limits`]). A namespace belongs to the Tenant whose
//!   `status.namespaces` lists it (the namespaces the operator made from
//!   `spec.namespaces` and those labelled `aleph.dev/tenant` it adopted): a
//!   ServiceAccount there acts for that tenant. Its `spec.owners` of kind
//!   `User` and `Group` are whom OIDC users are matched against.
//! - An **API key** is a Secret labelled `aleph.dev/gateway-key: "true"` in a
//!   tenant namespace, whose `data.sha256` is the SHA-256 of the key in hex
//!   (what `aleph-gateway keygen` prints on its second line). The key itself is
//!   never stored, and the gateway keeps no other data field of the Secret. The
//!   key's name (a metric label and a log field) is `<namespace>/<secret>`.
//! - A **model** is an AIModel on the Kubernetes backend in a tenant
//!   namespace; clients call it by its name, and the request's `"model"` is
//!   rewritten to the name the engine serves it under ([`served_name`]).
//! - It **scales from zero** when its `spec.autoscaling.minReplicas` is 0:
//!   requests that find no ready endpoint wait for one ([`scales_from_zero`]).
//! - Its **endpoints** are those of the EndpointSlices of the per-track
//!   Services `<model>-stable` and `<model>-canary` when they exist (the
//!   operator makes them for a canary behind the Gateway API), otherwise
//!   those of the Service `<model>`, all on the stable track.
//!
//! # RBAC
//!
//! Read only, cluster-wide (or in the `--watch-namespace` for the namespaced
//! kinds), and nothing else but the TokenReviews that check Kubernetes tokens:
//!
//! ```yaml
//! rules:
//!   - apiGroups: ["authentication.k8s.io"]   # with TokenReview on
//!     resources: ["tokenreviews"]
//!     verbs: ["create"]
//!   - apiGroups: ["aleph.dev"]
//!     resources: ["tenants", "aimodels"]
//!     verbs: ["get", "list", "watch"]
//!   - apiGroups: [""]
//!     resources: ["secrets"]
//!     verbs: ["get", "list", "watch"]
//!   - apiGroups: ["discovery.k8s.io"]
//!     resources: ["endpointslices"]
//!     verbs: ["get", "list", "watch"]
//! ```
//!
//! The gateway lists only Secrets labelled `aleph.dev/gateway-key=true`, but
//! RBAC cannot restrict a list or watch by label: the rule above lets its
//! service account read every Secret it can see. Scope it with
//! `--watch-namespace` and a Role where that matters.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aleph_crds::aimodel::{AIModel, ModelRuntime, RuntimeEngine, ServingBackend};
use aleph_crds::keys::{GATEWAY_KEY_LABEL, MODEL_LABEL, SERVICE_NAME_LABEL};
use aleph_crds::tenant::{SubjectKind, Tenant, TenantGateway, TenantPlan};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::state::{Endpoint, GatewayState, KeyInfo, Model, Snapshot, TenantLimits, Track};

/// The Secret's data field holding the key's SHA-256, hex.
pub const KEY_HASH_FIELD: &str = "sha256";
/// The name of the Services' port the engines serve on.
pub const HTTP_PORT_NAME: &str = "http";
/// How long changes are gathered before the snapshot is rebuilt.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// Objects per page of a watch's first list.
const LIST_PAGE_SIZE: u32 = 100;

/// A tenant's gateway limits: each field of `spec.gateway` that is set, else
/// the plan's default.
///
/// | plan       | requests/min | tokens/min | tokens/day |
/// |------------|-------------:|-----------:|-----------:|
/// | free       |           60 |     20,000 |    200,000 |
/// | pro        |          600 |    200,000 |  5,000,000 |
/// | enterprise |        6,000 |  2,000,000 |  unlimited |
///
/// A negative value (which the schema refuses) counts as 0.
pub fn gateway_limits(plan: TenantPlan, gateway: &TenantGateway) -> TenantLimits {
    let (rpm, tpm, tpd) = match plan {
        TenantPlan::Free => (Some(60), Some(20_000), Some(200_000)),
        TenantPlan::Pro => (Some(600), Some(200_000), Some(5_000_000)),
        TenantPlan::Enterprise => (Some(6_000), Some(2_000_000), None),
    };
    let set = |value: Option<i64>, default: Option<u64>| {
        value.map_or(default, |v| Some(u64::try_from(v).unwrap_or(0)))
    };
    TenantLimits {
        requests_per_minute: set(gateway.requests_per_minute, rpm),
        tokens_per_minute: set(gateway.tokens_per_minute, tpm),
        tokens_per_day: set(gateway.tokens_per_day, tpd),
    }
}

/// The name the model's engine serves it under, as the operator starts it
/// (the stable track's runtime):
///
/// - vllm: `--served-model-name <aimodel>`, or the last
///   `--served-model-name` of `runtime.args` (whose first value vLLM reports);
/// - llamacpp: `--alias <aimodel>`, unless `runtime.args` set `--alias`/`-a`;
/// - ollama: the `name[:tag]` of an `ollama://` source (Ollama answers to the
///   name it pulled);
/// - tgi (which ignores the request's model), triton, custom and anything
///   else: the AIModel's name.
pub fn served_name(model: &AIModel) -> String {
    let name = model.name_any();
    let uri = model.spec.source.as_ref().map(|s| s.uri.as_str());
    served_name_of(&model.spec.runtime, uri, &name)
}

fn served_name_of(runtime: &ModelRuntime, uri: Option<&str>, name: &str) -> String {
    let served = match runtime.engine {
        RuntimeEngine::Vllm => last_flag_value(&runtime.args, &["--served-model-name"]),
        RuntimeEngine::Llamacpp => last_flag_value(&runtime.args, &["--alias", "-a"]),
        RuntimeEngine::Ollama => uri
            .and_then(|u| u.strip_prefix("ollama://"))
            .filter(|n| !n.is_empty() && !n.contains('/')),
        RuntimeEngine::Tgi | RuntimeEngine::Triton | RuntimeEngine::Custom => None,
    };
    served.filter(|s| !s.is_empty()).unwrap_or(name).to_string()
}

/// The value of the last of `flags` in `args` (`--flag value` or `--flag=value`).
fn last_flag_value<'a>(args: &'a [String], flags: &[&str]) -> Option<&'a str> {
    let mut found = None;
    for (i, arg) in args.iter().enumerate() {
        for flag in flags {
            if arg == flag {
                found = args
                    .get(i + 1)
                    .map(String::as_str)
                    .filter(|v| !v.starts_with('-'));
            } else if let Some(value) = arg.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
                found = Some(value);
            }
        }
    }
    found
}

/// An object the snapshot leaves out, and why; logged once.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ignored {
    /// Its kind, for example `Secret`.
    pub kind: String,
    /// Its namespace (empty for a cluster-scoped object).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Why it is left out.
    pub reason: String,
}

impl Ignored {
    fn new(kind: &str, meta: &impl Resource, reason: impl Into<String>) -> Self {
        Self {
            kind: kind.to_string(),
            namespace: meta.meta().namespace.clone().unwrap_or_default(),
            name: meta.meta().name.clone().unwrap_or_default(),
            reason: reason.into(),
        }
    }
}

/// The snapshot the four lists describe.
pub fn build_snapshot(
    tenants: &[Tenant],
    models: &[AIModel],
    keys: &[Secret],
    slices: &[EndpointSlice],
) -> Snapshot {
    build_snapshot_reporting(tenants, models, keys, slices).0
}

/// [`build_snapshot`], with the key Secrets it left out and why (outside any
/// tenant namespace, no valid `sha256`, a hash another Secret already has).
pub fn build_snapshot_reporting(
    tenants: &[Tenant],
    models: &[AIModel],
    keys: &[Secret],
    slices: &[EndpointSlice],
) -> (Snapshot, Vec<Ignored>) {
    let mut snapshot = Snapshot::default();
    let mut ignored = Vec::new();

    // Tenants, in name order: if two list one namespace, the first keeps it.
    let mut tenants: Vec<&Tenant> = tenants.iter().collect();
    tenants.sort_by_key(|t| t.name_any());
    let mut tenant_of: HashMap<&str, String> = HashMap::new();
    for tenant in &tenants {
        let name = tenant.name_any();
        snapshot.tenants.insert(
            name.clone(),
            gateway_limits(tenant.spec.plan, &tenant.spec.gateway),
        );
        for ns in tenant.status.iter().flat_map(|s| &s.namespaces) {
            tenant_of.entry(ns.as_str()).or_insert_with(|| name.clone());
        }
        for owner in &tenant.spec.owners {
            let names = match owner.kind {
                SubjectKind::User => &mut snapshot.owners.users,
                SubjectKind::Group => &mut snapshot.owners.groups,
                SubjectKind::ServiceAccount => continue,
            };
            names
                .entry(owner.name.clone())
                .or_default()
                .insert(name.clone());
        }
    }
    snapshot.namespaces = tenant_of
        .iter()
        .map(|(ns, tenant)| ((*ns).to_owned(), tenant.clone()))
        .collect();

    // Keys, in (namespace, name) order: of two Secrets with one hash, the first wins.
    let mut keys: Vec<&Secret> = keys
        .iter()
        .filter(|s| s.labels().get(GATEWAY_KEY_LABEL).map(String::as_str) == Some("true"))
        .collect();
    keys.sort_by_key(|s| (s.namespace(), s.name_any()));
    for secret in keys {
        let namespace = secret.namespace().unwrap_or_default();
        let key_name = format!("{namespace}/{}", secret.name_any());
        let Some(tenant) = tenant_of.get(namespace.as_str()) else {
            ignored.push(Ignored::new(
                "Secret",
                secret,
                "not in a tenant's namespace",
            ));
            continue;
        };
        let hash = match key_hash(secret) {
            Ok(hash) => hash,
            Err(reason) => {
                ignored.push(Ignored::new("Secret", secret, reason));
                continue;
            }
        };
        if let Some(first) = snapshot.keys.get(&hash) {
            ignored.push(Ignored::new(
                "Secret",
                secret,
                format!("the same key as {}", first.name),
            ));
            continue;
        }
        snapshot.keys.insert(
            hash,
            KeyInfo {
                tenant: tenant.clone(),
                name: key_name,
            },
        );
    }

    // EndpointSlices by (namespace, Service).
    let mut by_service: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        if let Some(service) = slice.labels().get(SERVICE_NAME_LABEL) {
            by_service
                .entry((slice.namespace().unwrap_or_default(), service.clone()))
                .or_default()
                .push(slice);
        }
    }
    let slices_of = |namespace: &str, service: String| -> &[&EndpointSlice] {
        by_service
            .get(&(namespace.to_string(), service))
            .map(Vec::as_slice)
            .unwrap_or_default()
    };

    // Models, in (namespace, name) order.
    let mut models: Vec<&AIModel> = models
        .iter()
        .filter(|m| m.spec.backend == ServingBackend::Kubernetes)
        .collect();
    models.sort_by_key(|m| (m.namespace(), m.name_any()));
    for model in models {
        let namespace = model.namespace().unwrap_or_default();
        let Some(tenant) = tenant_of.get(namespace.as_str()) else {
            continue;
        };
        let name = model.name_any();
        let stable = slices_of(&namespace, format!("{name}-stable"));
        let canary = slices_of(&namespace, format!("{name}-canary"));
        let mut endpoints = Vec::new();
        if stable.is_empty() && canary.is_empty() {
            add_endpoints(
                &mut endpoints,
                slices_of(&namespace, name.clone()),
                Track::Stable,
            );
        } else {
            add_endpoints(&mut endpoints, stable, Track::Stable);
            add_endpoints(&mut endpoints, canary, Track::Canary);
        }
        endpoints.sort_by_key(|e| (e.track == Track::Canary, e.addr));
        let canary_percent = model.spec.canary.as_ref().map_or(0, |c| {
            u8::try_from(c.traffic_percent.clamp(0, 100)).unwrap_or(0)
        });
        snapshot
            .models
            .entry(tenant.clone())
            .or_default()
            .push(Model {
                served_name: served_name(model),
                name: name.clone(),
                namespace,
                aimodel: name,
                created: model
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map_or(0, |t| t.0.as_second()),
                endpoints,
                canary_percent,
                scale_from_zero: scales_from_zero(model),
            });
    }
    (snapshot, ignored)
}

/// Whether the AIModel may run no replica at all (`spec.autoscaling.minReplicas: 0`):
/// its requests then wait for a first ready endpoint rather than being refused.
pub fn scales_from_zero(model: &AIModel) -> bool {
    model
        .spec
        .autoscaling
        .as_ref()
        .is_some_and(|a| a.min_replicas == 0)
}

/// The key hash of a key Secret: `data.sha256`, 64 hex digits (surrounding
/// white space dropped, upper case accepted), in lower case.
fn key_hash(secret: &Secret) -> Result<String, &'static str> {
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(KEY_HASH_FIELD))
        .ok_or("no data.sha256")?;
    let text = std::str::from_utf8(&value.0).map_err(|_| "data.sha256 is not text")?;
    let text = text.trim();
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("data.sha256 is not 64 hex digits (the SHA-256 of the key)");
    }
    Ok(text.to_ascii_lowercase())
}

/// Adds the endpoints of `slices` on `track`: each endpoint's first address
/// with the slice's port named `http` (or its only port). An address in two
/// slices (while the EndpointSlice controller moves it) counts once, ready if
/// either says so.
fn add_endpoints(endpoints: &mut Vec<Endpoint>, slices: &[&EndpointSlice], track: Track) {
    for slice in slices {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let ports = slice.ports.as_deref().unwrap_or_default();
        let port = ports
            .iter()
            .find(|p| p.name.as_deref() == Some(HTTP_PORT_NAME))
            .or(if ports.len() == 1 {
                ports.first()
            } else {
                None
            })
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0);
        let Some(port) = port else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let Some(ip) = endpoint
                .addresses
                .first()
                .and_then(|a| a.parse::<IpAddr>().ok())
            else {
                continue;
            };
            let addr = SocketAddr::new(ip, port);
            let ready = endpoint.conditions.as_ref().and_then(|c| c.ready) != Some(false);
            match endpoints
                .iter_mut()
                .find(|e| e.addr == addr && e.track == track)
            {
                Some(existing) => existing.ready |= ready,
                None => endpoints.push(Endpoint { addr, track, ready }),
            }
        }
    }
}

/// What the gateway watches.
#[derive(Clone, Debug, Default)]
pub struct WatchOptions {
    /// The namespace of AIModels, key Secrets and EndpointSlices; all when `None`.
    /// Tenants are cluster-scoped and always watched whole.
    pub namespace: Option<String>,
}

/// Watches Tenants, AIModels, key Secrets and model EndpointSlices, and keeps
/// `state` equal to [`build_snapshot`] of them: after any change (gathered for
/// [`DEBOUNCE`]) the whole snapshot is rebuilt and swapped in. The state is
/// marked synced once every watch has listed everything once; until then it
/// is left alone. An object that does not decode is skipped (and logged), and
/// a failing watch retries with backoff without stopping the others. Runs
/// until dropped.
pub async fn watch(client: kube::Client, options: WatchOptions, state: Arc<GatewayState>) {
    let changed = Arc::new(Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    let ns = options.namespace.as_deref();

    let tenants = Reflected::<Tenant>::start(
        &mut tasks,
        Api::all(client.clone()),
        config(),
        trim_tenant,
        &changed,
    );
    let models =
        Reflected::<AIModel>::start(&mut tasks, api(&client, ns), config(), trim_model, &changed);
    let keys = Reflected::<Secret>::start(
        &mut tasks,
        api(&client, ns),
        config().labels(&format!("{GATEWAY_KEY_LABEL}=true")),
        trim_secret,
        &changed,
    );
    let slices = Reflected::<EndpointSlice>::start(
        &mut tasks,
        api(&client, ns),
        config().labels(MODEL_LABEL),
        trim_slice,
        &changed,
    );

    let mut reported: HashSet<Ignored> = HashSet::new();
    loop {
        changed.notified().await;
        tokio::time::sleep(DEBOUNCE).await;
        if !(tenants.synced() && models.synced() && keys.synced() && slices.synced()) {
            continue;
        }
        let mut ignored = Vec::new();
        let tenant_list = tenants.objects(&mut ignored);
        let model_list = models.objects(&mut ignored);
        let key_list = keys.objects(&mut ignored);
        let slice_list = slices.objects(&mut ignored);
        let (snapshot, skipped) =
            build_snapshot_reporting(&tenant_list, &model_list, &key_list, &slice_list);
        ignored.extend(skipped);
        let now: HashSet<Ignored> = ignored.into_iter().collect();
        let mut fresh: Vec<&Ignored> = now.difference(&reported).collect();
        fresh.sort();
        for i in fresh {
            tracing::warn!(
                kind = %i.kind,
                namespace = %i.namespace,
                object = %i.name,
                reason = %i.reason,
                "ignored"
            );
        }
        reported = now;
        tracing::debug!(
            tenants = snapshot.tenants.len(),
            keys = snapshot.keys.len(),
            models = snapshot.models.values().map(Vec::len).sum::<usize>(),
            "snapshot rebuilt"
        );
        state.replace(snapshot);
        if !state.is_synced() {
            state.mark_synced();
            tracing::info!("every watch has listed once: ready");
        }
    }
}

fn config() -> watcher::Config {
    watcher::Config::default().page_size(LIST_PAGE_SIZE)
}

fn api<K>(client: &kube::Client, namespace: Option<&str>) -> Api<DeserializeGuard<K>>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// One watched kind: its store and whether it has listed once.
struct Reflected<K: Resource<DynamicType = ()> + 'static> {
    store: Store<DeserializeGuard<K>>,
    synced: Arc<AtomicBool>,
}

impl<K> Reflected<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    fn start(
        tasks: &mut tokio::task::JoinSet<()>,
        api: Api<DeserializeGuard<K>>,
        config: watcher::Config,
        trim: fn(&mut K),
        changed: &Arc<Notify>,
    ) -> Self {
        let (store, writer) = reflector::store();
        let synced = Arc::new(AtomicBool::new(false));
        let stream = watcher(api, config)
            .default_backoff()
            .modify(move |guarded: &mut DeserializeGuard<K>| {
                let meta = guarded.meta_mut();
                meta.managed_fields = None;
                meta.annotations = None;
                meta.owner_references = None;
                if let Ok(obj) = &mut guarded.0 {
                    trim(obj);
                }
            })
            .reflect(writer);
        let (flag, changed) = (synced.clone(), changed.clone());
        tasks.spawn(async move {
            let kind = K::kind(&()).to_string();
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(Event::InitDone) => {
                        flag.store(true, Ordering::Release);
                        changed.notify_one();
                    }
                    Ok(Event::Init | Event::InitApply(_)) => {}
                    Ok(Event::Apply(_) | Event::Delete(_)) => changed.notify_one(),
                    Err(error) => tracing::warn!(%kind, %error, "watch failed; retrying"),
                }
            }
        });
        Self { store, synced }
    }

    fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The decoded objects; the others go to `ignored`.
    fn objects(&self, ignored: &mut Vec<Ignored>) -> Vec<K> {
        let kind = K::kind(&());
        self.store
            .state()
            .iter()
            .filter_map(|guarded| match &guarded.0 {
                Ok(obj) => Some(obj.clone()),
                Err(invalid) => {
                    ignored.push(Ignored {
                        kind: kind.to_string(),
                        namespace: invalid.metadata.namespace.clone().unwrap_or_default(),
                        name: invalid.metadata.name.clone().unwrap_or_default(),
                        reason: format!("does not match the schema: {}", invalid.error),
                    });
                    None
                }
            })
            .collect()
    }
}

/// Keeps of a Tenant its plan, gateway limits, owners and namespaces.
fn trim_tenant(tenant: &mut Tenant) {
    let spec = &mut tenant.spec;
    spec.namespaces = Vec::new();
    spec.quota = None;
    spec.limit_range = None;
    spec.admission = Default::default();
    spec.additional_role_bindings = Vec::new();
    if let Some(status) = &mut tenant.status {
        status.conditions = Vec::new();
        status.usage = BTreeMap::new();
        status.gpus = None;
    }
}

/// Keeps of an AIModel what names it, its runtimes, sources, canary and backend.
fn trim_model(model: &mut AIModel) {
    let spec = &mut model.spec;
    spec.runtime.env = Vec::new();
    spec.training = None;
    spec.sagemaker = None;
    spec.pod_annotations = BTreeMap::new();
    spec.cache.pod_annotations = BTreeMap::new();
    if let Some(runtime) = spec.canary.as_mut().and_then(|c| c.runtime.as_mut()) {
        runtime.env = Vec::new();
    }
    model.status = None;
}

/// Keeps of a key Secret its labels and `data.sha256`, nothing else.
fn trim_secret(secret: &mut Secret) {
    if let Some(data) = &mut secret.data {
        data.retain(|k, _| k == KEY_HASH_FIELD);
    }
    secret.string_data = None;
}

/// Keeps of an EndpointSlice its ports and each endpoint's first address and conditions.
fn trim_slice(slice: &mut EndpointSlice) {
    for endpoint in &mut slice.endpoints {
        endpoint.addresses.truncate(1);
        endpoint.hints = None;
        endpoint.target_ref = None;
        endpoint.deprecated_topology = None;
        endpoint.node_name = None;
        endpoint.zone = None;
        endpoint.hostname = None;
    }
}

#[cfg(test)]
#[path = "k8s_tests.rs"]
mod tests;
