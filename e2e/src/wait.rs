//! Waiting for objects to reach a state, and explaining why they did not.

use std::fmt::{Debug, Write as _};
use std::time::Duration;

use aleph_crds::tenant::Tenant;
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;

use crate::{Condition, TestEnv, find_condition, has_condition};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

const POLL_INTERVAL: Duration = Duration::from_millis(250);
const MAX_EVENTS: usize = 50;

/// Waits until the object `name` exists and `condition` holds for it, and
/// returns it. On timeout, panics with the object's last YAML, the events of its
/// namespace and its pods, so the test output says what happened.
pub async fn wait_for<K, F>(api: &Api<K>, name: &str, timeout: Duration, mut condition: F) -> K
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
    F: FnMut(&K) -> bool,
{
    let deadline = Instant::now() + timeout;
    let mut last = None;
    let mut last_error = None;
    loop {
        match api.get_opt(name).await {
            Ok(Some(object)) => {
                if condition(&object) {
                    return object;
                }
                last = Some(object);
            }
            Ok(None) => last = None,
            Err(error) => last_error = Some(error.to_string()),
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let mut text = format!(
        "timed out after {timeout:?} waiting for {} {name}",
        api.resource_url()
    );
    if let Some(error) = last_error {
        let _ = write!(text, " (last error: {error})");
    }
    text.push('\n');
    text.push_str(&failure_report(api, name, last.as_ref()).await);
    panic!("{text}");
}

/// Waits until the object `name` has the condition `type_` with `status`;
/// returns the object and that condition.
pub async fn wait_condition<K>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    type_: &str,
    status: &str,
) -> (K, Condition)
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let object = wait_for(api, name, timeout, |o| has_condition(o, type_, status)).await;
    let condition = find_condition(&object, type_)
        .unwrap_or_else(|| panic!("{name} lost its {type_} condition"));
    (object, condition)
}

/// Waits until the object `name` is gone. On timeout, panics with the same
/// report as [`wait_for`].
pub async fn wait_for_deletion<K>(api: &Api<K>, name: &str, timeout: Duration)
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        match api.get_opt(name).await {
            Ok(None) => return,
            Ok(Some(object)) => last = Some(object),
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let report = failure_report(api, name, last.as_ref()).await;
    panic!(
        "timed out after {timeout:?} waiting for {} {name} to be deleted\n{report}",
        api.resource_url()
    );
}

/// A readable account of an object and its surroundings: its YAML (without
/// managed fields), the latest events of its namespace and the pods there.
pub async fn failure_report<K>(api: &Api<K>, name: &str, object: Option<&K>) -> String
where
    K: Resource + Clone + Serialize,
{
    let mut text = String::new();
    match object {
        Some(object) => {
            let mut object = object.clone();
            object.meta_mut().managed_fields = None;
            let yaml = serde_saphyr::to_string(&object).unwrap_or_else(|e| format!("({e})"));
            let _ = writeln!(text, "--- last seen {name}:\n{yaml}");
        }
        None => {
            let _ = writeln!(text, "--- {name} was not found");
        }
    }
    let namespace = object
        .and_then(|o| o.namespace())
        .or_else(|| api.namespace().map(str::to_owned));
    let client = api.clone().into_client();
    text.push_str(&describe_namespace(&client, namespace.as_deref()).await);
    text
}

async fn describe_namespace(client: &Client, namespace: Option<&str>) -> String {
    let mut text = String::new();
    let (events, pods): (Api<Event>, Api<Pod>) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let scope = namespace.map_or_else(
        || "all namespaces".to_owned(),
        |ns| format!("namespace {ns}"),
    );
    match events.list(&ListParams::default()).await {
        Ok(list) => {
            let mut items = list.items;
            items.sort_by_key(event_time);
            let skip = items.len().saturating_sub(MAX_EVENTS);
            let _ = writeln!(
                text,
                "--- events in {scope} (latest {}):",
                items.len() - skip
            );
            for event in items.iter().skip(skip) {
                let _ = writeln!(
                    text,
                    "{} {} {}/{}: {}",
                    event.type_.as_deref().unwrap_or("-"),
                    event.reason.as_deref().unwrap_or("-"),
                    event.involved_object.kind.as_deref().unwrap_or("-"),
                    event.involved_object.name.as_deref().unwrap_or("-"),
                    event.message.as_deref().unwrap_or("").trim(),
                );
            }
        }
        Err(error) => {
            let _ = writeln!(text, "--- events in {scope}: cannot list ({error})");
        }
    }
    if namespace.is_some() {
        match pods.list(&ListParams::default()).await {
            Ok(list) => {
                let _ = writeln!(text, "--- pods in {scope}:");
                for pod in &list.items {
                    let _ = writeln!(text, "{}", pod_summary(pod));
                }
            }
            Err(error) => {
                let _ = writeln!(text, "--- pods in {scope}: cannot list ({error})");
            }
        }
    }
    text
}

