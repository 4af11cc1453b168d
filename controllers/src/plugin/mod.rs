//! The Plugin reconciler: a sandboxed service (Deployment and Service) or job
//! template, its configuration, ServiceAccount, permissions and NetworkPolicy,
//! and upgrades that roll back by themselves when the new version is not Ready
//! in time.
//!
//! Stages: [`validate`] (what the schema cannot check), [`build`] (the desired
//! children, pure), apply (server-side apply of each child, here), and
//! [`rollout`] (which release the pods run and the status, pure). Every child
//! is owned by the Plugin, so deleting the Plugin deletes them all.

pub mod build;
pub mod rollout;
pub mod validate;

use aleph_crds::keys::{PLUGIN_LABEL, PLUGIN_RELEASE_ANNOTATION, TENANT_LABEL};
use std::fmt::Debug;
use std::sync::Arc;

use aleph_crds::plugin::{Plugin, PluginMode, PluginStatus};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::Api;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::apply::{apply, delete_ignoring_missing, is_subset, patch_status_if_changed};
use crate::conditions::{NewCondition, set_condition};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::runner::{Reconcile, Watch};
use build::Target;
use rollout::{Observation, Outcome};

/// The Plugin controller for what `watch` names, watching what it makes.
pub fn controller(
    client: &kube::Client,
    watch: &Watch<'_>,
) -> Controller<DeserializeGuard<Plugin>> {
    let owned = || crate::runner::watch_config().labels(PLUGIN_LABEL);
    Controller::new(watch.api(client), watch.primary())
        .owns(watch.api::<Deployment>(client), owned())
        .owns(watch.api::<Service>(client), owned())
        .owns(watch.api::<ConfigMap>(client), owned())
        .owns(watch.api::<ServiceAccount>(client), owned())
        .owns(watch.api::<Role>(client), owned())
        .owns(watch.api::<RoleBinding>(client), owned())
        .owns(watch.api::<NetworkPolicy>(client), owned())
}

impl Reconcile for Plugin {
    const CONTROLLER: &'static str = "plugin";

    fn conditions(&self) -> &[aleph_crds::Condition] {
        self.status
            .as_ref()
            .map_or(&[], |s| s.conditions.as_slice())
    }

    async fn reconcile(plugin: Arc<Self>, ctx: Arc<Context>) -> Result<Action> {
        reconcile_plugin(&plugin, &ctx).await
    }
}

fn plugin_api(ctx: &Context, plugin: &Plugin) -> Api<Plugin> {
    Api::namespaced(ctx.client.clone(), &plugin.namespace().unwrap_or_default())
}

fn controlled_by<K: Resource>(obj: &K, uid: &str) -> bool {
    obj.meta()
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

/// Applies `desired` unless it is already as desired, and returns the child as
/// it is now. A child of that name that belongs to something else is left
/// alone and reported.
async fn ensure<K>(api: &Api<K>, desired: &K, uid: &str) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let name = desired.name_any();
    let observed = api.get_opt(&name).await?;
    if let Some(observed) = observed {
        if !controlled_by(&observed, uid) {
            return Err(Error::NameConflict(format!(
                "a {} named {name} already exists and does not belong to this plugin: delete it or rename the plugin",
                K::kind(&())
            )));
        }
        if is_subset(desired, &observed) {
            return Ok(observed);
        }
    }
    Ok(apply(api, desired).await?)
}

/// Deletes the child `name` if it is this plugin's.
async fn remove<K>(api: &Api<K>, name: &str, uid: &str) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let Some(observed) = api.get_opt(name).await? else {
        return Ok(());
    };
    if !controlled_by(&observed, uid) {
        return Ok(());
    }
    delete_ignoring_missing(api, name).await
}

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

