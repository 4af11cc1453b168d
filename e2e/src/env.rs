//! One test's view of the cluster: a client and a namespace of its own.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota, ServiceAccount};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, ObjectMeta, PostParams};
use kube::discovery::ApiResource;
use kube::{Client, Config, Resource};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::de::DeserializeOwned;

use crate::apply::{Applied, ApplyError, apply_documents, apply_yaml};
use crate::kubectl::{KubectlOutput, kubectl, kubectl_with_stdin};
use crate::wait::wait_for;

/// The label on every namespace the tests make (value `"true"`).
pub const E2E_LABEL: &str = "aleph.dev/e2e";
/// The field manager of the tests' server-side applies.
pub const FIELD_MANAGER: &str = "aleph-e2e";
/// Set to `1` to keep each test's namespace (and cluster-scoped objects) for a
/// look after the run.
const KEEP_ENV: &str = "ALEPH_E2E_KEEP_NAMESPACES";

type Tracked = Arc<Mutex<Vec<(ApiResource, String)>>>;

/// A test's client and namespace. The namespace, and the cluster-scoped objects
/// applied through [`TestEnv::apply_yaml`], are deleted by [`TestEnv::cleanup`]
/// or, if the test ends without calling it (a panic), when the value is dropped.
pub struct TestEnv {
    client: Client,
    config: Config,
    namespace: String,
    cluster_objects: Tracked,
    cleaned_up: bool,
}

