//! What the benchmark reads: the operator's `/metrics`, its `/proc` status,
//! and when a set of objects is ready (by a watch, so that waiting adds no
//! polling load to the API server).

use std::collections::HashSet;
use std::fmt::Debug;
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::table::{Convergence, Requests};

/// The operator's requests to the Kubernetes API, summed over status codes, by verb.
pub const KUBE_REQUESTS: &str = "aleph_kube_requests_total";
/// Finished reconciles by controller and result.
pub const RECONCILES: &str = "aleph_reconcile_total";
/// The summed duration of reconciles by controller.
pub const RECONCILE_SECONDS: &str = "aleph_reconcile_duration_seconds_sum";
/// Seconds from process start to the first finished reconcile.
pub const FIRST_RECONCILE: &str = "aleph_first_reconcile_seconds";

/// The API server's requests, by verb, resource and code (a WATCH is counted when it ends).
pub const APISERVER_REQUESTS: &str = "apiserver_request_total";
/// The API server's long-running requests in flight (WATCH, CONNECT), by verb and resource.
pub const APISERVER_LONGRUNNING: &str = "apiserver_longrunning_requests";

/// The `name="value"` pairs of a sample's label set (`verb="get",code="200"`),
/// in order; the values as written (escapes left in).
fn label_pairs(labels: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut rest = labels.trim_end_matches('}');
    std::iter::from_fn(move || {
        let (name, after) = rest.split_once("=\"")?;
        let name = name.trim_start_matches(',').trim();
        // The closing quote: the first one not escaped by a backslash.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let end = end?;
        rest = &after[end + 1..];
        Some((name, &after[..end]))
    })
}

/// The value of `label` in a sample's label set (`verb="get",code="200"`).
fn label<'a>(labels: &'a str, label: &str) -> Option<&'a str> {
    label_pairs(labels).find_map(|(name, value)| (name == label).then_some(value))
}

/// The samples of `name` in Prometheus text, as `(labels, value)`.
fn samples<'a>(metrics: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(move |line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
            let value = value.parse::<f64>().ok()?;
            (metric == name).then_some((labels, value))
        })
}

/// The samples of `name` in Prometheus text, grouped by the value of `by`.
pub fn sum_by(metrics: &str, name: &str, by: &str) -> Requests {
    let mut out = Requests::new();
    for (labels, value) in samples(metrics, name) {
        if let Some(key) = label(labels, by) {
            *out.entry(key.to_string()).or_default() += value;
        }
    }
    out
}

/// The samples of `name` grouped by the values of two labels, as `"a b"`
/// (just `"a"` when the second label is absent).
pub fn sum_by_pair(metrics: &str, name: &str, first: &str, second: &str) -> Requests {
    let mut out = Requests::new();
    for (labels, value) in samples(metrics, name) {
        let Some(a) = label(labels, first) else {
            continue;
        };
        let key = match label(labels, second) {
            Some(b) => format!("{a} {b}"),
            None => a.to_string(),
        };
        *out.entry(key).or_default() += value;
    }
    out
}

/// The operator's requests by verb and resource (`"list namespaces"`).
pub fn requests_by_verb_and_resource(metrics: &str) -> Requests {
    sum_by_pair(metrics, KUBE_REQUESTS, "verb", "resource")
}

/// The operator's requests by verb.
pub fn requests_by_verb(metrics: &str) -> Requests {
    sum_by(metrics, KUBE_REQUESTS, "verb")
}

/// The kinds whose create is a question, not a write: the API server
/// answers it and stores nothing.
const REVIEWS: [&str; 6] = [
    "selfsubjectreviews",
    "tokenreviews",
    "subjectaccessreviews",
    "selfsubjectaccessreviews",
    "localsubjectaccessreviews",
    "selfsubjectrulesreviews",
];

/// The operator's requests by verb, without the reviews (a create of a
/// SelfSubjectReview asks who the operator is, and changes nothing): what
/// the writes are counted from.
pub fn requests_that_may_store(metrics: &str) -> Requests {
    let mut out = Requests::new();
    for (labels, value) in samples(metrics, KUBE_REQUESTS) {
        if label(labels, "resource").is_some_and(|r| REVIEWS.contains(&r)) {
            continue;
        }
        if let Some(verb) = label(labels, "verb") {
            *out.entry(verb.to_string()).or_default() += value;
        }
    }
    out
}

/// The API server's requests so far, over every label, WATCH left out: the
/// counter counts a watch when it ends, so a watch opened in one phase and
/// closed in another would be counted in the other (and the operator counts
/// its watches when they start). Watches are counted apart, open
/// ([`apiserver_watches`]).
pub fn apiserver_requests(metrics: &str) -> f64 {
    samples(metrics, APISERVER_REQUESTS)
        .filter(|(labels, _)| label(labels, "verb") != Some("WATCH"))
        .map(|(_, value)| value)
        .sum()
}

