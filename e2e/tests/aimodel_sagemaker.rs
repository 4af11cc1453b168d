//! AIModels on SageMaker, end to end: the operator process reconciles AIModels
//! on the API server and calls SageMaker through the real aws-sdk-sagemaker
//! client over HTTP — moto's server for the API contract, the in-repo fake for
//! long jobs, failures, stops, throttling and crashes.
//!
//! Each test starts its own operator (watching only its namespace and only
//! objects labelled for it) so that it can point it at its own SageMaker and
//! kill it at will. `cargo test -p aleph-e2e --test aimodel_sagemaker --
//! --nocapture` prints the emulator's counts.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use aleph_crds::AIModel;
use aleph_e2e::aws::Lister;
use aleph_e2e::sagemaker_fake::{FAILURE_REASON_TAG, FakeConfig, OUTCOME_TAG, SageMakerFake};
use aleph_e2e::{
    Condition, OperatorProcess, TestEnv, aws, find_condition, unique_name, wait_for,
    wait_for_deletion,
};
use k8s_openapi::api::core::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use rand::Rng;

const WAIT: Duration = Duration::from_secs(120);

/// moto's URL: `ALEPH_MOTO_URL` (set by `make test`), or the server
/// `e2e/sagemaker/moto.sh` runs (started now if none).
fn moto_url() -> String {
    if let Ok(url) = std::env::var("ALEPH_MOTO_URL")
        && !url.is_empty()
    {
        return url;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/sagemaker/moto.sh");
    for action in ["url", "start"] {
        let output = Command::new("bash")
            .arg(script)
            .arg(action)
            .output()
            .unwrap_or_else(|e| panic!("running {script} {action}: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let url = stdout
            .lines()
            .map(|l| l.trim_start_matches("export ALEPH_MOTO_URL=").trim())
            .find(|l| l.starts_with("http"));
        if output.status.success()
            && let Some(url) = url
        {
            return url.to_string();
        }
    }
    panic!("moto is needed: {script} start failed (or set ALEPH_MOTO_URL)")
}

/// Starts an operator for `env`'s namespace whose SageMaker is `url`.
async fn operator(env: &TestEnv, url: &str, label: &str) -> OperatorProcess {
    let mut options = aws::operator_options(env.namespace(), url, label, "sagemaker");
    options
        .args
        .extend(["--log-level".into(), "info,aleph_controllers=debug".into()]);
    aws::start_operator(options).await
}

/// An AIModel trained on SageMaker and served there; `tags` go on the job
/// (the fake reads its outcome from them).
fn model_yaml(name: &str, label: &str, tags: &[(&str, &str)], retain: bool) -> String {
    let tags: String = tags
        .iter()
        .map(|(k, v)| format!("\n      {k}: \"{v}\""))
        .collect();
    let tags = if tags.is_empty() {
        String::new()
    } else {
        format!("\n    tags:{tags}")
    };
    let spec = format!(
        r#"  backend: SageMaker
  deletionPolicy: {policy}
  training:
    image: 123456789012.dkr.ecr.us-east-1.amazonaws.com/xgboost:1.7
    roleArn: arn:aws:iam::123456789012:role/aleph-training
    instanceType: ml.m5.xlarge
    outputS3Uri: s3://aleph-e2e/models/{name}
    hyperparameters:
      num_round: "50"
    inputs:
      - name: train
        s3Uri: s3://aleph-e2e/data/train
        contentType: text/csv{tags}
  sagemaker:
    image: 123456789012.dkr.ecr.us-east-1.amazonaws.com/xgboost-serve:1.7
    roleArn: arn:aws:iam::123456789012:role/aleph-serving
    instanceType: ml.m5.large
"#,
        policy = if retain { "Retain" } else { "Delete" },
    );
    aws::labelled_model(name, label, &spec)
}

fn condition_is(model: &AIModel, type_: &str, status: &str) -> bool {
    find_condition(model, type_).is_some_and(|c| c.status == status)
}

async fn event_reasons(env: &TestEnv, name: &str) -> BTreeSet<String> {
    let events: Api<Event> = env.api();
    let list = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .unwrap_or_else(|e| panic!("listing events: {e}"));
    list.items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect::<BTreeSet<_>>()
}

async fn delete_model(api: &Api<AIModel>, name: &str) {
    api.delete(name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("deleting AIModel {name}: {e}"));
}

/// Deletes the AIModel and waits until it is gone.
async fn delete_and_wait(api: &Api<AIModel>, name: &str) {
    delete_model(api, name).await;
    wait_for_deletion(api, name, WAIT).await;
}

/// Starts a SageMaker fake and an operator for `env`'s namespace that calls it,
/// for the AIModels labelled with a new name made from `prefix`.
async fn with_fake(
    env: &TestEnv,
    config: FakeConfig,
    prefix: &str,
) -> (SageMakerFake, String, OperatorProcess, Api<AIModel>) {
    let sm = aws::start_fake(config).await;
    let label = unique_name(prefix);
    let op = operator(env, &sm.endpoint_url(), &label).await;
    (sm, label, op, env.api())
}

/// [`with_fake`], and the AIModel `model` handed to its operator.
async fn fake_with_model(
    env: &TestEnv,
    config: FakeConfig,
    model: &str,
) -> (SageMakerFake, OperatorProcess, Api<AIModel>) {
    let (sm, label, op, api) = with_fake(env, config, "fake").await;
    env.apply_yaml(&model_yaml(model, &label, &[], false)).await;
    (sm, op, api)
}

/// Waits until the AIModel's training job is InProgress.
async fn training_in_progress(api: &Api<AIModel>, name: &str) -> AIModel {
    wait_for(api, name, WAIT, |m: &AIModel| {
        m.status
            .as_ref()
            .and_then(|s| s.training.as_ref())
            .and_then(|t| t.job_status.as_deref())
            == Some("InProgress")
    })
    .await
}

/// Waits until the AIModel's Trained condition has `reason`; returns the condition.
async fn trained_with_reason(api: &Api<AIModel>, name: &str, reason: &str) -> Condition {
    let model = wait_for(api, name, WAIT, |m: &AIModel| {
        find_condition(m, "Trained").is_some_and(|c| c.reason.as_deref() == Some(reason))
    })
    .await;
    find_condition(&model, "Trained").unwrap_or_else(|| panic!("no Trained"))
}

/// An operator for `env`'s namespace that calls moto, for the AIModels
/// labelled with a new name; and a [`Lister`] of what moto holds.
async fn with_moto(env: &TestEnv) -> (String, OperatorProcess, Api<AIModel>, Lister) {
    let url = moto_url();
    let label = unique_name("moto");
    let op = operator(env, &url, &label).await;
    let api: Api<AIModel> = env.api();
    let list = Lister::new(&url).await;
    (label, op, api, list)
}

/// What `get` reads in the model's status; panics, naming `what`, when absent.
fn from_status(
    model: &AIModel,
    what: &str,
    get: impl FnOnce(&aleph_crds::aimodel::AIModelStatus) -> Option<String>,
) -> String {
    model
        .status
        .as_ref()
        .and_then(get)
        .unwrap_or_else(|| panic!("no {what} in the status: {:?}", model.status))
}

fn training_job_of(model: &AIModel) -> String {
    from_status(model, "training job", |s| {
        s.training.as_ref().map(|t| t.job_name.clone())
    })
}

fn endpoint_of(model: &AIModel) -> String {
    from_status(model, "endpoint", |s| {
        s.endpoint.as_ref().map(|e| e.name.clone())
    })
}

#[tokio::test]
async fn moto_trains_once_serves_and_deletes_everything() {
    let env = TestEnv::new().await;
    let (label, op, api, list) = with_moto(&env).await;

    env.apply_yaml(&model_yaml("fraud", &label, &[], false))
        .await;
    let model = wait_for(&api, "fraud", WAIT, |m: &AIModel| {
        condition_is(m, "Trained", "True") && condition_is(m, "Serving", "True")
    })
    .await;
    let owner = model.uid().unwrap_or_default();
    let status = model.status.clone().unwrap_or_default();
    let training = status
        .training
        .clone()
        .unwrap_or_else(|| panic!("{status:?}"));
    let artifact = training.artifact_uri.clone().unwrap_or_default();
    assert!(artifact.starts_with("s3://"), "artifact {artifact:?}");
    assert_eq!(training.job_status.as_deref(), Some("Completed"));
    assert!(
        condition_is(&model, "Ready", "True"),
        "Ready follows Serving: {:?}",
        status.conditions
    );

    // Exactly one job for the spec, however many reconciles ran.
    let job = training_job_of(&model);
    assert_eq!(list.training_jobs_named(&job).await, vec![job.clone()]);
    let endpoint = endpoint_of(&model);
    assert!(list.endpoint_exists(&endpoint).await, "endpoint {endpoint}");
    assert_eq!(list.models(&owner).await.len(), 1, "one Model");
    assert_eq!(
        list.endpoint_configs(&owner).await.len(),
        1,
        "one EndpointConfig"
    );
    let reasons = event_reasons(&env, "fraud").await;
    for reason in ["TrainingStarted", "TrainingCompleted", "EndpointInService"] {
        assert!(reasons.contains(reason), "event {reason} in {reasons:?}");
    }

    // Deleting the AIModel deletes what it made in SageMaker.
    delete_and_wait(&api, "fraud").await;
    assert!(
        !list.endpoint_exists(&endpoint).await,
        "endpoint left behind"
    );
    assert!(list.models(&owner).await.is_empty(), "Models left behind");
    assert!(
        list.endpoint_configs(&owner).await.is_empty(),
        "EndpointConfigs left behind"
    );
    println!(
        "moto: 1 training job ({job}), endpoint {endpoint}, all removed on delete; operator log {}",
        op.log_path().display()
    );
    env.cleanup().await;
}

#[tokio::test]
async fn moto_retain_keeps_the_endpoint() {
    let env = TestEnv::new().await;
    let (label, _op, api, list) = with_moto(&env).await;

    env.apply_yaml(&model_yaml("kept", &label, &[], true)).await;
    let model = wait_for(&api, "kept", WAIT, |m: &AIModel| {
        condition_is(m, "Serving", "True")
    })
    .await;
    let owner = model.uid().unwrap_or_default();
    let endpoint = endpoint_of(&model);
    delete_and_wait(&api, "kept").await;
    let kept = (
        list.endpoint_exists(&endpoint).await,
        list.models(&owner).await.len(),
        list.endpoint_configs(&owner).await.len(),
    );
    list.delete_everything(&endpoint, &owner).await;
    assert_eq!(
        kept,
        (true, 1, 1),
        "Retain keeps the endpoint, its config and its Model"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn fake_in_progress_then_completed_shows_in_status_and_events() {
    let env = TestEnv::new().await;
    let (sm, _op, api) = fake_with_model(&env, FakeConfig::training(3, 6_000), "slow").await;
    let running = training_in_progress(&api, "slow").await;
    assert!(
        condition_is(&running, "Trained", "False"),
        "Trained is False while the job runs: {:?}",
        running.status
    );
    assert!(
        !condition_is(&running, "Ready", "True"),
        "not Ready while training"
    );
    let job = training_job_of(&running);
    let done = wait_for(&api, "slow", WAIT, |m: &AIModel| {
        condition_is(m, "Trained", "True") && condition_is(m, "Serving", "True")
    })
    .await;
    assert_eq!(training_job_of(&done), job, "the same job completed");
    let reasons = event_reasons(&env, "slow").await;
    for reason in ["TrainingStarted", "TrainingCompleted", "EndpointInService"] {
        assert!(reasons.contains(reason), "event {reason} in {reasons:?}");
    }
    assert_eq!(sm.counters().training_jobs_created, 1);
    delete_and_wait(&api, "slow").await;
    let counters = sm.counters();
    assert_eq!(
        (
            counters.live_endpoints,
            counters.live_endpoint_configs,
            counters.live_models
        ),
        (0, 0, 0),
        "nothing left: {counters:?}"
    );
    aws::cleanup_with_fake(env, sm).await;
}

#[tokio::test]
async fn fake_failed_job_is_terminal_with_the_reason() {
    let env = TestEnv::new().await;
    let (sm, label, _op, api) = with_fake(&env, FakeConfig::default(), "fake").await;

    let reason = "AlgorithmError: out of memory in epoch 3";
    env.apply_yaml(&model_yaml(
        "broken",
        &label,
        &[(OUTCOME_TAG, "fail"), (FAILURE_REASON_TAG, reason)],
        false,
    ))
    .await;
    let trained = trained_with_reason(&api, "broken", "TrainingFailed").await;
    assert_eq!(trained.status, "False");
    // The condition carries SageMaker's FailureReason.
    trained.assert_says("TrainingFailed", &[reason]);
    let failed = wait_for(&api, "broken", WAIT, |m: &AIModel| {
        condition_is(m, "Ready", "False") && condition_is(m, "Degraded", "True")
    })
    .await;
    let degraded = find_condition(&failed, "Degraded").unwrap_or_else(|| panic!("no Degraded"));
    assert!(
        degraded
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("out of memory"),
        "Degraded says why: {:?}",
        degraded.message
    );
    assert!(
        event_reasons(&env, "broken")
            .await
            .contains("TrainingFailed")
    );
    // Terminal: no second job, no endpoint, however long we wait.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let counters = sm.counters();
    assert_eq!(counters.training_jobs_created, 1, "{counters:?}");
    assert_eq!(counters.endpoints_created, 0, "{counters:?}");
    aws::cleanup_with_fake(env, sm).await;
}

#[tokio::test]
async fn fake_deleting_during_training_stops_the_job() {
    let env = TestEnv::new().await;
    let config = FakeConfig::training_until_stopped(2);
    let (sm, _op, api) = fake_with_model(&env, config, "stopme").await;
    let running = training_in_progress(&api, "stopme").await;
    let job = training_job_of(&running);
    delete_and_wait(&api, "stopme").await;
    let stopped = sm
        .training_job(&job)
        .unwrap_or_else(|| panic!("job {job} vanished"));
    assert_eq!(stopped.status, "Stopped", "{stopped:?}");
    assert_eq!(sm.counters().training_jobs_stopped, 1);
    aws::cleanup_with_fake(env, sm).await;
}

#[tokio::test]
async fn fake_throttling_is_shown_as_recoverable_then_converges() {
    let env = TestEnv::new().await;
    let config = FakeConfig {
        throttle_fraction: 1.0,
        ..FakeConfig::default()
    };
    let (sm, _op, api) = fake_with_model(&env, config, "throttled").await;
    let trained = trained_with_reason(&api, "throttled", "SageMakerThrottled").await;
    assert_eq!(trained.status, "Unknown");
    trained.assert_says("SageMakerThrottled", &["Recoverable"]);
    sm.set_throttle_fraction(0.0);
    wait_for(&api, "throttled", WAIT, |m: &AIModel| {
        condition_is(m, "Serving", "True")
    })
    .await;
    assert_eq!(sm.counters().training_jobs_created, 1);
    delete_and_wait(&api, "throttled").await;
    aws::cleanup_with_fake(env, sm).await;
}

/// Kills and restarts the operator at random moments while several models
/// train and get endpoints, with 30% of SageMaker calls throttled and some
/// responses lost after the change was made; then deletes them all, again
/// with restarts. The emulator must end with one job per model, no duplicate
/// endpoints or configs, and nothing left after deletion.
#[tokio::test]
async fn exactly_once_across_restarts_and_throttling() {
    const MODELS: usize = 4;
    const RESTARTS: usize = 6;
    let env = TestEnv::new().await;
    let (sm, label, mut op, api) = with_fake(
        &env,
        FakeConfig {
            endpoint_creating_describes: 3,
            throttle_fraction: 0.3,
            lost_response_fraction: 0.1,
            seed: rand::rng().random(),
            ..FakeConfig::training(3, 4_000)
        },
        "chaos",
    )
    .await;
    let names: Vec<String> = (0..MODELS).map(|i| format!("chaos-{i}")).collect();
    for name in &names {
        env.apply_yaml(&model_yaml(name, &label, &[], false)).await;
    }

    let started = Instant::now();
    let mut restarts = 0;
    let mut converged = false;
    while started.elapsed() < Duration::from_secs(300) {
        if restarts < RESTARTS {
            let pause = rand::rng().random_range(500..3_000);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            op.restart().await;
            restarts += 1;
            continue;
        }
        let list = api
            .list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("listing AIModels: {e}"));
        if list.items.len() == MODELS
            && list
                .items
                .iter()
                .all(|m| condition_is(m, "Serving", "True") && condition_is(m, "Trained", "True"))
        {
            converged = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        converged,
        "the models did not converge after {restarts} restarts; operator log:\n{}",
        op.log_tail(40)
    );
    let counters = sm.counters();
    println!(
        "after {restarts} restarts: {} training jobs, {} endpoints, {} configs, {} models live; \
         {} throttled, {} lost responses, {} duplicate creates refused",
        counters.training_jobs,
        counters.live_endpoints,
        counters.live_endpoint_configs,
        counters.live_models,
        counters.throttled,
        counters.lost_responses,
        counters.duplicate_creates,
    );
    assert_eq!(counters.training_jobs, MODELS, "one training job per model");
    assert_eq!(counters.training_jobs_created, MODELS as u64);
    assert_eq!(counters.live_endpoints, MODELS, "one endpoint per model");
    assert_eq!(counters.endpoints_created, MODELS as u64);
    assert_eq!(
        counters.live_endpoint_configs, MODELS,
        "one config per model"
    );
    assert_eq!(counters.live_models, MODELS, "one Model per model");
    assert!(counters.throttled > 0, "throttling was injected");

    // Delete them all, restarting the operator while it cleans up.
    for name in &names {
        delete_model(&api, name).await;
    }
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(200..1_500))).await;
        op.restart().await;
    }
    for name in &names {
        wait_for_deletion(&api, name, WAIT).await;
    }
    let counters = sm.counters();
    println!(
        "after deletion: {} endpoints, {} configs, {} models, {} running jobs",
        counters.live_endpoints,
        counters.live_endpoint_configs,
        counters.live_models,
        counters.running_training_jobs
    );
    assert_eq!(
        (
            counters.live_endpoints,
            counters.live_endpoint_configs,
            counters.live_models,
            counters.running_training_jobs
        ),
        (0, 0, 0, 0),
        "no leftovers: {counters:?}"
    );
    aws::cleanup_with_fake(env, sm).await;
}