impl Debug for TestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEnv")
            .field("cluster", &self.config.cluster_url)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl TestEnv {
    /// Connects to the cluster of `KUBECONFIG` and makes a fresh namespace named
    /// after the running test.
    pub async fn new() -> Self {
        install_crypto_provider();
        let config = Config::infer().await.unwrap_or_else(|e| {
            panic!(
                "no cluster to test against ({e}): set KUBECONFIG, or run the tests under \
                 e2e/cluster/with-cluster.sh"
            )
        });
        let client = Client::try_from(config.clone())
            .unwrap_or_else(|e| panic!("cannot build a client for {}: {e}", config.cluster_url));
        let namespace = unique_name(&format!("e2e-{}", test_name()));
        let env = TestEnv {
            client,
            config,
            namespace,
            cluster_objects: Arc::default(),
            cleaned_up: false,
        };
        env.create_namespace().await;
        env
    }

    async fn create_namespace(&self) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(E2E_LABEL.to_owned(), "true".to_owned())])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("cannot create namespace {}: {e}", self.namespace));
        // Pods are refused until the service account controller has made the
        // namespace's default ServiceAccount.
        let service_accounts: Api<ServiceAccount> = self.api();
        wait_for(
            &service_accounts,
            "default",
            Duration::from_secs(60),
            |_| true,
        )
        .await;
    }

    /// A client with the kubeconfig's credentials (cluster admin on the local
    /// control plane).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The test's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// An API for a namespaced kind in the test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Whether the object `name` of a namespaced kind is in the test's namespace.
    pub async fn exists<K>(&self, name: &str) -> bool
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        <K as Resource>::DynamicType: Default,
    {
        self.api::<K>()
            .get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("get {name}: {e}"))
            .is_some()
    }

    /// The objects of a namespaced kind in the test's namespace that match the
    /// label selector `labels`.
    pub async fn list_labelled<K>(&self, labels: &str) -> Vec<K>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        <K as Resource>::DynamicType: Default,
    {
        self.api::<K>()
            .list(&ListParams::default().labels(labels))
            .await
            .unwrap_or_else(|e| panic!("list the objects labelled {labels}: {e}"))
            .items
    }

    /// An API over the whole cluster: cluster-scoped kinds, or a namespaced kind
    /// in every namespace.
    pub fn cluster_api<K>(&self) -> Api<K>
    where
        K: Resource,
        <K as Resource>::DynamicType: Default,
    {
        Api::all(self.client.clone())
    }

    /// Applies a (multi-document) manifest with server-side apply; namespaced
    /// objects without a namespace go to the test's namespace. Cluster-scoped
    /// objects are deleted at cleanup. Panics if the server refuses anything.
    pub async fn apply_yaml(&self, yaml: &str) -> Vec<DynamicObject> {
        self.try_apply_yaml(yaml)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|applied| applied.object)
            .collect()
    }

    /// Applies the ResourceQuota `name` with the `hard` limits (resource,
    /// quantity) to the test's namespace and waits, at most `timeout`, until
    /// the quota controller has taken it up (its status shows the limits):
    /// from then on what it counts is certain, and so are its refusals.
    pub async fn resource_quota(
        &self,
        name: &str,
        hard: &[(&str, &str)],
        timeout: Duration,
    ) -> ResourceQuota {
        let limits: String = hard
            .iter()
            .map(|(resource, quantity)| format!("    {resource}: \"{quantity}\"\n"))
            .collect();
        self.apply_yaml(&format!(
            "apiVersion: v1\nkind: ResourceQuota\nmetadata: {{ name: {name} }}\nspec:\n  hard:\n{limits}"
        ))
        .await;
        wait_for(&self.api::<ResourceQuota>(), name, timeout, |q| {
            q.status.as_ref().and_then(|s| s.hard.as_ref()).is_some()
        })
        .await
    }

    /// Like [`TestEnv::apply_yaml`], returning the server's refusal instead of
    /// panicking: for tests that check what a bad manifest gets.
    pub async fn try_apply_yaml(&self, yaml: &str) -> Result<Vec<Applied>, ApplyError> {
        let applied = apply_yaml(&self.client, yaml, Some(&self.namespace)).await?;
        for item in applied.iter().filter(|a| !a.namespaced) {
            if let Some(name) = &item.object.metadata.name {
                self.delete_on_cleanup(item.resource.clone(), name);
            }
        }
        Ok(applied)
    }

    /// Server-side applies a manifest with `dryRun=All`: every check of the API
    /// server runs (schema, CEL rules, admission), nothing is stored, so there
    /// is nothing to clean up. Returns the server's refusal, if any.
    pub async fn try_dry_run_yaml(&self, yaml: &str) -> Result<Vec<Applied>, ApplyError> {
        apply_documents(&self.client, yaml, Some(&self.namespace), true).await
    }

    /// Registers a cluster-scoped object made some other way for deletion at
    /// cleanup.
    pub fn delete_on_cleanup(&self, resource: ApiResource, name: &str) {
        let mut tracked = self
            .cluster_objects
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !tracked.iter().any(|(r, n)| r == &resource && n == name) {
            tracked.push((resource, name.to_owned()));
        }
    }

    /// Runs `kubectl --namespace <test namespace> ARGS...`.
    pub async fn kubectl<I, S>(&self, args: I) -> KubectlOutput
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        kubectl(self.namespaced_args(args)).await
    }

    /// Runs `kubectl --namespace <test namespace> ARGS...` with `stdin` as input.
    pub async fn kubectl_with_stdin<I, S>(&self, args: I, stdin: &str) -> KubectlOutput
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        kubectl_with_stdin(self.namespaced_args(args), stdin).await
    }

    fn namespaced_args<I, S>(&self, args: I) -> Vec<OsString>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        ["--namespace".into(), self.namespace.clone().into()]
            .into_iter()
            .chain(args.into_iter().map(Into::into))
            .collect()
    }

    /// A client that acts as `user` in `groups` (impersonation by the
    /// kubeconfig's user), to check what RBAC lets someone else do.
    pub fn impersonated_client(&self, user: &str, groups: &[&str]) -> Client {
        let mut config = self.config.clone();
        config.auth_info.impersonate = Some(user.to_owned());
        config.auth_info.impersonate_groups =
            (!groups.is_empty()).then(|| groups.iter().map(|g| (*g).to_owned()).collect());
        Client::try_from(config)
            .unwrap_or_else(|e| panic!("cannot build a client impersonating {user}: {e}"))
    }

    /// Deletes the namespace and the tracked cluster-scoped objects without
    /// waiting for them to be gone.
    pub async fn cleanup(mut self) {
        self.cleaned_up = true;
        if keep() {
            eprintln!("keeping namespace {} ({KEEP_ENV}=1)", self.namespace);
            return;
        }
        delete_all(&self.client, &self.namespace, &self.tracked()).await;
    }

    fn tracked(&self) -> Vec<(ApiResource, String)> {
        self.cluster_objects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if self.cleaned_up {
            return;
        }
        if keep() {
            eprintln!("keeping namespace {} ({KEEP_ENV}=1)", self.namespace);
            return;
        }
        // The test's runtime may be blocked in this drop (a current-thread
        // runtime) or shutting down, so clean up from a thread with a runtime and
        // a client of its own.
        let config = self.config.clone();
        let namespace = self.namespace.clone();
        let tracked = self.tracked();
        let cleanup = std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("cannot clean up namespace {namespace}: {e}");
                    return;
                }
            };
            install_crypto_provider();
            runtime.block_on(async {
                match Client::try_from(config) {
                    Ok(client) => delete_all(&client, &namespace, &tracked).await,
                    Err(e) => eprintln!("cannot clean up namespace {namespace}: {e}"),
                }
            });
        });
        let _ = cleanup.join();
    }
}

