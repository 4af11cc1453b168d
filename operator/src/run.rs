//! `aleph-operator run`: logging, the client, leader election, the HTTP
//! endpoints and every controller, until SIGTERM or Ctrl-C.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::runtime::wait::{await_condition, conditions};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use aleph_controllers::context::{Context, Settings};
use aleph_controllers::leader::{self, LeaderState, LeaseConfig};
use aleph_controllers::metrics::Metrics;
use aleph_controllers::runner::{Readiness, RunOptions};

use crate::cli::RunArgs;

/// Errors that stop the operator.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("Kubernetes configuration: {0}")]
    Config(#[from] kube::config::InferConfigError),
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error(transparent)]
    Listen(#[from] crate::http::ListenError),
    #[error("HTTP endpoints: {0}")]
    Http(#[from] std::io::Error),
}

pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let telemetry = crate::telemetry::init(&args.log_level, args.log_format);
    let result = run_controllers(args).await;
    if let Err(error) = &result {
        tracing::error!(%error, "aleph-operator stopped");
    }
    // Flushing the trace export blocks on its HTTP client.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    result
}

async fn run_controllers(args: RunArgs) -> Result<(), RunError> {
    let listener = crate::http::listen(args.metrics_addr).await?;
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);

    let mut config = kube::Config::infer().await?;
    if let Some(user) = &args.impersonate {
        config.auth_info.impersonate = Some(user.clone());
    }
    let default_namespace = config.default_namespace.clone();
    let client = aleph_controllers::client::build_client(
        config,
        metrics.clone(),
        args.kube_qps,
        args.kube_burst,
    )?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shutdown = move || {
        let mut rx = shutdown_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    tokio::spawn(async move {
        aleph_util::signal::wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = shutdown_tx.send(true);
    });

    let readiness = Readiness::default();
    let http = tokio::spawn(crate::http::serve(
        listener,
        Arc::new(registry),
        readiness.clone(),
        shutdown(),
    ));

    // Where the Lease and the step template index live.
    let own_namespace = args
        .lease_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or(default_namespace);
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let (leader, election) = if args.leader_elect {
        let state = LeaderState::new(false);
        let lease = LeaseConfig {
            name: args.lease_name.clone(),
            namespace: own_namespace.clone(),
            identity: identity(),
            lease_duration: Duration::from_secs(args.lease_duration_seconds.max(2)),
            retry_period: Duration::from_secs(args.lease_retry_seconds.max(1)),
        };
        // The lease is released only once the controllers have stopped, so no
        // reconcile still in flight writes after another replica took over.
        let task = tokio::spawn(leader::run(
            client.clone(),
            lease,
            state.clone(),
            async move {
                let _ = release_rx.await;
            },
        ));
        (state, Some(task))
    } else {
        (LeaderState::new(true), None)
    };
    let gauge = metrics.leader.clone();
    let mut leading = leader.subscribe();
    gauge.set(i64::from(leader.is_leader()));
    tokio::spawn(async move {
        while leading.changed().await.is_ok() {
            gauge.set(i64::from(*leading.borrow_and_update()));
        }
    });

    tokio::select! {
        result = wait_for_crds(&client) => result?,
        () = shutdown() => {
            stop_election(release_tx, election).await;
            return Ok(());
        }
    }
    let settings = Settings {
        aws_region: args.aws_region.clone(),
        sagemaker_endpoint_url: None,
        sagemaker_max_poll: args.sagemaker_max_poll_seconds.map(Duration::from_secs),
        model_cache_image: args.model_cache_image.clone(),
        gateway_url: args.gateway_url.clone().filter(|u| !u.is_empty()),
    };
    let ctx = Arc::new(Context::new(client.clone(), metrics, leader, settings));
    aleph_controllers::runner::set_streaming_lists(
        args.initial_lists == crate::cli::InitialLists::Streaming,
    );
    let options = RunOptions {
        concurrency: args.concurrency.max(1),
        debounce: std::time::Duration::from_millis(args.debounce_ms),
        selector: args.watch_label_selector.clone(),
    };
    let namespaces: Vec<String> = args
        .namespaces
        .iter()
        .filter(|n| !n.is_empty())
        .cloned()
        .collect();
    let autoscaler = tokio::spawn(aleph_controllers::autoscaler::run(
        ctx.clone(),
        aleph_controllers::autoscaler::Settings {
            interval: Duration::from_millis(args.autoscale_interval_ms.max(100)),
            gateway_selector: args.gateway_pod_selector.clone(),
            usage_interval: Duration::from_secs(args.usage_interval_seconds.max(1)),
        },
        shutdown(),
    ));
    let template_index = args.step_template_admission.then(|| {
        tokio::spawn(aleph_controllers::pipeline::template_index::run(
            ctx.clone(),
            own_namespace.clone(),
            namespaces.clone(),
            shutdown(),
        ))
    });
    aleph_controllers::run_all(ctx, &options, &namespaces, &readiness, shutdown).await;
    if let Some(task) = template_index {
        let _ = task.await;
    }
    let _ = autoscaler.await;
    tracing::info!("controllers stopped");
    stop_election(release_tx, election).await;
    if let Ok(result) = http.await {
        result?;
    }
    Ok(())
}

/// Ends leader election, releasing the lease if held (within 5 seconds).
async fn stop_election(
    release: tokio::sync::oneshot::Sender<()>,
    election: Option<tokio::task::JoinHandle<()>>,
) {
    let _ = release.send(());
    if let Some(task) = election
        && tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_err()
    {
        tracing::warn!("leader election did not stop within 5 s");
    }
}

/// Waits until every Aleph CRD is established, saying which are missing.
async fn wait_for_crds(client: &kube::Client) -> Result<(), kube::Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, crd) in aleph_crds::all_crds() {
        let name = crd.metadata.name.unwrap_or_default();
        loop {
            let wait = await_condition(api.clone(), &name, conditions::is_crd_established());
            match tokio::time::timeout(Duration::from_secs(30), wait).await {
                Ok(Ok(_)) => break,
                Ok(Err(error)) => tracing::warn!(%error, crd = %name, "waiting for CRD"),
                Err(_) => {
                    tracing::warn!(crd = %name, "CRD not established yet: install it with `kubectl apply -f crds/`")
                }
            }
        }
    }
    Ok(())
}

fn identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    })
}
