//! SageMaker without Kubernetes: the sagas through the real aws-sdk-sagemaker
//! client over HTTP, against moto (the API contract; started with
//! `e2e/sagemaker/moto.sh` unless `ALEPH_MOTO_URL` names a running one) and
//! against the in-repo fake (lifecycles, Stop, Update, throttling and 5xx).
//!
//! `cargo test -p aleph-e2e --test sagemaker -- --nocapture` prints the fake's
//! counters of the fault test.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use aleph_controllers::metrics::SageMakerCallLabels;
use aleph_controllers::sagemaker::aws::{AwsSageMaker, AwsSageMakerConfig};
use aleph_controllers::sagemaker::naming::{
    endpoint_config_name, is_owned, model_name, training_job_name,
};
use aleph_controllers::sagemaker::{
    CleanupOutcome, EndpointOutcome, RecoverableKind, SagaOwner, SageMakerApi, SageMakerError,
    SageMakerEvent, TrainingOutcome, cleanup, reconcile_endpoint, reconcile_training,
};
use aleph_crds::{
    ConditionStatus, DeletionPolicy, EndpointStatus, SageMakerServing, SageMakerTraining,
    TrainingStatus,
};
use aleph_e2e::aws::{self, Lister};
use aleph_e2e::sagemaker_fake::{FakeConfig, FakeCounters, SageMakerFake};
use aws_config::BehaviorVersion;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

type Calls = Family<SageMakerCallLabels, Counter>;

const REGION: &str = "us-east-1";
const NAMESPACE: &str = "team-a";

fn adapter_config() -> AwsSageMakerConfig {
    AwsSageMakerConfig {
        region: Some(REGION.into()),
        endpoint_url: None,
        max_attempts: 3,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        operation_timeout: Duration::from_secs(30),
        attempt_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
    }
}

/// The real adapter, with fake static credentials, pointed at `url`.
async fn adapter_with(url: &str, config: AwsSageMakerConfig, calls: Calls) -> AwsSageMaker {
    let loader =
        aws_config::defaults(BehaviorVersion::latest()).credentials_provider(aws::credentials());
    let config = AwsSageMakerConfig {
        endpoint_url: Some(url.to_string()),
        ..config
    };
    match AwsSageMaker::load(loader, &config, calls).await {
        Ok(adapter) => adapter,
        Err(e) => panic!("building the SageMaker adapter: {e}"),
    }
}

async fn adapter(url: &str) -> AwsSageMaker {
    adapter_with(url, adapter_config(), Calls::default()).await
}

fn uid() -> String {
    let n: u64 = rand::random();
    format!("00000000-e2e0-4000-8000-{:012x}", n & 0xffff_ffff_ffff)
}

fn training_spec(tags: &[(&str, &str)]) -> SageMakerTraining {
    let mut spec: SageMakerTraining = serde_json::from_value(serde_json::json!({
        "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/xgboost:1.7",
        "roleArn": "arn:aws:iam::123456789012:role/aleph-training",
        "instanceType": "ml.m5.xlarge",
        "outputS3Uri": "s3://aleph-e2e/models",
        "hyperparameters": {"num_round": "50"},
        "inputs": [{"name": "train", "s3Uri": "s3://aleph-e2e/data/train", "contentType": "text/csv"}]
    }))
    .expect("a valid training spec");
    spec.tags = tags
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    spec
}

fn serving_spec(image: &str, endpoint_name: Option<&str>) -> SageMakerServing {
    let mut serving: SageMakerServing = serde_json::from_value(serde_json::json!({
        "image": image,
        "roleArn": "arn:aws:iam::123456789012:role/aleph-serving",
        "instanceType": "ml.m5.large"
    }))
    .expect("a valid serving spec");
    serving.endpoint_name = endpoint_name.map(str::to_string);
    serving
}

const SERVE_IMAGE: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com/xgboost-serve:1.7";

/// The sagas of one object, `name` of the owner `owner`, through `api`.
struct Saga<'a> {
    api: &'a dyn SageMakerApi,
    owner: String,
    name: &'static str,
}

impl<'a> Saga<'a> {
    /// A fresh owner's object `name`.
    fn new(api: &'a dyn SageMakerApi, name: &'static str) -> Self {
        Self {
            api,
            owner: uid(),
            name,
        }
    }