fn event_time(event: &Event) -> Option<Timestamp> {
    event
        .last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| event.event_time.as_ref().map(|t| t.0))
        .or_else(|| event.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// The node `pod` is bound to, if the scheduler has placed it.
pub fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

fn pod_summary(pod: &Pod) -> String {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("-");
    let node = node_of(pod).unwrap_or("-");
    let conditions = status
        .and_then(|s| s.conditions.as_ref())
        .map(|cs| {
            cs.iter()
                .map(|c| match &c.reason {
                    Some(reason) => format!("{}={}({reason})", c.type_, c.status),
                    None => format!("{}={}", c.type_, c.status),
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    format!("{} phase={phase} node={node} {conditions}", pod.name_any())
}

/// The Events in `events`' scope about the `kind` named `name` with `reason`.
pub async fn events_about(
    events: &Api<k8s_openapi::api::core::v1::Event>,
    kind: &str,
    name: &str,
    reason: &str,
) -> Vec<k8s_openapi::api::core::v1::Event> {
    events
        .list(&kube::api::ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.involved_object.kind.as_deref() == Some(kind)
                && e.involved_object.name.as_deref() == Some(name)
        })
        .collect()
}

/// Calls `check` every `every` until it returns `Ok`, for at most `within`;
/// then panics with what its last `Err` said.
pub async fn poll<T>(
    within: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(why) if Instant::now() >= deadline => panic!("{why} (waited {within:?})"),
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

/// Waits (at most `within`) until a Warning Event `ReconcileFailed` in
/// `events`' scope about the `kind` named `name` says `needle`; returns its
/// message.
pub async fn wait_reconcile_failed(
    events: &Api<Event>,
    kind: &str,
    name: &str,
    needle: &str,
    within: Duration,
) -> String {
    poll(within, Duration::from_millis(500), async || {
        let found: Vec<String> = events_about(events, kind, name, "ReconcileFailed")
            .await
            .into_iter()
            .filter(|e| e.type_.as_deref() == Some("Warning"))
            .filter_map(|e| e.message)
            .collect();
        found.iter().find(|m| m.contains(needle)).cloned().ok_or_else(|| {
            format!("no ReconcileFailed event about {kind} {name} saying {needle:?}; events: {found:?}")
        })
    })
    .await
}

/// Creates `pod` until the API server refuses it (at most 30 s), deleting the
/// copies admitted meanwhile; returns the refusal, or "admitted" if none came.
pub async fn refusal(pods: &Api<Pod>, pod: Pod) -> String {
    let name = pod.metadata.name.clone().unwrap_or_default();
    for _ in 0..30 {
        match pods.create(&PostParams::default(), &pod).await {
            Err(e) => return e.to_string(),
            Ok(_) => {
                let _ = pods
                    .delete(&name, &DeleteParams::default().grace_period(0))
                    .await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    "admitted".to_string()
}

/// The pods matching the label `selector` that are not being deleted; panics
/// with `context` when the list fails.
pub async fn live_pods(pods: &Api<Pod>, selector: &str, context: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(selector))
        .await
        .expect(context)
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// Waits until the Tenant `name` is Ready, and returns it.
pub async fn wait_tenant_ready(env: &TestEnv, name: &str, timeout: Duration) -> Tenant {
    let tenants: Api<Tenant> = env.cluster_api();
    wait_for(&tenants, name, timeout, |t| {
        has_condition(t, "Ready", "True")
    })
    .await
}
