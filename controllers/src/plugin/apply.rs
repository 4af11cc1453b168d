//! Writes a Plugin's children to the API: each child is applied only when it
//! is not already as desired, children no longer wanted are deleted, and a
//! child of the same name that belongs to something else is left alone.

use aleph_crds::keys::PLUGIN_RELEASE_ANNOTATION;
use aleph_crds::plugin::{PluginMode, PluginRelease};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams};
use kube::{Resource, ResourceExt};

use super::build::{self, Target};
use super::status::{self, PodFailure, Progress};
use crate::apply::Owner;
use crate::error::{Error, Result};

fn release_of(deployment: Option<&Deployment>) -> Option<String> {
    deployment?
        .spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(PLUGIN_RELEASE_ANNOTATION)
        .cloned()
}

/// Where the children go: the plugin's namespace, owned by the plugin `uid`.
#[derive(Clone, Copy)]
pub struct Children<'a> {
    /// The client that writes them.
    pub client: &'a kube::Client,
    /// The plugin's namespace.
    pub namespace: &'a str,
    /// The plugin's UID, which owns every child.
    pub uid: &'a str,
}

impl Children<'_> {
    fn owner(&self) -> Owner<'_> {
        Owner {
            uid: self.uid,
            noun: "plugin",
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), self.namespace)
    }

    /// What does not depend on the release: the ServiceAccount, the Role and
    /// RoleBinding (deleted without permissions), the NetworkPolicy and the
    /// Service (deleted for a job template).
    pub async fn apply_fixed(&self, target: Target<'_>) -> Result<()> {
        let name = target.plugin.name_any();
        let service_accounts: Api<ServiceAccount> = self.api();
        self.owner()
            .ensure(&service_accounts, None, &build::service_account(target))
            .await?;
        let roles: Api<Role> = self.api();
        let bindings: Api<RoleBinding> = self.api();
        let policy = build::policy_name(&name);
        match (build::role(target), build::role_binding(target)) {
            (Some(role), Some(binding)) => {
                let granted = match self.owner().ensure(&roles, None, &role).await {
                    Ok(_) => self
                        .owner()
                        .ensure(&bindings, None, &binding)
                        .await
                        .map(|_| ()),
                    Err(e) => Err(e),
                };
                if let Err(Error::Kube(kube::Error::Api(status))) = &granted
                    && status.code == 403
                {
                    // RBAC lets the operator grant only what it holds itself, unless it may escalate.
                    let message = format!(
                        "the operator may not grant spec.permissions ({}): narrow them to what the operator holds, or let it escalate Roles (chart value rbac.pluginRoleEscalation)",
                        status.message
                    );
                    return Err(Error::Blocked {
                        reason: "PermissionsNotGranted",
                        message,
                    });
                }
                granted?;
            }
            _ => {
                self.owner().remove(&bindings, &policy).await?;
                self.owner().remove(&roles, &policy).await?;
            }
        }
        let policies: Api<NetworkPolicy> = self.api();
        self.owner()
            .ensure(&policies, None, &build::network_policy(target))
            .await?;
        let services: Api<Service> = self.api();
        match build::service(target) {
            Some(service) => {
                self.owner().ensure(&services, None, &service).await?;
            }
            None => self.owner().remove(&services, &name).await?,
        }
        Ok(())
    }

    /// Why a pod of `deployment` cannot start (an image it cannot pull, a
    /// Secret it names that does not exist), if one is stuck so.
    async fn start_problem(&self, deployment: &Deployment) -> Result<Option<PodFailure>> {
        let pods: Api<Pod> = self.api();
        let selector = deployment
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.as_ref())
            .map(|labels| {
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        if selector.is_empty() {
            return Ok(None);
        }
        let listed = pods.list(&ListParams::default().labels(&selector)).await?;
        Ok(listed
            .items
            .iter()
            .find_map(crate::workload::start_problem)
            .map(|(reason, message)| PodFailure { reason, message }))
    }

    /// The children that carry `release`: the ConfigMap and, for a service,
    /// the Deployment (deleted for a job template). Returns the Deployment's
    /// rollout (`None` for a job template) and whether the Deployment was
    /// just given another release.
    pub async fn apply_release(
        &self,
        target: Target<'_>,
        release: &PluginRelease,
    ) -> Result<(Option<Progress>, bool)> {
        let plugin = target.plugin;
        let name = plugin.name_any();
        let deployments: Api<Deployment> = self.api();
        let config_maps: Api<ConfigMap> = self.api();
        self.owner()
            .ensure(&config_maps, None, &build::config_map(target, release))
            .await?;
        Ok(match plugin.spec.mode {
            PluginMode::Service => {
                let desired = build::deployment(target, release);
                let observed = deployments.get_opt(&name).await?;
                let changed = release_of(observed.as_ref()) != release_of(Some(&desired));
                let now = self
                    .owner()
                    .ensure(&deployments, observed.as_ref(), &desired)
                    .await?;
                let mut progress = status::progress(&now);
                if !progress.complete && progress.failure.is_none() {
                    progress.failure = self.start_problem(&now).await?;
                }
                (Some(progress), changed)
            }
            PluginMode::Job => {
                self.owner().remove(&deployments, &name).await?;
                (None, false)
            }
        })
    }
}
