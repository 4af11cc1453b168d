//! The Job that runs one attempt of a container or plugin step, and the
//! outputs it reports back. Pure: built from the run, the step and the
//! plugin, no client.
//!
//! # Outputs
//!
//! A step reports outputs by writing `key=value` lines to the file
//! [`OUTPUTS_FILE`] (also in the env var `ALEPH_OUTPUTS_FILE`), for example
//! `echo "accuracy=0.93" >> "$ALEPH_OUTPUTS_FILE"`. The container's
//! `terminationMessagePath` is that file and its `terminationMessagePolicy`
//! is `File`, so when the container ends the kubelet copies the file into the
//! pod's `status.containerStatuses[name=step].state.terminated.message`. The
//! reconciler reads it there with [`parse_outputs`] and stores the result in
//! the step's `status.outputs`. The kubelet keeps at most 4096 bytes of a
//! termination message and cuts the rest without saying so, which is why a
//! message of [`MAX_OUTPUTS_BYTES`] or more is refused rather than half read.
//! The directory [`OUTPUTS_DIR`] is an emptyDir, writable even when the root
//! filesystem is read-only.

use std::collections::BTreeMap;

use aleph_crds::pipeline::{PipelineRun, PipelineStep};
use aleph_crds::plugin::{Plugin, PluginMode};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec, SecurityContext};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::params::{self, StepOutputs, SubstitutionError};
use crate::names::bounded_name;
use crate::plugin::build::{PLUGIN_CONFIG_DIR, PLUGIN_SECRETS_DIR, plugin_config_map_name};
use crate::workload::{
    config_map_volume, empty_dir, gpu_node_selector, gpu_tolerations, mount, plain_env,
    requirements, runtime_default, sandbox_context, sandbox_pod_context, secret_env, secret_volume,
    set_env,
};

/// The name of the step's container.
pub const STEP_CONTAINER: &str = "step";
/// Where the outputs emptyDir is mounted.
pub const OUTPUTS_DIR: &str = "/aleph/outputs";
/// The file a step writes its `key=value` outputs to: the termination message path.
pub const OUTPUTS_FILE: &str = "/aleph/outputs/outputs";
/// A termination message this long may have been cut by the kubelet.
pub const MAX_OUTPUTS_BYTES: usize = 4096;
/// Label: the run a Job belongs to (see [`label_value`]).
pub const LABEL_RUN: &str = "aleph.dev/pipelinerun";
/// Label: the step a Job runs.
pub const LABEL_STEP: &str = "aleph.dev/step";
/// Label: the attempt a Job is.
pub const LABEL_ATTEMPT: &str = "aleph.dev/attempt";
/// Label: the Pipeline of the run.
pub const LABEL_PIPELINE: &str = "aleph.dev/pipeline";
/// Label: the Plugin a plugin step's pod runs (its NetworkPolicy selects on it).
pub const LABEL_PLUGIN: &str = "aleph.dev/plugin";
/// Label: the tenant, copied from the run when it carries it.
pub const LABEL_TENANT: &str = "aleph.dev/tenant";

/// Why a step's Job cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Training and rollout steps are not run as Jobs.
    #[error("step {step} is not a container or plugin step, so it runs no Job")]
    NotAJobStep {
        /// The step.
        step: String,
    },
    /// The step's plugin was not found (or another plugin was passed).
    #[error(
        "step {step} runs plugin {plugin}, which does not exist in the run's namespace: create it"
    )]
    PluginMissing {
        /// The step.
        step: String,
        /// The plugin it names.
        plugin: String,
    },
    /// The plugin is a service, not a job template.
    #[error(
        "plugin {plugin} has mode service; a pipeline step can only run a plugin with mode job"
    )]
    PluginNotJobMode {
        /// The plugin.
        plugin: String,
    },
    /// The plugin is disabled.
    #[error("plugin {plugin} is disabled: enable it to run step {step}")]
    PluginDisabled {
        /// The step.
        step: String,
        /// The plugin.
        plugin: String,
    },
    /// A `$(...)` reference did not resolve.
    #[error("step {step}: {source}")]
    Substitution {
        /// The step.
        step: String,
        /// What did not resolve.
        source: SubstitutionError,
    },
    /// The run lacks the metadata a child needs (name, namespace, uid).
    #[error("the PipelineRun has no {field}")]
    RunMetadata {
        /// The missing field.
        field: &'static str,
    },
}