/// The API server's requests so far by verb and resource, every client's,
/// WATCH and the paths that are not resources (`/metrics`) left out:
/// `"PATCH tenants/status"`.
pub fn apiserver_requests_by_verb_and_resource(metrics: &str) -> Requests {
    let mut out = Requests::new();
    for (labels, value) in samples(metrics, APISERVER_REQUESTS) {
        let verb = label(labels, "verb").unwrap_or_default();
        let resource = label(labels, "resource").unwrap_or_default();
        if verb == "WATCH" || resource.is_empty() {
            continue;
        }
        let key = match label(labels, "subresource").filter(|s| !s.is_empty()) {
            Some(sub) => format!("{verb} {resource}/{sub}"),
            None => format!("{verb} {resource}"),
        };
        *out.entry(key).or_default() += value;
    }
    out
}

/// The watches open on the API server now, by resource.
pub fn apiserver_watches(metrics: &str) -> Requests {
    let mut out = Requests::new();
    for (labels, value) in samples(metrics, APISERVER_LONGRUNNING) {
        if label(labels, "verb") != Some("WATCH") {
            continue;
        }
        let resource = label(labels, "resource").unwrap_or_default();
        let key = if resource.is_empty() {
            "other"
        } else {
            resource
        };
        *out.entry(key.to_string()).or_default() += value;
    }
    out
}

/// The operator's requests by verb, its watches left out (as from [`apiserver_requests`]).
pub fn besides_watches(requests: &Requests) -> f64 {
    requests
        .iter()
        .filter(|(verb, _)| verb.as_str() != "watch")
        .map(|(_, count)| count)
        .sum()
}

/// The value of an unlabelled gauge.
pub fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (metric, value) = line.split_once(' ')?;
        (metric == name).then(|| value.trim().parse().ok())?
    })
}

/// A count as a float (counts here are far below 2^52).
#[allow(clippy::cast_precision_loss)]
pub fn as_f64(count: usize) -> f64 {
    count as f64
}

/// A float counter's value as a count.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub fn count(value: f64) -> usize {
    value.max(0.0) as usize
}

/// A field of `/proc/<pid>/status` in KiB (`VmHWM:    12345 kB`).
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// The peak resident set size (VmHWM) of process `pid`, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kib(&status, "VmHWM")
}

/// The resident memory of a process, in KiB: the kernel's peak (VmHWM), and
/// the largest anonymous (heap) and file-backed (mapped executable) parts seen
/// by sampling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub peak_kib: u64,
    pub anon_kib: u64,
    pub file_kib: u64,
}

/// Samples `/proc/<pid>/status` every 200 ms until stopped.
#[derive(Debug)]
pub struct MemorySampler {
    pid: u32,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Memory>,
}

impl MemorySampler {
    /// Starts sampling process `pid`.
    pub fn start(pid: u32) -> Self {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut seen = Memory::default();
            loop {
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    let field = |f| status_kib(&status, f).unwrap_or(0);
                    seen.peak_kib = seen.peak_kib.max(field("VmHWM"));
                    seen.anon_kib = seen.anon_kib.max(field("RssAnon"));
                    seen.file_kib = seen.file_kib.max(field("RssFile"));
                }
                tokio::select! {
                    _ = &mut stopped => break,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
            seen
        });
        MemorySampler {
            pid,
            stop: Some(stop),
            task,
        }
    }

    /// Stops sampling (the process must still run, for its final peak).
    pub async fn finish(mut self) -> Memory {
        let last = peak_rss_kib(self.pid).unwrap_or(0);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let mut seen = (&mut self.task).await.unwrap_or_default();
        seen.peak_kib = seen.peak_kib.max(last);
        seen
    }
}

