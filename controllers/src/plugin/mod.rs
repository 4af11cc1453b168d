//! The Plugin reconciler: a sandboxed service (Deployment and Service) or job
//! template, its configuration, ServiceAccount, permissions and NetworkPolicy,
//! and upgrades that roll back by themselves when the new version is not Ready
//! in time.
//!
//! Stages: [`validate`] (what the schema cannot check), [`build`] (the desired
//! children, pure), [`apply`] (server-side apply of each child that is not as
//! desired, and deletion of those no longer wanted), [`status`] (the status
//! and conditions, pure) and [`rollout`] (which release the pods run, and the
//! rollback). Every child is owned by the Plugin, so deleting the Plugin
//! deletes them all.

pub mod apply;
pub mod build;
pub mod rollout;
pub mod status;
pub mod validate;

#[cfg(test)]
mod test_support;

use std::sync::Arc;

use aleph_crds::keys::{PLUGIN_LABEL, TENANT_LABEL};
use aleph_crds::plugin::Plugin;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::ResourceExt;
use kube::api::Api;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;

use crate::apply::patch_status_if_changed;
use crate::context::Context;
use crate::error::{Error, Result, uid_of};
use crate::runner::{Reconcile, Watch};
use apply::Children;
use build::Target;

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
        crate::runner::status_conditions(self.status.as_ref(), |s| &s.conditions)
    }

    async fn reconcile(plugin: Arc<Self>, ctx: Arc<Context>) -> Result<Action> {
        reconcile_plugin(&plugin, &ctx).await
    }
}

fn plugin_api(ctx: &Context, plugin: &Plugin) -> Api<Plugin> {
    Api::namespaced(ctx.client.clone(), &plugin.namespace().unwrap_or_default())
}

async fn reconcile_plugin(plugin: &Plugin, ctx: &Context) -> Result<Action> {
    let client = &ctx.client;
    let namespace = plugin
        .namespace()
        .ok_or_else(|| Error::InvalidSpec("a Plugin must have a namespace".into()))?;
    let uid = uid_of(plugin)?;
    let generation = plugin.metadata.generation;
    let previous = plugin.status.clone().unwrap_or_default();
    let plugins = plugin_api(ctx, plugin);
    if plugin.metadata.deletion_timestamp.is_some() {
        // Its children are owned by it and go with it.
        return Ok(Action::await_change());
    }

    if let Err(message) = validate::validate(&plugin.spec) {
        let status = status::invalid_spec(&previous, generation, &message);
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
    let children = Children {
        client,
        namespace: &namespace,
        uid: &uid,
    };

    children.apply_fixed(target).await?;
    let (assessment, mut notes) = rollout::roll_out(children, target, &previous).await?;
    notes.extend(assessment.notes);
    let status = assessment.status;
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
