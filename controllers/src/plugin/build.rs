//! Desired children of a Plugin, built from its spec and the release its pods
//! run (no client).
//!
//! | child | name | when |
//! |---|---|---|
//! | ServiceAccount | `<plugin>` | always; its token is mounted only when permissions are declared |
//! | Role, RoleBinding | `aleph-plugin-<plugin>` | when permissions are declared: exactly those rules |
//! | NetworkPolicy | `aleph-plugin-<plugin>` | always: ingress from the tenant only, egress to DNS and the listed destinations |
//! | ConfigMap | `<plugin>-config` | always: the configuration files, mounted read-only at [`CONFIG_DIR`] |
//! | Deployment, Service | `<plugin>` | service mode |
//!
//! Every pod runs in the sandbox: as the unprivileged user and group
//! [`SANDBOX_USER`] whatever user the image names, read-only root filesystem
//! (with a writable emptyDir at `/tmp`), all capabilities dropped, no privilege
//! escalation, the RuntimeDefault seccomp profile, and the optional RuntimeClass.

use aleph_crds::keys::{
    COMPONENT_LABEL, GPU_PRODUCT_LABEL, PLUGIN_LABEL, PLUGIN_RELEASE_ANNOTATION,
    PLUGIN_VERSION_ANNOTATION, TENANT_LABEL,
};
use std::collections::BTreeMap;

use aleph_crds::common::ComputeResources;
use aleph_crds::plugin::{Plugin, PluginMode, PluginProtocol, PluginRelease};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext,
    Service, ServiceAccount, ServicePort, ServiceSpec, TCPSocketAction, Toleration, Volume,
    VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use crate::apply::{controller_ref, standard_labels};
use crate::names::bounded_name;

/// Where a plugin's configuration files are mounted (in its service's pods and
/// in a pipeline step that runs it).
pub const PLUGIN_CONFIG_DIR: &str = "/etc/aleph-plugin";
/// Where a plugin's Secrets are mounted, one directory each.
pub const PLUGIN_SECRETS_DIR: &str = "/var/run/secrets/aleph-plugin";

/// The ConfigMap holding a plugin's configuration files.
pub fn plugin_config_map_name(plugin: &str) -> String {
    bounded_name(&format!("{plugin}-config"), 253)
}

/// Where the configuration files are mounted, read-only.
pub const CONFIG_DIR: &str = PLUGIN_CONFIG_DIR;
/// Where each Secret is mounted, read-only, as `<dir>/<secret>`.
pub const SECRETS_DIR: &str = PLUGIN_SECRETS_DIR;
/// The plugin's container.
pub const CONTAINER: &str = "plugin";
/// The name of the container port and of the Service's port.
pub const PORT_NAME: &str = "plugin";
/// The value of [`COMPONENT_LABEL`] on a service plugin's pods.
pub const SERVICE_COMPONENT: &str = "plugin-service";
/// The user and group every plugin process runs as: the conventional
/// unprivileged `nonroot` (65532). Set rather than left to the image, so that
/// an image whose default user is root (most are) still runs, and never as root.
pub const SANDBOX_USER: i64 = 65532;
const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// The plugin being built for, with the tenant of its namespace.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// The plugin.
    pub plugin: &'a Plugin,
    /// The tenant its namespace belongs to, if any.
    pub tenant: Option<&'a str>,
}

impl Target<'_> {
    fn name(&self) -> String {
        self.plugin.name_any()
    }

    fn namespace(&self) -> String {
        self.plugin.namespace().unwrap_or_default()
    }

    /// Labels of every child.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = standard_labels("plugin", &self.name());
        if let Some(tenant) = self.tenant {
            labels.insert(TENANT_LABEL.to_string(), tenant.to_string());
        }
        labels
    }

    fn meta(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace()),
            labels: Some(self.labels()),
            owner_references: controller_ref(self.plugin).map(|r| vec![r]),
            ..ObjectMeta::default()
        }
    }

    fn pod_selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (PLUGIN_LABEL.to_string(), self.name()),
            (COMPONENT_LABEL.to_string(), SERVICE_COMPONENT.to_string()),
        ])
    }
}

/// The name of the Role, RoleBinding and NetworkPolicy of `plugin`.
pub fn policy_name(plugin: &str) -> String {
    format!("aleph-plugin-{plugin}")
}

/// The name of the ConfigMap of `plugin` (the name Pipeline steps mount).
pub fn config_map_name(plugin: &str) -> String {
    plugin_config_map_name(plugin)
}

