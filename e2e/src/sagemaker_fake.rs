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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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

struct Job {
    arn: String,
    request: Value,
    status: &'static str,
    secondary: &'static str,
    describes: u32,
    stop_describes: u32,
    created: f64,
    started: Instant,
    ended: Option<f64>,
    fail: bool,
    failure_reason: Option<String>,
    tags: BTreeMap<String, String>,
}

struct ModelRec {
    arn: String,
    request: Value,
    created: f64,
}

struct ConfigRec {
    arn: String,
    request: Value,
    created: f64,
}

struct EndpointRec {
    arn: String,
    config: String,
    pending: Option<String>,
    status: &'static str,
    describes: u32,
    failure_reason: Option<String>,
    created: f64,
    modified: f64,
}

struct Inner {
    config: FakeConfig,
    rng: StdRng,
    jobs: BTreeMap<String, Job>,
    models: BTreeMap<String, ModelRec>,
    configs: BTreeMap<String, ConfigRec>,
    endpoints: BTreeMap<String, EndpointRec>,
    counters: FakeCounters,
    requests: u64,
}

type Shared = Arc<Mutex<Inner>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Inner> {
    match shared.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A running fake; stops when dropped or on [`SageMakerFake::shutdown`].
pub struct SageMakerFake {
    addr: SocketAddr,
    shared: Shared,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SageMakerFake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SageMakerFake")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
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
        let app = Router::new()
            .route("/", post(handle))
            .route("/_fake/counters", get(counters))
            .route("/_fake/knobs", post(knobs))
            .with_state(shared.clone());
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
            ModelRec {
                arn: model_arn,
                request: json!({"ModelName": model, "PrimaryContainer": {"Image": "foreign:1"}, "ExecutionRoleArn": "arn:aws:iam::123456789012:role/foreign"}),
                created: now,
            },
        );
        let config_arn = inner.arn("endpoint-config", config);
        inner.configs.insert(
            config.to_string(),
            ConfigRec {
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

async fn counters(State(shared): State<Shared>) -> Response {
    let snapshot = lock(&shared).snapshot();
    (
        StatusCode::OK,
        axum_json(&serde_json::to_value(snapshot).unwrap_or(Value::Null)),
    )
        .into_response()
}

async fn knobs(State(shared): State<Shared>, body: Bytes) -> Response {
    match serde_json::from_slice::<FakeKnobs>(&body) {
        Ok(knobs) => {
            lock(&shared).apply(&knobs);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

fn axum_json(value: &Value) -> ([(header::HeaderName, HeaderValue); 1], String) {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        value.to_string(),
    )
}

/// An API error: HTTP status, `__type` and message.
struct ApiError(StatusCode, &'static str, String);

impl ApiError {
    fn validation(message: impl Into<String>) -> Self {
        Self(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            message.into(),
        )
    }
}

type ApiResult = Result<Value, ApiError>;

async fn handle(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(operation) = target.strip_prefix("SageMaker.") else {
        return error_response(&ApiError(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            format!("unknown target {target:?}"),
        ));
    };
    let input: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return error_response(&ApiError(
                    StatusCode::BAD_REQUEST,
                    "SerializationException",
                    e.to_string(),
                ));
            }
        }
    };
    let mut inner = lock(&shared);
    inner.requests += 1;
    *inner
        .counters
        .calls
        .entry(operation.to_string())
        .or_default() += 1;
    let throttle = inner.config.throttle_fraction;
    let server_error = inner.config.server_error_fraction;
    if inner.roll(throttle) {
        inner.counters.throttled += 1;
        return error_response(&ApiError(
            StatusCode::BAD_REQUEST,
            "ThrottlingException",
            "Rate exceeded".into(),
        ));
    }
    if inner.roll(server_error) {
        inner.counters.server_errors += 1;
        return error_response(&ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalFailure",
            "An internal error occurred.".into(),
        ));
    }
    let result = inner.dispatch(operation, &input);
    let mutating = !operation.starts_with("Describe") && !operation.starts_with("List");
    let lost = inner.config.lost_response_fraction;
    if result.is_ok() && mutating && inner.roll(lost) {
        inner.counters.lost_responses += 1;
        return error_response(&ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalFailure",
            "An internal error occurred.".into(),
        ));
    }
    let request_id = format!("fake-{:08x}", inner.requests);
    drop(inner);
    match result {
        Ok(value) => {
            let mut response = (StatusCode::OK, value.to_string()).into_response();
            let h = response.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-amz-json-1.1"),
            );
            if let Ok(id) = HeaderValue::from_str(&request_id) {
                h.insert("x-amzn-requestid", id);
            }
            response
        }
        Err(e) => error_response(&e),
    }
}

