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

use aleph_crds::keys::{
    ATTEMPT_LABEL, PIPELINE_LABEL, PLUGIN_LABEL, RUN_LABEL, STEP_LABEL, TENANT_LABEL,
};
use aleph_crds::pipeline::{PipelineRun, PipelineStep};
use aleph_crds::plugin::{Plugin, PluginMode};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec, SecurityContext};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::params::{self, StepOutputs, SubstitutionError};
use crate::names::bounded_name;
use crate::plugin::build::{PLUGIN_CONFIG_DIR, PLUGIN_SECRETS_DIR, plugin_config_map_name};
use crate::workload::{
    config_map_volume, empty_dir, gpu_node_selector, gpu_tolerations, mount, mount_secrets,
    plain_env, requirements, runtime_default, sandbox_context, sandbox_pod_context, secret_env,
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
/// or [`bounded_name`] of it. Select a run's Jobs with `RUN_LABEL=label_value(run)`.
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
        (RUN_LABEL.to_string(), label_value(run_name)),
        (STEP_LABEL.to_string(), step.to_string()),
        (ATTEMPT_LABEL.to_string(), attempt.to_string()),
        (
            PIPELINE_LABEL.to_string(),
            label_value(&run.spec.pipeline_ref.name),
        ),
    ]);
    if let Some(tenant) = run
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(TENANT_LABEL))
    {
        labels.insert(TENANT_LABEL.to_string(), tenant.clone());
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
            labels.insert(PLUGIN_LABEL.to_string(), label_value(&action.name));
            service_account = Some((
                action.name.clone(),
                crate::plugin::build::mounts_token(plugin),
            ));
            volumes.push(empty_dir("tmp"));
            mounts.push(mount("tmp", "/tmp", false));
            if !plugin.spec.container.config.is_empty() {
                volumes.push(config_map_volume(
                    "plugin-config",
                    plugin_config_map_name(&action.name),
                ));
                mounts.push(mount("plugin-config", PLUGIN_CONFIG_DIR, true));
            }
            let secrets = &plugin.spec.container.secrets;
            mount_secrets(
                secrets,
                "plugin-secret",
                PLUGIN_SECRETS_DIR,
                &mut volumes,
                &mut mounts,
            );
            let image = plugin
                .status
                .as_ref()
                .and_then(|s| s.current_image.clone())
                .unwrap_or_else(|| plugin.spec.image.clone());
            let mut args = plugin.spec.container.args.clone();
            args.extend(subst_all(&action.args)?);
            (
                image,
                plugin.spec.container.command.clone(),
                args,
                plugin.spec.container.env.clone(),
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
#[path = "build_tests.rs"]
mod tests;