/// The in-cluster address of a service plugin.
pub fn endpoint(plugin: &Plugin) -> Option<String> {
    match (plugin.spec.mode, plugin.spec.port) {
        (PluginMode::Service, Some(port)) => Some(format!(
            "{}.{}.svc:{port}",
            plugin.name_any(),
            plugin.namespace().unwrap_or_default()
        )),
        _ => None,
    }
}

/// A short, stable hash of a release: pods of the same release carry the same one.
pub fn release_hash(release: &PluginRelease) -> String {
    let text = serde_json::to_string(release).unwrap_or_default();
    Sha256::digest(text.as_bytes())
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether the plugin's ServiceAccount gets a token: only with permissions.
pub fn mounts_token(plugin: &Plugin) -> bool {
    !plugin.spec.permissions.is_empty()
}

/// The ServiceAccount the plugin's pods run as.
pub fn service_account(t: Target<'_>) -> ServiceAccount {
    ServiceAccount {
        metadata: t.meta(t.name()),
        automount_service_account_token: Some(mounts_token(t.plugin)),
        ..ServiceAccount::default()
    }
}

/// Exactly the declared rules, or `None` without permissions.
pub fn role(t: Target<'_>) -> Option<Role> {
    let permissions = &t.plugin.spec.permissions;
    if permissions.is_empty() {
        return None;
    }
    Some(Role {
        metadata: t.meta(policy_name(&t.name())),
        rules: Some(
            permissions
                .iter()
                .map(|p| PolicyRule {
                    api_groups: Some(p.api_groups.clone()),
                    resources: Some(p.resources.clone()),
                    verbs: p.verbs.clone(),
                    ..PolicyRule::default()
                })
                .collect(),
        ),
    })
}

/// Binds [`role`] to the plugin's ServiceAccount, or `None` without permissions.
pub fn role_binding(t: Target<'_>) -> Option<RoleBinding> {
    if t.plugin.spec.permissions.is_empty() {
        return None;
    }
    let name = policy_name(&t.name());
    Some(RoleBinding {
        metadata: t.meta(name.clone()),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name,
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: t.name(),
            namespace: Some(t.namespace()),
            ..Subject::default()
        }]),
    })
}

fn port(protocol: &str, port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(protocol.into()),
        port: Some(IntOrString::Int(port)),
        ..NetworkPolicyPort::default()
    }
}

fn transport(protocol: PluginProtocol) -> &'static str {
    match protocol {
        PluginProtocol::Udp => "UDP",
        PluginProtocol::Tcp | PluginProtocol::Http | PluginProtocol::Grpc => "TCP",
    }
}

/// Ingress only from the tenant's namespaces (the plugin's own namespace when
/// it belongs to no tenant) and, for a service, only on its port; a job
/// template takes no ingress at all. Egress only to DNS in kube-system and the
/// listed destinations.
pub fn network_policy(t: Target<'_>) -> NetworkPolicy {
    let spec = &t.plugin.spec;
    let peer = match t.tenant {
        Some(tenant) => NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    TENANT_LABEL.to_string(),
                    tenant.to_string(),
                )])),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        },
        None => NetworkPolicyPeer {
            pod_selector: Some(LabelSelector::default()),
            ..NetworkPolicyPeer::default()
        },
    };
    let ingress = match (spec.mode, spec.port) {
        (PluginMode::Service, Some(p)) => vec![NetworkPolicyIngressRule {
            from: Some(vec![peer]),
            ports: Some(vec![port(transport(spec.protocol), p)]),
        }],
        _ => Vec::new(),
    };
    let mut egress = vec![NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_string(),
                    "kube-system".to_string(),
                )])),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        }]),
        ports: Some(vec![port("UDP", 53), port("TCP", 53)]),
    }];
    for destination in &spec.sandbox.allowed_egress {
        egress.push(NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                ip_block: Some(k8s_openapi::api::networking::v1::IPBlock {
                    cidr: destination.cidr.clone(),
                    except: None,
                }),
                ..NetworkPolicyPeer::default()
            }]),
            ports: (!destination.ports.is_empty())
                .then(|| destination.ports.iter().map(|p| port("TCP", p.0)).collect()),
        });
    }
    NetworkPolicy {
        metadata: t.meta(policy_name(&t.name())),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(PLUGIN_LABEL.to_string(), t.name())])),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(ingress),
            egress: Some(egress),
        }),
    }
}

/// The configuration files of `release`.
pub fn config_map(t: Target<'_>, release: &PluginRelease) -> ConfigMap {
    ConfigMap {
        metadata: t.meta(config_map_name(&t.name())),
        data: Some(release.config.clone()),
        ..ConfigMap::default()
    }
}

