//! Parts of the pods that Plugins, Pipeline steps and AIModels run, built the
//! same way for each: compute resources and GPU scheduling, the sandbox's
//! security contexts, env variables, volumes and mounts. Pure, no client.

use std::collections::BTreeMap;

use aleph_crds::common::{ComputeResources, SecretKeyRef, SecretRef};
use aleph_crds::keys::GPU_PRODUCT_LABEL;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, ContainerStatus, EmptyDirVolumeSource, EnvFromSource,
    EnvVar, EnvVarSource, Pod, PodSecurityContext, ResourceRequirements, SeccompProfile,
    SecretEnvSource, SecretKeySelector, SecretVolumeSource, SecurityContext, Toleration, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The extended resource of NVIDIA GPUs, and the key of GPU nodes' taint.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// The user and group every sandboxed process runs as: the conventional
/// unprivileged `nonroot` (65532). Set rather than left to the image, so that
/// an image whose default user is root (most are) still runs, and never as root.
pub const SANDBOX_USER: i64 = 65532;

/// CPU and memory as request and limit alike; GPUs as [`GPU_RESOURCE`]
/// requests and limits. `None` when nothing is asked for.
pub fn requirements(resources: &ComputeResources) -> Option<ResourceRequirements> {
    let mut amounts = BTreeMap::new();
    if let Some(cpu) = &resources.cpu {
        amounts.insert("cpu".to_string(), cpu.clone());
    }
    if let Some(memory) = &resources.memory {
        amounts.insert("memory".to_string(), memory.clone());
    }
    if let Some(n) = resources.gpus.filter(|&n| n > 0) {
        amounts.insert(GPU_RESOURCE.to_string(), Quantity(n.to_string()));
    }
    (!amounts.is_empty()).then(|| ResourceRequirements {
        requests: Some(amounts.clone()),
        limits: Some(amounts),
        ..ResourceRequirements::default()
    })
}

/// Whether GPUs are asked for.
pub fn wants_gpus(resources: &ComputeResources) -> bool {
    resources.gpus.unwrap_or(0) > 0
}

/// The toleration of GPU nodes' taint, when GPUs are asked for.
pub fn gpu_tolerations(resources: &ComputeResources) -> Option<Vec<Toleration>> {
    wants_gpus(resources).then(|| {
        vec![Toleration {
            key: Some(GPU_RESOURCE.into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        }]
    })
}

/// The node selector of the GPU product asked for, if any.
pub fn gpu_node_selector(resources: &ComputeResources) -> Option<BTreeMap<String, String>> {
    resources
        .gpu_product
        .as_ref()
        .map(|p| BTreeMap::from([(GPU_PRODUCT_LABEL.to_string(), p.clone())]))
}

/// The RuntimeDefault seccomp profile.
pub fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..SeccompProfile::default()
    }
}

/// The sandbox of a container: non-root, read-only root filesystem, no
/// capabilities, no privilege escalation, the RuntimeDefault seccomp profile.
pub fn sandbox_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

/// The sandbox of a pod: the unprivileged [`SANDBOX_USER`] and the
/// RuntimeDefault seccomp profile.
pub fn sandbox_pod_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(SANDBOX_USER),
        run_as_group: Some(SANDBOX_USER),
        seccomp_profile: Some(runtime_default()),
        ..PodSecurityContext::default()
    }
}

/// A variable with a literal value.
pub fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        ..EnvVar::default()
    }
}

/// A variable read from a key of a Secret.
pub fn secret_env(name: &str, secret: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                optional: None,
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Every key of a Secret as a variable (`envFrom`), or nothing.
pub fn secret_env_from(secret: Option<&SecretRef>) -> Option<Vec<EnvFromSource>> {
    secret.map(|secret| {
        vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: secret.name.clone(),
                optional: None,
            }),
            ..EnvFromSource::default()
        }]
    })
}

