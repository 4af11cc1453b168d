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

use std::collections::BTreeMap;

use aleph_crds::keys::{
    COMPONENT_LABEL, PLUGIN_LABEL, PLUGIN_RELEASE_ANNOTATION, PLUGIN_VERSION_ANNOTATION,
    TENANT_LABEL,
};
use aleph_crds::plugin::{Plugin, PluginMode, PluginProtocol, PluginRelease};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerPort, EnvVar, PodSpec, PodTemplateSpec, Probe, Service,
    ServiceAccount, ServicePort, ServiceSpec, TCPSocketAction,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use crate::apply::{controller_ref, standard_labels};
use crate::names::bounded_name;
/// The user and group every plugin process runs as (see [`crate::workload`]).
pub use crate::workload::SANDBOX_USER;
use crate::workload::{
    config_map_volume, empty_dir, gpu_node_selector, gpu_tolerations, mount, mount_secrets,
    plain_env, requirements, sandbox_context, sandbox_pod_context, secret_env, set_env,
};

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
        data: Some(release.container.config.clone()),
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

fn env(name: &str, release: &PluginRelease) -> Vec<EnvVar> {
    let mut vars = vec![
        plain_env("ALEPH_PLUGIN_NAME", name),
        plain_env("ALEPH_PLUGIN_VERSION", &release.version),
        plain_env("ALEPH_PLUGIN_CONFIG_DIR", CONFIG_DIR),
    ];
    for var in &release.container.env {
        let built = match &var.secret_key_ref {
            Some(secret) => secret_env(&var.name, secret),
            None => plain_env(&var.name, var.value.as_deref().unwrap_or_default()),
        };
        // A declared variable replaces a built-in one.
        set_env(&mut vars, built);
    }
    vars
}

/// The pod template of `release`: the sandbox, the configuration and Secrets
/// mounted read-only, a writable `/tmp`, and a token only with permissions.
pub fn pod_template(t: Target<'_>, release: &PluginRelease) -> PodTemplateSpec {
    let spec = &t.plugin.spec;
    let name = t.name();
    let mut volumes = vec![
        empty_dir("tmp"),
        config_map_volume("config", config_map_name(&name)),
    ];
    let mut mounts = vec![
        mount("tmp", "/tmp", false),
        mount("config", CONFIG_DIR, true),
    ];
    mount_secrets(
        &release.container.secrets,
        "secret",
        SECRETS_DIR,
        &mut volumes,
        &mut mounts,
    );
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
    let container = Container {
        name: CONTAINER.into(),
        image: Some(release.image.clone()),
        command: (!release.container.command.is_empty()).then(|| release.container.command.clone()),
        args: (!release.container.args.is_empty()).then(|| release.container.args.clone()),
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
            tolerations: gpu_tolerations(&release.resources),
            node_selector: gpu_node_selector(&release.resources),
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
#[path = "build_tests.rs"]
mod tests;
