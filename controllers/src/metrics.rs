//! Prometheus metrics of the operator. Labels are bounded: controller names,
//! result, error kinds, verbs and status codes; never object names.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of one reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// The controller, for example `tenant`.
    pub controller: &'static str,
    /// `success` or `error`.
    pub result: &'static str,
}

/// Labels of a reconcile error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The controller.
    pub controller: &'static str,
    /// The error's kind (an enum variant name).
    pub error: &'static str,
}

/// Labels of a controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// The controller.
    pub controller: &'static str,
}

/// Labels of a request to the Kubernetes API.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubeRequestLabels {
    /// get, list, watch, create, update, patch, delete.
    pub verb: &'static str,
    /// The resource, with its subresource when there is one (`leases`,
    /// `tenants/status`); `other` for paths that name none (discovery).
    pub resource: String,
    /// The HTTP status code, or `error` when no response came.
    pub code: String,
}

/// Labels of a SageMaker call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SageMakerCallLabels {
    /// The API operation, for example `CreateTrainingJob`.
    pub operation: &'static str,
    /// ok, not_found, throttled, server_error, terminal, network.
    pub outcome: &'static str,
}

/// Every metric the operator exports.
#[derive(Debug)]
pub struct Metrics {
    /// Reconciles by controller and result.
    pub reconciles: Family<ReconcileLabels, Counter>,
    /// Reconcile errors by controller and error kind.
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// Reconcile duration by controller.
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
    /// Requests sent to the Kubernetes API by verb, resource and status code.
    pub kube_requests: Family<KubeRequestLabels, Counter>,
    /// Objects skipped because they do not match the operator's types.
    pub undecodable_objects: Family<ControllerLabels, Counter>,
    /// SageMaker calls by operation and outcome.
    pub sagemaker_calls: Family<SageMakerCallLabels, Counter>,
    /// Seconds from process start to the first finished reconcile.
    pub first_reconcile_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    started: Instant,
    first_reconcile: std::sync::Once,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            leader: Gauge::default(),
            kube_requests: Family::default(),
            undecodable_objects: Family::default(),
            sagemaker_calls: Family::default(),
            first_reconcile_seconds: Gauge::default(),
            started: Instant::now(),
            first_reconcile: std::sync::Once::new(),
        }
    }
}

impl Metrics {
    /// Registers every metric under the prefix `aleph`.
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("aleph");
        r.register(
            "reconcile",
            "Reconciles by controller and result",
            self.reconciles.clone(),
        );
        r.register(
            "reconcile_errors",
            "Reconcile errors by controller and error kind",
            self.reconcile_errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Reconcile duration by controller",
            self.reconcile_duration.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader lease",
            self.leader.clone(),
        );
        r.register(
            "kube_requests",
            "Requests sent to the Kubernetes API by verb, resource and status code",
            self.kube_requests.clone(),
        );
        r.register(
            "undecodable_objects",
            "Objects skipped because they do not match the operator's types, by controller",
            self.undecodable_objects.clone(),
        );
        r.register(
            "sagemaker_calls",
            "SageMaker API calls by operation and outcome",
            self.sagemaker_calls.clone(),
        );
        r.register(
            "first_reconcile_seconds",
            "Seconds from process start to the first finished reconcile",
            self.first_reconcile_seconds.clone(),
        );
    }

    /// Starts timing one reconcile; the returned guard records it when finished.
    pub fn reconcile_timer(self: &Arc<Self>, controller: &'static str) -> ReconcileTimer {
        ReconcileTimer {
            metrics: self.clone(),
            controller,
            started: Instant::now(),
        }
    }

    /// Counts a failed reconcile.
    pub fn reconcile_failed(&self, controller: &'static str, error: &'static str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels { controller, error })
            .inc();
    }
}

/// Records a reconcile's duration and result when dropped or finished.
#[derive(Debug)]
pub struct ReconcileTimer {
    metrics: Arc<Metrics>,
    controller: &'static str,
    started: Instant,
}

impl ReconcileTimer {
    /// Records the reconcile as finished with `ok` telling success.
    pub fn finish(self, ok: bool) {
        let m = &self.metrics;
        m.reconcile_duration
            .get_or_create(&ControllerLabels {
                controller: self.controller,
            })
            .observe(self.started.elapsed().as_secs_f64());
        m.reconciles
            .get_or_create(&ReconcileLabels {
                controller: self.controller,
                result: if ok { "success" } else { "error" },
            })
            .inc();
        m.first_reconcile.call_once(|| {
            m.first_reconcile_seconds
                .set(m.started.elapsed().as_secs_f64());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The families a text names (`aleph_reconcile_total` is the family
    /// `aleph_reconcile`, as `# TYPE` names it).
    fn families(text: &str) -> std::collections::BTreeSet<String> {
        text.match_indices("aleph_")
            .map(|(at, _)| {
                let name: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                ["_total", "_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(&name)
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn the_dashboard_plots_only_exported_metrics() {
        let metrics = Arc::new(Metrics::default());
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        // Families without samples are not encoded: give each one.
        metrics.reconcile_timer("tenant").finish(false);
        metrics.reconcile_failed("tenant", "Kube");
        metrics
            .kube_requests
            .get_or_create(&KubeRequestLabels {
                verb: "get",
                resource: "tenants".into(),
                code: "200".into(),
            })
            .inc();
        metrics
            .undecodable_objects
            .get_or_create(&ControllerLabels {
                controller: "tenant",
            })
            .inc();
        metrics
            .sagemaker_calls
            .get_or_create(&SageMakerCallLabels {
                operation: "DescribeEndpoint",
                outcome: "ok",
            })
            .inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .unwrap_or_else(|e| panic!("{e}"));
        let exported: std::collections::BTreeSet<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect();
        let dashboard = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/grafana/aleph-operator-dashboard.json"
        ))
        .unwrap_or_else(|e| panic!("the Grafana dashboard: {e}"));
        let plotted = families(&dashboard);
        assert!(plotted.len() >= 6, "the dashboard plots {plotted:?}");
        let missing: Vec<_> = plotted.difference(&exported).collect();
        assert!(missing.is_empty(), "plotted but not exported: {missing:?}");
    }
}
