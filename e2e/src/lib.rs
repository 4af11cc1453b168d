//! Harness for Aleph's end-to-end tests.
//!
//! The tests run against the cluster `KUBECONFIG` points at: the local control
//! plane of `e2e/cluster` (`e2e/cluster/with-cluster.sh cargo test -p aleph-e2e`)
//! or any other cluster, kind for example. Each test gets a [`TestEnv`]: a client
//! and a fresh namespace labelled `aleph.dev/e2e: "true"`, deleted afterwards
//! together with the cluster-scoped objects the test applied.
//!
//! ```no_run
//! use std::time::Duration;
//! use aleph_e2e::{TestEnv, wait_for};
//! use k8s_openapi::api::apps::v1::Deployment;
//!
//! # async fn example() {
//! let env = TestEnv::new().await;
//! env.apply_yaml(
//!     r#"
//! apiVersion: apps/v1
//! kind: Deployment
//! metadata: {name: web}
//! spec:
//!   replicas: 3
//!   selector: {matchLabels: {app: web}}
//!   template:
//!     metadata: {labels: {app: web}}
//!     spec:
//!       containers: [{name: web, image: registry.k8s.io/pause:3.10}]
//! "#,
//! )
//! .await;
//! wait_for(&env.api::<Deployment>(), "web", Duration::from_secs(60), |d| {
//!     d.status.as_ref().and_then(|s| s.ready_replicas) == Some(3)
//! })
//! .await;
//! env.cleanup().await;
//! # }
//! ```

mod access;
mod apply;
pub mod aws;
mod conditions;
pub mod dynamic;
mod env;
pub mod gateway;
pub mod helm;
pub mod host;
mod kubectl;
pub mod oidc;
pub mod openai;
pub mod operator;
pub mod pipelines;
pub mod real_node;
pub mod s3;
pub mod serving;
mod wait;

pub use access::{can_i, user_can};
pub use apply::{Applied, ApplyError, apply_yaml, tenant_manifest};
pub use conditions::{Condition, find_condition, has_condition};
pub use env::{E2E_LABEL, FIELD_MANAGER, TestEnv, install_crypto_provider, repo_root, unique_name};
pub use kubectl::{KubectlOutput, kubectl, kubectl_with_stdin, table_row};
pub use operator::{OperatorOptions, OperatorProcess, PRIVATE_OPERATOR_LABEL};
pub use wait::{
    events_about, failure_report, live_pods, node_of, poll, refusal, wait_condition, wait_for,
    wait_for_deletion, wait_reconcile_failed, wait_tenant_ready,
};

pub mod sagemaker_fake;
