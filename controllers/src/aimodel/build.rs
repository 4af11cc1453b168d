//! The children of an AIModel on the Kubernetes backend, built from its spec
//! alone: the serving Deployments (stable and canary), the Service, the
//! HorizontalPodAutoscaler and, for a canary behind the Gateway API, an
//! HTTPRoute with weights. No client.
//!
//! Names: the Deployment, Service, HPA and HTTPRoute are called like the
//! model; the canary Deployment `<model>-canary`; with an HTTPRoute, one
//! Service per track, `<model>-stable` and `<model>-canary`. Every child
//! carries the labels of [`standard_labels`] (so `aleph.dev/model: <model>`)
//! and a controller owner reference to the model.

use std::collections::BTreeMap;

use aleph_crds::aimodel::{AIModel, ModelRuntime};
use aleph_crds::keys::{MODEL_LABEL, TRACK_LABEL};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction, Lifecycle,
    LifecycleHandler, PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, Probe, Service,
    ServicePort, ServiceSpec, SleepAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::DynamicObject;
use serde_json::json;

use super::cache;
use super::runtime::{MODEL_DIR, ProbeTiming, RuntimeProfile, profile};
use super::validate::{Source, SpecError, source_for_runtime, validate};
use crate::apply::{controller_ref, standard_labels};
use crate::error::Result;
pub use crate::workload::GPU_RESOURCE;
use crate::workload::{
    self, gpu_node_selector, gpu_tolerations, plain_env, requirements, secret_env, set_env,
};

/// Long enough for the slowest engine to load a large model before the
/// Deployment reports that its rollout stalled.
pub const PROGRESS_DEADLINE_SECONDS: i32 = 3600;
/// How long a serving pod that is being replaced keeps serving after it left
/// the Service's endpoints: longer than kube-proxy and gateways take to drop
/// it, so that no new request reaches a stopping engine.
pub const PRE_STOP_SECONDS: i64 = 5;

/// One of a model's two serving versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Track {
    /// The main version.
    Stable,
    /// The canary.
    Canary,
}

impl Track {
    /// The value of [`TRACK_LABEL`].
    pub fn label(self) -> &'static str {
        match self {
            Track::Stable => "stable",
            Track::Canary => "canary",
        }
    }
}

/// How serving pods get the weights.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelVolume {
    /// The shared model cache (a claim filled by the download Job).
    Cache {
        /// The cache's claim.
        claim: String,
    },
    /// A claim of the user's, mounted as it is (`pvc://`).
    Claim {
        /// The claim.
        claim: String,
        /// The path inside it.
        sub_path: String,
    },
    /// Each pod downloads into its own volume first (the cache is off).
    PerPod,
}

/// One serving version, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct TrackPlan {
    /// Stable or canary.
    pub track: Track,
    /// The source URI.
    pub uri: String,
    /// The parsed source.
    pub source: Source,
    /// The runtime as declared.
    pub runtime: ModelRuntime,
    /// The serving container.
    pub profile: RuntimeProfile,
    /// Where the weights come from.
    pub volume: ModelVolume,
    /// The Deployment's replicas; `None` when the HPA sets them.
    pub replicas: Option<i32>,
}

impl TrackPlan {
    /// The Deployment's name.
    pub fn deployment_name(&self, model: &str) -> String {
        match self.track {
            Track::Stable => model.to_string(),
            Track::Canary => format!("{model}-canary"),
        }
    }

    /// The per-track Service's name (with an HTTPRoute).
    pub fn service_name(&self, model: &str) -> String {
        format!("{model}-{}", self.track.label())
    }
}

/// Everything the model's children are built from.
#[derive(Clone, Debug, PartialEq)]
pub struct ServingPlan {
    /// The model's name.
    pub name: String,
    /// The model's namespace.
    pub namespace: String,
    /// The main version.
    pub stable: TrackPlan,
    /// The canary, if any.
    pub canary: Option<TrackPlan>,
    /// The canary's share of traffic, in percent (0 without a canary).
    pub canary_percent: i32,
}

impl ServingPlan {
    /// The tracks, stable first.
    pub fn tracks(&self) -> impl Iterator<Item = &TrackPlan> {
        std::iter::once(&self.stable).chain(self.canary.as_ref())
    }

    /// Where the model's API answers: the Service's cluster DNS name and
    /// port, under `/v1` when the API is OpenAI-compatible.
    pub fn url(&self) -> String {
        let base = format!(
            "http://{}.{}.svc.cluster.local:{}",
            self.name, self.namespace, self.stable.profile.port
        );
        if self.stable.profile.openai {
            format!("{base}/v1")
        } else {
            base
        }
    }