/// Tracks, through a watch started before anything is created, when `want`
/// objects matching `selector` satisfy `ready`.
#[derive(Debug)]
pub struct ReadyWatch {
    done: Option<oneshot::Receiver<Instant>>,
    count: tokio::sync::watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadyWatch {
    /// Starts watching; returns once the watch's initial list has arrived, so
    /// no later change is missed.
    pub async fn start<K, F>(api: Api<K>, selector: &str, want: usize, ready: F) -> Self
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        F: Fn(&K) -> bool + Send + 'static,
    {
        let (done_tx, done) = oneshot::channel();
        let (count_tx, count) = tokio::sync::watch::channel(0usize);
        let (synced_tx, synced) = oneshot::channel::<()>();
        let config = watcher::Config::default().labels(selector).any_semantic();
        let task = tokio::spawn(async move {
            let mut stream = watcher(api, config).boxed();
            let mut ready_names: HashSet<String> = HashSet::new();
            let mut synced_tx = Some(synced_tx);
            let mut done_tx = Some(done_tx);
            while let Some(event) = stream.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(error) => {
                        eprintln!("watch error (retrying): {error}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                match event {
                    watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => {
                        let key =
                            format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
                        if ready(&obj) {
                            ready_names.insert(key);
                        } else {
                            ready_names.remove(&key);
                        }
                    }
                    watcher::Event::Delete(obj) => {
                        ready_names.remove(&format!(
                            "{}/{}",
                            obj.namespace().unwrap_or_default(),
                            obj.name_any()
                        ));
                    }
                    watcher::Event::Init => {}
                    watcher::Event::InitDone => {
                        if let Some(tx) = synced_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                }
                let _ = count_tx.send(ready_names.len());
                if ready_names.len() >= want
                    && let Some(tx) = done_tx.take()
                {
                    let _ = tx.send(Instant::now());
                }
            }
        });
        let _ = synced.await;
        ReadyWatch {
            done: Some(done),
            count,
            task,
        }
    }

    /// When every object was ready, if that happens by `deadline`.
    pub async fn done_by(&mut self, deadline: Instant) -> Option<Instant> {
        let done = self.done.as_mut()?;
        match tokio::time::timeout_at(deadline, done).await {
            Ok(Ok(at)) => {
                self.done = None;
                Some(at)
            }
            Ok(Err(_)) => {
                self.done = None;
                None
            }
            Err(_) => None,
        }
    }

    /// How many are ready now.
    pub fn ready(&self) -> usize {
        *self.count.borrow()
    }
}

impl Drop for ReadyWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until every object of `watch` is ready (the time counted from
/// `start`), giving up at `timeout` or when no object got ready for `stall`.
pub async fn converge(
    mut watch: ReadyWatch,
    start: Instant,
    timeout: Duration,
    stall: Duration,
) -> Convergence {
    let deadline = start + timeout;
    let mut last = (watch.ready(), Instant::now());
    loop {
        let check = (Instant::now() + Duration::from_secs(1)).min(deadline);
        if let Some(at) = watch.done_by(check).await {
            return Convergence::Done(at.duration_since(start));
        }
        let now = Instant::now();
        let ready = watch.ready();
        if ready != last.0 {
            last = (ready, now);
        }
        if now >= deadline || now.duration_since(last.1) >= stall {
            return Convergence::TimedOut {
                ready,
                after: start.elapsed(),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP aleph_kube_requests Requests sent to the Kubernetes API by verb and status code.
# TYPE aleph_kube_requests counter
aleph_kube_requests_total{verb="list",code="200"} 12
aleph_kube_requests_total{verb="patch",code="200"} 30
aleph_kube_requests_total{verb="patch",code="409"} 2
aleph_kube_requests_total{verb="watch",code="200"} 9
aleph_kube_requests_total{verb="get",code="error"} 1
aleph_reconcile_total{controller="tenant",result="success"} 40
aleph_reconcile_total{controller="aimodel",result="success"} 5
aleph_reconcile_total{controller="tenant",result="error"} 1
aleph_first_reconcile_seconds 0.123
# EOF
"#;

    #[test]
    fn requests_are_summed_over_codes_by_verb() {
        let by_verb = requests_by_verb(METRICS);
        assert_eq!(by_verb.get("patch"), Some(&32.0));
        assert_eq!(by_verb.get("list"), Some(&12.0));
        assert_eq!(by_verb.get("get"), Some(&1.0));
        assert_eq!(by_verb.get("create"), None);
        assert_eq!(gauge(METRICS, FIRST_RECONCILE), Some(0.123));
        assert_eq!(gauge(METRICS, "aleph_leader"), None);
        let by_controller = sum_by(METRICS, RECONCILES, "controller");
        assert_eq!(by_controller.get("tenant"), Some(&41.0));
        assert_eq!(by_controller.get("aimodel"), Some(&5.0));
    }

    #[test]
    fn requests_are_grouped_by_verb_and_resource_when_labelled() {
        let metrics = "aleph_kube_requests_total{verb=\"list\",resource=\"namespaces\",code=\"200\"} 4\n\
                       aleph_kube_requests_total{verb=\"list\",resource=\"namespaces\",code=\"500\"} 1\n\
                       aleph_kube_requests_total{verb=\"patch\",resource=\"tenants/status\",code=\"200\"} 2\n";
        let by = requests_by_verb_and_resource(metrics);
        assert_eq!(by.get("list namespaces"), Some(&5.0));
        assert_eq!(by.get("patch tenants/status"), Some(&2.0));
        // Without the resource label, the verb alone.
        assert_eq!(
            requests_by_verb_and_resource(METRICS).get("patch"),
            Some(&32.0)
        );
    }

    #[test]
    fn labels_are_matched_by_their_whole_name() {
        let labels = r#"component="apiserver",group="apps",resource="deployments",scope="cluster",subresource="status",verb="PATCH""#;
        assert_eq!(label(labels, "resource"), Some("deployments"));
        assert_eq!(label(labels, "subresource"), Some("status"));
        assert_eq!(label(labels, "verb"), Some("PATCH"));
        assert_eq!(label(labels, "source"), None);
        // The name of another label inside a value, and an escaped quote.
        let labels = r#"path="/a,verb=\"x\"",verb="GET""#;
        assert_eq!(label(labels, "verb"), Some("GET"));
        assert_eq!(label(labels, "path"), Some(r#"/a,verb=\"x\""#));
        assert_eq!(label("", "verb"), None);
    }

    /// Lines as kube-apiserver v1.35 writes them (labels sorted by name).
    const APISERVER: &str = r#"# HELP apiserver_longrunning_requests [STABLE] Gauge of all active long-running apiserver requests broken out by verb, group, version, resource, scope and component. Not all requests are tracked this way.
# TYPE apiserver_longrunning_requests gauge
apiserver_longrunning_requests{component="apiserver",group="",resource="pods",scope="cluster",subresource="",verb="WATCH",version="v1"} 3
apiserver_longrunning_requests{component="apiserver",group="apps",resource="deployments",scope="namespace",subresource="",verb="WATCH",version="v1"} 2
apiserver_longrunning_requests{component="apiserver",group="",resource="pods",scope="resource",subresource="exec",verb="CONNECT",version="v1"} 1
# HELP apiserver_request_total [STABLE] Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, component, and HTTP response code.
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="cluster",subresource="",verb="LIST",version="v1"} 10
apiserver_request_total{code="201",component="apiserver",dry_run="",group="apps",resource="deployments",scope="namespace",subresource="",verb="POST",version="v1"} 25
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="cluster",subresource="",verb="WATCH",version="v1"} 7
apiserver_request_total{code="200",component="apiserver",dry_run="",group="aleph.dev",resource="tenants",scope="cluster",subresource="status",verb="PATCH",version="v1alpha1"} 3
apiserver_request_total{code="200",component="",dry_run="",group="",resource="",scope="",subresource="/metrics",verb="GET",version=""} 1
apiserver_request_total_other{verb="GET"} 100
"#;

    #[test]
    fn the_api_servers_requests_are_summed_without_watches() {
        assert_eq!(apiserver_requests(APISERVER), 39.0);
        assert_eq!(apiserver_requests(METRICS), 0.0);
        let watches = apiserver_watches(APISERVER);
        assert_eq!(watches.get("pods"), Some(&3.0));
        assert_eq!(watches.get("deployments"), Some(&2.0));
        assert_eq!(watches.len(), 2);
        assert_eq!(besides_watches(&requests_by_verb(METRICS)), 45.0);
    }

    #[test]
    fn the_api_servers_requests_are_grouped_by_verb_and_resource() {
        let by = apiserver_requests_by_verb_and_resource(APISERVER);
        assert_eq!(
            by.into_iter().collect::<Vec<_>>(),
            vec![
                ("LIST pods".to_string(), 10.0),
                ("PATCH tenants/status".to_string(), 3.0),
                ("POST deployments".to_string(), 25.0),
            ]
        );
    }

    #[test]
    fn a_review_is_a_request_but_not_a_write() {
        let metrics = "aleph_kube_requests_total{verb=\"create\",resource=\"selfsubjectreviews\",code=\"201\"} 1\n\
                       aleph_kube_requests_total{verb=\"create\",resource=\"resourcequotas\",code=\"201\"} 3\n\
                       aleph_kube_requests_total{verb=\"patch\",resource=\"tenants/status\",code=\"200\"} 2\n";
        assert_eq!(requests_by_verb(metrics).get("create"), Some(&4.0));
        let may_store = requests_that_may_store(metrics);
        assert_eq!(may_store.get("create"), Some(&3.0));
        assert_eq!(may_store.get("patch"), Some(&2.0));
    }

    #[test]
    fn the_peak_is_read_from_proc_status() {
        let status = "Name:\taleph-operator\nVmPeak:\t  900000 kB\nVmHWM:\t   41234 kB\nVmRSS:\t   40000 kB\n";
        assert_eq!(status_kib(status, "VmHWM"), Some(41234));
        assert_eq!(status_kib(status, "VmRSS"), Some(40000));
        assert_eq!(status_kib(status, "VmSwap"), None);
        // This very process has a status file.
        assert!(peak_rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }

    #[tokio::test]
    async fn the_sampler_sees_heap_and_code() {
        let sampler = MemorySampler::start(std::process::id());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let seen = sampler.finish().await;
        assert!(seen.anon_kib > 0 && seen.file_kib > 0, "{seen:?}");
        assert!(seen.peak_kib >= seen.anon_kib, "{seen:?}");
    }
}
