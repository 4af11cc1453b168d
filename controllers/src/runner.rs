//! Runs one controller per kind with what they all share: objects that fail to
//! deserialize are logged and skipped, only the leader writes (and reconciles
//! everything again when it becomes leader), metrics and per-object backoff,
//! readiness once the caches have synced, and graceful shutdown.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aleph_crds::conditions::READY;
use futures::StreamExt;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::Instrument;

use aleph_crds::Condition;

use crate::conditions::{NewCondition, set_condition};
use crate::context::{Context, object_key};
use crate::error::{Error, Result};

/// A kind the operator reconciles.
pub trait Reconcile:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    /// The controller's name in metrics and logs, for example `tenant`.
    const CONTROLLER: &'static str;

    /// The object's conditions as last written.
    fn conditions(&self) -> &[Condition];

    /// The condition a failed pass is shown in: `Ready=False` with the error's
    /// reason and message, unless the kind says otherwise (`None`: the
    /// object's conditions are final, and only the Event tells).
    fn failure_condition(&self, error: &Error) -> Option<NewCondition> {
        Some(NewCondition::no(
            READY,
            error.reason(),
            format!(
                "{}; the operator retries{}",
                error.user_message(),
                if error.is_permanent() {
                    " when the spec changes"
                } else {
                    " with backoff"
                }
            ),
        ))
    }

    /// Drives the cluster toward `obj`'s spec and reports status.
    fn reconcile(obj: Arc<Self>, ctx: Arc<Context>) -> impl Future<Output = Result<Action>> + Send;
}

/// The conditions of an object's status as last written (none before its
/// first status): `conditions` picks them from the status.
pub fn status_conditions<'a, S>(
    status: Option<&'a S>,
    conditions: impl FnOnce(&'a S) -> &'a [Condition],
) -> &'a [Condition] {
    status.map_or(&[], conditions)
}

/// Counts the caches that have not synced yet; ready when zero.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    pending: Arc<AtomicUsize>,
    registered: Arc<AtomicUsize>,
}

impl Readiness {
    /// Whether every registered cache has synced (and at least one was registered).
    pub fn is_ready(&self) -> bool {
        self.registered.load(Ordering::SeqCst) > 0 && self.pending.load(Ordering::SeqCst) == 0
    }

    fn register(&self) -> ReadyGuard {
        self.registered.fetch_add(1, Ordering::SeqCst);
        self.pending.fetch_add(1, Ordering::SeqCst);
        ReadyGuard {
            pending: self.pending.clone(),
        }
    }
}

struct ReadyGuard {
    pending: Arc<AtomicUsize>,
}