/// A run's name as a label value (at most 63 characters): the name itself,
/// or [`bounded_name`] of it. Select a run's Jobs with `LABEL_RUN=label_value(run)`.
pub fn label_value(name: &str) -> String {
    bounded_name(name, 63)
}

/// The Job of an attempt: `<run>-<step>-<attempt>`; past 63 characters the
/// run part is cut and hashed (the step and attempt stay readable).
pub fn job_name(run: &str, step: &str, attempt: i32) -> String {
    let suffix = format!("-{step}-{attempt}");
    let full = format!("{run}{suffix}");
    if full.len() <= 63 {
        return full;
    }
    match 63usize.checked_sub(suffix.len()) {
        Some(room) if room >= 10 => format!("{}{suffix}", bounded_name(run, room)),
        _ => bounded_name(&full, 63),
    }
}

/// The labels of a step's Job and pod (the plugin label aside).
pub fn step_labels(run: &PipelineRun, step: &str, attempt: i32) -> BTreeMap<String, String> {
    let run_name = run.metadata.name.as_deref().unwrap_or_default();
    let mut labels = BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_string(),
            "aleph-operator".to_string(),
        ),
        ("app.kubernetes.io/part-of".to_string(), "aleph".to_string()),
        (LABEL_RUN.to_string(), label_value(run_name)),
        (LABEL_STEP.to_string(), step.to_string()),
        (LABEL_ATTEMPT.to_string(), attempt.to_string()),
        (
            LABEL_PIPELINE.to_string(),
            label_value(&run.spec.pipeline_ref.name),
        ),
    ]);
    if let Some(tenant) = run
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_TENANT))
    {
        labels.insert(LABEL_TENANT.to_string(), tenant.clone());
    }
    labels
}

