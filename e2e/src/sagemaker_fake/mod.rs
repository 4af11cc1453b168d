//! A stateful fake of the SageMaker API, for what moto cannot do: training jobs
//! that run and then complete or fail, StopTrainingJob, endpoints that take
//! time to create and update, UpdateEndpoint, and injected throttling and 5xx.
//!
//! It speaks the AWS JSON 1.1 protocol the SDK uses (`POST /`, header
//! `X-Amz-Target: SageMaker.<Operation>`, JSON body) and answers errors the way
//! SageMaker does: HTTP 400 with `{"__type": "ValidationException", "message":
//! ...}` for missing resources ("Requested resource not found.", "Could not
//! find model ...") and duplicate names ("Cannot create already existing
//! ..."), `ResourceInUse` for a duplicate training job, `ThrottlingException`
//! and HTTP 500 `InternalFailure` when injected.
//!
//! Lifecycles advance on Describe calls (and, optionally, time):
//!
//! - a training job is `InProgress` for `training_describes` describes, then
//!   `Completed` with `ModelArtifacts.S3ModelArtifacts`, or `Failed` when the
//!   job has the tag or hyperparameter `aleph-fake-outcome: fail` (its
//!   `FailureReason` from `aleph-fake-failure-reason`, or a default);
//!   StopTrainingJob moves it to `Stopping`, then `Stopped`;
//! - an endpoint is `Creating`, then `InService` (or `Failed` when its Model's
//!   image contains [`FakeConfig::failure_marker`]); UpdateEndpoint moves it to
//!   `Updating`, then `InService` on the new config (or back on the old one
//!   with a `FailureReason`, for a failing image); DeleteEndpoint removes it
//!   (after `Deleting` when `endpoint_deleting_describes` > 0).
//!
//! In a test: `let fake = SageMakerFake::start(FakeConfig::default()).await?;`
//! then point the SDK at `fake.endpoint_url()` and read `fake.counters()`. As a
//! process: the `sagemaker-fake` binary, whose `GET /_fake/counters` returns
//! the counters and `POST /_fake/knobs` changes the fault fractions.

mod endpoints;
mod http;
mod operations;
mod state;
mod training;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use state::{EndpointRec, Inner, Record, Shared, epoch, lock};

/// The account in every ARN the fake makes.
pub const ACCOUNT: &str = "123456789012";
/// The tag (or hyperparameter) that decides a training job's outcome.
pub const OUTCOME_TAG: &str = "aleph-fake-outcome";
/// The tag (or hyperparameter) that sets a failing job's FailureReason.
pub const FAILURE_REASON_TAG: &str = "aleph-fake-failure-reason";

/// Lifecycle lengths and fault injection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct FakeConfig {
    /// The address to listen on.
    pub host: String,
    /// The port; 0 picks a free one.
    pub port: u16,
    /// The region in ARNs.
    pub region: String,
    /// Describes a training job answers `InProgress` before it finishes.
    pub training_describes: u32,
    /// And the least time it runs, in milliseconds.
    pub training_min_millis: u64,
    /// Describes a stopping job answers `Stopping` before `Stopped`.
    pub stopping_describes: u32,
    /// Describes an endpoint answers `Creating` before `InService`.
    pub endpoint_creating_describes: u32,
    /// Describes an endpoint answers `Updating` before `InService`.
    pub endpoint_updating_describes: u32,
    /// Describes an endpoint answers `Deleting` before it is gone (0: gone at once).
    pub endpoint_deleting_describes: u32,
    /// A Model whose image contains this makes its endpoint fail.
    pub failure_marker: String,
    /// Fraction of calls answered `ThrottlingException` (nothing done).
    pub throttle_fraction: f64,
    /// Fraction of calls answered HTTP 500 `InternalFailure` (nothing done).
    pub server_error_fraction: f64,
    /// Fraction of successful mutating calls answered HTTP 500 after the change
    /// was made: the response is lost, the change is not.
    pub lost_response_fraction: f64,
    /// Seed of the fault dice.
    pub seed: u64,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 0,
            region: "us-east-1".into(),
            training_describes: 2,
            training_min_millis: 0,
            stopping_describes: 1,
            endpoint_creating_describes: 2,
            endpoint_updating_describes: 2,
            endpoint_deleting_describes: 0,
            failure_marker: "fake-fail".into(),
            throttle_fraction: 0.0,
            server_error_fraction: 0.0,
            lost_response_fraction: 0.0,
            seed: 1,
        }
    }
}