impl ReadyGuard {
    fn synced(self) {
        self.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long in-flight reconciles may run after shutdown began (the chart gives
/// the pod 30 s).
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(20);

/// Objects per page of a watch's initial list.
pub const LIST_PAGE_SIZE: u32 = 50;

/// Objects per page of the initial list of a controller's primary kind.
/// Nothing is reconciled before that list is whole, and when the operator
/// starts every watch lists at once, each page waiting its turn at the API
/// server: in pages of [`LIST_PAGE_SIZE`], 1,000 Tenants take 20 turns. The
/// primary objects are few and small beside their children (pods,
/// Deployments), so their pages can be larger.
pub const PRIMARY_LIST_PAGE_SIZE: u32 = 500;

/// The watcher configuration every watch starts from: initial lists in pages
/// of [`LIST_PAGE_SIZE`]. Not `any_semantic`: the API server answers a list at
/// any resourceVersion from its cache in one piece, whatever the limit, and
/// when the operator starts every watch lists at once, so the whole of every
/// kind would be held and decoded together. A paged list at the latest
/// resourceVersion is served from the cache as well on recent Kubernetes
/// versions (consistent reads from the watch cache).
///
/// With [`set_streaming_lists`], the initial lists are streamed instead
/// (a watch with `sendInitialEvents`, Kubernetes 1.34 or later by default):
/// the objects come one event at a time, never a page at once.
pub fn watch_config() -> kube::runtime::watcher::Config {
    let config = kube::runtime::watcher::Config::default().page_size(LIST_PAGE_SIZE);
    if STREAMING_LISTS.load(Ordering::Relaxed) {
        config.streaming_lists()
    } else {
        config
    }
}

/// Whether watches start with a streamed list ([`watch_config`]).
static STREAMING_LISTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes every watch started from now on begin with a streamed list rather
/// than paged lists (the API server's `WatchList` feature, on by default
/// from Kubernetes 1.34).
pub fn set_streaming_lists(on: bool) {
    STREAMING_LISTS.store(on, Ordering::Relaxed);
}

/// A watch of `api` whose objects (decoded without their managed fields, see
/// [`crate::lean::Lean`], and trimmed by `trim` of what the reader never
/// needs) are kept in the returned store, and the stream of touched objects
/// that drives it.
pub fn cached_watch<K>(
    api: kube::Api<crate::lean::Lean<K>>,
    config: kube::runtime::watcher::Config,
    trim: fn(&mut K),
) -> (
    kube::runtime::reflector::Store<K>,
    impl futures::Stream<Item = Result<K, kube::runtime::watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = kube::runtime::reflector::store();
    (reader, watch_into_store(api, config, trim, writer, |_| {}))
}

/// [`cached_watch`], with an index of the cached objects by the owner `key`
/// gives each ([`crate::index`]), kept from the same events.
pub fn indexed_watch<K>(
    api: kube::Api<crate::lean::Lean<K>>,
    config: kube::runtime::watcher::Config,
    trim: fn(&mut K),
    key: crate::index::OwnerKey<K>,
) -> (
    kube::runtime::reflector::Store<K>,
    crate::index::OwnerIndex<K>,
    impl futures::Stream<Item = Result<K, kube::runtime::watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = kube::runtime::reflector::store();
    let index = crate::index::OwnerIndex::new(reader.clone(), key);
    let observer = index.clone();
    let stream = watch_into_store(api, config, trim, writer, move |event| {
        observer.observe(event);
    });
    (reader, index, stream)
}

/// The watch of [`cached_watch`] into `writer`'s store, `observe` seeing
/// each event once the store holds it.
fn watch_into_store<K>(
    api: kube::Api<crate::lean::Lean<K>>,
    config: kube::runtime::watcher::Config,
    trim: fn(&mut K),
    writer: kube::runtime::reflector::store::Writer<K>,
    mut observe: impl FnMut(&kube::runtime::watcher::Event<K>) + Send + 'static,
) -> impl futures::Stream<Item = Result<K, kube::runtime::watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    use futures::TryStreamExt;
    use kube::runtime::WatchStreamExt;
    kube::runtime::watcher(api, config)
        .map_ok(crate::lean::Lean::unwrap_event)
        // The controller's own pause after a failed watch (see WatchBackoff).
        .backoff(WatchBackoff::default())
        .modify(trim)
        .map_ok(|event| {
            if let kube::runtime::watcher::Event::Delete(o) = &event {
                crate::digest::forget(o);
            }
            event
        })
        .reflect(writer)
        .inspect_ok(move |event| observe(event))
        .touched_objects()
        // After the store holds it: a pass that misses the record then
        // finds the object in the cache.
        .inspect(|touched| {
            if let Ok(o) = touched {
                crate::digest::Created::seen(o);
            }
        })
}

/// The controller of a primary kind, its store filled by [`cached_watch`]:
/// the objects kept without their managed fields (often most of a small
/// object, and read by no pass), and the record of a status the operator
/// wrote ([`crate::digest::Created::wrote`]) ended as soon as the watch
/// shows it.
pub fn primary_controller<K: Reconcile>(
    api: kube::Api<crate::lean::Lean<DeserializeGuard<K>>>,
    config: kube::runtime::watcher::Config,
) -> Controller<DeserializeGuard<K>> {
    let (reader, stream) = cached_watch(api, config, untrimmed);
    Controller::for_stream(stream, reader)
}

/// Keeps nothing less: for [`cached_watch`] readers that need whole objects.
pub fn untrimmed<K>(_: &mut K) {}

/// What one controller watches: a namespace (all when `None`) and, for
/// sharding or tests, a label selector on the primary objects.
#[derive(Clone, Copy, Debug, Default)]
pub struct Watch<'a> {
    /// The namespace of the namespaced kinds; all when `None`.
    pub namespace: Option<&'a str>,
    /// Only primary objects matching this label selector are reconciled.
    pub selector: Option<&'a str>,
}

impl Watch<'_> {
    /// The API of a namespaced kind in the watched namespace.
    pub fn api<K>(&self, client: &kube::Client) -> kube::Api<K>
    where
        K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
    {
        match self.namespace {
            Some(ns) => kube::Api::namespaced(client.clone(), ns),
            None => kube::Api::all(client.clone()),
        }
    }