/// Builds the Job of one attempt of a container or plugin step.
///
/// `params` are the run's resolved params and `outputs` the outputs of the
/// steps that succeeded; both fill `$(params.NAME)` and
/// `$(steps.STEP.outputs.KEY)` in the image, command, args and env values
/// (container steps) or the args (plugin steps). `plugin` is the Plugin a
/// plugin step names, looked up by the caller.
///
/// The Job never retries by itself (`backoffLimit: 0`): retries, with their
/// backoff, are the scheduler's, each a new Job.
pub fn build_step_job(
    run: &PipelineRun,
    step: &PipelineStep,
    attempt: i32,
    params: &BTreeMap<String, String>,
    outputs: &StepOutputs,
    plugin: Option<&Plugin>,
) -> Result<Job, JobError> {
    let run_name = run
        .metadata
        .name
        .as_deref()
        .ok_or(JobError::RunMetadata { field: "name" })?;
    let namespace = run
        .metadata
        .namespace
        .as_deref()
        .ok_or(JobError::RunMetadata { field: "namespace" })?;
    let uid = run
        .metadata
        .uid
        .as_deref()
        .ok_or(JobError::RunMetadata { field: "uid" })?;
    let subst = |text: &str| {
        params::substitute_for_container(text, params, outputs).map_err(|source| {
            JobError::Substitution {
                step: step.name.clone(),
                source,
            }
        })
    };
    let subst_all = |texts: &[String]| {
        texts
            .iter()
            .map(|t| subst(t))
            .collect::<Result<Vec<_>, _>>()
    };

    let mut labels = step_labels(run, &step.name, attempt);
    let mut volumes = vec![empty_dir("aleph-outputs")];
    let mut mounts = vec![mount("aleph-outputs", OUTPUTS_DIR, false)];
    let mut env = vec![
        plain_env("ALEPH_PIPELINERUN", run_name),
        plain_env("ALEPH_STEP", &step.name),
        plain_env("ALEPH_ATTEMPT", &attempt.to_string()),
        plain_env("ALEPH_OUTPUTS_FILE", OUTPUTS_FILE),
    ];
    let sandboxed;
    // A plugin step runs as the plugin's ServiceAccount (made by the Plugin
    // controller), with a token only when the plugin declares permissions.
    let mut service_account: Option<(String, bool)> = None;
    let (image, command, args, step_env, resources, runtime_class) =
        if let Some(c) = &step.container {
            sandboxed = false;
            let image = params::substitute(&c.image, params, outputs).map_err(|source| {
                JobError::Substitution {
                    step: step.name.clone(),
                    source,
                }
            })?;
            (
                image,
                subst_all(&c.command)?,
                subst_all(&c.args)?,
                c.env.clone(),
                c.resources.clone(),
                None,
            )
        } else if let Some(action) = &step.plugin {
            sandboxed = true;
            let plugin = plugin
                .filter(|p| p.metadata.name.as_deref() == Some(action.name.as_str()))
                .filter(|p| {
                    p.metadata
                        .namespace
                        .as_deref()
                        .is_none_or(|ns| ns == namespace)
                })
                .ok_or_else(|| JobError::PluginMissing {
                    step: step.name.clone(),
                    plugin: action.name.clone(),
                })?;
            if plugin.spec.mode != PluginMode::Job {
                return Err(JobError::PluginNotJobMode {
                    plugin: action.name.clone(),
                });
            }
            if plugin.spec.disabled {
                return Err(JobError::PluginDisabled {
                    step: step.name.clone(),
                    plugin: action.name.clone(),
                });
            }
            labels.insert(LABEL_PLUGIN.to_string(), label_value(&action.name));
            service_account = Some((
                action.name.clone(),
                crate::plugin::build::mounts_token(plugin),
            ));
            volumes.push(empty_dir("tmp"));
            mounts.push(mount("tmp", "/tmp", false));
            if !plugin.spec.config.is_empty() {
                volumes.push(config_map_volume(
                    "plugin-config",
                    plugin_config_map_name(&action.name),
                ));
                mounts.push(mount("plugin-config", PLUGIN_CONFIG_DIR, true));
            }
            for (i, secret) in plugin.spec.secrets.iter().enumerate() {
                let volume = format!("plugin-secret-{i}");
                volumes.push(secret_volume(&volume, &secret.name));
                mounts.push(mount(
                    &volume,
                    &format!("{PLUGIN_SECRETS_DIR}/{}", secret.name),
                    true,
                ));
            }
            let image = plugin
                .status
                .as_ref()
                .and_then(|s| s.current_image.clone())
                .unwrap_or_else(|| plugin.spec.image.clone());
            let mut args = plugin.spec.args.clone();
            args.extend(subst_all(&action.args)?);
            (
                image,
                plugin.spec.command.clone(),
                args,
                plugin.spec.env.clone(),
                plugin.spec.resources.clone(),
                plugin.spec.sandbox.runtime_class_name.clone(),
            )
        } else {
            return Err(JobError::NotAJobStep {
                step: step.name.clone(),
            });
        };

    for var in &step_env {
        let built = if let Some(secret) = &var.secret_key_ref {
            secret_env(&var.name, secret)
        } else {
            // Plugin env is the plugin's own, taken as written; step env is substituted.
            let value = var.value.clone().unwrap_or_default();
            let value = if sandboxed { value } else { subst(&value)? };
            plain_env(&var.name, &value)
        };
        set_env(&mut env, built);
    }

    let annotations = step
        .pod_annotations
        .iter()
        .map(|(key, value)| {
            // Annotations are not expanded by the kubelet: values go in as they are.
            params::substitute(value, params, outputs)
                .map(|v| (key.clone(), v))
                .map_err(|source| JobError::Substitution {
                    step: step.name.clone(),
                    source,
                })
        })
        .collect::<Result<BTreeMap<_, _>, JobError>>()?;

    let container = Container {
        name: STEP_CONTAINER.into(),
        image: Some(image),
        command: (!command.is_empty()).then_some(command),
        args: (!args.is_empty()).then_some(args),
        env: Some(env),
        resources: requirements(&resources),
        volume_mounts: Some(mounts),
        termination_message_path: Some(OUTPUTS_FILE.into()),
        termination_message_policy: Some("File".into()),
        security_context: Some(if sandboxed {
            sandbox_context()
        } else {
            container_step_context()
        }),
        ..Container::default()
    };
    let pod = PodSpec {
        restart_policy: Some("Never".into()),
        containers: vec![container],
        volumes: Some(volumes),
        tolerations: gpu_tolerations(&resources),
        node_selector: gpu_node_selector(&resources),
        runtime_class_name: runtime_class,
        automount_service_account_token: service_account
            .as_ref()
            .map(|(_, token)| *token)
            .or(sandboxed.then_some(false)),
        service_account_name: service_account.map(|(name, _)| name),
        security_context: sandboxed.then(sandbox_pod_context),
        ..PodSpec::default()
    };
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(job_name(run_name, &step.name, attempt)),
            namespace: Some(namespace.to_string()),
            labels: Some(labels.clone()),
            owner_references: Some(vec![OwnerReference {
                api_version: format!(
                    "{}/{}",
                    aleph_crds::common::GROUP,
                    aleph_crds::common::VERSION
                ),
                kind: "PipelineRun".into(),
                name: run_name.to_string(),
                uid: uid.to_string(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: step.timeout_seconds,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: (!annotations.is_empty()).then_some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..JobSpec::default()
        }),
        status: None,
    })
}

