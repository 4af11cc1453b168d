//! Aleph's reconcilers. Each kind has a module with the same stages:
//! `validate` (spec -> typed errors, no client), `build` (spec -> desired child
//! objects, pure), `apply` (server-side apply) and `status` (conditions from
//! what was observed). External systems sit behind a trait (see `sagemaker`).

pub mod aimodel;
pub mod apply;
pub mod autoscaler;
pub mod client;
pub mod conditions;
pub mod context;
pub mod digest;
pub mod error;
pub mod events;
pub mod index;
pub mod leader;
pub mod lean;
pub mod metrics;
pub mod names;
pub mod pipeline;
pub mod plugin;
pub mod runner;
pub mod sagemaker;
pub mod tenant;
pub mod workload;

pub use context::Context;
pub use error::{Error, Result};

use std::sync::Arc;

use futures::future::BoxFuture;
use runner::{Readiness, RunOptions, Watch};

/// Runs every controller until `shutdown()` resolves. `namespaces` limits the
/// namespaced kinds to those namespaces (all when empty): one watch per
/// namespace, as a multi-namespace cache does.
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
    let selector = options.selector.as_deref();
    let scopes: Vec<Watch<'_>> = if namespaces.is_empty() {
        vec![Watch {
            namespace: None,
            selector,
        }]
    } else {
        namespaces
            .iter()
            .map(|n| Watch {
                namespace: Some(n.as_str()),
                selector,
            })
            .collect()
    };
    let client = &ctx.client;
    // Each controller is its own future type: boxed to run side by side.
    macro_rules! run {
        ($controller:expr) => {
            Box::pin(runner::run(
                $controller,
                ctx.clone(),
                options,
                readiness,
                shutdown(),
            )) as BoxFuture<'_, ()>
        };
    }
    let cluster = Watch {
        namespace: None,
        selector,
    };
    let mut all = vec![
        run!(tenant::controller(&ctx, &cluster)),
        run!(pipeline::steptemplate::cluster_controller(client, &cluster)),
    ];
    for ns in &scopes {
        all.extend([
            run!(aimodel::controller(&ctx, ns)),
            run!(plugin::controller(client, ns)),
            run!(pipeline::controller::pipeline_controller(client, ns)),
            run!(pipeline::controller::run_controller(client, ns)),
            run!(pipeline::steptemplate::controller(client, ns)),
        ]);
    }
    futures::future::join_all(all).await;
}