async fn reconcile_plugin(plugin: &Plugin, ctx: &Context) -> Result<Action> {
    let client = &ctx.client;
    let namespace = plugin
        .namespace()
        .ok_or_else(|| Error::InvalidSpec("a Plugin must have a namespace".into()))?;
    let uid = plugin
        .uid()
        .ok_or_else(|| Error::NotReady("the Plugin has no UID yet".into()))?;
    let name = plugin.name_any();
    let generation = plugin.metadata.generation;
    let previous = plugin.status.clone().unwrap_or_default();
    let plugins = plugin_api(ctx, plugin);
    if plugin.metadata.deletion_timestamp.is_some() {
        // Its children are owned by it and go with it.
        return Ok(Action::await_change());
    }

    if let Err(message) = validate::validate(&plugin.spec) {
        let mut status = previous.clone();
        status.observed_generation = generation;
        set_condition(
            &mut status.conditions,
            NewCondition::no("Ready", "InvalidSpec", message.clone()),
            generation,
        );
        set_condition(
            &mut status.conditions,
            NewCondition::no("Progressing", "InvalidSpec", ""),
            generation,
        );
        patch_status_if_changed(&plugins, plugin, plugin.status.as_ref(), &status).await?;
        return Err(Error::InvalidSpec(message));
    }

    let ns = Api::<Namespace>::all(client.clone())
        .get_opt(&namespace)
        .await?;
    // Going away with its namespace: nothing to make, and nothing could be made there.
    if ns
        .as_ref()
        .is_none_or(|ns| ns.metadata.deletion_timestamp.is_some())
    {
        return Ok(Action::await_change());
    }
    let tenant = ns.and_then(|ns| ns.labels().get(TENANT_LABEL).cloned());
    let target = Target {
        plugin,
        tenant: tenant.as_deref(),
    };

    // What does not depend on the release.
    let service_accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    ensure(&service_accounts, &build::service_account(target), &uid).await?;
    let roles: Api<Role> = Api::namespaced(client.clone(), &namespace);
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &namespace);
    let policy = build::policy_name(&name);
    match (build::role(target), build::role_binding(target)) {
        (Some(role), Some(binding)) => {
            let granted = match ensure(&roles, &role, &uid).await {
                Ok(_) => ensure(&bindings, &binding, &uid).await.map(|_| ()),
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
            remove(&bindings, &policy, &uid).await?;
            remove(&roles, &policy, &uid).await?;
        }
    }
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &namespace);
    ensure(&policies, &build::network_policy(target), &uid).await?;
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    match build::service(target) {
        Some(service) => {
            ensure(&services, &service, &uid).await?;
        }
        None => remove(&services, &name, &uid).await?,
    }

    // The release the pods run: the declared one, or the last good one after
    // the declared one failed. A rollback happens at most once per pass.
    let mut base = previous.clone();
    let mut notes = Vec::new();
    let (mut release, mut rolled_back) = rollout::chosen_release(&plugin.spec, &base, generation);
    let mut assessment = None;
    for _ in 0..2 {
        ensure(&config_maps, &build::config_map(target, &release), &uid).await?;
        let (progress, release_changed) = match plugin.spec.mode {
            PluginMode::Service => {
                let desired = build::deployment(target, &release);
                let observed = deployments.get_opt(&name).await?;
                let changed = release_of(observed.as_ref()) != release_of(Some(&desired));
                let now = ensure(&deployments, &desired, &uid).await?;
                (Some(rollout::progress(&now)), changed)
            }
            PluginMode::Job => {
                remove(&deployments, &name, &uid).await?;
                (None, false)
            }
        };
        let observation = Observation {
            spec: &plugin.spec,
            generation,
            release: &release,
            rolled_back,
            release_changed,
            progress,
            endpoint: build::endpoint(plugin),
            now: chrono::Utc::now(),
        };
        match rollout::assess(&base, &observation) {
            Outcome::Settled(a) => {
                assessment = Some(*a);
                break;
            }
            Outcome::RollBack(note) => {
                tracing::info!(version = %release.version, "rolling back: {}", note.text);
                rollout::mark_failed(&mut base, generation, &release.version);
                notes.push(note);
                (release, rolled_back) = rollout::chosen_release(&plugin.spec, &base, generation);
            }
        }
    }
    let Some(assessment) = assessment else {
        return Err(Error::NotReady(
            "the rollback did not settle in one pass".into(),
        ));
    };
    notes.extend(assessment.notes);
    let status: PluginStatus = assessment.status;
    patch_status_if_changed(&plugins, plugin, plugin.status.as_ref(), &status).await?;
    for note in notes {
        let type_ = if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        ctx.event(plugin, type_, note.reason, note.text).await;
    }
    Ok(Action::requeue(assessment.requeue))
}