/// Container steps run user images (often as root, as training images do),
/// so they get the baseline hardening only.
fn container_step_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

/// A termination message too large to have been kept whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the step wrote {size} bytes of outputs; at most {} fit: write only small values (URIs, metrics) to {OUTPUTS_FILE}",
    MAX_OUTPUTS_BYTES - 1
)]
pub struct OutputsTooLarge {
    /// The message's size in bytes.
    pub size: usize,
}

/// Reads a step's outputs from its container's termination message:
/// `key=value` lines; the value is the rest of the line (it may hold `=`),
/// a later line wins over an earlier one with the same key. Blank lines,
/// `#` comments and lines whose key is not made of letters, digits, `_` and
/// `-` are ignored. A message of [`MAX_OUTPUTS_BYTES`] or more is refused:
/// the kubelet may have cut it.
pub fn parse_outputs(message: &str) -> Result<BTreeMap<String, String>, OutputsTooLarge> {
    if message.len() >= MAX_OUTPUTS_BYTES {
        return Err(OutputsTooLarge {
            size: message.len(),
        });
    }
    Ok(message
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim(), value.strip_suffix('\r').unwrap_or(value)))
        .filter(|(key, _)| params::is_output_key(key))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use aleph_crds::common::ComputeResources;
    use aleph_crds::pipeline::PipelineSpec;
    use k8s_openapi::api::core::v1::EnvVar;
    use proptest::prelude::*;

    const RUN: &str = r#"
apiVersion: aleph.dev/v1alpha1
kind: PipelineRun
metadata:
  name: nightly-202601020200
  namespace: team-a
  uid: 0b7c5c3e-1111-2222-3333-444455556666
  labels:
    aleph.dev/tenant: acme
spec:
  pipelineRef:
    name: nightly
"#;

    const PIPELINE: &str = r#"
params:
  - name: epochs
    type: int
    default: "3"
steps:
  - name: train
    timeoutSeconds: 3600
    podAnnotations:
      example.com/epochs: "e$(params.epochs)"
      example.com/data: $(steps.fetch.outputs.uri)
    container:
      image: ghcr.io/acme/trainer:$(params.epochs)
      command: ["python", "train.py"]
      args: ["--epochs=$(params.epochs)", "--data=$(steps.fetch.outputs.uri)", "--home=$(HOME)"]
      env:
        - name: MODE
          value: full-$(params.epochs)
        - name: HF_TOKEN
          secretKeyRef:
            name: hf
            key: token
        - name: ALEPH_STEP
          value: overridden
      resources:
        cpu: "4"
        memory: 32Gi
        gpus: 2
        gpuProduct: NVIDIA-H100-80GB-HBM3
  - name: scan
    plugin:
      name: scanner
      args: ["--target=$(params.epochs)"]
  - name: fit
    training:
      image: 123456789012.dkr.ecr.us-east-1.amazonaws.com/xgb:1
      roleArn: arn:aws:iam::123456789012:role/sm
      instanceType: ml.m5.large
      outputS3Uri: s3://bucket/out
"#;

    const PLUGIN: &str = r#"
apiVersion: aleph.dev/v1alpha1
kind: Plugin
metadata:
  name: scanner
  namespace: team-a
spec:
  version: 1.2.0
  image: ghcr.io/acme/scanner:1.2.0
  mode: job
  command: ["/scan"]
  args: ["--quiet"]
  env:
    - name: LEVEL
      value: $(params.epochs)
  config:
    rules.yaml: "x: 1"
  secrets:
    - name: scanner-key
  sandbox:
    runtimeClassName: gvisor
status:
  currentImage: ghcr.io/acme/scanner:1.1.0
