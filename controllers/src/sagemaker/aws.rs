//! The adapter: [`SageMakerApi`] on aws-sdk-sagemaker.
//!
//! The client comes from `aws_config`'s loader, so it uses the default
//! credential chain (environment, profile, web identity / IRSA, container and
//! instance metadata) and honours `AWS_ENDPOINT_URL` and
//! `AWS_ENDPOINT_URL_SAGEMAKER`. The SDK's standard retry mode retries
//! throttling, 5xx and transient network errors a bounded number of times
//! with exponential backoff and jitter; what is left is classified into
//! [`SageMakerError`] and counted in `aleph_sagemaker_calls_total`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, ConfigLoader};
use aws_sdk_sagemaker::Client;
use aws_sdk_sagemaker::config::Region;
use aws_sdk_sagemaker::config::http::HttpResponse;
use aws_sdk_sagemaker::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sagemaker::types::{
    AlgorithmSpecification, Channel, ContainerDefinition, DataSource, OutputDataConfig,
    ProductionVariant, ResourceConfig, S3DataDistribution, S3DataSource, S3DataType,
    StoppingCondition, Tag, TrainingInputMode, TrainingInstanceType, VpcConfig,
};
use aws_smithy_async::future::pagination_stream::PaginationStream;
use aws_smithy_types::error::display::DisplayErrorContext;
use futures::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::error::clean_message;
use super::{
    CreateEndpointConfigRequest, CreateEndpointRequest, CreateModelRequest,
    CreateTrainingJobRequest, Endpoint, EndpointConfig, EndpointState, Model, RecoverableKind,
    SageMakerApi, SageMakerError, SmResult, TrainingJob, TrainingJobState, classify,
};
use crate::metrics::SageMakerCallLabels;

/// How the adapter's client is built.
#[derive(Clone, Debug)]
pub struct AwsSageMakerConfig {
    /// The region; the environment's (`AWS_REGION`, profile, instance metadata) when `None`.
    pub region: Option<String>,
    /// The SageMaker API's URL; the environment's (`AWS_ENDPOINT_URL_SAGEMAKER`,
    /// `AWS_ENDPOINT_URL`) or AWS's own when `None`.
    pub endpoint_url: Option<String>,
    /// Attempts per call, the first included (the SDK's standard retry mode).
    pub max_attempts: u32,
    /// The first retry's backoff; later ones grow exponentially, with jitter.
    pub initial_backoff: Duration,
    /// The longest backoff between two attempts.
    pub max_backoff: Duration,
    /// The longest one call may take, retries included.
    pub operation_timeout: Duration,
    /// The longest one attempt may take.
    pub attempt_timeout: Duration,
    /// The longest connecting may take.
    pub connect_timeout: Duration,
}