/// Adds or replaces a variable: env is a list keyed by name, and server-side
/// apply refuses duplicate keys.
pub fn set_env(env: &mut Vec<EnvVar>, var: EnvVar) {
    match env.iter_mut().find(|e| e.name == var.name) {
        Some(existing) => *existing = var,
        None => env.push(var),
    }
}

/// An emptyDir volume.
pub fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_string(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

/// A volume of the ConfigMap `config_map`.
pub fn config_map_volume(name: &str, config_map: String) -> Volume {
    Volume {
        name: name.to_string(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map,
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// A volume of the Secret `secret`.
pub fn secret_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_string()),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// Mounts the volume `name` at `path`; `readOnly` is set only when true.
pub fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

/// Each Secret of `secrets` as a volume (`{prefix}-0`, `{prefix}-1`, ...) in
/// `volumes`, mounted read-only at `{dir}/{name}` in `mounts`.
pub fn mount_secrets(
    secrets: &[aleph_crds::SecretRef],
    prefix: &str,
    dir: &str,
    volumes: &mut Vec<Volume>,
    mounts: &mut Vec<VolumeMount>,
) {
    for (i, secret) in secrets.iter().enumerate() {
        let volume = format!("{prefix}-{i}");
        volumes.push(secret_volume(&volume, &secret.name));
        mounts.push(mount(&volume, &format!("{dir}/{}", secret.name), true));
    }
}

/// The Job's condition `type_` when it is True: its reason and message.
pub fn job_condition<'a>(job: &'a Job, type_: &str) -> Option<(&'a str, &'a str)> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| {
            (
                c.reason.as_deref().unwrap_or_default(),
                c.message.as_deref().unwrap_or_default(),
            )
        })
}

/// Why the container of `status` (in the pod `pod_name`) waits without
/// starting, when waiting will not fix it: an image it cannot pull
/// (`ImagePullFailed`), or a Secret, ConfigMap or key it names that does not
/// exist (`ContainerConfigError`). A reason and a message.
pub fn waiting_problem(pod_name: &str, status: &ContainerStatus) -> Option<(&'static str, String)> {
    let waiting = status.state.as_ref()?.waiting.as_ref()?;
    let detail = waiting.message.as_deref().unwrap_or("");
    match waiting.reason.as_deref()? {
        "ImagePullBackOff" | "ErrImagePull" | "InvalidImageName" => Some((
            "ImagePullFailed",
            format!(
                "cannot pull the image {} of pod {pod_name}: {detail}",
                status.image
            ),
        )),
        "CreateContainerConfigError" | "CreateContainerError" => Some((
            "ContainerConfigError",
            format!(
                "the {} container of pod {pod_name} cannot start: {detail}. Check the Secrets and settings it refers to",
                status.name
            ),
        )),
        _ => None,
    }
}