"#;

    fn run() -> PipelineRun {
        serde_saphyr::from_str(RUN).unwrap()
    }

    fn pipeline() -> PipelineSpec {
        serde_saphyr::from_str(PIPELINE).unwrap()
    }

    fn plugin() -> Plugin {
        serde_saphyr::from_str(PLUGIN).unwrap()
    }

    fn params() -> BTreeMap<String, String> {
        BTreeMap::from([("epochs".to_string(), "3".to_string())])
    }

    fn outputs() -> StepOutputs {
        StepOutputs::from([(
            "fetch".to_string(),
            BTreeMap::from([("uri".to_string(), "s3://b/$x".to_string())]),
        )])
    }

    fn pod(job: &Job) -> &PodSpec {
        job.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    fn env_value<'a>(c: &'a Container, name: &str) -> Option<&'a EnvVar> {
        c.env.as_ref().unwrap().iter().find(|e| e.name == name)
    }

    #[test]
    fn a_container_step_becomes_a_job() {
        let spec = pipeline();
        let job = build_step_job(&run(), &spec.steps[0], 2, &params(), &outputs(), None).unwrap();
        let meta = &job.metadata;
        assert_eq!(meta.name.as_deref(), Some("nightly-202601020200-train-2"));
        assert_eq!(meta.namespace.as_deref(), Some("team-a"));
        let labels = meta.labels.as_ref().unwrap();
        for (k, v) in [
            ("app.kubernetes.io/managed-by", "aleph-operator"),
            ("app.kubernetes.io/part-of", "aleph"),
            ("aleph.dev/pipelinerun", "nightly-202601020200"),
            ("aleph.dev/step", "train"),
            ("aleph.dev/attempt", "2"),
            ("aleph.dev/pipeline", "nightly"),
            ("aleph.dev/tenant", "acme"),
        ] {
            assert_eq!(labels.get(k).map(String::as_str), Some(v), "{k}");
        }
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.api_version, "aleph.dev/v1alpha1");
        assert_eq!(owner.kind, "PipelineRun");
        assert_eq!(owner.name, "nightly-202601020200");
        assert_eq!(owner.uid, "0b7c5c3e-1111-2222-3333-444455556666");
        assert_eq!(owner.controller, Some(true));
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.active_deadline_seconds, Some(3600));
        assert_eq!(
            spec.template.metadata.as_ref().unwrap().labels.as_ref(),
            Some(labels)
        );
        let annotations = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap();
        assert_eq!(annotations["example.com/epochs"], "e3");
        assert_eq!(
            annotations["example.com/data"], "s3://b/$x",
            "annotations are not expanded by the kubelet, so nothing is escaped"
        );
        let pod = pod(&job);
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.automount_service_account_token, None);
        let c = &pod.containers[0];
        assert_eq!(c.name, STEP_CONTAINER);
        assert_eq!(c.image.as_deref(), Some("ghcr.io/acme/trainer:3"));
        assert_eq!(
            c.command.as_deref(),
            Some(&["python".to_string(), "train.py".to_string()][..])
        );
        assert_eq!(
            c.args.as_deref().unwrap(),
            ["--epochs=3", "--data=s3://b/$$x", "--home=$(HOME)"],
            "inserted values are escaped for the kubelet, the user's own $(HOME) is not"
        );
        assert_eq!(
            env_value(c, "MODE").unwrap().value.as_deref(),
            Some("full-3")
        );
        let token = env_value(c, "HF_TOKEN").unwrap();
        assert_eq!(token.value, None);
        let selector = token
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (selector.name.as_str(), selector.key.as_str()),
            ("hf", "token")
        );
        assert_eq!(
            env_value(c, "ALEPH_STEP").unwrap().value.as_deref(),
            Some("overridden")
        );
        assert_eq!(
            env_value(c, "ALEPH_OUTPUTS_FILE").unwrap().value.as_deref(),
            Some(OUTPUTS_FILE)
        );
        let names: Vec<&str> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(names.len(), unique.len(), "no duplicate env names");
        let resources = c.resources.as_ref().unwrap();
        for amounts in [
            resources.requests.as_ref().unwrap(),
            resources.limits.as_ref().unwrap(),
        ] {
            assert_eq!(amounts["cpu"].0, "4");
            assert_eq!(amounts["memory"].0, "32Gi");
            assert_eq!(amounts["nvidia.com/gpu"].0, "2");
        }
        let toleration = &pod.tolerations.as_ref().unwrap()[0];
        assert_eq!(toleration.key.as_deref(), Some("nvidia.com/gpu"));
        assert_eq!(toleration.operator.as_deref(), Some("Exists"));
        assert_eq!(toleration.effect.as_deref(), Some("NoSchedule"));
        assert_eq!(
            pod.node_selector.as_ref().unwrap()["nvidia.com/gpu.product"],
            "NVIDIA-H100-80GB-HBM3"
        );
        assert_eq!(c.termination_message_path.as_deref(), Some(OUTPUTS_FILE));
        assert_eq!(c.termination_message_policy.as_deref(), Some("File"));
        let mount = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(mount.mount_path, OUTPUTS_DIR);
        assert!(pod.volumes.as_ref().unwrap()[0].empty_dir.is_some());
        let security = c.security_context.as_ref().unwrap();
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(
            security.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
    }

    #[test]
    fn a_cpu_step_gets_no_gpu_scheduling() {
        let mut step = pipeline().steps[0].clone();
        if let Some(c) = step.container.as_mut() {
            c.resources = ComputeResources::default();
            c.args.clear();
        }
        let job = build_step_job(&run(), &step, 1, &params(), &outputs(), None).unwrap();
        let pod = pod(&job);
        assert!(pod.tolerations.is_none() && pod.node_selector.is_none());
        assert!(pod.containers[0].resources.is_none());
        assert!(pod.containers[0].args.is_none());
    }

    /// The Job of the example's plugin step, run with `plugin`.
    fn plugin_step_job(plugin: &Plugin) -> Job {
        build_step_job(
            &run(),
            &pipeline().steps[1],
            1,
            &params(),
            &outputs(),
            Some(plugin),
        )
        .unwrap()
    }

    #[test]
    fn a_plugin_step_with_permissions_gets_its_token() {
        let mut plugin = plugin();
        plugin.spec.permissions = vec![aleph_crds::plugin::PluginPermission {
            api_groups: vec![String::new()],
            resources: vec!["configmaps".into()],
            verbs: vec!["get".into()],
        }];
        let job = plugin_step_job(&plugin);
        let pod = pod(&job);
        assert_eq!(pod.service_account_name.as_deref(), Some("scanner"));
        assert_eq!(pod.automount_service_account_token, Some(true));
    }

    #[test]
    fn a_plugin_step_runs_sandboxed() {
        let job = plugin_step_job(&plugin());
        assert_eq!(
            job.metadata.labels.as_ref().unwrap()[LABEL_PLUGIN],
            "scanner"
        );
        let pod = pod(&job);
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.service_account_name.as_deref(), Some("scanner"));
        assert_eq!(pod.runtime_class_name.as_deref(), Some("gvisor"));
        let pod_security = pod.security_context.as_ref().unwrap();
        assert_eq!(pod_security.run_as_non_root, Some(true));
        assert_eq!(
            pod_security.run_as_user,
            Some(crate::plugin::build::SANDBOX_USER)
        );
        assert_eq!(
            pod_security.run_as_group,
            Some(crate::plugin::build::SANDBOX_USER)
        );
        let c = &pod.containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some("ghcr.io/acme/scanner:1.1.0"),
            "the running version"
        );
        assert_eq!(c.command.as_deref().unwrap(), ["/scan"]);
        assert_eq!(c.args.as_deref().unwrap(), ["--quiet", "--target=3"]);
        assert_eq!(
            env_value(c, "LEVEL").unwrap().value.as_deref(),
            Some("$(params.epochs)"),
            "the plugin's env is its own"
        );
        let s = c.security_context.as_ref().unwrap();
        assert_eq!(s.run_as_non_root, Some(true));
        assert_eq!(s.read_only_root_filesystem, Some(true));
        assert_eq!(s.allow_privilege_escalation, Some(false));
        assert_eq!(
            s.capabilities.as_ref().unwrap().drop.as_deref().unwrap(),
            ["ALL"]
        );
        assert_eq!(s.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        let mounts: Vec<(&str, bool)> = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| (m.mount_path.as_str(), m.read_only == Some(true)))
            .collect();
        assert_eq!(
            mounts,
            [
                (OUTPUTS_DIR, false),
                ("/tmp", false),
                (PLUGIN_CONFIG_DIR, true),
                ("/var/run/secrets/aleph-plugin/scanner-key", true),
            ]
        );
    }

    #[test]
    fn plugin_problems_are_errors() {
        let spec = pipeline();
        let step = &spec.steps[1];
        let build = |p: Option<&Plugin>| build_step_job(&run(), step, 1, &params(), &outputs(), p);
        assert!(
            matches!(build(None), Err(JobError::PluginMissing { plugin, .. }) if plugin == "scanner")
        );
        let mut other = plugin();
        other.metadata.name = Some("other".into());
        assert!(matches!(
            build(Some(&other)),
            Err(JobError::PluginMissing { .. })
        ));
        let mut service = plugin();
        service.spec.mode = PluginMode::Service;
        assert!(matches!(
            build(Some(&service)),
            Err(JobError::PluginNotJobMode { .. })
        ));
        let mut disabled = plugin();
        disabled.spec.disabled = true;
        assert!(matches!(
            build(Some(&disabled)),
            Err(JobError::PluginDisabled { .. })
        ));
    }

    #[test]
    fn other_steps_and_bad_references_are_errors() {
        let spec = pipeline();
        assert!(matches!(
            build_step_job(&run(), &spec.steps[2], 1, &params(), &outputs(), None),
            Err(JobError::NotAJobStep { step }) if step == "fit"
        ));
        let err = build_step_job(
            &run(),
            &spec.steps[0],
            1,
            &params(),
            &StepOutputs::new(),
            None,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("$(steps.fetch.outputs.uri)"),
            "{err}"
        );
        let mut anonymous = run();
        anonymous.metadata.uid = None;
        assert_eq!(
            build_step_job(&anonymous, &spec.steps[0], 1, &params(), &outputs(), None),
            Err(JobError::RunMetadata { field: "uid" })
        );
    }

    #[test]
    fn long_names_are_cut_and_hashed() {
        let run = "r".repeat(60);
        let name = job_name(&run, "train", 3);
        assert!(name.len() <= 63, "{name}");
        assert!(name.ends_with("-train-3"), "{name}");
        assert_eq!(name, job_name(&run, "train", 3));
        let other = format!("{}x", "r".repeat(59));
        assert_ne!(name, job_name(&other, "train", 3));
        assert_eq!(job_name("short", "s", 1), "short-s-1");
        assert_eq!(label_value("short"), "short");
        assert!(label_value(&"a.".repeat(100)).len() <= 63);
    }

    #[test]
    fn outputs_are_key_value_lines() {
        let got = parse_outputs("accuracy=0.93\r\nuri=s3://b/m?x=1\n\n# comment\nnot a pair\nbad key=1\nuri=s3://b/final\nempty=\n").unwrap();
        assert_eq!(
            got,
            BTreeMap::from([
                ("accuracy".to_string(), "0.93".to_string()),
                ("empty".to_string(), String::new()),
                ("uri".to_string(), "s3://b/final".to_string()),
            ])
        );
        assert!(parse_outputs("").unwrap().is_empty());
        let big = "k=".to_string() + &"v".repeat(MAX_OUTPUTS_BYTES);
        let err = parse_outputs(&big).unwrap_err();
        assert_eq!(err.size, big.len());
        assert!(err.to_string().contains(OUTPUTS_FILE));
        let edge = "k=".to_string() + &"v".repeat(MAX_OUTPUTS_BYTES - 3);
        assert!(parse_outputs(&edge).is_ok());
        assert!(
            parse_outputs(&(edge + "v")).is_err(),
            "4096 bytes may have been cut"
        );
    }

    proptest! {
        #[test]
        fn job_names_fit_and_stay_apart(
            run in "[a-z0-9]([a-z0-9.-]{0,80}[a-z0-9])?",
            step in "[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?",
            attempt in 1i32..22,
        ) {
            let name = job_name(&run, &step, attempt);
            prop_assert!(name.len() <= 63);
            prop_assert!(name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric()));
            prop_assert!(name.chars().last().is_some_and(|c| c.is_ascii_alphanumeric()));
            prop_assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'));
            prop_assert_ne!(name, job_name(&run, &step, attempt + 1));
            prop_assert!(label_value(&run).len() <= 63);
        }

        #[test]
        fn parse_outputs_never_panics(message in ".{0,300}") {
            let _ = parse_outputs(&message);
        }
    }
}