async fn delete_all(client: &Client, namespace: &str, tracked: &[(ApiResource, String)]) {
    let params = DeleteParams::background();
    for (resource, name) in tracked.iter().rev() {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), resource);
        if let Err(e) = api.delete(name, &params).await
            && !is_not_found(&e)
        {
            eprintln!("cannot delete {} {name}: {e}", resource.kind);
        }
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if let Err(e) = namespaces.delete(namespace, &params).await
        && !is_not_found(&e)
    {
        eprintln!("cannot delete namespace {namespace}: {e}");
    }
}

/// Selects ring as the process's TLS provider for kube's client. rustls cannot
/// pick one itself when, as here, another dependency (the AWS SDK) enables
/// aws-lc-rs too. [`TestEnv::new`] calls it; call it before building a client
/// some other way. Idempotent.
pub fn install_crypto_provider() {
    // An error only means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

fn keep() -> bool {
    std::env::var(KEEP_ENV).is_ok_and(|v| v == "1")
}

/// The running test's name (the test harness names each test's thread after
/// it), as a DNS label fragment.
fn test_name() -> String {
    let thread = std::thread::current();
    let name = thread
        .name()
        .filter(|n| *n != "main")
        .and_then(|n| n.rsplit("::").next())
        .unwrap_or("test");
    let label = aleph_controllers::sagemaker::naming::sanitize(name, 40);
    if label.is_empty() {
        "test".to_owned()
    } else {
        label
    }
}

/// `prefix` with a random suffix, valid as a DNS label when `prefix` is one of
/// at most 56 characters: names for cluster-scoped objects that must not clash
/// between tests or runs.
pub fn unique_name(prefix: &str) -> String {
    let suffix: String = rand::rng()
        .sample_iter(Alphanumeric)
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .take(6)
        .map(char::from)
        .collect();
    format!("{}-{suffix}", prefix.trim_end_matches('-'))
}

/// The workspace root, the directory that holds the `e2e` crate.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e crate sits in the workspace root")
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_dns_labels() {
        let name = unique_name("e2e-some-test");
        assert!(name.starts_with("e2e-some-test-"));
        assert_eq!(name.len(), "e2e-some-test-".len() + 6);
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert_ne!(unique_name("a"), unique_name("a"));
    }

    #[test]
    fn test_name_comes_from_the_thread() {
        let name = std::thread::Builder::new()
            .name("module::Some_Test::gpu_pod_lands".to_owned())
            .spawn(test_name)
            .map(|handle| handle.join());
        assert!(matches!(name, Ok(Ok(ref n)) if n == "gpu-pod-lands"));
    }
}