fn error_response(error: &ApiError) -> Response {
    let ApiError(status, code, message) = error;
    let body = json!({"__type": code, "message": message});
    let mut response = (*status, body.to_string()).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    if let Ok(v) = HeaderValue::from_str(code) {
        h.insert("x-amzn-errortype", v);
    }
    response
}

fn epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

fn str_field<'a>(input: &'a Value, key: &str) -> Result<&'a str, ApiError> {
    input
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::validation(format!("1 validation error detected: Value null at '{key}' failed to satisfy constraint: Member must not be null")))
}

fn valid_name(key: &str, name: &str) -> Result<(), ApiError> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
    if ok {
        Ok(())
    } else {
        Err(ApiError::validation(format!(
            "1 validation error detected: Value '{name}' at '{key}' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){{0,62}}"
        )))
    }
}

fn tags_of(input: &Value) -> BTreeMap<String, String> {
    input
        .get("Tags")
        .and_then(Value::as_array)
        .map(|tags| {
            tags.iter()
                .filter_map(|t| {
                    Some((
                        t.get("Key")?.as_str()?.to_string(),
                        t.get("Value")?.as_str().unwrap_or_default().to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Inner {
    fn roll(&mut self, fraction: f64) -> bool {
        fraction > 0.0 && self.rng.random::<f64>() < fraction
    }

    fn apply(&mut self, knobs: &FakeKnobs) {
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

    fn snapshot(&self) -> FakeCounters {
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

    fn arn(&self, kind: &str, name: &str) -> String {
        format!(
            "arn:aws:sagemaker:{}:{ACCOUNT}:{kind}/{}",
            self.config.region,
            name.to_ascii_lowercase()
        )
    }

    fn dispatch(&mut self, operation: &str, input: &Value) -> ApiResult {
        match operation {
            "CreateTrainingJob" => self.create_training_job(input),
            "DescribeTrainingJob" => self.describe_training_job(input),
            "StopTrainingJob" => self.stop_training_job(input),
            "CreateModel" => self.create_model(input),
            "DescribeModel" => self.describe_model(input),
            "DeleteModel" => self.delete_model(input),
            "ListModels" => Ok(self.list("Models", "ModelName", "ModelArn", input)),
            "CreateEndpointConfig" => self.create_endpoint_config(input),
            "DescribeEndpointConfig" => self.describe_endpoint_config(input),
            "DeleteEndpointConfig" => self.delete_endpoint_config(input),
            "ListEndpointConfigs" => Ok(self.list(
                "EndpointConfigs",
                "EndpointConfigName",
                "EndpointConfigArn",
                input,
            )),
            "CreateEndpoint" => self.create_endpoint(input),
            "DescribeEndpoint" => self.describe_endpoint(input),
            "UpdateEndpoint" => self.update_endpoint(input),
            "DeleteEndpoint" => self.delete_endpoint(input),
            other => Err(ApiError(
                StatusCode::BAD_REQUEST,
                "UnknownOperationException",
                format!("the fake does not implement {other}"),
            )),
        }
    }

    /// ListModels and ListEndpointConfigs: every match in one page.
    fn list(&self, key: &str, name_key: &str, arn_key: &str, input: &Value) -> Value {
        let contains = input
            .get("NameContains")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let items: Vec<(&String, &String, f64)> = if key == "Models" {
            self.models
                .iter()
                .map(|(n, m)| (n, &m.arn, m.created))
                .collect()
        } else {
            self.configs
                .iter()
                .map(|(n, c)| (n, &c.arn, c.created))
                .collect()
        };
        let list: Vec<Value> = items
            .into_iter()
            .filter(|(name, _, _)| name.contains(contains))
            .map(|(name, arn, created)| json!({name_key: name, arn_key: arn, "CreationTime": created}))
            .collect();
        json!({ key: list })
    }

    // Training jobs.

    fn create_training_job(&mut self, input: &Value) -> ApiResult {
        let name = str_field(input, "TrainingJobName")?;
        valid_name("trainingJobName", name)?;
        str_field(input, "RoleArn")?;
        let image = input
            .pointer("/AlgorithmSpecification/TrainingImage")
            .and_then(Value::as_str);
        if image.is_none_or(str::is_empty) {
            return Err(ApiError::validation(
                "AlgorithmSpecification.TrainingImage is required",
            ));
        }
        if input
            .pointer("/OutputDataConfig/S3OutputPath")
            .and_then(Value::as_str)
            .is_none()
        {
            return Err(ApiError::validation(
                "OutputDataConfig.S3OutputPath is required",
            ));
        }
        if input
            .pointer("/ResourceConfig/InstanceType")
            .and_then(Value::as_str)
            .is_none()
        {
            return Err(ApiError::validation(
                "ResourceConfig.InstanceType is required",
            ));
        }
        let arn = self.arn("training-job", name);
        if self.jobs.contains_key(name) {
            self.counters.duplicate_creates += 1;
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "ResourceInUse",
                format!(
                    "Training job names must be unique within an AWS account and region, and a training job with this name already exists ({arn})"
                ),
            ));
        }
        let tags = tags_of(input);
        let hyper = |key: &str| {
            input
                .get("HyperParameters")
                .and_then(|h| h.get(key))
                .and_then(Value::as_str)
        };
        let outcome = tags
            .get(OUTCOME_TAG)
            .map(String::as_str)
            .or_else(|| hyper(OUTCOME_TAG));
        let reason = tags
            .get(FAILURE_REASON_TAG)
            .map(String::as_str)
            .or_else(|| hyper(FAILURE_REASON_TAG));
        let fail = outcome == Some("fail");
        let failure_reason = fail.then(|| {
            reason.map_or_else(
                || "AlgorithmError: the training script exited with status 1".to_string(),
                str::to_string,
            )
        });
        self.jobs.insert(
            name.to_string(),
            Job {
                arn: arn.clone(),
                request: input.clone(),
                status: "InProgress",
                secondary: "Starting",
                describes: 0,
                stop_describes: 0,
                created: epoch(),
                started: Instant::now(),
                ended: None,
                fail,
                failure_reason,
                tags,
            },
        );
        self.counters.training_jobs_created += 1;
        Ok(json!({"TrainingJobArn": arn}))
    }

    fn describe_training_job(&mut self, input: &Value) -> ApiResult {
        let name = str_field(input, "TrainingJobName")?;
        let training_describes = self.config.training_describes;
        let min = Duration::from_millis(self.config.training_min_millis);
        let stopping_describes = self.config.stopping_describes;
        let Some(job) = self.jobs.get_mut(name) else {
            return Err(ApiError::validation("Requested resource not found."));
        };
        match job.status {
            "InProgress" => {
                job.describes += 1;
                job.secondary = "Training";
                if job.describes > training_describes && job.started.elapsed() >= min {
                    job.ended = Some(epoch());
                    if job.fail {
                        job.status = "Failed";
                        job.secondary = "Failed";
                    } else {
                        job.status = "Completed";
                        job.secondary = "Completed";
                    }
                }
            }
            "Stopping" => {
                job.stop_describes += 1;
                if job.stop_describes > stopping_describes {
                    job.status = "Stopped";
                    job.secondary = "Stopped";
                    job.ended = Some(epoch());
                }
            }
            _ => {}
        }
        let request = &job.request;
        let mut out = json!({
            "TrainingJobName": name,
            "TrainingJobArn": job.arn,
            "TrainingJobStatus": job.status,
            "SecondaryStatus": job.secondary,
            "AlgorithmSpecification": request.get("AlgorithmSpecification").cloned().unwrap_or(Value::Null),
            "RoleArn": request.get("RoleArn").cloned().unwrap_or(Value::Null),
            "OutputDataConfig": request.get("OutputDataConfig").cloned().unwrap_or(Value::Null),
            "ResourceConfig": request.get("ResourceConfig").cloned().unwrap_or(Value::Null),
            "StoppingCondition": request.get("StoppingCondition").cloned().unwrap_or(Value::Null),
            "CreationTime": job.created,
            "TrainingStartTime": job.created,
            "LastModifiedTime": epoch(),
        });
        if let Some(map) = out.as_object_mut() {
            map.retain(|_, v| !v.is_null());
            for key in ["HyperParameters", "InputDataConfig", "VpcConfig"] {
                if let Some(v) = request.get(key) {
                    map.insert(key.into(), v.clone());
                }
            }
            if job.status == "Completed" {
                let output = request
                    .pointer("/OutputDataConfig/S3OutputPath")
                    .and_then(Value::as_str)
                    .unwrap_or("s3://fake")
                    .trim_end_matches('/');
                map.insert(
                    "ModelArtifacts".into(),
                    json!({"S3ModelArtifacts": format!("{output}/{name}/output/model.tar.gz")}),
                );
            }
            if job.status == "Failed"
                && let Some(reason) = &job.failure_reason
            {
                map.insert("FailureReason".into(), json!(reason));
            }
            if let Some(ended) = job.ended {
                map.insert("TrainingEndTime".into(), json!(ended));
            }
        }
        Ok(out)
    }

    fn stop_training_job(&mut self, input: &Value) -> ApiResult {
        let name = str_field(input, "TrainingJobName")?;
        let Some(job) = self.jobs.get_mut(name) else {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "ResourceNotFound",
                "Requested resource not found.".into(),
            ));
        };
        if job.status != "InProgress" {
            return Err(ApiError::validation(format!(
                "The request was rejected because the training job is in status {}.",
                job.status
            )));
        }
        job.status = "Stopping";
        job.secondary = "Stopping";
        self.counters.training_jobs_stopped += 1;
        Ok(json!({}))
    }

    // Models.

    fn create_model(&mut self, input: &Value) -> ApiResult {
        let name = str_field(input, "ModelName")?;
        valid_name("modelName", name)?;
        str_field(input, "ExecutionRoleArn")?;
        let arn = self.arn("model", name);
        if self.models.contains_key(name) {
            self.counters.duplicate_creates += 1;
            return Err(ApiError::validation(format!(
                "Cannot create already existing model \"{arn}\"."
            )));
        }
        self.models.insert(
            name.to_string(),
            ModelRec {
                arn: arn.clone(),
                request: input.clone(),
                created: epoch(),
            },
        );
        self.counters.models_created += 1;
        Ok(json!({"ModelArn": arn}))
    }

    fn describe_model(&mut self, input: &Value) -> ApiResult {
        let name = str_field(input, "ModelName")?;
        let Some(model) = self.models.get(name) else {
            return Err(ApiError::validation(format!(
                "Could not find model \"{}\".",
                self.arn("model", name)
            )));
        };
        let mut out = json!({
            "ModelName": name,
            "ModelArn": model.arn,
            "CreationTime": model.created,
        });
        if let Some(map) = out.as_object_mut() {
            for key in [
                "PrimaryContainer",
                "Containers",
                "ExecutionRoleArn",
                "VpcConfig",
            ] {
                if let Some(v) = model.request.get(key) {
                    map.insert(key.into(), v.clone());
                }
            }
        }
        Ok(out)
    }

    fn delete_model(&mut self, input: &Value) -> ApiResult {
        let name = str_field(input, "ModelName")?;
        if self.models.remove(name).is_none() {
            return Err(ApiError::validation(format!(
                "Could not find model \"{}\".",
                self.arn("model", name)
            )));
        }
        Ok(json!({}))
    }

    // EndpointConfigs.

    fn create_endpoint_config(&mut self, input: &Value) -> ApiResult {
        let name = str_field(input, "EndpointConfigName")?;
        valid_name("endpointConfigName", name)?;
        let arn = self.arn("endpoint-config", name);
        if self.configs.contains_key(name) {
            self.counters.duplicate_creates += 1;
            return Err(ApiError::validation(format!(
                "Cannot create already existing endpoint configuration \"{arn}\"."
            )));
        }
        let variants = input
            .get("ProductionVariants")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if variants.is_empty() {
            return Err(ApiError::validation(
                "ProductionVariants must have at least one element",
            ));
        }
        for variant in &variants {
            let model = variant
                .get("ModelName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !self.models.contains_key(model) {
                return Err(ApiError::validation(format!(
                    "Could not find model \"{}\".",
                    self.arn("model", model)
                )));
            }
        }
        self.configs.insert(
            name.to_string(),
            ConfigRec {
                arn: arn.clone(),
                request: input.clone(),
                created: epoch(),
            },
        );
        self.counters.endpoint_configs_created += 1;
        Ok(json!({"EndpointConfigArn": arn}))
    }

    fn describe_endpoint_config(&mut self, input: &Value) -> ApiResult {
        let name = str_field(input, "EndpointConfigName")?;
        let Some(config) = self.configs.get(name) else {
            return Err(ApiError::validation(format!(
                "Could not find endpoint configuration \"{}\".",
                self.arn("endpoint-config", name)
            )));
        };
        Ok(json!({
            "EndpointConfigName": name,
            "EndpointConfigArn": config.arn,
            "ProductionVariants": config.request.get("ProductionVariants").cloned().unwrap_or(json!([])),
            "CreationTime": config.created,
        }))
    }

    fn delete_endpoint_config(&mut self, input: &Value) -> ApiResult {
        let name = str_field(input, "EndpointConfigName")?;
        if self.configs.remove(name).is_none() {
            return Err(ApiError::validation(format!(
                "Could not find endpoint configuration \"{}\".",
                self.arn("endpoint-config", name)
            )));
        }
        Ok(json!({}))
    }

    /// Whether a config's Models carry the failure marker.
    fn config_fails(&self, config: &str) -> bool {
        let marker = &self.config.failure_marker;
        let Some(config) = self.configs.get(config) else {
            return false;
        };
        let variants = config
            .request
            .get("ProductionVariants")
            .and_then(Value::as_array);
        variants.into_iter().flatten().any(|v| {
            let model = v
                .get("ModelName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            self.models
                .get(model)
                .and_then(|m| {
                    m.request
                        .pointer("/PrimaryContainer/Image")
                        .and_then(Value::as_str)
                })
                .is_some_and(|image| !marker.is_empty() && image.contains(marker.as_str()))
        })
    }

    // Endpoints.

    fn create_endpoint(&mut self, input: &Value) -> ApiResult {
        let name = str_field(input, "EndpointName")?;
        valid_name("endpointName", name)?;
        let config = str_field(input, "EndpointConfigName")?;
        let arn = self.arn("endpoint", name);
        if self.endpoints.contains_key(name) {
            self.counters.duplicate_creates += 1;
            return Err(ApiError::validation(format!(
                "Cannot create already existing endpoint \"{arn}\"."
            )));
        }
        if !self.configs.contains_key(config) {
            return Err(ApiError::validation(format!(
                "Could not find endpoint configuration \"{}\".",
                self.arn("endpoint-config", config)
            )));
        }
        let now = epoch();
        self.endpoints.insert(
            name.to_string(),
            EndpointRec {
                arn: arn.clone(),
                config: config.to_string(),
                pending: None,
                status: "Creating",
                describes: 0,
                failure_reason: None,
                created: now,
                modified: now,
            },
        );
        self.counters.endpoints_created += 1;
        Ok(json!({"EndpointArn": arn}))
    }

    fn describe_endpoint(&mut self, input: &Value) -> ApiResult {
        let name = str_field(input, "EndpointName")?;
        let creating = self.config.endpoint_creating_describes;
        let updating = self.config.endpoint_updating_describes;
        let deleting = self.config.endpoint_deleting_describes;
        let Some(status) = self.endpoints.get(name).map(|e| e.status) else {
            return Err(ApiError::validation(format!(
                "Could not find endpoint \"{}\".",
                self.arn("endpoint", name)
            )));
        };
        let (config, pending) = match self.endpoints.get(name) {
            Some(e) => (e.config.clone(), e.pending.clone()),
            None => return Err(ApiError::validation("Requested resource not found.")),
        };
        let fails_now = self.config_fails(pending.as_deref().unwrap_or(&config));
        let mut gone = false;
        if let Some(e) = self.endpoints.get_mut(name) {
            match status {
                "Creating" => {
                    e.describes += 1;
                    if e.describes > creating {
                        e.modified = epoch();
                        if fails_now {
                            e.status = "Failed";
                            e.failure_reason = Some(
                                "The primary container for production variant AllTraffic did not pass the ping health check."
                                    .into(),
                            );
                        } else {
                            e.status = "InService";
                        }
                    }
                }
                "Updating" => {
                    e.describes += 1;
                    if e.describes > updating {
                        e.modified = epoch();
                        e.status = "InService";
                        if fails_now {
                            e.failure_reason = Some(
                                "Failed to update endpoint: the new production variant did not pass the ping health check; rolled back."
                                    .into(),
                            );
                        } else if let Some(p) = e.pending.clone() {
                            e.config = p;
                            e.failure_reason = None;
                        }
                        e.pending = None;
                    }
                }
                "Deleting" => {
                    e.describes += 1;
                    gone = e.describes > deleting;
                }
                _ => {}
            }
        }
        if gone {
            self.endpoints.remove(name);
            return Err(ApiError::validation(format!(
                "Could not find endpoint \"{}\".",
                self.arn("endpoint", name)
            )));
        }
        let Some(e) = self.endpoints.get(name) else {
            return Err(ApiError::validation("Requested resource not found."));
        };
        let mut out = json!({
            "EndpointName": name,
            "EndpointArn": e.arn,
            "EndpointConfigName": e.config,
            "EndpointStatus": e.status,
            "CreationTime": e.created,
            "LastModifiedTime": e.modified,
        });
        if let Some(map) = out.as_object_mut() {
            if let Some(reason) = &e.failure_reason {
                map.insert("FailureReason".into(), json!(reason));
            }
            if let Some(pending) = &e.pending {
                map.insert(
                    "PendingDeploymentSummary".into(),
                    json!({"EndpointConfigName": pending, "StartTime": e.modified}),
                );
            }
        }
        Ok(out)
    }

    fn update_endpoint(&mut self, input: &Value) -> ApiResult {
        let name = str_field(input, "EndpointName")?;
        let config = str_field(input, "EndpointConfigName")?;
        let endpoint_arn = self.arn("endpoint", name);
        let config_arn = self.arn("endpoint-config", config);
        let config_exists = self.configs.contains_key(config);
        let Some(e) = self.endpoints.get_mut(name) else {
            return Err(ApiError::validation(format!(
                "Could not find endpoint \"{endpoint_arn}\"."
            )));
        };
        match e.status {
            "InService" | "OutOfService" => {}
            "Failed" => {
                return Err(ApiError::validation(format!(
                    "Cannot update failed endpoint \"{endpoint_arn}\"."
                )));
            }
            _ => {
                return Err(ApiError::validation(format!(
                    "Cannot update in-progress endpoint \"{endpoint_arn}\"."
                )));
            }
        }
        if !config_exists {
            return Err(ApiError::validation(format!(
                "Could not find endpoint configuration \"{config_arn}\"."
            )));
        }
        e.status = "Updating";
        e.pending = Some(config.to_string());
        e.describes = 0;
        e.modified = epoch();
        let arn = e.arn.clone();
        self.counters.endpoint_updates += 1;
        Ok(json!({"EndpointArn": arn}))
    }

    fn delete_endpoint(&mut self, input: &Value) -> ApiResult {
        let name = str_field(input, "EndpointName")?;
        let immediate = self.config.endpoint_deleting_describes == 0;
        let arn = self.arn("endpoint", name);
        let Some(e) = self.endpoints.get_mut(name) else {
            return Err(ApiError::validation(format!(
                "Could not find endpoint \"{arn}\"."
            )));
        };
        if immediate {
            self.endpoints.remove(name);
        } else {
            e.status = "Deleting";
            e.describes = 0;
        }
        Ok(json!({}))
    }
}
