//! The rollback step: which release the pods run, and putting the last good
//! release back when the declared one fails.
//!
//! A release (see [`PluginRelease`]) is everything that shapes the pods. The
//! declared release rolls out; once every pod of it is Ready it becomes the
//! last good release (kept in status, with its version and image). When the
//! declared release is not Ready within `progressDeadlineSeconds` (counted
//! from when it was applied, or earlier if the Deployment reports
//! ProgressDeadlineExceeded), the pods go back to the last good release,
//! `Degraded=True` says why, and the failed generation is remembered: that
//! spec is not rolled out again until it changes.

use aleph_crds::plugin::{PluginRelease, PluginSpec, PluginStatus};

use super::apply::Children;
use super::build::{self, Target};
use super::status::{self, Assessment, Note, Observation, Outcome};
use crate::error::{Error, Result};

/// The release the pods should run, and whether it is the last good one
/// because the declared one failed at this generation.
pub fn chosen_release(
    spec: &PluginSpec,
    status: &PluginStatus,
    generation: Option<i64>,
) -> (PluginRelease, bool) {
    match (status.failed_generation, &status.last_good_release) {
        (Some(failed), Some(good)) if generation.is_none_or(|g| g <= failed) => {
            (good.clone(), true)
        }
        _ => (PluginRelease::of(spec), false),
    }
}

/// Records that the declared release of `generation` failed.
pub fn mark_failed(status: &mut PluginStatus, generation: Option<i64>, version: &str) {
    status.failed_version = Some(version.to_string());
    status.failed_generation = generation;
}

/// Rolls out the chosen release and assesses it. When the declared release
/// missed its deadline, the last good one is put back, at most once per pass.
/// Returns the assessment and the events of the rollbacks.
pub async fn roll_out(
    children: Children<'_>,
    target: Target<'_>,
    previous: &PluginStatus,
) -> Result<(Assessment, Vec<Note>)> {
    let plugin = target.plugin;
    let generation = plugin.metadata.generation;
    // The release the pods run: the declared one, or the last good one after
    // the declared one failed. A rollback happens at most once per pass.
    let mut base = previous.clone();
    let mut notes = Vec::new();
    let (mut release, mut rolled_back) = chosen_release(&plugin.spec, &base, generation);
    for _ in 0..2 {
        let (progress, release_changed) = children.apply_release(target, &release).await?;
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
        match status::assess(&base, &observation) {
            Outcome::Settled(a) => return Ok((*a, notes)),
            Outcome::RollBack(note) => {
                tracing::info!(version = %release.version, "rolling back: {}", note.text);
                mark_failed(&mut base, generation, &release.version);
                notes.push(note);
                (release, rolled_back) = chosen_release(&plugin.spec, &base, generation);
            }
        }
    }
    Err(Error::NotReady(
        "the rollback did not settle in one pass".into(),
    ))
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;
