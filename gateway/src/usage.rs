//! Token metering: the engine's own `usage` counts, read from plain JSON
//! responses and from the server-sent events of streamed ones as they pass,
//! turned into Prometheus series, tenant limit charges and per (tenant,
//! model) running totals for today and this month.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Datelike, NaiveDate};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::FastMap;
use crate::clock::Clock;
use crate::inflight::BusySeconds;
use crate::limits::Limits;

mod scan;
pub(crate) use scan::UsageScanner;
#[cfg(test)]
use scan::{JSON_WINDOW, MAX_SSE_LINE};

/// The tokens of one request, as the engine counted them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// `usage.prompt_tokens`.
    pub prompt_tokens: u64,
    /// `usage.completion_tokens` (0 for embeddings).
    pub completion_tokens: u64,
}

impl Usage {
    /// The `usage` object of a response or chunk, when it has a non-null one.
    pub fn of(response: &Value) -> Option<Usage> {
        Usage::from_object(response.get("usage")?)
    }

    /// The `usage` of a JSON document, as [`Usage::of`] finds it in the
    /// parsed document (a document that does not parse has none), but
    /// building only the `usage` value: the rest (the generated text above
    /// all) is checked as strictly and skipped, not allocated.
    ///
    /// The rest is skipped by serde_json's own skipping, which checks the
    /// syntax, escapes and control characters but not what a parsed string
    /// must also be: UTF-8, checked here on the whole document at once, and
    /// free of unpaired surrogates, which only a `\uD800`-`\uDFFF` escape
    /// can make: a document with one is read the slower way, every string
    /// parsed ([`Checked`]).
    pub fn of_json(document: &[u8]) -> Option<Usage> {
        std::str::from_utf8(document).ok()?;
        let usage = if has_surrogate_escape(document) {
            serde_json::from_slice::<UsageOnly<true>>(document).ok()?.0
        } else {
            serde_json::from_slice::<UsageOnly<false>>(document).ok()?.0
        };
        usage?
    }

    fn from_object(usage: &Value) -> Option<Usage> {
        let usage = usage.as_object()?;
        let count = |name: &str| usage.get(name).and_then(Value::as_u64).unwrap_or(0);
        Some(Usage {
            prompt_tokens: count("prompt_tokens"),
            completion_tokens: count("completion_tokens"),
        })
    }

    /// Prompt plus completion tokens.
    pub fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// Whether `document` has a `\u` escape of a surrogate (`\uD800` to
/// `\uDFFF`, any case), or something that looks like one.
fn has_surrogate_escape(document: &[u8]) -> bool {
    let mut rest = document;
    while let Some(at) = rest.iter().position(|&b| b == b'\\') {
        if let [
            b'u',
            b'd' | b'D',
            b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F',
            ..,
        ] = rest[at + 1..]
        {
            return true;
        }
        rest = &rest[at + 1..];
    }
    false
}

/// The last top-level `usage` member of a JSON object (as in a parsed
/// [`Value`], where a repeated key keeps its last value), read as
/// [`Usage::of`] reads it; `None` inside when there is none. Anything but an
/// object fails to deserialize. The other members are skipped: `STRICT`,
/// every string in them parsed ([`Checked`]); else by serde_json's skipping
/// (see [`Usage::of_json`]).
struct UsageOnly<const STRICT: bool>(Option<Option<Usage>>);

impl<'de, const STRICT: bool> Deserialize<'de> for UsageOnly<STRICT> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members<const STRICT: bool>;
        impl<'de, const STRICT: bool> Visitor<'de> for Members<STRICT> {
            type Value = UsageOnly<STRICT>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UsageOnly<STRICT>, A::Error> {
                let mut usage = None;
                while let Some(IsUsage(is_usage)) = map.next_key()? {
                    if is_usage {
                        usage = Some(map.next_value::<UsageMember>()?.0);
                    } else if STRICT {
                        map.next_value::<Checked>()?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(UsageOnly(usage))
            }
        }
        deserializer.deserialize_map(Members::<STRICT>)
    }
}

/// Any JSON value, checked as strictly as a parsed [`Value`] is (escapes,
/// surrogates, UTF-8) and kept nowhere: strings without escapes are
/// borrowed, never copied.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Any;
        impl<'de> Visitor<'de> for Any {
            type Value = Checked;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }

            fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
                Ok(Checked)
            }

            fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
                Ok(Checked)
            }

            fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
                Ok(Checked)
            }

            fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
                Ok(Checked)
            }

            fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
                Ok(Checked)
            }

            fn visit_unit<E>(self) -> Result<Checked, E> {
                Ok(Checked)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Checked, A::Error> {
                skip_seq(seq).map(|()| Checked)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Checked, A::Error> {
                skip_map(map).map(|()| Checked)
            }
        }
        deserializer.deserialize_any(Any)
    }
}

/// A `usage` member's value as [`Usage::from_object`] reads the parsed one:
/// an object's `prompt_tokens` and `completion_tokens` (the last of a
/// repeated name; 0 when missing or not an unsigned integer), `None` for
/// anything but an object. Built without a [`Value`]: nothing is allocated.
struct UsageMember(Option<Usage>);

impl<'de> Deserialize<'de> for UsageMember {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Member;
        impl<'de> Visitor<'de> for Member {
            type Value = UsageMember;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }

            fn visit_bool<E>(self, _: bool) -> Result<UsageMember, E> {
                Ok(UsageMember(None))
            }

            fn visit_i64<E>(self, _: i64) -> Result<UsageMember, E> {
                Ok(UsageMember(None))
            }

            fn visit_u64<E>(self, _: u64) -> Result<UsageMember, E> {
                Ok(UsageMember(None))
            }

            fn visit_f64<E>(self, _: f64) -> Result<UsageMember, E> {
                Ok(UsageMember(None))
            }

            fn visit_str<E>(self, _: &str) -> Result<UsageMember, E> {
                Ok(UsageMember(None))
            }

            fn visit_unit<E>(self) -> Result<UsageMember, E> {
                Ok(UsageMember(None))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<UsageMember, A::Error> {
                skip_seq(seq).map(|()| UsageMember(None))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UsageMember, A::Error> {
                let mut usage = Usage::default();
                while let Some(TokenKey(kind)) = map.next_key()? {
                    match kind {
                        Some(TokenKind::prompt) => {
                            usage.prompt_tokens = map.next_value::<Count>()?.0
                        }
                        Some(TokenKind::completion) => {
                            usage.completion_tokens = map.next_value::<Count>()?.0;
                        }
                        None => {
                            map.next_value::<Checked>()?;
                        }
                    }
                }
                Ok(UsageMember(Some(usage)))
            }
        }
        deserializer.deserialize_any(Member)
    }
}

/// Which count a `usage` key names, if any (after unescaping).
struct TokenKey(Option<TokenKind>);

impl<'de> Deserialize<'de> for TokenKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Key;
        impl Visitor<'_> for Key {
            type Value = TokenKey;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }

            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<TokenKey, E> {
                Ok(TokenKey(match key {
                    "prompt_tokens" => Some(TokenKind::prompt),
                    "completion_tokens" => Some(TokenKind::completion),
                    _ => None,
                }))
            }
        }
        deserializer.deserialize_str(Key)
    }
}

/// A count as `Value::as_u64` reads it: an unsigned integer, else 0.
struct Count(u64);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Number;
        impl<'de> Visitor<'de> for Number {
            type Value = Count;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }

            fn visit_u64<E>(self, n: u64) -> Result<Count, E> {
                Ok(Count(n))
            }

            fn visit_bool<E>(self, _: bool) -> Result<Count, E> {
                Ok(Count(0))
            }

            fn visit_i64<E>(self, _: i64) -> Result<Count, E> {
                Ok(Count(0))
            }

            fn visit_f64<E>(self, _: f64) -> Result<Count, E> {
                Ok(Count(0))
            }

            fn visit_str<E>(self, _: &str) -> Result<Count, E> {
                Ok(Count(0))
            }

            fn visit_unit<E>(self) -> Result<Count, E> {
                Ok(Count(0))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Count, A::Error> {
                skip_seq(seq).map(|()| Count(0))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Count, A::Error> {
                skip_map(map).map(|()| Count(0))
            }
        }
        deserializer.deserialize_any(Number)
    }
}