/// The Service of a service plugin, `None` for a job template.
pub fn service(t: Target<'_>) -> Option<Service> {
    let spec = &t.plugin.spec;
    let (PluginMode::Service, Some(p)) = (spec.mode, spec.port) else {
        return None;
    };
    let app_protocol = match spec.protocol {
        PluginProtocol::Http => Some("http".to_string()),
        PluginProtocol::Grpc => Some("kubernetes.io/h2c".to_string()),
        PluginProtocol::Tcp | PluginProtocol::Udp => None,
    };
    Some(Service {
        metadata: t.meta(t.name()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(t.pod_selector()),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.into()),
                port: p,
                target_port: Some(IntOrString::String(PORT_NAME.into())),
                protocol: Some(transport(spec.protocol).into()),
                app_protocol,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..SeccompProfile::default()
    }
}

/// The sandbox of the plugin's container.
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

/// The sandbox of the plugin's pod: the unprivileged [`SANDBOX_USER`] and the
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

fn requirements(resources: &ComputeResources) -> Option<ResourceRequirements> {
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

fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        ..EnvVar::default()
    }
}

fn env(name: &str, release: &PluginRelease) -> Vec<EnvVar> {
    let mut vars = vec![
        plain_env("ALEPH_PLUGIN_NAME", name),
        plain_env("ALEPH_PLUGIN_VERSION", &release.version),
        plain_env("ALEPH_PLUGIN_CONFIG_DIR", CONFIG_DIR),
    ];
    for var in &release.env {
        let built = match &var.secret_key_ref {
            Some(secret) => EnvVar {
                name: var.name.clone(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.name.clone(),
                        key: secret.key.clone(),
                        optional: None,
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            },
            None => plain_env(&var.name, var.value.as_deref().unwrap_or_default()),
        };
        // env is a list keyed by name: a declared variable replaces a built-in one.
        match vars.iter_mut().find(|v| v.name == built.name) {
            Some(existing) => *existing = built,
            None => vars.push(built),
        }
    }
    vars
}

/// The pod template of `release`: the sandbox, the configuration and Secrets
/// mounted read-only, a writable `/tmp`, and a token only with permissions.
pub fn pod_template(t: Target<'_>, release: &PluginRelease) -> PodTemplateSpec {
    let spec = &t.plugin.spec;
    let name = t.name();
    let mut volumes = vec![
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(&name),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "config".into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    ];
    for (i, secret) in release.secrets.iter().enumerate() {
        let volume = format!("secret-{i}");
        volumes.push(Volume {
            name: volume.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.name.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: volume,
            mount_path: format!("{SECRETS_DIR}/{}", secret.name),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    let listens = spec.mode == PluginMode::Service;
    let ports = spec.port.filter(|_| listens).map(|p| {
        vec![ContainerPort {
            name: Some(PORT_NAME.into()),
            container_port: p,
            protocol: Some(transport(spec.protocol).into()),
            ..ContainerPort::default()
        }]
    });
    // A TCP check that the plugin accepts connections; UDP has no such check.
    let readiness_probe = match (&ports, spec.protocol) {
        (Some(_), PluginProtocol::Udp) | (None, _) => None,
        (Some(_), _) => Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String(PORT_NAME.into()),
                ..TCPSocketAction::default()
            }),
            period_seconds: Some(5),
            ..Probe::default()
        }),
    };
    let gpus = release.resources.gpus.unwrap_or(0) > 0;
    let container = Container {
        name: CONTAINER.into(),
        image: Some(release.image.clone()),
        command: (!release.command.is_empty()).then(|| release.command.clone()),
        args: (!release.args.is_empty()).then(|| release.args.clone()),
        env: Some(env(&name, release)),
        ports,
        readiness_probe,
        resources: requirements(&release.resources),
        volume_mounts: Some(mounts),
        security_context: Some(sandbox_context()),
        ..Container::default()
    };
    let mut annotations = release.pod_annotations.clone();
    annotations.insert(PLUGIN_VERSION_ANNOTATION.into(), release.version.clone());
    annotations.insert(PLUGIN_RELEASE_ANNOTATION.into(), release_hash(release));
    let mut labels = t.labels();
    labels.extend(t.pod_selector());
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            service_account_name: Some(name),
            automount_service_account_token: Some(mounts_token(t.plugin)),
            enable_service_links: Some(false),
            runtime_class_name: release.runtime_class_name.clone(),
            security_context: Some(sandbox_pod_context()),
            tolerations: gpus.then(|| {
                vec![Toleration {
                    key: Some(GPU_RESOURCE.into()),
                    operator: Some("Exists".into()),
                    effect: Some("NoSchedule".into()),
                    ..Toleration::default()
                }]
            }),
            node_selector: release
                .resources
                .gpu_product
                .as_ref()
                .map(|p| BTreeMap::from([(GPU_PRODUCT_LABEL.to_string(), p.clone())])),
            ..PodSpec::default()
        }),
    }
}