    /// The object as the sagas know it.
    fn saga_owner(&self) -> SagaOwner<'_> {
        SagaOwner {
            uid: &self.owner,
            namespace: NAMESPACE,
            name: self.name,
        }
    }

    /// One pass of the training saga; panics, naming `what`, on an error.
    async fn train(
        &self,
        spec: &SageMakerTraining,
        status: Option<&TrainingStatus>,
        what: &str,
    ) -> TrainingOutcome {
        reconcile_training(self.api, self.saga_owner(), spec, status)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// One pass of the endpoint saga; panics, naming `what`, on an error.
    async fn serve(
        &self,
        serving: &SageMakerServing,
        artifact: &str,
        status: Option<&EndpointStatus>,
        adopt: Option<&str>,
        what: &str,
    ) -> EndpointOutcome {
        reconcile_endpoint(
            self.api,
            self.saga_owner(),
            serving,
            artifact,
            status,
            adopt,
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// Runs the training saga until `done` says stop (at most `max` passes),
    /// carrying the status from pass to pass like the status subresource would.
    async fn train_until(
        &self,
        spec: &SageMakerTraining,
        max: usize,
        done: impl Fn(&TrainingOutcome) -> bool,
    ) -> (TrainingOutcome, Vec<&'static str>) {
        let pass = async |last: Option<&TrainingOutcome>| {
            self.train(spec, last.map(|o| &o.status), "training saga")
                .await
        };
        passes_until("training", max, pass, |o| &o.events, done).await
    }

    /// Runs the endpoint saga from `status` until `done` says stop (at most
    /// `max` passes).
    async fn serve_until(
        &self,
        serving: &SageMakerServing,
        artifact: &str,
        status: Option<EndpointStatus>,
        adopt: Option<&str>,
        max: usize,
        done: impl Fn(&EndpointOutcome) -> bool,
    ) -> (EndpointOutcome, Vec<&'static str>) {
        let pass = async |last: Option<&EndpointOutcome>| {
            let status = last.map_or(status.as_ref(), |o| o.status.as_ref());
            self.serve(serving, artifact, status, adopt, "endpoint saga")
                .await
        };
        passes_until("endpoint", max, pass, |o| &o.events, done).await
    }

    /// Serves `artifact` from `status` until the endpoint is in service.
    async fn serve_in_service(
        &self,
        serving: &SageMakerServing,
        artifact: &str,
        status: Option<EndpointStatus>,
        max: usize,
    ) -> (EndpointOutcome, Vec<&'static str>) {
        self.serve_until(
            serving,
            artifact,
            status,
            None,
            max,
            EndpointOutcome::in_service,
        )
        .await
    }

    /// Cleans up until done; returns the passes it took.
    async fn cleanup_until_done(
        &self,
        training: Option<&TrainingStatus>,
        endpoint: Option<&EndpointStatus>,
        policy: DeletionPolicy,
    ) -> usize {
        for pass in 1..=20 {
            match cleanup(self.api, &self.owner, training, endpoint, policy).await {
                Ok(CleanupOutcome::Done) => return pass,
                Ok(CleanupOutcome::RequeueAfter { .. }) => {}
                Err(e) => panic!("cleanup: {e}"),
            }
        }
        panic!("cleanup did not finish in 20 passes");
    }
}

/// Runs `pass` (given the outcome of the pass before) until `done` says stop,
/// at most `max` times; returns the last outcome and the reasons of all the
/// `events` on the way.
async fn passes_until<O: std::fmt::Debug>(
    saga: &str,
    max: usize,
    mut pass: impl AsyncFnMut(Option<&O>) -> O,
    events: impl Fn(&O) -> &[SageMakerEvent],
    done: impl Fn(&O) -> bool,
) -> (O, Vec<&'static str>) {
    let mut reasons = Vec::new();
    let mut last: Option<O> = None;
    for _ in 0..max {
        let outcome = pass(last.as_ref()).await;
        reasons.extend(events(&outcome).iter().map(|e| e.reason));
        if done(&outcome) {
            return (outcome, reasons);
        }
        last = Some(outcome);
    }
    panic!("the {saga} saga did not get there in {max} passes; last outcome {last:?}");
}

/// Asserts that `text` contains `part`.
#[track_caller]
fn assert_contains(text: &str, part: &str) {
    assert!(text.contains(part), "{part:?} is not in: {text}");
}

/// Asserts that `result` is a recoverable error of `kind`.
fn assert_recoverable<T: std::fmt::Debug>(
    result: &Result<T, SageMakerError>,
    kind: RecoverableKind,
) {
    assert!(
        matches!(result, Err(SageMakerError::Recoverable { kind: k, .. }) if *k == kind),
        "{result:?}"
    );
}

/// What a chaos pass got: `Some` on success; `None` on an error, which must be
/// recoverable (counted in `errors`).
fn recovered<T>(result: Result<T, SageMakerError>, seed: u64, errors: &mut u32) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(e) => {
            assert!(e.is_recoverable(), "seed {seed}: {e}");
            *errors += 1;
            None
        }
    }
}

/// The count of `operation` calls with `outcome`.
fn count(calls: &Calls, operation: &'static str, outcome: &'static str) -> u64 {
    calls
        .get_or_create(&SageMakerCallLabels { operation, outcome })
        .get()
}

/// The number of calls of `operation` the fake has answered.
fn fake_calls(fake: &SageMakerFake, operation: &str) -> Option<u64> {
    fake.counters().calls.get(operation).copied()
}

/// The status of the fake's training job `job`.
fn job_status(fake: &SageMakerFake, job: &str) -> Option<String> {
    fake.training_job(job).map(|j| j.status)
}

/// A fake with `config` and the real adapter pointed at it.
async fn fake_and_adapter(config: FakeConfig) -> (SageMakerFake, AwsSageMaker) {
    let fake = aws::start_fake(config).await;
    let api = adapter(&fake.endpoint_url()).await;
    (fake, api)
}

/// A fake whose training jobs run for `describes` describes, and the adapter.
async fn fake_training_for(describes: u32) -> (SageMakerFake, AwsSageMaker) {
    fake_and_adapter(FakeConfig {
        training_describes: describes,
        ..FakeConfig::default()
    })
    .await
}