    /// The watcher configuration of the primary objects: initial lists in
    /// pages of [`PRIMARY_LIST_PAGE_SIZE`].
    pub fn primary(&self) -> kube::runtime::watcher::Config {
        let config = watch_config().page_size(PRIMARY_LIST_PAGE_SIZE);
        match self.selector {
            Some(selector) if !selector.is_empty() => config.labels(selector),
            _ => config,
        }
    }
}

/// The pause after a failed watch or list. kube-runtime pauses all the watches
/// of one controller together when any of them fails, one failure at a time, so
/// a long pause multiplies: with seven watches refused (missing RBAC, the API
/// server away) and kube's 30 s cap, a controller took minutes to resume once
/// the cause was gone. 0.25 s doubling to 2 s, with jitter, keeps that under
/// about 15 s while still sparing the API server.
#[derive(Debug, Default)]
struct WatchBackoff {
    failures: u32,
}

impl Iterator for WatchBackoff {
    type Item = std::time::Duration;

    fn next(&mut self) -> Option<Self::Item> {
        let pause = crate::error::backoff(
            self.failures,
            std::time::Duration::from_millis(250),
            std::time::Duration::from_secs(2),
        );
        self.failures = self.failures.saturating_add(1);
        Some(pause)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// How controllers run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Objects reconciled at once per controller.
    pub concurrency: u16,
    /// How long a scheduled reconcile waits for further events about its object.
    pub debounce: std::time::Duration,
    /// Only objects matching this label selector are reconciled (all when `None`).
    pub selector: Option<String>,
}

/// Runs `controller` until `shutdown` resolves.
pub async fn run<K: Reconcile>(
    controller: Controller<DeserializeGuard<K>>,
    ctx: Arc<Context>,
    options: &RunOptions,
    readiness: &Readiness,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let store = controller.store();
    let guard = readiness.register();
    let synced = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let synced_flag = synced.clone();
    tokio::spawn(async move {
        // Only one of several concurrent waiters is woken when the store fills,
        // so ask again every second rather than wait once.
        loop {
            match tokio::time::timeout(std::time::Duration::from_secs(1), store.wait_until_ready())
                .await
            {
                Ok(Ok(())) => {
                    synced_flag.store(true, Ordering::SeqCst);
                    break guard.synced();
                }
                Ok(Err(_)) => break,
                Err(_) => {}
            }
        }
    });
    let shutdown = futures::FutureExt::shared(shutdown);
    // kube-runtime holds a controller's work until its cache has synced, and its
    // graceful shutdown waits for that too: a controller whose lists are refused
    // (missing RBAC or CRDs) would never stop. It has nothing in flight, so it
    // stops at once; a synced one gets a bounded drain.
    let stop_anyway = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.await;
            if synced.load(Ordering::SeqCst) {
                tokio::time::sleep(SHUTDOWN_DRAIN).await;
                tracing::warn!(
                    controller = K::CONTROLLER,
                    "reconciles still running {SHUTDOWN_DRAIN:?} after shutdown began; stopping"
                );
            }
        }
    };
    // Becoming leader reconciles every object again: while following, nothing was written.
    let leader_gained = futures::stream::unfold(ctx.leader.subscribe(), |mut rx| async move {
        loop {
            rx.changed().await.ok()?;
            if *rx.borrow_and_update() {
                return Some(((), rx));
            }
        }
    });
    let running = controller
        .trigger_backoff(WatchBackoff::default())
        .with_config(
            ControllerConfig::default()
                .concurrency(options.concurrency)
                .debounce(options.debounce),
        )
        .reconcile_all_on(leader_gained)
        .graceful_shutdown_on(shutdown)
        .run(reconcile_traced::<K>, error_policy::<K>, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, controller = K::CONTROLLER, "controller event");
            }
        });
    tokio::select! {
        () = running => {}
        () = stop_anyway => {}
    }
}

