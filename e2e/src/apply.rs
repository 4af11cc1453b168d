//! Server-side apply of YAML manifests of any kind, found by discovery.

use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope, pinned_kind};
use kube::{Client, ResourceExt};

use crate::env::FIELD_MANAGER;

/// How long to retry discovery of a kind the server does not serve yet (a CRD
/// applied a moment ago).
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(15);

/// Why applying a manifest failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("the manifest is not valid YAML: {0}")]
    Yaml(String),
    #[error("document {index} of the manifest: {message}")]
    Document { index: usize, message: String },
    #[error("the server does not serve {gvk:?}: {source}")]
    Discovery {
        gvk: GroupVersionKind,
        source: kube::Error,
    },
    #[error("applying {kind} {name}: {source}")]
    Api {
        kind: String,
        name: String,
        source: kube::Error,
    },
}

impl ApplyError {
    /// The API server's status when it refused the object (schema, CEL rule,
    /// admission policy, RBAC), for tests that check the message.
    pub fn api_status(&self) -> Option<&kube::core::Status> {
        match self {
            ApplyError::Api {
                source: kube::Error::Api(status),
                ..
            } => Some(status.as_ref()),
            _ => None,
        }
    }
}

/// An object as the server stored it after the apply.
#[derive(Debug, Clone)]
pub struct Applied {
    pub object: DynamicObject,
    pub resource: ApiResource,
    pub namespaced: bool,
}

/// Applies every document of `yaml` with server-side apply (field manager
/// [`FIELD_MANAGER`], forcing conflicts), in order. Namespaced objects without a
/// namespace go to `default_namespace`.
pub async fn apply_yaml(
    client: &Client,
    yaml: &str,
    default_namespace: Option<&str>,
) -> Result<Vec<Applied>, ApplyError> {
    apply_documents(client, yaml, default_namespace, false).await
}

/// [`apply_yaml`], or with `dry_run` its `dryRun=All` form: the API server
/// runs every check (schema, CEL rules, admission) and answers as if it stored
/// the objects, but stores nothing.
pub(crate) async fn apply_documents(
    client: &Client,
    yaml: &str,
    default_namespace: Option<&str>,
    dry_run: bool,
) -> Result<Vec<Applied>, ApplyError> {
    let documents: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(yaml).map_err(|e| ApplyError::Yaml(e.to_string()))?;
    let mut applied = Vec::new();
    for (index, document) in documents.into_iter().enumerate() {
        if document.is_null() {
            continue;
        }
        let object: DynamicObject =
            serde_json::from_value(document).map_err(|e| ApplyError::Document {
                index,
                message: e.to_string(),
            })?;
        applied.push(apply_one(client, index, object, default_namespace, dry_run).await?);
    }
    Ok(applied)
}

async fn apply_one(
    client: &Client,
    index: usize,
    mut object: DynamicObject,
    default_namespace: Option<&str>,
    dry_run: bool,
) -> Result<Applied, ApplyError> {
    let types = object.types.clone().ok_or_else(|| ApplyError::Document {
        index,
        message: "apiVersion and kind are required".to_owned(),
    })?;
    let gvk = GroupVersionKind::try_from(&types).map_err(|e| ApplyError::Document {
        index,
        message: e.to_string(),
    })?;
    let name = object
        .metadata
        .name
        .clone()
        .ok_or_else(|| ApplyError::Document {
            index,
            message: "metadata.name is required".to_owned(),
        })?;
    let (resource, capabilities) = discover(client, &gvk).await?;
    let namespaced = capabilities.scope == Scope::Namespaced;
    let api: Api<DynamicObject> = if namespaced {
        let namespace = object
            .metadata
            .namespace
            .clone()
            .or_else(|| default_namespace.map(str::to_owned))
            .ok_or_else(|| ApplyError::Document {
                index,
                message: format!("{} {name} is namespaced but has no namespace", gvk.kind),
            })?;
        object.metadata.namespace = Some(namespace.clone());
        Api::namespaced_with(client.clone(), &namespace, &resource)
    } else {
        object.metadata.namespace = None;
        Api::all_with(client.clone(), &resource)
    };
    let mut params = PatchParams::apply(FIELD_MANAGER).force();
    if dry_run {
        params = params.dry_run();
    }
    let stored = api
        .patch(&name, &params, &Patch::Apply(&object))
        .await
        .map_err(|source| ApplyError::Api {
            kind: gvk.kind.clone(),
            name: object.name_any(),
            source,
        })?;
    Ok(Applied {
        object: stored,
        resource,
        namespaced,
    })
}

/// Finds the resource serving `gvk`, waiting a little for kinds that a CRD
/// established a moment ago.
async fn discover(
    client: &Client,
    gvk: &GroupVersionKind,
) -> Result<(ApiResource, ApiCapabilities), ApplyError> {
    let deadline = tokio::time::Instant::now() + DISCOVERY_TIMEOUT;
    loop {
        match pinned_kind(client, gvk).await {
            Ok(found) => return Ok(found),
            Err(source) if tokio::time::Instant::now() >= deadline => {
                return Err(ApplyError::Discovery {
                    gvk: gvk.clone(),
                    source,
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// A Tenant manifest: `spec` is the body of its spec, YAML lines indented by
/// two spaces.
pub fn tenant_manifest(name: &str, spec: &str) -> String {
    format!(
        "\napiVersion: aleph.dev/v1alpha1\nkind: Tenant\nmetadata: {{ name: {name} }}\nspec:\n{spec}"
    )
}