// ---------------------------------------------------------------------------
// moto: the API contract.
// ---------------------------------------------------------------------------

/// moto's URL: `ALEPH_MOTO_URL`, the server `e2e/sagemaker/moto.sh` recorded
/// as running, or one it starts now (then `true`: stop it at the end). Fails
/// loudly when none works.
fn moto_url() -> (String, bool) {
    if let Ok(url) = std::env::var("ALEPH_MOTO_URL")
        && !url.is_empty()
    {
        return (url, false);
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/sagemaker/moto.sh");
    // One already running (started by hand or by another run): use it, leave it.
    if let Ok(output) = Command::new("bash").arg(script).arg("url").output() {
        let url = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if output.status.success() && !url.is_empty() {
            return (url, false);
        }
    }
    let output = match Command::new("bash").arg(script).arg("start").output() {
        Ok(output) => output,
        Err(e) => panic!("running {script} start: {e}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "moto is needed for this test and {script} start failed (set ALEPH_MOTO_URL to use a running moto_server):\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let url = stdout
        .lines()
        .find_map(|l| l.strip_prefix("export ALEPH_MOTO_URL="))
        .unwrap_or_else(|| panic!("{script} start printed no URL:\n{stdout}"))
        .trim()
        .to_string();
    (url, true)
}

fn stop_moto() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/sagemaker/moto.sh");
    let _ = Command::new("bash").arg(script).arg("stop").status();
}

/// Asserts that no Model, EndpointConfig or endpoint is left.
fn assert_nothing_live(counters: &FakeCounters) {
    assert_eq!(
        (
            counters.live_models,
            counters.live_endpoint_configs,
            counters.live_endpoints
        ),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn moto_training_endpoint_and_cleanup() {
    let (url, started) = moto_url();
    let calls = Calls::default();
    let api = adapter_with(&url, adapter_config(), calls.clone()).await;
    let list = Lister::new(&url).await;

    // Training: one job, however many passes.
    let saga = Saga::new(&api, "fraud");
    let owner = saga.owner.clone();
    let spec = training_spec(&[]);
    let job = training_job_name(&owner, "fraud", &spec);
    let first = saga.train(&spec, None, "first pass").await;
    assert_eq!(first.status.job_name, job);
    assert_eq!(
        first.events.iter().map(|e| e.reason).collect::<Vec<_>>(),
        ["TrainingStarted"]
    );
    let second = saga.train(&spec, Some(&first.status), "second pass").await;
    // moto's jobs are Completed at once.
    assert!(second.completed(), "{second:?}");
    assert_eq!(second.condition.status, ConditionStatus::True);
    let artifact = second.artifact_uri().expect("an artifact").to_string();
    assert!(artifact.starts_with("s3://"), "{artifact}");
    let third = saga.train(&spec, Some(&second.status), "third pass").await;
    assert!(
        third.events.is_empty(),
        "a steady state publishes nothing: {:?}",
        third.events
    );
    // A restart that lost the status still finds the job.
    let fourth = saga.train(&spec, None, "fourth pass").await;
    assert!(fourth.completed());
    assert_eq!(
        list.training_jobs(&job).await,
        vec![job.clone()],
        "exactly one training job"
    );

    // Endpoint: Model, EndpointConfig, Endpoint.
    let serving = serving_spec(SERVE_IMAGE, None);
    let (outcome, reasons) = saga.serve_in_service(&serving, &artifact, None, 5).await;
    let status = outcome.status.clone().expect("an endpoint status");
    assert!(
        reasons.contains(&"EndpointCreating") && reasons.contains(&"EndpointInService"),
        "{reasons:?}"
    );
    let model = model_name(&owner, "fraud", SERVE_IMAGE, &artifact, &serving.role_arn);
    let config = endpoint_config_name(&owner, "fraud", &model, &serving);
    assert_eq!(status.model_name.as_deref(), Some(model.as_str()));
    assert_eq!(status.config_name.as_deref(), Some(config.as_str()));
    let arn = status.arn.as_deref().unwrap_or_default();
    assert!(arn.starts_with("arn:aws:sagemaker:"), "{status:?}");
    assert_eq!(list.models(&owner).await, vec![model.clone()]);
    assert_eq!(list.endpoint_configs(&owner).await, vec![config.clone()]);
    assert_eq!(
        list.endpoints(&status.name).await,
        vec![status.name.clone()]
    );
    // Again, and again without the status: nothing new.
    for prev in [Some(&status), None] {
        let again = saga
            .serve(&serving, &artifact, prev, None, "a steady pass")
            .await;
        assert!(again.in_service(), "{again:?}");
    }
    assert_eq!(list.models(&owner).await.len(), 1);
    assert_eq!(list.endpoint_configs(&owner).await.len(), 1);

    // Retain keeps everything.
    let both = (Some(&fourth.status), Some(&status));
    let done = saga
        .cleanup_until_done(both.0, both.1, DeletionPolicy::Retain)
        .await;
    assert_eq!(done, 1);
    assert_eq!(list.models(&owner).await.len(), 1);
    assert_eq!(list.endpoint_configs(&owner).await.len(), 1);
    assert_eq!(list.endpoints(&status.name).await.len(), 1);

    // Delete removes the endpoint, its config and Model; the completed job stays (SageMaker keeps jobs).
    saga.cleanup_until_done(both.0, both.1, DeletionPolicy::Delete)
        .await;
    assert!(list.models(&owner).await.is_empty());
    assert!(list.endpoint_configs(&owner).await.is_empty());
    assert!(list.endpoints(&status.name).await.is_empty());
    // Idempotent: a second cleanup finds nothing to do.
    assert_eq!(
        saga.cleanup_until_done(both.0, both.1, DeletionPolicy::Delete)
            .await,
        1
    );

    // Every call was counted, with bounded labels.
    assert_eq!(count(&calls, "CreateEndpoint", "ok"), 1);
    assert_eq!(count(&calls, "DescribeTrainingJob", "not_found"), 1);

    if started {
        stop_moto();
    }
}

// ---------------------------------------------------------------------------
// The fake: lifecycles and faults.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn fake_training_runs_then_completes() {
    let (fake, api) = fake_training_for(3).await;
    let saga = Saga::new(&api, "churn");
    let spec = training_spec(&[]);

    let (done, seen) = saga
        .train_until(&spec, 10, TrainingOutcome::completed)
        .await;
    assert_eq!(seen, ["TrainingStarted", "TrainingCompleted"]);
    assert_eq!(done.condition.reason, "TrainingCompleted");
    assert_eq!(done.requeue_after, None);
    let job = training_job_name(&saga.owner, "churn", &spec);
    assert_eq!(
        done.artifact_uri(),
        Some(format!("s3://aleph-e2e/models/{job}/output/model.tar.gz").as_str())
    );
    assert_eq!(fake.counters().training_jobs_created, 1);
    assert!(fake_calls(&fake, "DescribeTrainingJob").unwrap_or_default() >= 4);

    // While it ran, the condition said so.
    let fresh = Saga::new(&api, "churn");
    let first = fresh.train(&spec, None, "create").await;
    let running = fresh.train(&spec, Some(&first.status), "describe").await;
    assert_eq!(running.status.job_status.as_deref(), Some("InProgress"));
    assert_eq!(running.condition.status, ConditionStatus::False);
    assert_eq!(running.condition.reason, "TrainingInProgress");
    assert!(
        running
            .requeue_after
            .is_some_and(|d| d >= Duration::from_secs(30))
    );
    assert!(!running.terminal);
}

#[tokio::test]
async fn fake_training_failure_is_terminal_with_the_reason() {
    let (fake, api) = fake_training_for(1).await;
    let saga = Saga::new(&api, "churn");
    let spec = training_spec(&[
        ("aleph-fake-outcome", "fail"),
        (
            "aleph-fake-failure-reason",
            "AlgorithmError: label column missing in train.csv",
        ),
    ]);
    let (failed, reasons) = saga.train_until(&spec, 10, |o| o.terminal).await;
    assert_eq!(reasons, ["TrainingStarted", "TrainingFailed"]);
    assert_eq!(failed.status.job_status.as_deref(), Some("Failed"));
    assert_eq!(failed.condition.status, ConditionStatus::False);
    assert_eq!(failed.condition.reason, "TrainingFailed");
    assert_contains(&failed.condition.message, "label column missing");
    assert_eq!(
        failed.status.failure_reason.as_deref(),
        Some("AlgorithmError: label column missing in train.csv")
    );
    assert_eq!(failed.requeue_after, None);
    // Once failed, it stays failed and quiet; no second job.
    let again = saga.train(&spec, Some(&failed.status), "again").await;
    assert!(again.terminal && again.events.is_empty());
    assert_eq!(fake.counters().training_jobs_created, 1);

    // A spec SageMaker rejects is terminal too, and not sent again.
    let bad_saga = Saga {
        name: "bad",
        owner: saga.owner.clone(),
        ..saga
    };
    let mut bad = training_spec(&[]);
    bad.image = String::new();
    let rejected = bad_saga.train(&bad, None, "rejected").await;
    assert!(rejected.terminal);
    assert_eq!(rejected.condition.reason, "TrainingRejected");
    assert_contains(&rejected.condition.message, "ValidationException");
    let creates = fake_calls(&fake, "CreateTrainingJob");
    let again = bad_saga.train(&bad, Some(&rejected.status), "again").await;
    assert!(again.terminal);
    assert_eq!(fake_calls(&fake, "CreateTrainingJob"), creates);
}

#[tokio::test]
async fn fake_cleanup_during_training_stops_the_job() {
    let (fake, api) = fake_and_adapter(FakeConfig {
        training_describes: 100,
        stopping_describes: 2,
        ..FakeConfig::default()
    })
    .await;
    let saga = Saga::new(&api, "long");
    let spec = training_spec(&[]);
    let started = saga.train(&spec, None, "start").await;
    let job = started.status.job_name.clone();
    assert_eq!(job_status(&fake, &job).as_deref(), Some("InProgress"));

    // Retain leaves it running.
    let training = Some(&started.status);
    saga.cleanup_until_done(training, None, DeletionPolicy::Retain)
        .await;
    assert_eq!(job_status(&fake, &job).as_deref(), Some("InProgress"));

    let first = cleanup(&api, &saga.owner, training, None, DeletionPolicy::Delete)
        .await
        .expect("cleanup");
    assert!(!first.is_done(), "cleanup waits for the job to stop");
    assert_eq!(job_status(&fake, &job).as_deref(), Some("Stopping"));
    let passes = saga
        .cleanup_until_done(training, None, DeletionPolicy::Delete)
        .await;
    assert!(passes > 1);
    assert_eq!(job_status(&fake, &job).as_deref(), Some("Stopped"));
    let counters = fake.counters();
    assert_eq!(counters.training_jobs_stopped, 1);
    assert_eq!(counters.running_training_jobs, 0);
}

#[tokio::test]
async fn fake_training_spec_change_stops_the_old_job_and_starts_one_new() {
    let (fake, api) = fake_training_for(100).await;
    let saga = Saga::new(&api, "m");
    let spec = training_spec(&[]);
    let first = saga.train(&spec, None, "start").await;
    let running = saga.train(&spec, Some(&first.status), "run").await;

    let mut changed = spec.clone();
    changed
        .hyperparameters
        .insert("num_round".into(), "80".into());
    let second = saga.train(&changed, Some(&running.status), "new").await;
    assert_ne!(second.status.job_name, first.status.job_name);
    let reasons: Vec<_> = second.events.iter().map(|e| e.reason).collect();
    assert_eq!(reasons, ["TrainingStopped", "TrainingStarted"]);
    assert_eq!(
        job_status(&fake, &first.status.job_name).as_deref(),
        Some("Stopping")
    );
    // Passes after that touch neither job again.
    for _ in 0..3 {
        saga.train(&changed, Some(&second.status), "pass").await;
    }
    let counters = fake.counters();
    assert_eq!(counters.training_jobs_created, 2);
    assert_eq!(counters.training_jobs_stopped, 1);
}

#[tokio::test]
async fn fake_endpoint_creates_updates_and_cleans_up() {
    let (fake, api) = fake_and_adapter(FakeConfig::default()).await;
    let saga = Saga::new(&api, "fraud");
    let serving = serving_spec(SERVE_IMAGE, None);
    let v1 = "s3://aleph-e2e/models/v1/model.tar.gz";
    let (first, reasons) = saga.serve_in_service(&serving, v1, None, 6).await;
    assert_eq!(reasons, ["EndpointCreating", "EndpointInService"]);
    assert_eq!(first.condition.status, ConditionStatus::True);
    let status = first.status.clone().expect("status");
    assert_eq!(status.state.as_deref(), Some("InService"));
    let counters = fake.counters();
    assert_eq!(
        (
            counters.models_created,
            counters.endpoint_configs_created,
            counters.endpoints_created
        ),
        (1, 1, 1)
    );

    // While Creating the condition said so.
    let other = Saga::new(&api, "x");
    let creating = other.serve(&serving, v1, None, None, "creating").await;
    assert_eq!(creating.condition.reason, "EndpointCreating");
    assert_eq!(creating.condition.status, ConditionStatus::False);
    assert_eq!(creating.requeue_after, Some(Duration::from_secs(30)));
    other
        .cleanup_until_done(None, creating.status.as_ref(), DeletionPolicy::Delete)
        .await;

    // A new model version: a new Model and config, UpdateEndpoint, then the old ones go.
    let v2 = "s3://aleph-e2e/models/v2/model.tar.gz";
    let (second, reasons) = saga
        .serve_in_service(&serving, v2, Some(status.clone()), 8)
        .await;
    assert_eq!(reasons, ["EndpointUpdating", "EndpointInService"]);
    let updated = second.status.clone().expect("status");
    let model_v2 = model_name(&saga.owner, "fraud", SERVE_IMAGE, v2, &serving.role_arn);
    assert_eq!(updated.model_name.as_deref(), Some(model_v2.as_str()));
    assert_ne!(updated.config_name, status.config_name);
    assert_eq!(
        fake.model_names(),
        vec![model_v2.clone()],
        "the old Model is deleted"
    );
    assert_eq!(
        fake.endpoint_config_names(),
        updated.config_name.clone().into_iter().collect::<Vec<_>>()
    );
    let counters = fake.counters();
    assert_eq!(counters.endpoint_updates, 1);
    assert_eq!(counters.endpoints_created, 2, "one for each owner");

    // Cleanup: nothing of ours is left.
    saga.cleanup_until_done(None, Some(&updated), DeletionPolicy::Delete)
        .await;
    assert_nothing_live(&fake.counters());
}

#[tokio::test]
async fn fake_endpoint_adoption_and_name_conflicts() {
    let (fake, api) = fake_and_adapter(FakeConfig::default()).await;
    fake.seed_foreign_endpoint("legacy-fraud", "legacy-config", "legacy-model");
    let saga = Saga::new(&api, "fraud");
    let serving = serving_spec(SERVE_IMAGE, Some("legacy-fraud"));
    let artifact = "s3://aleph-e2e/models/v1/model.tar.gz";

    // Not ours and not adopted: leave it alone.
    let conflict = saga.serve(&serving, artifact, None, None, "conflict").await;
    assert!(conflict.terminal);
    assert_eq!(conflict.condition.reason, "EndpointNameConflict");
    assert_eq!(conflict.status, None);
    assert_eq!(fake.counters().models_created, 0);
    assert_eq!(
        fake.endpoint("legacy-fraud").map(|e| e.config_name),
        Some("legacy-config".into())
    );

    // Adopted: moved to our config; the foreign config and Model stay.
    let adopt = Some("legacy-fraud");
    let in_service = EndpointOutcome::in_service;
    let (adopted, reasons) = saga
        .serve_until(&serving, artifact, None, adopt, 8, in_service)
        .await;
    assert_eq!(reasons, ["EndpointUpdating", "EndpointInService"]);
    let status = adopted.status.clone().expect("status");
    assert_eq!(status.name, "legacy-fraud");
    assert!(
        status
            .config_name
            .as_deref()
            .is_some_and(|c| is_owned(c, &saga.owner))
    );
    assert_eq!(fake.counters().endpoints_created, 0);
    assert!(
        fake.endpoint_config_names()
            .contains(&"legacy-config".to_string())
    );

    // Cleanup deletes the adopted endpoint and what we made, not what we found.
    saga.cleanup_until_done(None, Some(&status), DeletionPolicy::Delete)
        .await;
    assert!(fake.endpoint("legacy-fraud").is_none());
    assert_eq!(fake.model_names(), ["legacy-model"]);
    assert_eq!(fake.endpoint_config_names(), ["legacy-config"]);

    // adopt and endpointName must agree.
    let mismatch = saga
        .serve(&serving, artifact, None, Some("other"), "invalid")
        .await;
    assert!(mismatch.terminal);
    assert_eq!(mismatch.condition.reason, "InvalidSpec");
}

#[tokio::test]
async fn fake_failed_endpoint_is_terminal_until_the_spec_changes() {
    let (fake, api) = fake_and_adapter(FakeConfig::default()).await;
    let saga = Saga::new(&api, "fraud");
    let artifact = "s3://aleph-e2e/models/v1/model.tar.gz";
    let broken = serving_spec(
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/fake-fail:1",
        None,
    );
    let terminal = |o: &EndpointOutcome| o.terminal;
    let (failed, reasons) = saga
        .serve_until(&broken, artifact, None, None, 6, terminal)
        .await;
    assert_eq!(reasons, ["EndpointCreating", "EndpointFailed"]);
    assert_eq!(failed.condition.reason, "EndpointFailed");
    assert_contains(&failed.condition.message, "ping health check");
    assert_eq!(failed.requeue_after, None);

    // A fixed image replaces the failed endpoint.
    let fixed = serving_spec(SERVE_IMAGE, None);
    let (serving, reasons) = saga
        .serve_in_service(&fixed, artifact, failed.status.clone(), 8)
        .await;
    assert_eq!(
        reasons,
        ["EndpointReplacing", "EndpointCreating", "EndpointInService"]
    );
    let status = serving.status.clone().expect("status");
    let fixed_model = model_name(&saga.owner, "fraud", SERVE_IMAGE, artifact, &fixed.role_arn);
    assert_eq!(
        fake.model_names(),
        vec![fixed_model],
        "the failed version's Model is deleted"
    );
    assert_eq!(fake.endpoint_config_names().len(), 1);

    // An update to a failing image is rolled back by SageMaker: terminal, still serving.
    let (rolled_back, reasons) = saga
        .serve_until(&broken, artifact, Some(status.clone()), None, 8, terminal)
        .await;
    assert_eq!(reasons, ["EndpointUpdating", "EndpointUpdateFailed"]);
    assert_eq!(rolled_back.condition.status, ConditionStatus::True);
    assert_eq!(
        rolled_back
            .status
            .as_ref()
            .and_then(|s| s.config_name.clone()),
        status.config_name
    );
    let updates = fake.counters().endpoint_updates;
    let again = saga
        .serve(
            &broken,
            artifact,
            rolled_back.status.as_ref(),
            None,
            "again",
        )
        .await;
    assert!(again.terminal);
    assert_eq!(
        fake.counters().endpoint_updates,
        updates,
        "a rolled-back update is not retried"
    );

    saga.cleanup_until_done(None, rolled_back.status.as_ref(), DeletionPolicy::Delete)
        .await;
    assert_nothing_live(&fake.counters());
}

#[tokio::test]
async fn errors_are_classified_over_http() {
    let fake = aws::start_fake(FakeConfig::default()).await;
    let calls = Calls::default();
    let api = adapter_with(&fake.endpoint_url(), adapter_config(), calls.clone()).await;

    for e in [
        api.describe_training_job("missing").await.err(),
        api.describe_model("missing").await.err(),
        api.describe_endpoint_config("missing").await.err(),
        api.describe_endpoint("missing").await.err(),
        api.delete_model("missing").await.err(),
        api.delete_endpoint("missing").await.err(),
        api.stop_training_job("missing").await.err(),
    ] {
        assert!(
            e.as_ref().is_some_and(SageMakerError::is_not_found),
            "{e:?}"
        );
    }

    let saga = Saga::new(&api, "dup");
    let spec = training_spec(&[]);
    let first = saga.train(&spec, None, "create").await;
    let request = aleph_controllers::sagemaker::training::create_request(
        &first.status.job_name,
        SagaOwner {
            uid: &saga.owner,
            namespace: NAMESPACE,
            name: "dup",
        },
        &spec,
    );
    let dup = api.create_training_job(&request).await;
    assert!(
        dup.as_ref().is_err_and(SageMakerError::is_already_exists),
        "{dup:?}"
    );

    // Throttling and 5xx, after the SDK's bounded retries.
    fake.set_throttle_fraction(1.0);
    let throttled = api.describe_endpoint("x").await;
    assert_recoverable(&throttled, RecoverableKind::Throttled);
    fake.set_throttle_fraction(0.0);
    fake.set_server_error_fraction(1.0);
    let failed = api.describe_endpoint("x").await;
    assert_recoverable(&failed, RecoverableKind::ServerError);
    fake.set_server_error_fraction(0.0);
    let describes = fake_calls(&fake, "DescribeEndpoint").unwrap_or_default();
    // 1 missing + 3 throttled attempts + 3 failed attempts.
    assert_eq!(describes, 7, "the SDK made a bounded number of attempts");

    // Nobody listening: a network error, also recoverable.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener.local_addr().expect("its address")
    };
    let nowhere = adapter(&format!("http://{closed}")).await;
    let unreachable = nowhere.describe_model("x").await;
    assert!(
        unreachable
            .as_ref()
            .is_err_and(SageMakerError::is_recoverable),
        "{unreachable:?}"
    );

    // No credentials or request body in any message.
    for e in [throttled.err(), failed.err(), unreachable.err(), dup.err()]
        .into_iter()
        .flatten()
    {
        let text = e.to_string();
        assert!(
            !text.contains("aleph-e2e-not-a-secret") && !text.contains("AKIDALEPHE2E"),
            "{text}"
        );
    }

    for (operation, outcome) in [
        ("DescribeEndpoint", "throttled"),
        ("DescribeEndpoint", "server_error"),
        ("DescribeEndpoint", "not_found"),
        ("CreateTrainingJob", "already_exists"),
        ("CreateTrainingJob", "ok"),
    ] {
        assert_eq!(
            count(&calls, operation, outcome),
            1,
            "{operation} {outcome}"
        );
    }
}

/// Faults of a chaos run: 30% throttling, 5% server errors, 10% lost responses.
fn chaos_config(seed: u64) -> FakeConfig {
    FakeConfig {
        throttle_fraction: 0.3,
        server_error_fraction: 0.05,
        lost_response_fraction: 0.1,
        seed,
        ..FakeConfig::default()
    }
}

/// The whole life of one model under faults, with a "restart" (a new client,
/// no memory but the status) before every pass: train, serve, scale out (a new
/// EndpointConfig and an update), then delete; with `delete_while_updating`
/// the deletion starts as soon as the update is asked for. Returns the fake's
/// counters after cleanup.
async fn chaos_run(seed: u64, delete_while_updating: bool) -> (FakeCounters, String) {
    let fake = aws::start_fake(chaos_config(seed)).await;
    let url = fake.endpoint_url();
    let calls = Calls::default();
    let owner = uid();
    let chaos = SagaOwner {
        uid: &owner,
        namespace: NAMESPACE,
        name: "chaos",
    };
    let spec = training_spec(&[]);
    let mut serving = serving_spec(SERVE_IMAGE, None);

    let mut training: Option<TrainingStatus> = None;
    let mut endpoint: Option<EndpointStatus> = None;
    let mut errors = 0;
    let mut passes = 0;
    let mut scaled = false;
    loop {
        passes += 1;
        assert!(
            passes < 300,
            "seed {seed}: no convergence after {passes} passes: {training:?} {endpoint:?}"
        );
        // A restart: nothing survives but the status.
        let api = adapter_with(&url, adapter_config(), calls.clone()).await;
        let trained = reconcile_training(&api, chaos, &spec, training.as_ref()).await;
        let Some(outcome) = recovered(trained, seed, &mut errors) else {
            continue;
        };
        assert!(!outcome.terminal, "seed {seed}: {outcome:?}");
        training = Some(outcome.status.clone());
        let Some(artifact) = outcome.artifact_uri().map(str::to_string) else {
            continue;
        };
        let served =
            reconcile_endpoint(&api, chaos, &serving, &artifact, endpoint.as_ref(), None).await;
        let Some(served) = recovered(served, seed, &mut errors) else {
            continue;
        };
        assert!(!served.terminal, "seed {seed}: {served:?}");
        endpoint = served.status.clone();
        if scaled && delete_while_updating && served.condition.reason == "EndpointUpdating" {
            break;
        }
        if served.in_service() {
            if scaled {
                assert_eq!(
                    endpoint.as_ref().and_then(|s| s.state.as_deref()),
                    Some("InService")
                );
                break;
            }
            // Scale out once: a new EndpointConfig and an update, same Model.
            serving.initial_instance_count = 2;
            scaled = true;
        }
    }

    let mut cleanup_passes = 0;
    loop {
        cleanup_passes += 1;
        assert!(cleanup_passes < 100, "seed {seed}: cleanup did not finish");
        let api = adapter_with(&url, adapter_config(), calls.clone()).await;
        let policy = DeletionPolicy::Delete;
        let outcome = cleanup(&api, &owner, training.as_ref(), endpoint.as_ref(), policy).await;
        if let Some(CleanupOutcome::Done) = recovered(outcome, seed, &mut errors) {
            break;
        }
    }

    let mut by_outcome: BTreeMap<&str, u64> = BTreeMap::new();
    for operation in [
        "CreateTrainingJob",
        "DescribeTrainingJob",
        "CreateModel",
        "DescribeModel",
        "DeleteModel",
        "ListModels",
        "CreateEndpointConfig",
        "DescribeEndpointConfig",
        "DeleteEndpointConfig",
        "ListEndpointConfigs",
        "CreateEndpoint",
        "DescribeEndpoint",
        "UpdateEndpoint",
        "DeleteEndpoint",
    ] {
        for outcome in [
            "ok",
            "not_found",
            "already_exists",
            "throttled",
            "server_error",
            "terminal",
            "network",
        ] {
            let n = count(&calls, operation, outcome);
            if n > 0 {
                *by_outcome.entry(outcome).or_default() += n;
            }
        }
    }
    let summary = format!(
        "seed {seed} (delete while updating: {delete_while_updating}): {passes} saga passes, {cleanup_passes} cleanup \
         passes, {errors} errors left after SDK retries; calls by outcome {by_outcome:?}"
    );
    (fake.counters(), summary)
}

/// Under 30% throttling, 5% server errors and 10% lost responses, with a
/// restart before every pass, the sagas converge with no duplicate job,
/// Model, EndpointConfig or endpoint, and cleanup leaves nothing.
#[tokio::test]
async fn fake_faults_and_restarts_converge_without_duplicates_or_leftovers() {
    for (seed, delete_while_updating) in
        [(7, false), (11, false), (23, false), (42, true), (99, true)]
    {
        let (counters, summary) = chaos_run(seed, delete_while_updating).await;
        println!("{summary}");
        println!(
            "fake counters: {}",
            serde_json::to_string(&counters).unwrap_or_default()
        );
        assert!(
            counters.throttled > 0,
            "seed {seed}: the test injected throttling"
        );
        assert_eq!(
            counters.training_jobs_created, 1,
            "seed {seed}: exactly one training job"
        );
        assert_eq!(counters.models_created, 1, "seed {seed}: exactly one Model");
        assert_eq!(
            counters.endpoint_configs_created, 2,
            "seed {seed}: one EndpointConfig per instance count"
        );
        assert_eq!(
            counters.endpoints_created, 1,
            "seed {seed}: exactly one endpoint"
        );
        assert_eq!(
            counters.endpoint_updates, 1,
            "seed {seed}: exactly one update"
        );
        assert_eq!(
            (
                counters.live_models,
                counters.live_endpoint_configs,
                counters.live_endpoints,
                counters.running_training_jobs
            ),
            (0, 0, 0, 0),
            "seed {seed}: nothing left after cleanup"
        );
    }
}

/// The adapter built from the environment alone: static keys, region and
/// `AWS_ENDPOINT_URL_SAGEMAKER`. Environment variables cannot be set safely in
/// a threaded test, so the test runs itself again in a child process.
#[tokio::test]
async fn adapter_from_env_honours_the_endpoint_variable() {
    const CHILD: &str = "ALEPH_SAGEMAKER_ENV_CHILD";
    match std::env::var(CHILD).as_deref() {
        Ok("keys") => {
            let api = AwsSageMaker::from_env(&AwsSageMakerConfig::default(), Calls::default())
                .await
                .expect("from_env");
            assert_eq!(api.region(), Some("eu-west-1"));
            let e = api.describe_model("from-env").await;
            assert!(e.as_ref().is_err_and(SageMakerError::is_not_found), "{e:?}");
            return;
        }
        Ok("no-keys") => {
            let calls = Calls::default();
            let api = AwsSageMaker::from_env(&AwsSageMakerConfig::default(), calls.clone())
                .await
                .expect("from_env");
            let e = api.describe_model("from-env").await;
            assert!(
                matches!(
                    e,
                    Err(SageMakerError::Recoverable {
                        kind: RecoverableKind::Auth,
                        ..
                    })
                ),
                "missing credentials are reported as such: {e:?}"
            );
            let auth = SageMakerCallLabels {
                operation: "DescribeModel",
                outcome: "auth",
            };
            assert_eq!(calls.get_or_create(&auth).get(), 1);
            return;
        }
        _ => {}
    }
    let fake = aws::start_fake(FakeConfig::default()).await;
    let exe = std::env::current_exe().expect("the test binary");
    for (mode, keys) in [("keys", true), ("no-keys", false)] {
        // Async, so that the fake keeps serving on this test's runtime meanwhile.
        let mut child = tokio::process::Command::new(&exe);
        child
            .args([
                "--exact",
                "adapter_from_env_honours_the_endpoint_variable",
                "--nocapture",
            ])
            .env(CHILD, mode)
            .env("AWS_REGION", "eu-west-1")
            .env("AWS_ENDPOINT_URL_SAGEMAKER", fake.endpoint_url())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/nonexistent/aleph-e2e/config")
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/aleph-e2e/credentials",
            )
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
            .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
            .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI");
        if keys {
            child
                .env("AWS_ACCESS_KEY_ID", "AKIDALEPHE2E")
                .env("AWS_SECRET_ACCESS_KEY", "aleph-e2e-not-a-secret");
        }
        let output = child.output().await.expect("running the child test");
        assert!(
            output.status.success(),
            "child ({mode}) failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_eq!(
        fake.counters().calls.get("DescribeModel").copied(),
        Some(1),
        "the child with keys reached the fake, the one without did not"
    );
}
