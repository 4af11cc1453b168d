//! The tenants' usage summary: what the gateways' counters grew by, added to
//! `Tenant.status.gatewayUsage` for the current UTC day and month.
//!
//! Each gateway replica's counters start at zero when it starts. The operator
//! remembers the last value of every series of every replica and adds the
//! growth; a counter that went down belongs to a restarted replica and counts
//! from zero. A replica that started before the operator began watching is
//! taken as already counted (by the operator that watched it then), so the
//! summary can miss what a replica served between the last look of one
//! operator and the first of the next, and what a replica served in its last
//! seconds before it stopped; the gateway's own counters are exact.

use std::collections::{BTreeMap, HashMap};

use aleph_crds::tenant::{GatewayUsage, UsageTotals};
use chrono::{DateTime, Utc};

use super::scrape::{GatewaySample, UsageKind};

/// Counter values last seen, per gateway replica (by pod UID) and series.
#[derive(Debug, Default)]
pub struct Ledger {
    seen: HashMap<String, BTreeMap<String, f64>>,
    pending: BTreeMap<String, UsageTotals>,
}

impl Ledger {
    /// Adds what `sample` of the replica `pod` grew by since its last sample.
    /// `new_replica`: the replica started after this ledger began, so its
    /// first sample counts whole.
    pub fn observe(&mut self, pod: &str, new_replica: bool, sample: &GatewaySample) {
        let first = !self.seen.contains_key(pod);
        let previous = self.seen.entry(pod.to_string()).or_default();
        for (series, (tenant, kind, value)) in &sample.usage {
            let before = previous.insert(series.clone(), *value);
            let growth = match before {
                Some(before) if *value >= before => value - before,
                // Lower than before: the replica restarted.
                Some(_) => *value,
                None if first && !new_replica => 0.0,
                None => *value,
            };
            if growth <= 0.0 {
                continue;
            }
            let totals = self.pending.entry(tenant.clone()).or_default();
            let growth = growth.round() as u64;
            match kind {
                UsageKind::Requests => totals.requests += growth,
                UsageKind::PromptTokens => totals.prompt_tokens += growth,
                UsageKind::CompletionTokens => totals.completion_tokens += growth,
            }
        }
    }

    /// Forgets replicas that are gone.
    pub fn retain(&mut self, alive: impl Fn(&str) -> bool) {
        self.seen.retain(|pod, _| alive(pod));
    }

    /// Takes what was added since the last call, by tenant.
    pub fn take(&mut self) -> BTreeMap<String, UsageTotals> {
        std::mem::take(&mut self.pending)
    }

    /// Puts back what could not be written.
    pub fn restore(&mut self, tenant: String, totals: UsageTotals) {
        let entry = self.pending.entry(tenant).or_default();
        *entry = add(*entry, totals);
    }
}

fn add(a: UsageTotals, b: UsageTotals) -> UsageTotals {
    UsageTotals {
        requests: a.requests + b.requests,
        prompt_tokens: a.prompt_tokens + b.prompt_tokens,
        completion_tokens: a.completion_tokens + b.completion_tokens,
    }
}

/// `current` with `growth` added at `now`: a new day or month starts from zero.
pub fn accumulate(
    current: Option<&GatewayUsage>,
    growth: UsageTotals,
    now: DateTime<Utc>,
) -> GatewayUsage {
    let day = now.format("%Y-%m-%d").to_string();
    let month = now.format("%Y-%m").to_string();
    let (today, this_month) = match current {
        Some(c) => (
            if c.day == day {
                c.today
            } else {
                UsageTotals::default()
            },
            if c.month == month {
                c.this_month
            } else {
                UsageTotals::default()
            },
        ),
        None => Default::default(),
    };
    GatewayUsage {
        day,
        today: add(today, growth),
        month,
        this_month: add(this_month, growth),
        updated: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaler::scrape::parse;

    fn sample(prompt: u64, completion: u64, requests: u64) -> GatewaySample {
        parse(&format!(
            "aleph_gateway_tokens_total{{tenant=\"acme\",model=\"m\",key=\"k\",kind=\"prompt\"}} {prompt}\n\
             aleph_gateway_tokens_total{{tenant=\"acme\",model=\"m\",key=\"k\",kind=\"completion\"}} {completion}\n\
             aleph_gateway_requests_total{{tenant=\"acme\",model=\"m\",code=\"200\"}} {requests}\n"
        ))
    }

    fn totals(requests: u64, prompt_tokens: u64, completion_tokens: u64) -> UsageTotals {
        UsageTotals {
            requests,
            prompt_tokens,
            completion_tokens,
        }
    }

    #[test]
    fn growth_is_added_and_a_restart_counts_from_zero() {
        let mut ledger = Ledger::default();
        // A replica already running when the ledger began: its past is not counted.
        ledger.observe("old", false, &sample(100, 10, 5));
        assert!(ledger.take().is_empty());
        ledger.observe("old", false, &sample(130, 14, 7));
        // A new replica counts whole.
        ledger.observe("new", true, &sample(20, 2, 1));
        assert_eq!(ledger.take().get("acme"), Some(&totals(3, 50, 6)));
        // The old replica restarted: its counters start again.
        ledger.observe("old", false, &sample(8, 1, 1));
        assert_eq!(ledger.take().get("acme"), Some(&totals(1, 8, 1)));
        ledger.restore("acme".into(), totals(1, 1, 1));
        ledger.retain(|pod| pod == "new");
        ledger.observe("new", true, &sample(20, 2, 1));
        assert_eq!(ledger.take().get("acme"), Some(&totals(1, 1, 1)));
    }

    #[test]
    fn a_new_day_and_a_new_month_start_from_zero() {
        let at = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .expect("a time")
                .with_timezone(&Utc)
        };
        let first = accumulate(None, totals(1, 10, 2), at("2026-11-30T23:59:00Z"));
        assert_eq!(
            (first.day.as_str(), first.month.as_str()),
            ("2026-11-30", "2026-11")
        );
        let same = accumulate(Some(&first), totals(1, 5, 1), at("2026-11-30T23:59:30Z"));
        assert_eq!(
            (same.today, same.this_month),
            (totals(2, 15, 3), totals(2, 15, 3))
        );
        let next = accumulate(Some(&same), totals(1, 1, 1), at("2026-12-01T00:00:10Z"));
        assert_eq!(
            (next.today, next.this_month),
            (totals(1, 1, 1), totals(1, 1, 1))
        );
        let later = accumulate(Some(&next), totals(1, 1, 1), at("2026-12-02T08:00:00Z"));
        assert_eq!(
            (later.today, later.this_month),
            (totals(1, 1, 1), totals(2, 2, 2))
        );
    }
}
