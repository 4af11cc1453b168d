//! The time integral of a model's requests in flight, as a Prometheus
//! counter: `inflight_seconds_total{namespace,model}` grows by the number of
//! requests in flight for every second that passes, so its rate over any
//! window is the mean number in flight over that window. The autoscaler
//! reads that mean between two looks rather than the gauge at the instant
//! of a look, which short requests pass through unseen.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

#[derive(Debug, Default)]
struct Busy {
    /// Requests in flight now.
    in_flight: u64,
    /// Request-seconds up to `since`.
    seconds: f64,
    /// When `in_flight` last changed (`None` before the first request).
    since: Option<Instant>,
}

impl Busy {
    /// Request-seconds up to `now`.
    fn at(&self, now: Instant) -> f64 {
        let open = self.since.map_or(0.0, |since| {
            now.saturating_duration_since(since).as_secs_f64()
        });
        self.seconds + self.in_flight as f64 * open
    }

    fn change(&mut self, now: Instant, up: bool) {
        self.seconds = self.at(now);
        self.since = Some(now);
        self.in_flight = if up {
            self.in_flight + 1
        } else {
            self.in_flight.saturating_sub(1)
        };
    }
}

/// A counter of request-seconds in flight; cloning it shares it.
#[derive(Clone, Debug, Default)]
pub struct BusySeconds(Arc<Mutex<Busy>>);

impl BusySeconds {
    /// One more request in flight from `now`.
    pub fn start(&self, now: Instant) {
        self.lock().change(now, true);
    }

    /// One request fewer in flight from `now`.
    pub fn end(&self, now: Instant) {
        self.lock().change(now, false);
    }

    /// Request-seconds in flight up to `now`.
    pub fn seconds(&self, now: Instant) -> f64 {
        self.lock().at(now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Busy> {
        // The figures stay consistent whatever panicked while holding it.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl TypedMetric for BusySeconds {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for BusySeconds {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, f64>(&self.seconds(Instant::now()), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_integral_counts_every_request_for_the_time_it_was_in_flight() {
        let busy = BusySeconds::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(busy.seconds(at(0)), 0.0);
        busy.start(at(0));
        busy.start(at(100));
        busy.end(at(300));
        // 0-100 ms: one; 100-300: two; 300-1000: one, still open.
        let expected = 0.1 + 0.4 + 0.7;
        assert!((busy.seconds(at(1000)) - expected).abs() < 1e-9);
        busy.end(at(1000));
        assert!((busy.seconds(at(5000)) - expected).abs() < 1e-9);
        // An end without a start (never expected) cannot go negative.
        busy.end(at(5000));
        assert!((busy.seconds(at(6000)) - expected).abs() < 1e-9);
    }

    #[test]
    fn it_is_exposed_as_a_counter_with_its_open_part() {
        let mut registry = prometheus_client::registry::Registry::default();
        let busy = BusySeconds::default();
        registry.register("inflight_seconds", "test", busy.clone());
        busy.start(Instant::now() - Duration::from_secs(2));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        let value: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("inflight_seconds_total "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no counter line: {text}"));
        assert!((2.0..3.0).contains(&value), "{text}");
        assert!(text.contains("# TYPE inflight_seconds counter"), "{text}");
    }
}
