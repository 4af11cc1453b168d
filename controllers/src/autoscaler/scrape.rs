//! Reading aleph-gateway's `/metrics`: the few series the autoscaler and the
//! usage summary need, from the Prometheus text format.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use aleph_util::http::fetch;
use http_body_util::Empty;
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Requests in flight (queued ones included), by AIModel.
pub const INFLIGHT: &str = "aleph_gateway_inflight_requests";
/// Request-seconds in flight (the integral of [`INFLIGHT`]), by AIModel.
pub const INFLIGHT_SECONDS: &str = "aleph_gateway_inflight_seconds_total";
/// Requests received, by AIModel.
pub const ARRIVALS: &str = "aleph_gateway_arrivals_total";
/// Tokens reported by the engines, by tenant, model, key and kind.
pub const TOKENS: &str = "aleph_gateway_tokens_total";
/// Requests answered, by tenant, model and status.
pub const REQUESTS: &str = "aleph_gateway_requests_total";

/// A model's key in the series: `(namespace, AIModel name)`.
pub type ModelKey = (String, String);

/// What one gateway replica reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GatewaySample {
    /// Requests in flight per model.
    pub inflight: HashMap<ModelKey, f64>,
    /// Request-seconds in flight per model (a counter: its rate is the mean
    /// in flight).
    pub inflight_seconds: HashMap<ModelKey, f64>,
    /// Requests received per model (a counter).
    pub arrivals: HashMap<ModelKey, f64>,
    /// Every counter sample the usage summary reads, by its whole series
    /// (name and labels), with the tenant it belongs to and what it counts.
    pub usage: BTreeMap<String, (String, UsageKind, f64)>,
}

/// What a usage counter counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum UsageKind {
    /// Requests answered.
    Requests,
    /// Prompt tokens.
    PromptTokens,
    /// Completion tokens.
    CompletionTokens,
}

/// Parses the exposition `text` (the lines it does not need are skipped).
pub fn parse(text: &str) -> GatewaySample {
    let mut sample = GatewaySample::default();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, labels(rest.trim_end_matches('}'))),
            None => (series, BTreeMap::new()),
        };
        let model = || {
            Some((
                labels.get("namespace")?.clone(),
                labels.get("model")?.clone(),
            ))
        };
        match name {
            INFLIGHT => {
                if let Some(key) = model() {
                    *sample.inflight.entry(key).or_default() += value;
                }
            }
            INFLIGHT_SECONDS => {
                if let Some(key) = model() {
                    *sample.inflight_seconds.entry(key).or_default() += value;
                }
            }
            ARRIVALS => {
                if let Some(key) = model() {
                    *sample.arrivals.entry(key).or_default() += value;
                }
            }
            TOKENS | REQUESTS => {
                let Some(tenant) = labels.get("tenant") else {
                    continue;
                };
                let kind = match (name, labels.get("kind").map(String::as_str)) {
                    (REQUESTS, _) => UsageKind::Requests,
                    (_, Some("prompt")) => UsageKind::PromptTokens,
                    (_, Some("completion")) => UsageKind::CompletionTokens,
                    _ => continue,
                };
                sample
                    .usage
                    .insert(series.to_string(), (tenant.clone(), kind, value));
            }
            _ => {}
        }
    }
    sample
}

/// `a="x",b="y\"z"` into a map, undoing the format's escapes.
fn labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        let name: String = chars
            .by_ref()
            .skip_while(|c| *c == ',' || c.is_whitespace())
            .take_while(|c| *c != '=')
            .collect();
        if name.is_empty() || chars.next() != Some('"') {
            return out;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(name.trim().to_string(), value);
    }
}

/// Fetches and parses gateways' `/metrics` over plain HTTP.
#[derive(Clone, Debug)]
pub struct Scraper {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

/// The largest exposition read (the gateway's series are bounded by its
/// tenants, models and keys).
const MAX_BODY: usize = 16 << 20;

impl Scraper {
    /// A scraper giving each gateway `timeout` to answer.
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        }
    }

    /// One gateway's sample, or why it could not be read.
    pub async fn scrape(&self, addr: SocketAddr) -> Result<GatewaySample, String> {
        let request = Request::get(format!("http://{addr}/metrics"))
            .body(Empty::new())
            .map_err(|e| format!("{addr}: {e}"))?;
        let body = fetch(&self.client, request, MAX_BODY, self.timeout)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        Ok(parse(&String::from_utf8_lossy(&body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP aleph_gateway_inflight_requests Requests in flight through this gateway, by AIModel.
# TYPE aleph_gateway_inflight_requests gauge
aleph_gateway_inflight_requests{namespace="acme-prod",model="chat"} 3
aleph_gateway_inflight_requests{namespace="acme-dev",model="chat"} 0
aleph_gateway_inflight_seconds_total{namespace="acme-prod",model="chat"} 12.5
aleph_gateway_arrivals_total{namespace="acme-prod",model="chat"} 41
aleph_gateway_tokens_total{tenant="acme",model="chat",key="acme-prod/ci",kind="prompt"} 120
aleph_gateway_tokens_total{tenant="acme",model="chat",key="acme-prod/ci",kind="completion"} 30
aleph_gateway_tokens_total{tenant="we\"ird",model="x",key="k",kind="prompt"} 5
aleph_gateway_requests_total{tenant="acme",model="chat",code="200"} 7
aleph_gateway_requests_total{tenant="acme",model="chat",code="429"} 2
some_other_metric 4
# EOF
"#;

    #[test]
    fn the_series_the_autoscaler_and_the_usage_need_are_read() {
        let s = parse(TEXT);
        let prod = ("acme-prod".to_string(), "chat".to_string());
        assert_eq!(s.inflight.get(&prod), Some(&3.0));
        assert_eq!(
            s.inflight
                .get(&("acme-dev".to_string(), "chat".to_string())),
            Some(&0.0)
        );
        assert_eq!(s.inflight_seconds.get(&prod), Some(&12.5));
        assert_eq!(s.arrivals.get(&prod), Some(&41.0));
        let by_kind = |tenant: &str, kind: UsageKind| -> f64 {
            s.usage
                .values()
                .filter(|(t, k, _)| t == tenant && *k == kind)
                .map(|(_, _, v)| v)
                .sum()
        };
        assert_eq!(by_kind("acme", UsageKind::PromptTokens), 120.0);
        assert_eq!(by_kind("acme", UsageKind::CompletionTokens), 30.0);
        assert_eq!(by_kind("acme", UsageKind::Requests), 9.0);
        assert_eq!(by_kind("we\"ird", UsageKind::PromptTokens), 5.0);
        assert_eq!(s.usage.len(), 5);
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let s = parse(
            "aleph_gateway_inflight_requests{namespace=\"a\"} 2\naleph_gateway_inflight_requests{namespace=\"a\",model=\"m\"} nope\n{}\n",
        );
        assert!(s.inflight.is_empty());
    }
}