/// The Deployment of a service plugin running `release`: zero replicas when
/// disabled; new pods replace old ones only once Ready (no old pod goes first),
/// so the running version keeps serving while an upgrade rolls out.
pub fn deployment(t: Target<'_>, release: &PluginRelease) -> Deployment {
    let spec = &t.plugin.spec;
    Deployment {
        metadata: t.meta(t.name()),
        spec: Some(DeploymentSpec {
            replicas: Some(if spec.disabled { 0 } else { spec.replicas }),
            selector: LabelSelector {
                match_labels: Some(t.pod_selector()),
                ..LabelSelector::default()
            },
            template: pod_template(t, release),
            progress_deadline_seconds: Some(spec.progress_deadline_seconds),
            revision_history_limit: Some(5),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn plugin(yaml: &str) -> Plugin {
        let mut p: Plugin = serde_saphyr::from_str(yaml).expect("fixture parses");
        p.metadata.uid = Some("uid-1".into());
        p.metadata.namespace = Some("acme-research".into());
        p
    }

    const EXAMPLE: &str = include_str!("../../../examples/plugin.yaml");

    const JOB: &str = r#"
apiVersion: aleph.dev/v1alpha1
kind: Plugin
metadata: { name: tokenizer }
spec:
  version: 0.3.0
  image: ghcr.io/acme/tokenizer:0.3.0
  mode: job
  permissions:
    - apiGroups: [""]
      resources: [configmaps]
      verbs: [get, list]
    - apiGroups: [apps]
      resources: [deployments]
      verbs: [get]
"#;

    fn target(p: &Plugin) -> Target<'_> {
        Target {
            plugin: p,
            tenant: Some("acme"),
        }
    }

    #[test]
    fn every_pod_runs_in_the_sandbox_without_a_token() {
        let p = plugin(EXAMPLE);
        let d = deployment(target(&p), &PluginRelease::of(&p.spec));
        let spec = d.spec.expect("spec");
        assert_eq!(spec.progress_deadline_seconds, Some(120));
        let pod = spec.template.spec.expect("pod spec");
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.service_account_name.as_deref(), Some("pii-redactor"));
        let psc = pod.security_context.expect("pod security context");
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.run_as_user, Some(SANDBOX_USER));
        assert_eq!(psc.run_as_group, Some(SANDBOX_USER));
        assert_eq!(
            psc.seccomp_profile.map(|s| s.type_).as_deref(),
            Some("RuntimeDefault")
        );
        assert!(pod.runtime_class_name.is_none());
        let c = &pod.containers[0];
        let sc = c
            .security_context
            .clone()
            .expect("container security context");
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.and_then(|c| c.drop),
            Some(vec!["ALL".to_string()])
        );
        let mounts = c.volume_mounts.clone().unwrap_or_default();
        assert!(mounts.iter().any(|m| m.mount_path == "/tmp"));
        assert!(
            mounts
                .iter()
                .any(|m| m.mount_path == CONFIG_DIR && m.read_only == Some(true))
        );
        let sa = service_account(target(&p));
        assert_eq!(sa.automount_service_account_token, Some(false));
        assert!(role(target(&p)).is_none() && role_binding(target(&p)).is_none());
    }

    #[test]
    fn upgrades_keep_the_old_pods_until_new_ones_are_ready() {
        let p = plugin(EXAMPLE);
        let d = deployment(target(&p), &PluginRelease::of(&p.spec));
        let rolling = d
            .spec
            .and_then(|s| s.strategy)
            .and_then(|s| s.rolling_update)
            .expect("rolling update");
        assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
    }

    #[test]
    fn disabled_scales_to_zero_and_keeps_the_rest() {
        let mut p = plugin(EXAMPLE);
        p.spec.disabled = true;
        let d = deployment(target(&p), &PluginRelease::of(&p.spec));
        assert_eq!(d.spec.and_then(|s| s.replicas), Some(0));
        assert!(
            config_map(target(&p), &PluginRelease::of(&p.spec))
                .data
                .is_some()
        );
        assert!(service(target(&p)).is_some());
    }

    #[test]
    fn the_release_shapes_the_pods() {
        let p = plugin(EXAMPLE);
        let mut old = PluginRelease::of(&p.spec);
        old.version = "1.0.0".into();
        old.image = "ghcr.io/acme/pii-redactor:1.0.0".into();
        old.pod_annotations.clear();
        let new = PluginRelease::of(&p.spec);
        assert_ne!(release_hash(&old), release_hash(&new));
        let template = pod_template(target(&p), &old);
        let annotations = template
            .metadata
            .and_then(|m| m.annotations)
            .unwrap_or_default();
        assert_eq!(
            annotations
                .get(PLUGIN_VERSION_ANNOTATION)
                .map(String::as_str),
            Some("1.0.0")
        );
        assert_eq!(
            annotations.get(PLUGIN_RELEASE_ANNOTATION),
            Some(&release_hash(&old))
        );
        let image = template.spec.map(|s| s.containers[0].image.clone());
        assert_eq!(
            image.flatten().as_deref(),
            Some("ghcr.io/acme/pii-redactor:1.0.0")
        );
    }

    #[test]
    fn permissions_become_exactly_one_role_bound_to_the_plugin() {
        let p = plugin(JOB);
        let r = role(target(&p)).expect("role");
        let rules = r.rules.expect("rules");
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].verbs, vec!["get".to_string(), "list".to_string()]);
        assert_eq!(rules[1].api_groups, Some(vec!["apps".to_string()]));
        let rb = role_binding(target(&p)).expect("binding");
        assert_eq!(rb.role_ref.name, "aleph-plugin-tokenizer");
        let subject = &rb.subjects.expect("subjects")[0];
        assert_eq!(subject.name, "tokenizer");
        assert_eq!(subject.namespace.as_deref(), Some("acme-research"));
        assert_eq!(
            service_account(target(&p)).automount_service_account_token,
            Some(true)
        );
        assert!(service(target(&p)).is_none());
        assert!(endpoint(&p).is_none());
    }

    #[test]
    fn network_policy_allows_dns_the_listed_egress_and_the_tenant() {
        let p = plugin(EXAMPLE);
        let np = network_policy(target(&p));
        assert_eq!(
            np.metadata.name.as_deref(),
            Some("aleph-plugin-pii-redactor")
        );
        let spec = np.spec.expect("spec");
        assert_eq!(
            spec.policy_types,
            Some(vec!["Ingress".to_string(), "Egress".to_string()])
        );
        let egress = spec.egress.expect("egress");
        assert_eq!(egress.len(), 1 + p.spec.sandbox.allowed_egress.len());
        let dns_ports = egress[0].ports.clone().unwrap_or_default();
        assert_eq!(dns_ports.len(), 2);
        for (rule, dest) in egress[1..].iter().zip(&p.spec.sandbox.allowed_egress) {
            let to = rule.to.clone().unwrap_or_default();
            assert_eq!(
                to[0].ip_block.as_ref().map(|b| b.cidr.clone()),
                Some(dest.cidr.clone())
            );
        }
        let ingress = spec.ingress.expect("ingress");
        let from = ingress[0].from.clone().unwrap_or_default();
        let selector = from[0]
            .namespace_selector
            .clone()
            .and_then(|s| s.match_labels)
            .unwrap_or_default();
        assert_eq!(selector.get(TENANT_LABEL).map(String::as_str), Some("acme"));
        // Outside a tenant: the plugin's own namespace only.
        let alone = network_policy(Target {
            plugin: &p,
            tenant: None,
        });
        let from = alone.spec.and_then(|s| s.ingress).expect("ingress")[0]
            .from
            .clone()
            .unwrap_or_default();
        assert!(from[0].namespace_selector.is_none() && from[0].pod_selector.is_some());
        // A job template takes no ingress.
        let job = plugin(JOB);
        let ingress = network_policy(target(&job)).spec.and_then(|s| s.ingress);
        assert_eq!(ingress, Some(Vec::new()));
    }

    #[test]
    fn service_and_endpoint_use_the_declared_port() {
        let p = plugin(EXAMPLE);
        let svc = service(target(&p)).expect("service");
        let port = &svc.spec.expect("spec").ports.expect("ports")[0];
        assert_eq!(port.port, 8080);
        assert_eq!(port.protocol.as_deref(), Some("TCP"));
        assert_eq!(
            endpoint(&p).as_deref(),
            Some("pii-redactor.acme-research.svc:8080")
        );
    }
}