impl Default for AwsSageMakerConfig {
    fn default() -> Self {
        Self {
            region: None,
            endpoint_url: None,
            max_attempts: 3,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(20),
            operation_timeout: Duration::from_secs(90),
            attempt_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// SageMaker through aws-sdk-sagemaker.
#[derive(Clone, Debug)]
pub struct AwsSageMaker {
    client: Client,
    calls: Family<SageMakerCallLabels, Counter>,
}

impl AwsSageMaker {
    /// Loads the SDK configuration from the environment (the default
    /// credential chain, `AWS_REGION`, `AWS_ENDPOINT_URL_SAGEMAKER`, ...) and
    /// builds the client. Without a region anywhere, only resources that name
    /// their own can be served.
    pub async fn from_env(
        config: &AwsSageMakerConfig,
        calls: Family<SageMakerCallLabels, Counter>,
    ) -> SmResult<Self> {
        Self::load(
            aws_config::defaults(BehaviorVersion::latest()),
            config,
            calls,
        )
        .await
    }

    /// Like [`AwsSageMaker::from_env`], from a loader the caller has already
    /// customised (for example with a credentials provider).
    pub async fn load(
        loader: ConfigLoader,
        config: &AwsSageMakerConfig,
        calls: Family<SageMakerCallLabels, Counter>,
    ) -> SmResult<Self> {
        let retry = RetryConfig::standard()
            .with_max_attempts(config.max_attempts.max(1))
            .with_initial_backoff(config.initial_backoff)
            .with_max_backoff(config.max_backoff);
        let timeouts = TimeoutConfig::builder()
            .operation_timeout(config.operation_timeout)
            .operation_attempt_timeout(config.attempt_timeout)
            .connect_timeout(config.connect_timeout)
            .build();
        let mut loader = loader.retry_config(retry).timeout_config(timeouts);
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        // Without a region anywhere, the client still serves the resources
        // that name their own (see `RegionalClients::get`).
        let sdk = loader.load().await;
        Ok(Self {
            client: Client::new(&sdk),
            calls,
        })
    }

    /// Wraps a client built elsewhere.
    pub fn from_client(client: Client, calls: Family<SageMakerCallLabels, Counter>) -> Self {
        Self { client, calls }
    }

    /// The same client settings in another region.
    pub fn with_region(&self, region: &str) -> Self {
        let conf = self
            .client
            .config()
            .to_builder()
            .region(Region::new(region.to_string()))
            .build();
        Self {
            client: Client::from_conf(conf),
            calls: self.calls.clone(),
        }
    }

    /// The client's region (an empty one, as `AWS_REGION=` sets, is none).
    pub fn region(&self) -> Option<&str> {
        self.client
            .config()
            .region()
            .map(|r| r.as_ref())
            .filter(|r| !r.is_empty())
    }

    fn count(&self, operation: &'static str, outcome: &'static str) {
        self.calls
            .get_or_create(&SageMakerCallLabels { operation, outcome })
            .inc();
    }

    /// The names on the pages of a list call (each page counted as a call),
    /// kept only when they contain `name_contains` (SageMaker's filter is
    /// case-insensitive), at most [`MAX_PAGES`] pages.
    async fn names_in_pages<O, E>(
        &self,
        operation: &'static str,
        mut pages: PaginationStream<Result<O, SdkError<E, HttpResponse>>>,
        name_contains: &str,
        names: impl Fn(&O) -> Vec<&str>,
    ) -> SmResult<Vec<String>>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let mut found = Vec::new();
        for _ in 0..MAX_PAGES {
            let Some(page) = pages.next().await else {
                break;
            };
            let out = self.finish(operation, page)?;
            found.extend(
                names(&out)
                    .into_iter()
                    .filter(|n| n.contains(name_contains))
                    .map(str::to_string),
            );
        }
        Ok(found)
    }

    /// Awaits one call, counts and classifies its result (see
    /// [`AwsSageMaker::finish`]) and maps its output.
    async fn call<T, E, R>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, SdkError<E>>>,
        output: impl FnOnce(T) -> R,
    ) -> SmResult<R>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        self.finish(operation, call.await).map(output)
    }

    /// Counts and classifies the result of one call.
    fn finish<T, E>(&self, operation: &'static str, result: Result<T, SdkError<E>>) -> SmResult<T>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let result = result.map_err(|e| from_sdk_error(operation, &e));
        self.count(
            operation,
            result
                .as_ref()
                .err()
                .map_or("ok", SageMakerError::metric_outcome),
        );
        if let Err(e) = &result {
            tracing::debug!(operation, outcome = e.metric_outcome(), error = %e, "SageMaker call failed");
        }
        result
    }
}

/// Classifies an SDK error. Only SageMaker's error code and message, and the
/// error chain of a transport failure, go into the message: never the request.
pub fn from_sdk_error<E>(
    operation: &'static str,
    error: &SdkError<E, HttpResponse>,
) -> SageMakerError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match error {
        SdkError::ServiceError(service) => classify(
            operation,
            Some(service.raw().status().as_u16()),
            error.code(),
            error.message(),
        ),
        SdkError::TimeoutError(_) => {
            SageMakerError::recoverable(operation, RecoverableKind::Timeout, "the call timed out")
        }
        SdkError::DispatchFailure(dispatch) => {
            let text = DisplayErrorContext(error).to_string();
            credentials_failure(operation, &text).unwrap_or_else(|| {
                let kind = if dispatch.is_timeout() {
                    RecoverableKind::Timeout
                } else {
                    RecoverableKind::Network
                };
                SageMakerError::recoverable(
                    operation,
                    kind,
                    format!("could not reach SageMaker: {text}"),
                )
            })
        }
        SdkError::ResponseError(response) => SageMakerError::recoverable(
            operation,
            RecoverableKind::ServerError,
            format!(
                "unreadable response (HTTP {})",
                response.raw().status().as_u16()
            ),
        ),
        SdkError::ConstructionFailure(_) => {
            let text = DisplayErrorContext(error).to_string();
            credentials_failure(operation, &text).unwrap_or_else(|| SageMakerError::Terminal {
                operation,
                code: "ClientError".into(),
                message: clean_message(&format!("the request could not be built: {text}")),
            })
        }
        _ => SageMakerError::recoverable(
            operation,
            RecoverableKind::Network,
            DisplayErrorContext(error).to_string(),
        ),
    }
}