/// kube-runtime calls this inside its span `reconciling object`, which says
/// what woke the pass (`object.reason`: the object changed, a child did, a
/// requeue), but polls the returned future outside it: the pass runs inside
/// that span, so its own span and its logs are the trigger's children, and
/// its end is logged there (at debug) with its duration and what follows.
fn reconcile_traced<K: Reconcile>(
    guarded: Arc<DeserializeGuard<K>>,
    ctx: Arc<Context>,
) -> impl Future<Output = Result<Action>> + Send + 'static {
    let trigger = tracing::Span::current();
    async move {
        let started = std::time::Instant::now();
        let result = reconcile_guarded(guarded, ctx).await;
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match &result {
            Ok(next) => tracing::debug!(elapsed_ms, ?next, "reconcile finished"),
            Err(error) => tracing::debug!(elapsed_ms, %error, "reconcile finished"),
        }
        result
    }
    .instrument(trigger)
}

async fn reconcile_guarded<K: Reconcile>(
    guarded: Arc<DeserializeGuard<K>>,
    ctx: Arc<Context>,
) -> Result<Action> {
    let obj = match &guarded.0 {
        Ok(obj) => obj,
        Err(invalid) => {
            ctx.metrics
                .undecodable_objects
                .get_or_create(&crate::metrics::ControllerLabels {
                    controller: K::CONTROLLER,
                })
                .inc();
            tracing::warn!(
                kind = %K::kind(&()),
                namespace = invalid.metadata.namespace.as_deref().unwrap_or(""),
                name = invalid.metadata.name.as_deref().unwrap_or(""),
                error = %invalid.error,
                "skipping an object that does not match the schema"
            );
            return Ok(Action::await_change());
        }
    };
    if !ctx.leader.is_leader() {
        return Ok(Action::await_change());
    }
    // Where the operator has just written the object (its status) and the
    // cache does not show that version yet, the pass starts from the write:
    // it would otherwise find its own status missing and write it again.
    let newer = crate::digest::Created::newer(obj);
    if let Some(written) = &newer {
        tracing::debug!(
            kind = %K::kind(&()),
            name = %written.name_any(),
            cached = obj.meta().resource_version.as_deref().unwrap_or(""),
            written = written.meta().resource_version.as_deref().unwrap_or(""),
            "starting from the operator's own write: the cache holds an older version"
        );
    }
    let obj = newer.as_ref().unwrap_or(obj);
    // The object's name is `object`: JSON logs give the span's own name the key `name`.
    let span = tracing::info_span!(
        "reconcile",
        kind = %K::kind(&()),
        namespace = obj.namespace().unwrap_or_default(),
        object = obj.name_any(),
        controller = K::CONTROLLER,
    );
    let timer = ctx.metrics.reconcile_timer(K::CONTROLLER);
    let result = K::reconcile(Arc::new(obj.clone()), ctx.clone())
        .instrument(span.clone())
        .await;
    match &result {
        Ok(_) => {
            ctx.reset_backoff(&object_key(obj));
            timer.finish(true);
        }
        Err(error) => {
            // Both counters move together, before the failure is reported
            // (which talks to the API server), so a scrape never sees one
            // without the other.
            ctx.metrics
                .reconcile_failed(K::CONTROLLER, error.metric_label());
            timer.finish(false);
            span.in_scope(|| tracing::warn!(%error, "reconcile failed"));
            report_failure(obj, &ctx, error).instrument(span).await;
        }
    }
    result
}

/// Shows a failed pass to the user, whatever the kind and the error: in the
/// object's condition (written only when it changes, over the latest status so
/// that what the pass wrote before failing stays) and as a Warning Event. A
/// deletion that waits for something outside the cluster is progress, not a
/// failure: its Event is Normal (`CleanupPending`).
async fn report_failure<K: Reconcile>(obj: &K, ctx: &Context, error: &Error) {
    use kube::runtime::events::EventType;
    let (type_, reason) = match error {
        Error::CleanupPending(_) => (EventType::Normal, "CleanupPending"),
        _ => (EventType::Warning, "ReconcileFailed"),
    };
    ctx.event(obj, type_, reason, error.user_message()).await;
    let Some(condition) = obj.failure_condition(error) else {
        return;
    };
    if let Err(e) = write_condition(obj, ctx, condition).await {
        tracing::warn!(error = %e, "could not write the failure into the status");
    }
}