    /// The label selector of every serving pod (stable and canary).
    pub fn selector(&self) -> String {
        format!("{MODEL_LABEL}={}", self.name)
    }
}

/// Splits `total` replicas by the canary's share: the canary gets
/// `round(total * percent / 100)`, at least 1 when the share is positive, and
/// the stable version keeps at least 1 below 100 %. At 100 % the canary has
/// every replica and takes all the traffic. Returns (stable, canary).
pub fn split(total: i32, percent: i32) -> (i32, i32) {
    if percent <= 0 || total <= 0 {
        return (total.max(0), 0);
    }
    if percent >= 100 {
        return (0, total);
    }
    let canary = ((i64::from(total) * i64::from(percent.min(100)) + 50) / 100).max(1);
    let canary = i32::try_from(canary).unwrap_or(total);
    (total.saturating_sub(canary).max(1), canary)
}

fn track_plan(
    model: &AIModel,
    track: Track,
    field: &str,
    uri: &str,
    runtime: &ModelRuntime,
    replicas: Option<i32>,
) -> Result<TrackPlan, SpecError> {
    let source = source_for_runtime(field, uri, runtime)?;
    let gpus = model.spec.resources.gpus.unwrap_or(0);
    let profile = profile(runtime, &source, &model.name_any(), gpus);
    let volume = match &source {
        Source::Pvc { claim, path } => ModelVolume::Claim {
            claim: claim.clone(),
            sub_path: path.clone(),
        },
        _ if model.spec.cache.enabled => ModelVolume::Cache {
            claim: cache::cache_name(uri),
        },
        _ => ModelVolume::PerPod,
    };
    Ok(TrackPlan {
        track,
        uri: uri.to_string(),
        source,
        runtime: runtime.clone(),
        profile,
        volume,
        replicas,
    })
}

/// Resolves the spec into a plan, serving `serving_uri` (the spec's source,
/// or the trained artifact). Fails on what the schema cannot catch.
pub fn plan(model: &AIModel, serving_uri: &str) -> Result<ServingPlan, SpecError> {
    validate(model, serving_uri)?;
    let percent = model
        .spec
        .canary
        .as_ref()
        .map_or(0, |c| c.traffic_percent.clamp(0, 100));
    let (stable_replicas, canary_replicas) = match &model.spec.autoscaling {
        Some(auto) => (None, split(auto.min_replicas, percent).1),
        None => {
            let (s, c) = split(model.spec.replicas.unwrap_or(1), percent);
            (Some(s), c)
        }
    };
    let stable = track_plan(
        model,
        Track::Stable,
        "spec.source.uri",
        serving_uri,
        &model.spec.runtime,
        stable_replicas,
    )?;
    let canary = match &model.spec.canary {
        Some(canary) => {
            let uri = canary
                .source
                .as_ref()
                .map_or(serving_uri, |s| s.uri.as_str());
            let runtime = canary.runtime.as_ref().unwrap_or(&model.spec.runtime);
            Some(track_plan(
                model,
                Track::Canary,
                "spec.canary.source.uri",
                uri,
                runtime,
                Some(canary_replicas),
            )?)
        }
        None => None,
    };
    Ok(ServingPlan {
        name: model.name_any(),
        namespace: model.namespace().unwrap_or_default(),
        stable,
        canary,
        canary_percent: if model.spec.canary.is_some() {
            percent
        } else {
            0
        },
    })
}

fn labels(plan: &ServingPlan, track: Option<Track>) -> BTreeMap<String, String> {
    let mut labels = standard_labels("model", &plan.name);
    if let Some(track) = track {
        labels.insert(TRACK_LABEL.to_string(), track.label().to_string());
    }
    labels
}

fn metadata(model: &AIModel, plan: &ServingPlan, name: &str, track: Option<Track>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(plan.namespace.clone()),
        labels: Some(labels(plan, track)),
        owner_references: Some(controller_ref(model).into_iter().collect()),
        ..ObjectMeta::default()
    }
}

/// The container port every engine serves on, by name.
fn http() -> IntOrString {
    IntOrString::String("http".to_string())
}

fn probe(timing: &ProbeTiming) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(timing.path.clone()),
            port: http(),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(timing.period_seconds),
        failure_threshold: Some(timing.failure_threshold),
        timeout_seconds: Some(timing.timeout_seconds),
        ..Probe::default()
    }
}