/// The first of `pod`'s containers (init containers first) that cannot
/// start, as [`waiting_problem`] says.
pub fn start_problem(pod: &Pod) -> Option<(&'static str, String)> {
    let status = pod.status.as_ref()?;
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find_map(|s| waiting_problem(name, s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn as_json<T: serde::Serialize>(value: &T) -> Value {
        serde_json::to_value(value).expect("serializes")
    }

    fn resources(cpu: Option<&str>, gpus: Option<i32>, product: Option<&str>) -> ComputeResources {
        ComputeResources {
            cpu: cpu.map(|c| Quantity(c.into())),
            memory: None,
            gpus,
            gpu_product: product.map(Into::into),
        }
    }

    #[test]
    fn requirements_request_and_limit_alike() {
        assert_eq!(requirements(&ComputeResources::default()), None);
        assert_eq!(requirements(&resources(None, Some(0), None)), None);
        let mut r = resources(Some("2"), Some(1), None);
        r.memory = Some(Quantity("16Gi".into()));
        let amounts = json!({ "cpu": "2", "memory": "16Gi", "nvidia.com/gpu": "1" });
        assert_eq!(
            as_json(&requirements(&r)),
            json!({ "requests": amounts, "limits": amounts })
        );
    }

    #[test]
    fn gpus_are_wanted_only_when_more_than_zero() {
        assert!(!wants_gpus(&resources(None, None, None)));
        assert!(!wants_gpus(&resources(None, Some(0), None)));
        assert!(wants_gpus(&resources(None, Some(2), None)));
    }

    #[test]
    fn gpu_tolerations_tolerate_the_gpu_taint() {
        assert_eq!(gpu_tolerations(&resources(Some("1"), None, None)), None);
        assert_eq!(
            as_json(&gpu_tolerations(&resources(None, Some(1), None))),
            json!([{ "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" }])
        );
    }

    #[test]
    fn gpu_node_selector_names_the_product() {
        assert_eq!(gpu_node_selector(&resources(None, Some(1), None)), None);
        assert_eq!(
            as_json(&gpu_node_selector(&resources(
                None,
                Some(1),
                Some("NVIDIA-L4")
            ))),
            json!({ "nvidia.com/gpu.product": "NVIDIA-L4" })
        );
    }

    #[test]
    fn runtime_default_is_the_seccomp_profile() {
        assert_eq!(
            as_json(&runtime_default()),
            json!({ "type": "RuntimeDefault" })
        );
    }

    #[test]
    fn the_container_sandbox_drops_everything() {
        assert_eq!(
            as_json(&sandbox_context()),
            json!({
                "runAsNonRoot": true,
                "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false,
                "privileged": false,
                "capabilities": { "drop": ["ALL"] },
                "seccompProfile": { "type": "RuntimeDefault" },
            })
        );
    }

    #[test]
    fn the_pod_sandbox_runs_as_the_unprivileged_user() {
        assert_ne!(SANDBOX_USER, 0);
        assert_eq!(
            as_json(&sandbox_pod_context()),
            json!({
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "seccompProfile": { "type": "RuntimeDefault" },
            })
        );
    }

    #[test]
    fn plain_env_keeps_empty_values() {
        assert_eq!(
            as_json(&plain_env("A", "1")),
            json!({ "name": "A", "value": "1" })
        );
        assert_eq!(
            as_json(&plain_env("B", "")),
            json!({ "name": "B", "value": "" })
        );
    }

    #[test]
    fn secret_env_reads_a_key() {
        let secret = SecretKeyRef {
            name: "s".into(),
            key: "k".into(),
        };
        assert_eq!(
            as_json(&secret_env("TOKEN", &secret)),
            json!({ "name": "TOKEN", "valueFrom": { "secretKeyRef": { "name": "s", "key": "k" } } })
        );
    }

    #[test]
    fn set_env_replaces_by_name_and_appends_the_rest() {
        let mut env = vec![plain_env("A", "1"), plain_env("B", "2")];
        set_env(&mut env, plain_env("A", "3"));
        set_env(&mut env, plain_env("C", "4"));
        let names: Vec<_> = env
            .iter()
            .map(|v| (v.name.as_str(), v.value.as_deref()))
            .collect();
        assert_eq!(
            names,
            [("A", Some("3")), ("B", Some("2")), ("C", Some("4"))]
        );
    }

    #[test]
    fn volumes_name_their_source() {
        assert_eq!(
            as_json(&empty_dir("tmp")),
            json!({ "name": "tmp", "emptyDir": {} })
        );
        assert_eq!(
            as_json(&config_map_volume("config", "p-config".into())),
            json!({ "name": "config", "configMap": { "name": "p-config" } })
        );
        assert_eq!(
            as_json(&secret_volume("secret-0", "creds")),
            json!({ "name": "secret-0", "secret": { "secretName": "creds" } })
        );
    }

    #[test]
    fn mounts_say_read_only_only_when_they_are() {
        assert_eq!(
            as_json(&mount("tmp", "/tmp", false)),
            json!({ "name": "tmp", "mountPath": "/tmp" })
        );
        assert_eq!(
            as_json(&mount("config", "/etc/c", true)),
            json!({ "name": "config", "mountPath": "/etc/c", "readOnly": true })
        );
    }
}