/// The error for a client-side failure that is about credentials, `None` for
/// any other (the SDK reports a credential chain that found nothing usable as
/// a dispatch or construction failure: no request was sent).
fn credentials_failure(operation: &'static str, text: &str) -> Option<SageMakerError> {
    mentions_credentials(text).then(|| {
        SageMakerError::recoverable(
            operation,
            RecoverableKind::Auth,
            format!("no usable AWS credentials: {text}"),
        )
    })
}

/// Whether a client-side failure is about credentials.
fn mentions_credentials(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("credential")
        || lower.contains("identity resolver")
        || lower.contains("no identity")
}

fn tags(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

impl SageMakerApi for AwsSageMaker {
    fn create_training_job<'a>(
        &'a self,
        r: &'a CreateTrainingJobRequest,
    ) -> BoxFuture<'a, SmResult<String>> {
        let mut call = self
            .client
            .create_training_job()
            .training_job_name(&r.job_name)
            .algorithm_specification(
                AlgorithmSpecification::builder()
                    .training_image(&r.image)
                    .training_input_mode(TrainingInputMode::File)
                    .build(),
            )
            .role_arn(&r.role_arn)
            .output_data_config(
                OutputDataConfig::builder()
                    .s3_output_path(&r.output_s3_uri)
                    .set_kms_key_id(r.kms_key_id.clone())
                    .build(),
            )
            .resource_config(
                ResourceConfig::builder()
                    .instance_type(TrainingInstanceType::from(r.instance_type.as_str()))
                    .instance_count(r.instance_count)
                    .volume_size_in_gb(r.volume_size_gb)
                    .set_volume_kms_key_id(r.kms_key_id.clone())
                    .build(),
            )
            .stopping_condition(
                StoppingCondition::builder()
                    .max_runtime_in_seconds(saturate(r.max_runtime_seconds))
                    .set_max_wait_time_in_seconds(r.spot_max_wait_seconds.map(saturate))
                    .build(),
            )
            .enable_managed_spot_training(r.spot_max_wait_seconds.is_some())
            .set_hyper_parameters((!r.hyperparameters.is_empty()).then(|| {
                r.hyperparameters
                    .clone()
                    .into_iter()
                    .collect::<HashMap<_, _>>()
            }))
            .set_tags(Some(tags(&r.tags)));
        for input in &r.inputs {
            call = call.input_data_config(
                Channel::builder()
                    .channel_name(&input.channel_name)
                    .data_source(
                        DataSource::builder()
                            .s3_data_source(
                                S3DataSource::builder()
                                    .s3_data_type(S3DataType::S3Prefix)
                                    .s3_uri(&input.s3_uri)
                                    .s3_data_distribution_type(S3DataDistribution::FullyReplicated)
                                    .build(),
                            )
                            .build(),
                    )
                    .set_content_type(input.content_type.clone())
                    .build(),
            );
        }
        if !r.subnets.is_empty() || !r.security_group_ids.is_empty() {
            call = call.vpc_config(
                VpcConfig::builder()
                    .set_security_group_ids(Some(r.security_group_ids.clone()))
                    .set_subnets(Some(r.subnets.clone()))
                    .build(),
            );
        }
        Box::pin(self.call("CreateTrainingJob", call.send(), |out| {
            arn(out.training_job_arn())
        }))
    }

    fn describe_training_job<'a>(&'a self, name: &'a str) -> BoxFuture<'a, SmResult<TrainingJob>> {
        let call = self.client.describe_training_job().training_job_name(name);
        Box::pin(self.call("DescribeTrainingJob", call.send(), move |out| {
            TrainingJob {
                name: out.training_job_name().unwrap_or(name).to_string(),
                arn: out.training_job_arn().map(str::to_string),
                state: TrainingJobState::parse(status(out.training_job_status())),
                secondary_status: out.secondary_status().map(|s| s.as_str().to_string()),
                failure_reason: out.failure_reason().map(clean_message),
                model_artifacts: out
                    .model_artifacts()
                    .and_then(|a| a.s3_model_artifacts())
                    .map(str::to_string),
            }
        }))
    }

    fn stop_training_job<'a>(&'a self, name: &'a str) -> BoxFuture<'a, SmResult<()>> {
        let call = self.client.stop_training_job().training_job_name(name);
        Box::pin(self.call("StopTrainingJob", call.send(), drop))
    }

    fn create_model<'a>(&'a self, r: &'a CreateModelRequest) -> BoxFuture<'a, SmResult<String>> {
        let call = self
            .client
            .create_model()
            .model_name(&r.name)
            .primary_container(
                ContainerDefinition::builder()
                    .image(&r.image)
                    .set_model_data_url(r.model_data_url.clone())
                    .build(),
            )
            .execution_role_arn(&r.role_arn)
            .set_tags(Some(tags(&r.tags)));
        Box::pin(self.call("CreateModel", call.send(), |out| arn(out.model_arn())))
    }

    fn describe_model<'a>(&'a self, name: &'a str) -> BoxFuture<'a, SmResult<Model>> {
        let call = self.client.describe_model().model_name(name);
        Box::pin(self.call("DescribeModel", call.send(), move |out| {
            let container = out.primary_container().or_else(|| out.containers().first());
            Model {
                name: out.model_name().unwrap_or(name).to_string(),
                arn: out.model_arn().map(str::to_string),
                image: container.and_then(|c| c.image()).map(str::to_string),
                model_data_url: container
                    .and_then(|c| c.model_data_url())
                    .map(str::to_string),
            }
        }))
    }

    fn delete_model<'a>(&'a self, name: &'a str) -> BoxFuture<'a, SmResult<()>> {
        let call = self.client.delete_model().model_name(name);
        Box::pin(self.call("DeleteModel", call.send(), drop))
    }

    fn list_models<'a>(&'a self, name_contains: &'a str) -> BoxFuture<'a, SmResult<Vec<String>>> {
        let call = self.client.list_models().name_contains(name_contains);
        let pages = call.max_results(100).into_paginator().send();
        Box::pin(
            self.names_in_pages("ListModels", pages, name_contains, |out| {
                out.models().iter().filter_map(|m| m.model_name()).collect()
            }),
        )
    }

    fn list_endpoint_configs<'a>(
        &'a self,
        name_contains: &'a str,
    ) -> BoxFuture<'a, SmResult<Vec<String>>> {
        let call = self
            .client
            .list_endpoint_configs()
            .name_contains(name_contains);
        let pages = call.max_results(100).into_paginator().send();
        Box::pin(
            self.names_in_pages("ListEndpointConfigs", pages, name_contains, |out| {
                let configs = out.endpoint_configs().iter();
                configs.filter_map(|c| c.endpoint_config_name()).collect()
            }),
        )
    }

    fn create_endpoint_config<'a>(
        &'a self,
        r: &'a CreateEndpointConfigRequest,
    ) -> BoxFuture<'a, SmResult<String>> {
        let call = self
            .client
            .create_endpoint_config()
            .endpoint_config_name(&r.name)
            .production_variants(
                ProductionVariant::builder()
                    .variant_name(&r.variant_name)
                    .model_name(&r.model_name)
                    .instance_type(r.instance_type.as_str().into())
                    .initial_instance_count(r.initial_instance_count)
                    .build(),
            )
            .set_tags(Some(tags(&r.tags)));
        Box::pin(self.call("CreateEndpointConfig", call.send(), |out| {
            arn(out.endpoint_config_arn())
        }))
    }

    fn describe_endpoint_config<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, SmResult<EndpointConfig>> {
        let call = self
            .client
            .describe_endpoint_config()
            .endpoint_config_name(name);
        Box::pin(
            self.call("DescribeEndpointConfig", call.send(), move |out| {
                let variants = out.production_variants().iter();
                EndpointConfig {
                    name: out.endpoint_config_name().unwrap_or(name).to_string(),
                    arn: out.endpoint_config_arn().map(str::to_string),
                    model_names: variants
                        .filter_map(|v| v.model_name().map(str::to_string))
                        .collect(),
                }
            }),
        )
    }

    fn delete_endpoint_config<'a>(&'a self, name: &'a str) -> BoxFuture<'a, SmResult<()>> {
        let call = self
            .client
            .delete_endpoint_config()
            .endpoint_config_name(name);
        Box::pin(self.call("DeleteEndpointConfig", call.send(), drop))
    }

    fn create_endpoint<'a>(
        &'a self,
        r: &'a CreateEndpointRequest,
    ) -> BoxFuture<'a, SmResult<String>> {
        let call = self
            .client
            .create_endpoint()
            .endpoint_name(&r.name)
            .endpoint_config_name(&r.config_name)
            .set_tags(Some(tags(&r.tags)));
        Box::pin(self.call("CreateEndpoint", call.send(), |out| arn(out.endpoint_arn())))
    }

    fn describe_endpoint<'a>(&'a self, name: &'a str) -> BoxFuture<'a, SmResult<Endpoint>> {
        let call = self.client.describe_endpoint().endpoint_name(name);
        Box::pin(self.call("DescribeEndpoint", call.send(), move |out| {
            Endpoint {
                name: out.endpoint_name().unwrap_or(name).to_string(),
                arn: out.endpoint_arn().map(str::to_string),
                state: EndpointState::parse(status(out.endpoint_status())),
                config_name: out.endpoint_config_name().map(str::to_string),
                pending_config_name: out
                    .pending_deployment_summary()
                    .and_then(|p| p.endpoint_config_name())
                    .map(str::to_string),
                failure_reason: out.failure_reason().map(clean_message),
            }
        }))
    }

    fn update_endpoint<'a>(
        &'a self,
        name: &'a str,
        config_name: &'a str,
    ) -> BoxFuture<'a, SmResult<String>> {
        let call = self.client.update_endpoint().endpoint_name(name);
        let call = call.endpoint_config_name(config_name);
        Box::pin(self.call("UpdateEndpoint", call.send(), |out| arn(out.endpoint_arn())))
    }

    fn delete_endpoint<'a>(&'a self, name: &'a str) -> BoxFuture<'a, SmResult<()>> {
        let call = self.client.delete_endpoint().endpoint_name(name);
        Box::pin(self.call("DeleteEndpoint", call.send(), drop))
    }
}