fn env(track: &TrackPlan) -> Vec<EnvVar> {
    let mut env: Vec<EnvVar> = track
        .profile
        .env
        .iter()
        .map(|(name, value)| plain_env(name, value))
        .collect();
    for var in &track.runtime.env {
        let value = match (&var.value, &var.secret_key_ref) {
            (_, Some(secret)) => secret_env(&var.name, secret),
            (Some(value), None) if !value.is_empty() => plain_env(&var.name, value),
            // The API server drops empty values; so does the desired object.
            (_, None) => EnvVar {
                name: var.name.clone(),
                ..EnvVar::default()
            },
        };
        set_env(&mut env, value);
    }
    env
}

/// The model's weights, read-only, and the volume they come from.
fn model_volume(model: &AIModel, track: &TrackPlan) -> (Volume, VolumeMount) {
    let mut mount = workload::mount("model", MODEL_DIR, true);
    let claim = |claim: &str| Volume {
        name: "model".to_string(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim.to_string(),
            read_only: Some(true),
        }),
        ..Volume::default()
    };
    let volume = match &track.volume {
        ModelVolume::Cache { claim: name } => claim(name),
        ModelVolume::Claim {
            claim: name,
            sub_path,
        } => {
            if !sub_path.is_empty() {
                mount.sub_path = Some(sub_path.clone());
            }
            claim(name)
        }
        ModelVolume::PerPod => Volume {
            name: "model".to_string(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(model.spec.cache.size.clone()),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
    };
    (volume, mount)
}

/// The serving Deployment of `track`; `model_cache_image` downloads the weights
/// of `hf://` and `s3://` sources when the cache is off.
pub fn deployment(
    model: &AIModel,
    plan: &ServingPlan,
    track: &TrackPlan,
    model_cache_image: &str,
) -> Result<Deployment> {
    let profile = &track.profile;
    let (model_volume, model_mount) = model_volume(model, track);
    let container = Container {
        name: profile.container.to_string(),
        image: Some(profile.image.clone()),
        command: profile.command.clone(),
        args: Some(profile.args.clone()),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_string()),
            container_port: profile.port,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        }]),
        env: Some(env(track)),
        // CPU, memory and GPUs, requested and limited alike.
        resources: Some(requirements(&model.spec.resources).unwrap_or_default()),
        volume_mounts: Some(vec![
            model_mount,
            workload::mount("dshm", "/dev/shm", false),
        ]),
        startup_probe: Some(probe(&profile.startup)),
        readiness_probe: Some(probe(&profile.readiness)),
        liveness_probe: Some(probe(&profile.liveness)),
        // When the engine dies, the end of its log becomes the termination
        // message, which the model's status quotes.
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        // A pod being replaced leaves the Service's endpoints first; it keeps
        // serving until every node's proxy has seen that, so a rollout drops
        // no request.
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        ..Container::default()
    };
    let init_containers = match track.volume {
        ModelVolume::PerPod => {
            let credentials = match track.track {
                Track::Stable => model.spec.source.as_ref(),
                Track::Canary => model
                    .spec
                    .canary
                    .as_ref()
                    .and_then(|c| c.source.as_ref())
                    .or(model.spec.source.as_ref()),
            }
            .filter(|s| s.uri == track.uri)
            .and_then(|s| s.credentials_secret.as_ref());
            Some(vec![cache::download_container(
                &track.source,
                &track.uri,
                credentials,
                model_cache_image,
                &model.spec.cache.size.0,
            )?])
        }
        _ => None,
    };
    let tolerations = gpu_tolerations(&model.spec.resources);
    let node_selector = tolerations
        .as_ref()
        .and_then(|_| gpu_node_selector(&model.spec.resources));
    let pod_spec = PodSpec {
        // A Service named like the engine would otherwise inject variables
        // such as VLLM_PORT that the engine reads as its own settings.
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(60),
        service_account_name: model.spec.service_account_name.clone(),
        containers: vec![container],
        init_containers,
        volumes: Some(vec![
            model_volume,
            Volume {
                name: "dshm".to_string(),
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".to_string()),
                    ..EmptyDirVolumeSource::default()
                }),
                ..Volume::default()
            },
        ]),
        tolerations,
        node_selector,
        ..PodSpec::default()
    };
    let selector = BTreeMap::from([
        (MODEL_LABEL.to_string(), plan.name.clone()),
        (TRACK_LABEL.to_string(), track.track.label().to_string()),
    ]);
    Ok(Deployment {
        metadata: metadata(
            model,
            plan,
            &track.deployment_name(&plan.name),
            Some(track.track),
        ),
        spec: Some(DeploymentSpec {
            replicas: track.replicas,
            revision_history_limit: Some(3),
            progress_deadline_seconds: Some(PROGRESS_DEADLINE_SECONDS),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(plan, Some(track.track))),
                    annotations: Some(model.spec.pod_annotations.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    })
}

/// A Service named `name` in front of the pods `selector` picks, on `port`.
fn service_to(
    model: &AIModel,
    plan: &ServingPlan,
    name: &str,
    track: Option<Track>,
    selector: BTreeMap<String, String>,
    port: i32,
) -> Service {
    Service {
        metadata: metadata(model, plan, name, track),
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("http".to_string()),
                port,
                target_port: Some(http()),
                protocol: Some("TCP".to_string()),
                app_protocol: Some("http".to_string()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The Service in front of every serving pod of the model (stable and
/// canary: traffic splits by replica ratio).
pub fn service(model: &AIModel, plan: &ServingPlan) -> Service {
    let selector = BTreeMap::from([(MODEL_LABEL.to_string(), plan.name.clone())]);
    service_to(
        model,
        plan,
        &plan.name,
        None,
        selector,
        plan.stable.profile.port,
    )
}

/// The Service of one track, a backend of the HTTPRoute.
pub fn track_service(model: &AIModel, plan: &ServingPlan, track: &TrackPlan) -> Service {
    let selector = BTreeMap::from([
        (MODEL_LABEL.to_string(), plan.name.clone()),
        (TRACK_LABEL.to_string(), track.track.label().to_string()),
    ]);
    service_to(
        model,
        plan,
        &track.service_name(&plan.name),
        Some(track.track),
        selector,
        track.profile.port,
    )
}

/// The HorizontalPodAutoscaler of the stable Deployment, when it scales on
/// CPU utilisation (`targetConcurrency` is scaled by the operator's
/// autoscaler, on the gateway's measurements: see `crate::autoscaler`).
pub fn hpa(model: &AIModel, plan: &ServingPlan) -> Option<HorizontalPodAutoscaler> {
    let auto = model.spec.autoscaling.as_ref()?;
    let cpu = auto.target_cpu_utilization?;
    Some(HorizontalPodAutoscaler {
        metadata: metadata(model, plan, &plan.name, None),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".to_string()),
                kind: "Deployment".to_string(),
                name: plan.stable.deployment_name(&plan.name),
            },
            min_replicas: Some(auto.min_replicas),
            max_replicas: auto.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".to_string(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".to_string(),
                    target: MetricTarget {
                        type_: "Utilization".to_string(),
                        average_utilization: Some(cpu),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            behavior: Some(HorizontalPodAutoscalerBehavior {
                scale_down: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(auto.scale_down_stabilization_seconds),
                    ..HPAScalingRules::default()
                }),
                ..HorizontalPodAutoscalerBehavior::default()
            }),
        }),
        ..HorizontalPodAutoscaler::default()
    })
}

/// The Gateway API's HTTPRoute kind.
pub fn http_route_resource() -> kube::discovery::ApiResource {
    kube::discovery::ApiResource {
        group: "gateway.networking.k8s.io".into(),
        version: "v1".into(),
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: "HTTPRoute".into(),
        plural: "httproutes".into(),
    }
}

/// With a canary: an HTTPRoute attached to the model's Service (the Gateway
/// API's mesh binding) that sends `100 - p` percent of requests to the stable
/// Service and `p` percent to the canary's.
pub fn http_route(model: &AIModel, plan: &ServingPlan) -> Option<DynamicObject> {
    let canary = plan.canary.as_ref()?;
    let stable = &plan.stable;
    let mut route = DynamicObject::new(&plan.name, &http_route_resource());
    route.metadata = metadata(model, plan, &plan.name, None);
    // The Gateway API's types are not among k8s-openapi's; the spec is
    // written out, and its shape checked by the tests against the CRD.
    route.data = json!({
        "spec": {
            "parentRefs": [{ "group": "", "kind": "Service", "name": plan.name, "port": stable.profile.port }],
            "rules": [{
                "backendRefs": [
                    { "name": stable.service_name(&plan.name), "port": stable.profile.port, "weight": 100 - plan.canary_percent },
                    { "name": canary.service_name(&plan.name), "port": canary.profile.port, "weight": plan.canary_percent },
                ],
            }],
        },
    });
    Some(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_one_stable_and_rounds_the_canary() {
        assert_eq!(split(10, 20), (8, 2));
        assert_eq!(split(4, 10), (3, 1));
        assert_eq!(split(1, 50), (1, 1));
        assert_eq!(split(5, 0), (5, 0));
        assert_eq!(split(4, 100), (0, 4));
        assert_eq!(split(4, 99), (1, 4));
        assert_eq!(split(0, 30), (0, 0));
        assert_eq!(split(3, 50), (1, 2));
    }
}