/// Reads the rest of an array, each element [`Checked`].
fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<Checked>()?.is_some() {}
    Ok(())
}

/// Reads the rest of an object, each key and value [`Checked`].
fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_key::<Checked>()?.is_some() {
        map.next_value::<Checked>()?;
    }
    Ok(())
}

/// Whether a member's key is `usage` (after unescaping).
struct IsUsage(bool);

impl<'de> Deserialize<'de> for IsUsage {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Key;
        impl Visitor<'_> for Key {
            type Value = IsUsage;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }

            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<IsUsage, E> {
                Ok(IsUsage(key == "usage"))
            }
        }
        deserializer.deserialize_str(Key)
    }
}

/// Which tokens a count is of.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum TokenKind {
    /// Prompt tokens.
    #[allow(non_camel_case_types)]
    prompt,
    /// Completion tokens.
    #[allow(non_camel_case_types)]
    completion,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    tenant: Name,
    model: Name,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    tenant: Name,
    model: Name,
    key: Name,
    kind: TokenKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InflightLabels {
    namespace: Name,
    model: Name,
}

/// A label value shared by every series that carries it: a tenant, model or
/// key name is kept once however many series name it (20,000 token series
/// over 1,000 keys and 1,000 models would otherwise hold 60,000 copies).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Name(Arc<str>);

impl prometheus_client::encoding::EncodeLabelValue for Name {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        self.0.as_ref().encode(encoder)
    }
}

/// The names seen so far, each kept once. Looked up by borrowed text, so a
/// request copies a name only the first time it is seen. Names come from
/// the state (tenants, models, keys that exist), so the set stays bounded.
#[derive(Clone, Debug, Default)]
struct Names(Arc<Mutex<crate::FastSet<Arc<str>>>>);

impl Names {
    fn get(&self, name: &str) -> Name {
        let mut names = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(kept) = names.get(name) {
            return Name(kept.clone());
        }
        let kept: Arc<str> = Arc::from(name);
        names.insert(kept.clone());
        Name(kept)
    }
}

/// The gateway's Prometheus series, all prefixed `aleph_gateway_`:
/// `requests_total{tenant,model,code}`,
/// `tokens_total{tenant,model,key,kind="prompt"|"completion"}`, and per
/// AIModel (`model` is its object name), what its autoscaling reads:
/// `inflight_requests{namespace,model}` (requests between their resolution to
/// the model and their answer's end, those waiting for a first ready
/// endpoint included), `inflight_seconds_total{namespace,model}` (its time
/// integral: its rate is the mean in flight), `arrivals_total{namespace,model}` (requests resolved
/// to the model, counted before any wait) and `queued_requests{namespace,model}`
/// (requests waiting for a first ready endpoint).
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    inflight: Family<InflightLabels, Gauge>,
    busy: Family<InflightLabels, BusySeconds>,
    names: Names,
    arrivals: Family<InflightLabels, Counter>,
    queued: Family<InflightLabels, Gauge>,
    /// Each AIModel's series of the request path, by namespace and name:
    /// found with one lookup per request instead of one per family (whose
    /// labels hash with SipHash). The families never drop a series, so a
    /// handle kept here always counts in the one they show.
    model_series: Arc<Mutex<FastMap<String, FastMap<String, ModelSeries>>>>,
}

/// The handles of one AIModel's `arrivals_total`, `inflight_requests` and
/// `inflight_seconds_total`.
#[derive(Clone, Debug)]
struct ModelSeries {
    arrivals: Counter,
    inflight: Gauge,
    busy: BusySeconds,
}

