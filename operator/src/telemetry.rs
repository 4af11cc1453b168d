//! Logs through `tracing` (one JSON object per line, or text) and, with the
//! `otlp` feature, OpenTelemetry trace export: each reconcile is a span named
//! `reconcile` carrying the object's kind, namespace and name, with the
//! Kubernetes requests it made as children.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::cli::LogFormat;

/// What has to be flushed before the process exits.
#[derive(Default)]
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Exports the spans still buffered. Blocks: call it off the async runtime.
    pub fn shutdown(self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("aleph-operator: could not flush the trace export: {error}");
        }
    }
}

/// Installs the global subscriber: `level` is a tracing filter (`info`,
/// `aleph_controllers=debug,info`), `format` the log format.
pub fn init(level: &str, format: LogFormat) -> Telemetry {
    let (filter, bad_filter) = match EnvFilter::try_new(level) {
        Ok(filter) => (filter, None),
        Err(error) => (EnvFilter::new("info"), Some(error.to_string())),
    };
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
    };
    let registry = tracing_subscriber::registry().with(filter).with(logs);
    #[cfg(feature = "otlp")]
    let (telemetry, otlp_error) = {
        let (layer, provider, error) = match otlp::tracer() {
            Ok(Some((provider, tracer))) => (
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
                Some(provider),
                None,
            ),
            Ok(None) => (None, None, None),
            Err(error) => (None, None, Some(error)),
        };
        registry.with(layer).init();
        (Telemetry { provider }, error)
    };
    #[cfg(not(feature = "otlp"))]
    let telemetry = {
        registry.init();
        Telemetry::default()
    };
    if let Some(error) = bad_filter {
        tracing::warn!(%error, filter = level, "invalid --log-level; logging at info");
    }
    #[cfg(feature = "otlp")]
    if let Some(error) = otlp_error {
        tracing::warn!(%error, "OpenTelemetry trace export is off");
    } else if telemetry.provider.is_some() {
        tracing::info!("exporting traces over OTLP");
    }
    telemetry
}

#[cfg(feature = "otlp")]
mod otlp {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::SpanExporter;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

    /// Whether the standard variables ask for trace export: an endpoint is set
    /// and the SDK is not disabled.
    fn wanted() -> bool {
        let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
        let disabled =
            std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
        !disabled
            && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    }

    /// A batch exporter to the endpoint of the OTLP variables (OTLP/HTTP with
    /// protobuf, port 4318 on a collector); `None` when none is set.
    pub(super) fn tracer() -> Result<Option<(SdkTracerProvider, SdkTracer)>, String> {
        if !wanted() {
            return Ok(None);
        }
        let exporter = SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| e.to_string())?;
        let service = std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "aleph-operator".to_owned());
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service).build())
            .build();
        let tracer = provider.tracer("aleph-operator");
        Ok(Some((provider, tracer)))
    }
}
