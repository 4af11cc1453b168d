//! A Pipeline's memoized artifacts go with it. They outlive the runs that
//! made them (later runs reuse them), so a Pipeline whose artifact store's
//! retention is Delete and which memoizes a step carries the finalizer
//! `aleph.dev/cleanup`. When it is deleted, a Job deletes the objects of each
//! memoization record it made (`PREFIX/NAMESPACE/cache/KEY/`), then the
//! finalizer goes and garbage collection removes the records. A failed
//! deletion is retried, and says why in the Pipeline's `Ready` and an Event.

use std::time::Duration;

use aleph_crds::keys::PIPELINE_LABEL;
use aleph_crds::pipeline::{Pipeline, PipelineSpec};
use aleph_crds::pipeline_artifacts::{ArtifactRetention, ArtifactStore};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use crate::Context;
use crate::apply::{patch_status_if_changed, set_finalizer};
use crate::conditions::{NewCondition, set_condition};
use crate::error::Result;
use crate::names::bounded_name;
use crate::pipeline::run::collect::{Deletion, POLL, RETRY, delete_job, drive};
use crate::pipeline::{artifacts, build};

/// The store whose memoized artifacts are deleted with `spec`'s Pipeline:
/// one with retention Delete, when a step (or finally step) is memoized.
pub fn deleted_with_pipeline(spec: &PipelineSpec) -> Option<&ArtifactStore> {
    let store = spec
        .artifact_store
        .as_ref()
        .filter(|s| s.retention == ArtifactRetention::Delete)?;
    spec.steps
        .iter()
        .chain(spec.finally.iter())
        .any(|s| s.memoize)
        .then_some(store)
}

/// The key prefixes of the memoized artifacts that `records` (memoization
/// records) name, sorted, each once.
pub fn memo_prefixes(store: &ArtifactStore, namespace: &str, records: &[ConfigMap]) -> Vec<String> {
    let mut prefixes: Vec<String> = records
        .iter()
        .filter_map(|r| r.data.as_ref()?.get("key"))
        .map(|key| format!("{}{key}/", artifacts::cache_prefix(store, namespace)))
        .collect();
    prefixes.sort();
    prefixes.dedup();
    prefixes
}

/// Adds the finalizer to a Pipeline that memoizes artifacts deleted with it.
pub async fn ensure_finalizer(api: &Api<Pipeline>, pipeline: &Pipeline) -> Result<()> {
    if deleted_with_pipeline(&pipeline.spec).is_some() {
        set_finalizer(api, pipeline, true).await?;
    }
    Ok(())
}

/// A deleted Pipeline: deletes its memoized artifacts, then lets it go.
pub async fn finish_deletion(
    api: &Api<Pipeline>,
    pipeline: &Pipeline,
    namespace: &str,
    ctx: &Context,
) -> Result<Action> {
    if !pipeline
        .finalizers()
        .iter()
        .any(|f| f == aleph_crds::keys::FINALIZER)
    {
        return Ok(Action::await_change());
    }
    if let Some(store) = pipeline
        .spec
        .artifact_store
        .as_ref()
        .filter(|s| s.retention == ArtifactRetention::Delete)
        && let Some(after) = delete_memoized(api, pipeline, store, namespace, ctx).await?
    {
        return Ok(Action::requeue(after));
    }
    set_finalizer(api, pipeline, false).await?;
    Ok(Action::await_change())
}