async fn write_condition<K: Reconcile>(
    obj: &K,
    ctx: &Context,
    condition: NewCondition,
) -> Result<(), kube::Error> {
    use kube::api::{GetParams, Patch, PatchParams};
    let name = obj.name_any();
    let request = kube::core::Request::new(K::url_path(&(), obj.namespace().as_deref()));
    let latest: K = ctx
        .client
        .request(
            request
                .get(&name, &GetParams::default())
                .map_err(kube::Error::BuildRequest)?,
        )
        .await?;
    let before = latest.conditions();
    // A kind that explained an invalid spec in its own words keeps them.
    if matches!(before.iter().find(|c| c.type_ == condition.type_), Some(c)
        if c.reason == condition.reason && condition.reason == "InvalidSpec")
    {
        return Ok(());
    }
    let mut conditions = before.to_vec();
    set_condition(&mut conditions, condition, latest.meta().generation);
    if conditions == before {
        return Ok(());
    }
    let patch = serde_json::json!({ "status": { "conditions": conditions } });
    let written: K = ctx
        .client
        .request(
            request
                .patch_subresource(
                    "status",
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .map_err(kube::Error::BuildRequest)?,
        )
        .await?;
    crate::digest::Created::wrote(&written);
    Ok(())
}

fn error_policy<K: Reconcile>(
    guarded: Arc<DeserializeGuard<K>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    match &guarded.0 {
        Ok(obj) => ctx.error_action(&object_key(obj), error),
        Err(_) => Action::await_change(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kube::runtime::utils::Backoff;

    use super::WatchBackoff;

    /// The failure report writes a status of conditions alone on an object
    /// that has none yet: every kind must read it back.
    #[test]
    fn a_status_of_conditions_alone_decodes_for_every_kind() {
        let status = serde_json::json!({ "conditions": [{
            "type": "Ready", "status": "False", "reason": "Refused",
            "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z",
        }]});
        let tenant: aleph_crds::TenantStatus =
            serde_json::from_value(status.clone()).expect("decodes");
        let model: aleph_crds::AIModelStatus =
            serde_json::from_value(status.clone()).expect("decodes");
        let plugin: aleph_crds::PluginStatus =
            serde_json::from_value(status.clone()).expect("decodes");
        let pipeline: aleph_crds::PipelineStatus =
            serde_json::from_value(status.clone()).expect("decodes");
        let run: aleph_crds::PipelineRunStatus =
            serde_json::from_value(status.clone()).expect("decodes");
        let template: aleph_crds::StepTemplateStatus =
            serde_json::from_value(status).expect("decodes");
        for conditions in [
            &tenant.conditions,
            &model.conditions,
            &plugin.conditions,
            &pipeline.conditions,
            &run.conditions,
            &template.conditions,
        ] {
            assert_eq!(conditions.len(), 1);
            assert_eq!(conditions[0].reason, "Refused");
        }
    }

    #[test]
    fn primary_kinds_list_in_large_pages_and_their_children_in_small_ones() {
        let all = super::Watch::default().primary();
        assert_eq!(all.page_size, Some(super::PRIMARY_LIST_PAGE_SIZE));
        assert_eq!(all.label_selector, None);
        let sharded = super::Watch {
            namespace: None,
            selector: Some("shard=a"),
        }
        .primary();
        assert_eq!(sharded.page_size, Some(super::PRIMARY_LIST_PAGE_SIZE));
        assert_eq!(sharded.label_selector.as_deref(), Some("shard=a"));
        assert_eq!(super::watch_config().page_size, Some(super::LIST_PAGE_SIZE));
        const { assert!(super::LIST_PAGE_SIZE < super::PRIMARY_LIST_PAGE_SIZE) };
    }

    #[test]
    fn watch_backoff_is_short_and_resets() {
        let mut backoff = WatchBackoff::default();
        let pauses: Vec<Duration> = backoff.by_ref().take(10).collect();
        assert!(pauses[0] >= Duration::from_millis(250) && pauses[0] < Duration::from_millis(400));
        assert!(pauses.windows(2).all(|w| w[1] >= w[0].mul_f64(0.8)));
        assert!(pauses.iter().all(|p| *p <= Duration::from_millis(2400)));
        assert!(pauses[9] >= Duration::from_secs(2));
        backoff.reset();
        assert!(
            backoff
                .next()
                .is_some_and(|p| p < Duration::from_millis(400))
        );
    }
}
