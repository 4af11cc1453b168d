//! SageMaker as the tests reach it: fake static credentials, an SDK client
//! pointed at an emulator (moto or [`SageMakerFake`]), and an operator process
//! of the test's own whose SageMaker is that emulator.

use std::time::Duration;

use aleph_controllers::sagemaker::naming::is_owned;
use aws_config::BehaviorVersion;
use aws_sdk_sagemaker::config::Credentials;

use crate::sagemaker_fake::{FakeConfig, SageMakerFake};
use crate::{OperatorOptions, OperatorProcess, TestEnv};

/// An AIModel `name` for the operator of the test's own that serves `label`
/// (see [`operator_options`]); `spec` is the body of its spec.
pub fn labelled_model(name: &str, label: &str, spec: &str) -> String {
    format!(
        "\napiVersion: aleph.dev/v1alpha1\nkind: AIModel\nmetadata:\n  name: {name}\n  labels: {{ {}: \"{label}\" }}\nspec:\n{spec}",
        crate::PRIVATE_OPERATOR_LABEL
    )
}

/// The access key id of the fake credentials.
pub const ACCESS_KEY_ID: &str = "AKIDALEPHE2E";
/// The secret access key of the fake credentials.
pub const SECRET_ACCESS_KEY: &str = "aleph-e2e-not-a-secret";
/// The region the emulators are addressed in.
pub const REGION: &str = "us-east-1";

/// The fake static credentials ([`ACCESS_KEY_ID`], [`SECRET_ACCESS_KEY`]).
pub fn credentials() -> Credentials {
    Credentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY, None, None, "aleph-e2e")
}

/// An SDK client for the SageMaker at `url`, in `region`, signing with `credentials`.
pub async fn sagemaker_client(
    url: &str,
    region: &'static str,
    credentials: Credentials,
) -> aws_sdk_sagemaker::Client {
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .credentials_provider(credentials)
        .region(aws_config::Region::new(region))
        .endpoint_url(url)
        .load()
        .await;
    aws_sdk_sagemaker::Client::new(&sdk)
}

/// Starts a [`SageMakerFake`]; panics when it cannot.
pub async fn start_fake(config: FakeConfig) -> SageMakerFake {
    SageMakerFake::start(config)
        .await
        .unwrap_or_else(|e| panic!("starting the SageMaker fake: {e}"))
}

/// Ends a test that ran against `fake`: cleans up `env` first, while the fake
/// still answers the calls of the finalizers the cleanup sets off, then stops
/// the fake.
pub async fn cleanup_with_fake(env: TestEnv, fake: SageMakerFake) {
    env.cleanup().await;
    fake.shutdown().await;
}

/// The environment of an operator whose SageMaker is `url`: the region, the
/// fake credentials and no instance metadata.
pub fn operator_env(url: &str, region: &str) -> Vec<(String, String)> {
    vec![
        ("AWS_ENDPOINT_URL_SAGEMAKER".into(), url.to_string()),
        ("AWS_REGION".into(), region.into()),
        ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY_ID.into()),
        ("AWS_SECRET_ACCESS_KEY".into(), SECRET_ACCESS_KEY.into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ]
}

/// An operator of a test's own: no leader election, only `namespace` watched
/// and only the objects labelled `label`, SageMaker (at `url`, in [`REGION`])
/// polled every second; its log file is named after `name`.
pub fn operator_options(namespace: &str, url: &str, label: &str, name: &str) -> OperatorOptions {
    OperatorOptions {
        args: vec![
            "--leader-elect".into(),
            "false".into(),
            "--namespaces".into(),
            namespace.to_string(),
            "--sagemaker-max-poll-seconds".into(),
            "1".into(),
        ],
        env: operator_env(url, REGION),
        private_label: Some(label.to_string()),
        name: name.into(),
    }
}

/// Starts the operator and waits (90 s at the most) until it is ready.
pub async fn start_operator(options: OperatorOptions) -> OperatorProcess {
    let mut op = OperatorProcess::start(options).await;
    op.wait_ready(Duration::from_secs(90)).await;
    op
}

/// Lists with the SDK directly, to count what exists in an emulator.
pub struct Lister(pub aws_sdk_sagemaker::Client);

impl Lister {
    /// A lister of the SageMaker at `url`, with the fake credentials, in [`REGION`].
    pub async fn new(url: &str) -> Self {
        Self(sagemaker_client(url, REGION, credentials()).await)
    }

    async fn training_jobs_where(
        &self,
        contains: &str,
        keep: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let out = self
            .0
            .list_training_jobs()
            .name_contains(contains)
            .max_results(100)
            .send()
            .await
            .unwrap_or_else(|e| panic!("ListTrainingJobs: {e:?}"));
        let names = out.training_job_summaries().iter();
        kept(names.filter_map(|s| s.training_job_name()), keep)
    }

    /// The training jobs whose names contain `contains`.
    pub async fn training_jobs(&self, contains: &str) -> Vec<String> {
        self.training_jobs_where(contains, |n| n.contains(contains))
            .await
    }

    /// The training jobs named `name`.
    pub async fn training_jobs_named(&self, name: &str) -> Vec<String> {
        self.training_jobs_where(name, |n| n == name).await
    }

    /// The Models of the object whose uid is `owner`.
    pub async fn models(&self, owner: &str) -> Vec<String> {
        let out = self.0.list_models().max_results(100).send().await;
        let out = out.unwrap_or_else(|e| panic!("ListModels: {e:?}"));
        let names = out.models().iter().filter_map(|m| m.model_name());
        kept(names, |n| is_owned(n, owner))
    }

    /// The EndpointConfigs of the object whose uid is `owner`.
    pub async fn endpoint_configs(&self, owner: &str) -> Vec<String> {
        let out = self.0.list_endpoint_configs().max_results(100).send().await;
        let out = out.unwrap_or_else(|e| panic!("ListEndpointConfigs: {e:?}"));
        let names = out.endpoint_configs().iter();
        kept(names.filter_map(|c| c.endpoint_config_name()), |n| {
            is_owned(n, owner)
        })
    }

    /// The endpoints named `name` (none or one).
    pub async fn endpoints(&self, name: &str) -> Vec<String> {
        let list = self.0.list_endpoints().name_contains(name);
        let out = list.max_results(100).send().await;
        let out = out.unwrap_or_else(|e| panic!("ListEndpoints: {e:?}"));
        let names = out.endpoints().iter().filter_map(|e| e.endpoint_name());
        kept(names, |n| n == name)
    }

    /// Whether DescribeEndpoint finds the endpoint.
    pub async fn endpoint_exists(&self, name: &str) -> bool {
        self.0
            .describe_endpoint()
            .endpoint_name(name)
            .send()
            .await
            .is_ok()
    }

    /// Deletes the endpoint and the owner's EndpointConfigs and Models,
    /// ignoring errors.
    pub async fn delete_everything(&self, endpoint: &str, owner: &str) {
        let sdk = &self.0;
        let _ = sdk.delete_endpoint().endpoint_name(endpoint).send().await;
        for config in self.endpoint_configs(owner).await {
            let request = sdk.delete_endpoint_config().endpoint_config_name(config);
            let _ = request.send().await;
        }
        for model in self.models(owner).await {
            let _ = self.0.delete_model().model_name(model).send().await;
        }
    }
}

/// The names `keep` keeps, in their order.
fn kept<'a>(names: impl Iterator<Item = &'a str>, keep: impl Fn(&str) -> bool) -> Vec<String> {
    names.filter(|&n| keep(n)).map(str::to_string).collect()
}