impl Metrics {
    /// The series, registered in `registry` under the `aleph_gateway` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let registry = registry.sub_registry_with_prefix("aleph_gateway");
        registry.register(
            "requests",
            "Requests answered, by tenant, model and HTTP status",
            metrics.requests.clone(),
        );
        registry.register(
            "tokens",
            "Tokens the engines reported in usage, by tenant, model, key and kind",
            metrics.tokens.clone(),
        );
        registry.register(
            "inflight_requests",
            "Requests in flight through this gateway (waiting for a first ready endpoint included), by AIModel",
            metrics.inflight.clone(),
        );
        registry.register(
            "inflight_seconds",
            "Request-seconds in flight (the time integral of inflight_requests): its rate is the mean number of requests in flight, by AIModel",
            metrics.busy.clone(),
        );
        registry.register(
            "arrivals",
            "Requests received for each AIModel, counted before any wait",
            metrics.arrivals.clone(),
        );
        registry.register(
            "queued_requests",
            "Requests waiting for a first ready endpoint of their AIModel",
            metrics.queued.clone(),
        );
        metrics
    }

    fn model_labels(&self, namespace: &str, model: &str) -> InflightLabels {
        InflightLabels {
            namespace: self.names.get(namespace),
            model: self.names.get(model),
        }
    }

    /// Counts a request resolved to the AIModel `namespace/model`, and
    /// counts it in flight until the returned guard is dropped: the arrival
    /// and the in-flight series of one request, their labels made once.
    pub fn arrive(&self, namespace: &str, model: &str) -> InflightGuard {
        let series = {
            let mut all = self.model_series.lock().unwrap_or_else(|e| e.into_inner());
            let of_namespace = crate::entry_for(&mut all, namespace, FastMap::default);
            match of_namespace.get(model) {
                Some(series) => series.clone(),
                None => {
                    let labels = self.model_labels(namespace, model);
                    let series = ModelSeries {
                        arrivals: self.arrivals.get_or_create(&labels).clone(),
                        inflight: self.inflight.get_or_create(&labels).clone(),
                        busy: self.busy.get_or_create(&labels).clone(),
                    };
                    of_namespace.insert(model.to_owned(), series.clone());
                    series
                }
            }
        };
        series.arrivals.inc();
        series.inflight.inc();
        series.busy.start(std::time::Instant::now());
        InflightGuard {
            gauge: series.inflight,
            busy: series.busy,
        }
    }

    /// The requests waiting for a first ready endpoint of the AIModel
    /// `namespace/model`: a gauge to raise and lower.
    pub(crate) fn queued(&self, namespace: &str, model: &str) -> Gauge {
        self.queued
            .get_or_create(&self.model_labels(namespace, model))
            .clone()
    }

    /// Counts one answered request. `model` is the model's client-facing name,
    /// empty when the request never resolved to one (so that the label values
    /// stay bounded).
    pub fn count_request(&self, tenant: &str, model: &str, code: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                tenant: self.names.get(tenant),
                model: self.names.get(model),
                code,
            })
            .inc();
    }

    /// Requests counted so far with these labels.
    pub fn requests(&self, tenant: &str, model: &str, code: u16) -> u64 {
        self.requests
            .get_or_create(&RequestLabels {
                tenant: self.names.get(tenant),
                model: self.names.get(model),
                code,
            })
            .get()
    }

    fn count_tokens(&self, tenant: &str, model: &str, key: &str, usage: Usage) {
        // The names are looked up once for both kinds.
        let mut labels = TokenLabels {
            tenant: self.names.get(tenant),
            model: self.names.get(model),
            key: self.names.get(key),
            kind: TokenKind::prompt,
        };
        for (kind, n) in [
            (TokenKind::prompt, usage.prompt_tokens),
            (TokenKind::completion, usage.completion_tokens),
        ] {
            labels.kind = kind;
            self.tokens.get_or_create(&labels).inc_by(n);
        }
    }

    /// Tokens counted so far with these labels.
    pub fn tokens(&self, tenant: &str, model: &str, key: &str, kind: TokenKind) -> u64 {
        self.tokens
            .get_or_create(&TokenLabels {
                tenant: self.names.get(tenant),
                model: self.names.get(model),
                key: self.names.get(key),
                kind,
            })
            .get()
    }
}