/// A created resource's ARN (empty when SageMaker names none).
fn arn(arn: Option<&str>) -> String {
    arn.unwrap_or_default().to_string()
}

/// A described resource's status, `"Unknown"` when SageMaker gives none.
fn status<S: AsRef<str>>(status: Option<&S>) -> &str {
    status.map_or("Unknown", AsRef::as_ref)
}

/// The most pages a List call follows (100 names each).
const MAX_PAGES: usize = 50;

fn saturate(seconds: i64) -> i32 {
    i32::try_from(seconds).unwrap_or(i32::MAX)
}

/// One adapter per region, made on first use: `spec.training.region` and
/// `spec.sagemaker.region` pick one; `None` is the operator's default.
#[derive(Debug)]
pub struct RegionalClients {
    default: Arc<AwsSageMaker>,
    by_region: Mutex<HashMap<String, Arc<AwsSageMaker>>>,
}

impl RegionalClients {
    /// Clients derived from `default` (which sets credentials, retries and timeouts).
    pub fn new(default: AwsSageMaker) -> Self {
        Self {
            default: Arc::new(default),
            by_region: Mutex::new(HashMap::new()),
        }
    }

    /// The adapter for `region` (the default's when `None`); an error when
    /// neither the resource nor the operator names a region.
    pub fn get(&self, region: Option<&str>) -> SmResult<Arc<AwsSageMaker>> {
        let region = region.filter(|r| !r.is_empty());
        let Some(region) = region.filter(|r| Some(*r) != self.default.region()) else {
            return match self.default.region() {
                Some(_) => Ok(self.default.clone()),
                None => Err(SageMakerError::Terminal {
                    operation: "Configure",
                    code: "MissingRegion".into(),
                    message: "no AWS region: set the resource's region, or the operator's (chart value operator.aws.region, or AWS_REGION)".into(),
                }),
            };
        };
        let mut map = match self.by_region.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        Ok(map
            .entry(region.to_string())
            .or_insert_with(|| Arc::new(self.default.with_region(region)))
            .clone())
    }
}

#[cfg(test)]
#[path = "aws_tests.rs"]
mod tests;