/// Deletes the objects of the Pipeline's memoization records: None once
/// they are (or there are none), otherwise when to look again.
async fn delete_memoized(
    api: &Api<Pipeline>,
    pipeline: &Pipeline,
    store: &ArtifactStore,
    namespace: &str,
    ctx: &Context,
) -> Result<Option<Duration>> {
    let name = pipeline.name_any();
    let records: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = format!("{PIPELINE_LABEL}={}", build::label_value(&name));
    let records = records
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    let prefixes = memo_prefixes(store, namespace, &records);
    if prefixes.is_empty() {
        return Ok(None);
    }
    let job = delete_job(
        &bounded_name(&format!("{name}-delete-memoized"), 63),
        &name,
        namespace,
        &pipeline.spec,
        &store.bucket,
        &prefixes,
        &ctx.settings.model_cache_image,
    );
    let where_ = format!(
        "s3://{}/{}",
        store.bucket,
        artifacts::cache_prefix(store, namespace)
    );
    let steps = prefixes.len();
    let (why, after) = match drive(&ctx.client, namespace, &job).await? {
        Deletion::Running => return Ok(Some(POLL)),
        Deletion::Done => return Ok(None),
        Deletion::NamespaceDeleted => {
            tracing::warn!(
                %namespace,
                pipeline = %name,
                "the namespace is being deleted, so the pipeline's memoized artifacts under {where_} are left there"
            );
            return Ok(None);
        }
        Deletion::Started => {
            ctx.event(
                pipeline,
                EventType::Normal,
                "DeletingArtifacts",
                format!("deleting the memoized artifacts of {steps} step runs under {where_}"),
            )
            .await;
            return Ok(Some(POLL));
        }
        Deletion::Refused(why) => (
            format!("the Job that deletes them was refused: {why}"),
            RETRY,
        ),
        Deletion::Failed(why) => (format!("the Job that deletes them failed: {why}"), RETRY),
    };
    let message = format!(
        "the pipeline is deleted, and its memoized artifacts under {where_} are not yet: {why}; retrying in {}s (remove the finalizer aleph.dev/cleanup to leave them)",
        after.as_secs()
    );
    let mut status = pipeline.status.clone().unwrap_or_default();
    set_condition(
        &mut status.conditions,
        NewCondition::no(
            aleph_crds::conditions::READY,
            "ArtifactDeletionFailed",
            message.clone(),
        ),
        pipeline.metadata.generation,
    );
    patch_status_if_changed(api, pipeline, pipeline.status.as_ref(), &status).await?;
    ctx.event(
        pipeline,
        EventType::Warning,
        "ArtifactDeletionFailed",
        message,
    )
    .await;
    Ok(Some(after))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn spec(yaml: &str) -> PipelineSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn only_a_deleting_store_with_a_memoized_step_goes_with_the_pipeline() {
        let memoized = "artifactStore: { bucket: b, prefix: p }\nsteps:\n- { name: a, memoize: true, container: { image: x } }\n";
        assert!(deleted_with_pipeline(&spec(memoized)).is_some());
        let in_finally = "artifactStore: { bucket: b }\nsteps: [{ name: a, container: { image: x } }]\nfinally:\n- { name: f, memoize: true, container: { image: x } }\n";
        assert!(deleted_with_pipeline(&spec(in_finally)).is_some());
        let kept = memoized.replace("prefix: p", "retention: Keep");
        assert!(deleted_with_pipeline(&spec(&kept)).is_none());
        let not_memoized = memoized.replace("memoize: true", "memoize: false");
        assert!(deleted_with_pipeline(&spec(&not_memoized)).is_none());
        let no_store = "steps:\n- { name: a, memoize: true, container: { image: x } }\n";
        assert!(deleted_with_pipeline(&spec(no_store)).is_none());
    }

    #[test]
    fn each_record_names_its_cache_prefix_once() {
        let store: ArtifactStore = serde_saphyr::from_str("{ bucket: b, prefix: runs }").unwrap();
        let record = |key: Option<&str>| ConfigMap {
            data: key.map(|k| BTreeMap::from([("key".to_string(), k.to_string())])),
            ..ConfigMap::default()
        };
        let records = [
            record(Some("k2")),
            record(None),
            record(Some("k1")),
            record(Some("k2")),
        ];
        assert_eq!(
            memo_prefixes(&store, "team", &records),
            ["runs/team/cache/k1/", "runs/team/cache/k2/"]
        );
    }
}