impl FakeConfig {
    /// Training jobs InProgress for `describes` describes and at least
    /// `min_millis`; the rest the defaults.
    pub fn training(describes: u32, min_millis: u64) -> Self {
        Self {
            training_describes: describes,
            training_min_millis: min_millis,
            ..Self::default()
        }
    }

    /// Training jobs that run until they are stopped (a million describes,
    /// an hour at least) and stop in `stopping_describes` describes.
    pub fn training_until_stopped(stopping_describes: u32) -> Self {
        Self {
            stopping_describes,
            ..Self::training(1_000_000, 3_600_000)
        }
    }
}

/// The fault fractions, changeable while the fake runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FakeKnobs {
    /// See [`FakeConfig::throttle_fraction`].
    pub throttle_fraction: Option<f64>,
    /// See [`FakeConfig::server_error_fraction`].
    pub server_error_fraction: Option<f64>,
    /// See [`FakeConfig::lost_response_fraction`].
    pub lost_response_fraction: Option<f64>,
}

/// What the fake has seen and holds, to assert "no duplicates, no leftovers".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FakeCounters {
    /// Calls per operation, faults included.
    pub calls: BTreeMap<String, u64>,
    /// Calls answered `ThrottlingException`.
    pub throttled: u64,
    /// Calls answered HTTP 500 before doing anything.
    pub server_errors: u64,
    /// Calls that did their work but answered HTTP 500.
    pub lost_responses: u64,
    /// Training jobs created.
    pub training_jobs_created: u64,
    /// StopTrainingJob calls that stopped a running job.
    pub training_jobs_stopped: u64,
    /// Models created.
    pub models_created: u64,
    /// EndpointConfigs created.
    pub endpoint_configs_created: u64,
    /// Endpoints created.
    pub endpoints_created: u64,
    /// UpdateEndpoint calls accepted.
    pub endpoint_updates: u64,
    /// Create calls refused because the name was taken.
    pub duplicate_creates: u64,
    /// Training jobs held (SageMaker never deletes them).
    pub training_jobs: usize,
    /// Training jobs InProgress or Stopping.
    pub running_training_jobs: usize,
    /// Models held.
    pub live_models: usize,
    /// EndpointConfigs held.
    pub live_endpoint_configs: usize,
    /// Endpoints held.
    pub live_endpoints: usize,
}

/// A training job as the fake holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeTrainingJob {
    /// Its name.
    pub name: String,
    /// InProgress, Completed, Failed, Stopping, Stopped.
    pub status: String,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
}

/// An endpoint as the fake holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeEndpoint {
    /// Its name.
    pub name: String,
    /// Creating, InService, Updating, Deleting, Failed.
    pub status: String,
    /// The EndpointConfig it runs.
    pub config_name: String,
    /// The EndpointConfig an update moves it to.
    pub pending_config_name: Option<String>,
}

