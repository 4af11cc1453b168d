//! Aleph's reconcilers. Each kind has a module with the same stages:
//! `validate` (spec -> typed errors, no client), `build` (spec -> desired child
//! objects, pure), `apply` (server-side apply) and `status` (conditions from
//! what was observed). External systems sit behind a trait (see `sagemaker`).

pub mod apply;
pub mod client;
pub mod conditions;
pub mod context;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod pipeline;
pub mod runner;
pub mod sagemaker;
pub mod tenant;

pub use context::Context;
pub use error::{Error, Result};

use std::sync::Arc;

use runner::{Readiness, RunOptions};

/// Runs every controller until `shutdown()` resolves. `namespaces` limits the
/// namespaced kinds to those namespaces (all when empty).
pub async fn run_all<S, F>(
    ctx: Arc<Context>,
    options: &RunOptions,
    namespaces: &[String],
    readiness: &Readiness,
    shutdown: S,
) where
    S: Fn() -> F,
    F: std::future::Future<Output = ()> + Send + Sync + 'static,
{
    if !namespaces.is_empty() {
        // Only the cluster-scoped Tenant controller runs so far; the namespaced
        // kinds' controllers will honour the list. Say so rather than ignore it.
        tracing::warn!(
            ?namespaces,
            "--namespaces has no effect yet: only the Tenant controller (cluster-scoped) runs"
        );
    }
    let tenant = runner::run(
        tenant::controller(&ctx.client),
        ctx.clone(),
        options,
        readiness,
        shutdown(),
    );
    tenant.await;
}