/// One request in the `inflight_requests` gauge and its time integral.
#[derive(Debug)]
pub struct InflightGuard {
    gauge: Gauge,
    busy: BusySeconds,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.gauge.dec();
        self.busy.end(std::time::Instant::now());
    }
}

/// Token counts over a period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenTotals {
    /// Requests whose usage was reported.
    pub requests: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
}

impl TokenTotals {
    fn add(&mut self, usage: Usage) {
        self.requests += 1;
        self.prompt_tokens = self.prompt_tokens.saturating_add(usage.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(usage.completion_tokens);
    }
}

/// One (tenant, model)'s usage today and this month (UTC), as this replica saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageTotals {
    /// The day `today` counts.
    pub day: NaiveDate,
    /// Usage on `day`.
    pub today: TokenTotals,
    /// Usage in the month of `day`.
    pub this_month: TokenTotals,
}

impl UsageTotals {
    fn at(day: NaiveDate) -> Self {
        Self {
            day,
            today: TokenTotals::default(),
            this_month: TokenTotals::default(),
        }
    }

    fn roll(&mut self, day: NaiveDate) {
        if day == self.day {
            return;
        }
        if (day.year(), day.month()) != (self.day.year(), self.day.month()) {
            self.this_month = TokenTotals::default();
        }
        self.today = TokenTotals::default();
        self.day = day;
    }
}

/// Running usage per (tenant, model name), for a status writer to read.
#[derive(Debug)]
pub struct UsageLedger {
    clock: Arc<dyn Clock>,
    /// By tenant, then model: looked up by borrowed names, without copying them.
    totals: Mutex<FastMap<String, FastMap<String, UsageTotals>>>,
}

impl UsageLedger {
    /// An empty ledger on `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            totals: Mutex::default(),
        }
    }

    fn today(&self) -> NaiveDate {
        let now = self.clock.now();
        DateTime::from_timestamp(i64::try_from(now.as_secs()).unwrap_or(i64::MAX), 0)
            .unwrap_or_default()
            .date_naive()
    }

    /// Adds one request's usage.
    pub fn record(&self, tenant: &str, model: &str, usage: Usage) {
        let day = self.today();
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let models = crate::entry_for(&mut totals, tenant, FastMap::default);
        let entry = crate::entry_for(models, model, || UsageTotals::at(day));
        entry.roll(day);
        entry.today.add(usage);
        entry.this_month.add(usage);
    }

    /// A (tenant, model)'s totals as of now; zero when it had no usage.
    pub fn totals(&self, tenant: &str, model: &str) -> UsageTotals {
        let day = self.today();
        let totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let mut entry = totals
            .get(tenant)
            .and_then(|models| models.get(model))
            .copied()
            .unwrap_or_else(|| UsageTotals::at(day));
        entry.roll(day);
        entry
    }

    /// Every (tenant, model) with usage, with its totals as of now.
    pub fn all(&self) -> Vec<((String, String), UsageTotals)> {
        let day = self.today();
        let totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        totals
            .iter()
            .flat_map(|(tenant, models)| {
                models.iter().map(move |(model, totals)| {
                    let mut totals = *totals;
                    totals.roll(day);
                    ((tenant.clone(), model.clone()), totals)
                })
            })
            .collect()
    }
}

/// Everything one request's usage goes to, with the request's labels.
#[derive(Debug)]
pub(crate) struct Meter {
    pub(crate) metrics: Metrics,
    pub(crate) limits: Arc<Limits>,
    pub(crate) ledger: Arc<UsageLedger>,
    pub(crate) tenant: String,
    pub(crate) model: String,
    pub(crate) key: String,
}

impl Meter {
    pub(crate) fn record(&self, usage: Usage) {
        self.metrics
            .count_tokens(&self.tenant, &self.model, &self.key, usage);
        self.limits.charge(&self.tenant, usage.total());
        self.ledger.record(&self.tenant, &self.model, usage);
    }
}

#[cfg(test)]
#[path = "usage_tests.rs"]
mod tests;
