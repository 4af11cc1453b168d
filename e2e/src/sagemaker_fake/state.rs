//! What the fake holds: its jobs, Models, EndpointConfigs and endpoints, its
//! counters and its fault dice, behind one lock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use rand::rngs::StdRng;
use serde_json::Value;

use super::{ACCOUNT, FakeConfig, FakeCounters, FakeKnobs};

pub(super) struct Job {
    pub(super) arn: String,
    pub(super) request: Value,
    pub(super) status: &'static str,
    pub(super) secondary: &'static str,
    pub(super) describes: u32,
    pub(super) stop_describes: u32,
    pub(super) created: f64,
    pub(super) started: Instant,
    pub(super) ended: Option<f64>,
    pub(super) fail: bool,
    pub(super) failure_reason: Option<String>,
    pub(super) tags: BTreeMap<String, String>,
}

/// A Model or an EndpointConfig: its ARN, the request that created it, and when.
pub(super) struct Record {
    pub(super) arn: String,
    pub(super) request: Value,
    pub(super) created: f64,
}

impl Record {
    /// Created now by `request`.
    pub(super) fn new(arn: String, request: &Value) -> Self {
        Record {
            arn,
            request: request.clone(),
            created: epoch(),
        }
    }
}

pub(super) struct EndpointRec {
    pub(super) arn: String,
    pub(super) config: String,
    pub(super) pending: Option<String>,
    pub(super) status: &'static str,
    pub(super) describes: u32,
    pub(super) failure_reason: Option<String>,
    pub(super) created: f64,
    pub(super) modified: f64,
}

pub(super) struct Inner {
    pub(super) config: FakeConfig,
    pub(super) rng: StdRng,
    pub(super) jobs: BTreeMap<String, Job>,
    pub(super) models: BTreeMap<String, Record>,
    pub(super) configs: BTreeMap<String, Record>,
    pub(super) endpoints: BTreeMap<String, EndpointRec>,
    pub(super) counters: FakeCounters,
    pub(super) requests: u64,
}

pub(super) type Shared = Arc<Mutex<Inner>>;

pub(super) fn lock(shared: &Shared) -> MutexGuard<'_, Inner> {
    match shared.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

pub(super) fn epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

impl Inner {
    pub(super) fn roll(&mut self, fraction: f64) -> bool {
        fraction > 0.0 && self.rng.random::<f64>() < fraction
    }

    pub(super) fn apply(&mut self, knobs: &FakeKnobs) {
        if let Some(f) = knobs.throttle_fraction {
            self.config.throttle_fraction = f;
        }
        if let Some(f) = knobs.server_error_fraction {
            self.config.server_error_fraction = f;
        }
        if let Some(f) = knobs.lost_response_fraction {
            self.config.lost_response_fraction = f;
        }
    }

    pub(super) fn snapshot(&self) -> FakeCounters {
        let mut c = self.counters.clone();
        c.training_jobs = self.jobs.len();
        c.running_training_jobs = self
            .jobs
            .values()
            .filter(|j| matches!(j.status, "InProgress" | "Stopping"))
            .count();
        c.live_models = self.models.len();
        c.live_endpoint_configs = self.configs.len();
        c.live_endpoints = self.endpoints.len();
        c
    }

    pub(super) fn arn(&self, kind: &str, name: &str) -> String {
        format!(
            "arn:aws:sagemaker:{}:{ACCOUNT}:{kind}/{}",
            self.config.region,
            name.to_ascii_lowercase()
        )
    }
}