/// A running fake; stops when dropped or on [`SageMakerFake::shutdown`].
pub struct SageMakerFake {
    addr: SocketAddr,
    shared: Shared,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl SageMakerFake {
    /// Starts the fake on `config.host:config.port`.
    pub async fn start(config: FakeConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind((config.host.as_str(), config.port)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Mutex::new(Inner {
            rng: StdRng::seed_from_u64(config.seed),
            config,
            jobs: BTreeMap::new(),
            models: BTreeMap::new(),
            configs: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            counters: FakeCounters::default(),
            requests: 0,
        }));
        let app = http::router(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let server = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(e) = server.await {
                tracing::warn!(error = %e, "the SageMaker fake stopped");
            }
        });
        Ok(Self {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to give the SDK (`AWS_ENDPOINT_URL_SAGEMAKER`).
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> FakeCounters {
        lock(&self.shared).snapshot()
    }

    /// Sets the fraction of calls throttled.
    pub fn set_throttle_fraction(&self, fraction: f64) {
        lock(&self.shared).config.throttle_fraction = fraction;
    }

    /// Sets the fraction of calls answered HTTP 500 before doing anything.
    pub fn set_server_error_fraction(&self, fraction: f64) {
        lock(&self.shared).config.server_error_fraction = fraction;
    }

    /// Sets the fraction of mutating calls whose response is lost after the change.
    pub fn set_lost_response_fraction(&self, fraction: f64) {
        lock(&self.shared).config.lost_response_fraction = fraction;
    }

    /// Sets the fault fractions given.
    pub fn set_knobs(&self, knobs: &FakeKnobs) {
        lock(&self.shared).apply(knobs);
    }

    /// A training job.
    pub fn training_job(&self, name: &str) -> Option<FakeTrainingJob> {
        lock(&self.shared).jobs.get(name).map(|j| FakeTrainingJob {
            name: name.to_string(),
            status: j.status.to_string(),
            failure_reason: j.failure_reason.clone(),
            tags: j.tags.clone(),
        })
    }

    /// An endpoint.
    pub fn endpoint(&self, name: &str) -> Option<FakeEndpoint> {
        lock(&self.shared)
            .endpoints
            .get(name)
            .map(|e| FakeEndpoint {
                name: name.to_string(),
                status: e.status.to_string(),
                config_name: e.config.clone(),
                pending_config_name: e.pending.clone(),
            })
    }

    /// The names of the training jobs held.
    pub fn training_job_names(&self) -> Vec<String> {
        lock(&self.shared).jobs.keys().cloned().collect()
    }

    /// The names of the Models held.
    pub fn model_names(&self) -> Vec<String> {
        lock(&self.shared).models.keys().cloned().collect()
    }

    /// The names of the EndpointConfigs held.
    pub fn endpoint_config_names(&self) -> Vec<String> {
        lock(&self.shared).configs.keys().cloned().collect()
    }

    /// The names of the endpoints held.
    pub fn endpoint_names(&self) -> Vec<String> {
        lock(&self.shared).endpoints.keys().cloned().collect()
    }

    /// Makes an endpoint (with its config and Model) that the operator did not
    /// make, already InService, as if someone else had: for adoption and
    /// conflict tests.
    pub fn seed_foreign_endpoint(&self, endpoint: &str, config: &str, model: &str) {
        let mut inner = lock(&self.shared);
        let now = epoch();
        let model_arn = inner.arn("model", model);
        inner.models.insert(
            model.to_string(),
            Record {
                arn: model_arn,
                request: json!({"ModelName": model, "PrimaryContainer": {"Image": "foreign:1"}, "ExecutionRoleArn": "arn:aws:iam::123456789012:role/foreign"}),
                created: now,
            },
        );
        let config_arn = inner.arn("endpoint-config", config);
        inner.configs.insert(
            config.to_string(),
            Record {
                arn: config_arn,
                request: json!({"EndpointConfigName": config, "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": model, "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}]}),
                created: now,
            },
        );
        let endpoint_arn = inner.arn("endpoint", endpoint);
        inner.endpoints.insert(
            endpoint.to_string(),
            EndpointRec {
                arn: endpoint_arn,
                config: config.to_string(),
                pending: None,
                status: "InService",
                describes: 0,
                failure_reason: None,
                created: now,
                modified: now,
            },
        );
    }

    /// Stops the server and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SageMakerFake {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
