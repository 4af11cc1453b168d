//! Running `helm` against the cluster of `KUBECONFIG`, the chart's path, a
//! release of the chart in a test's namespace, and the examples.
//!
//! The binary is `$HELM`, else `helm` on `PATH`, else the newest one
//! `e2e/cluster/build.sh` built under `$ALEPH_CACHE/bin`
//! (`~/.cache/aleph/bin/helm-*/helm`).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::discovery::ApiResource;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::env::{TestEnv, unique_name};
use crate::operator::PRIVATE_OPERATOR_LABEL;

/// `charts/aleph-operator` in this checkout.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/aleph-operator")
}

fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ALEPH_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("aleph");
    }
    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/aleph")
}

fn runs(helm: &Path) -> bool {
    std::process::Command::new(helm)
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The helm binary; panics saying where it looked when there is none.
pub fn helm_binary() -> PathBuf {
    if let Some(helm) = std::env::var_os("HELM") {
        let helm = PathBuf::from(helm);
        assert!(runs(&helm), "HELM={} does not run", helm.display());
        return helm;
    }
    let on_path = PathBuf::from("helm");
    if runs(&on_path) {
        return on_path;
    }
    let bin = cache_dir().join("bin");
    let mut built: Vec<PathBuf> = std::fs::read_dir(&bin)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("helm-"))
        .map(|entry| entry.path().join("helm"))
        .filter(|helm| runs(helm))
        .collect();
    built.sort();
    built.pop().unwrap_or_else(|| {
        panic!(
            "no helm: set HELM, put helm on PATH, or build it with e2e/cluster/build.sh \
             (looked in {})",
            bin.display()
        )
    })
}

/// Runs `helm ARGS...`: its standard output, or what it printed as the error.
pub async fn helm<I, S>(args: I) -> Result<String, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let helm = helm_binary();
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let shown = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new(&helm)
        .args(&args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", helm.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "helm {shown} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A release of `charts/aleph-operator` in the test's namespace.
pub struct Release {
    pub name: String,
    pub namespace: String,
}

impl Release {
    /// `helm install` with the CRDs skipped (the cluster has them); its
    /// cluster-scoped objects are deleted at cleanup even if the test fails.
    pub async fn install(env: &TestEnv, extra: &[&str]) -> Release {
        let release = Release {
            name: unique_name("aleph"),
            namespace: env.namespace().to_owned(),
        };
        let roles = ApiResource::erase::<ClusterRole>(&());
        let full = release.fullname();
        for name in [full.clone(), format!("{full}-edit"), format!("{full}-view")] {
            env.delete_on_cleanup(roles.clone(), &name);
        }
        env.delete_on_cleanup(ApiResource::erase::<ClusterRoleBinding>(&()), &full);
        let chart = chart_dir();
        let mut args = vec![
            "install",
            release.name.as_str(),
            chart.to_str().unwrap_or_default(),
            "--namespace",
            release.namespace.as_str(),
            "--skip-crds",
        ];
        args.extend_from_slice(extra);
        if let Err(e) = helm(&args).await {
            panic!("{e}");
        }
        release
    }

    /// The objects' name (the chart's `aleph-operator.fullname`).
    pub fn fullname(&self) -> String {
        format!("{}-aleph-operator", self.name)
    }

    /// The user the operator's ServiceAccount authenticates as.
    pub fn service_account_user(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace,
            self.fullname()
        )
    }

    pub async fn uninstall(&self) {
        if let Err(e) = helm([
            "uninstall",
            self.name.as_str(),
            "--namespace",
            self.namespace.as_str(),
            "--wait",
        ])
        .await
        {
            panic!("{e}");
        }
    }
}

/// Every example of `examples/`, labelled for the operator of `label`: the
/// Tenant (cluster-scoped) gets a unique name.
pub fn examples(label: &str, tenant: &str) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    // A PipelineRun names its Pipeline, and a rollout step its AIModel: apply
    // them after what they refer to.
    files.sort_by_key(|p| p.to_string_lossy().contains("pipelinerun"));
    let mut documents = Vec::new();
    for file in files {
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for mut doc in docs.into_iter().filter(|d| !d.is_null()) {
            doc["metadata"]["labels"][PRIVATE_OPERATOR_LABEL] = json!(label);
            if doc["kind"] == "Tenant" {
                doc["metadata"]["name"] = json!(tenant);
            }
            documents.push(doc.to_string());
        }
    }
    assert_eq!(
        documents.len(),
        7,
        "one example per namespaced kind (two AIModels) and the Tenant"
    );
    documents.join("\n---\n")
}

/// Applies every example for the operator of `label` in the test's namespace,
/// with the Secret the vLLM example downloads with and a unique Tenant name;
/// returns what was applied. Panics if the server refuses anything.
pub async fn apply_examples(env: &TestEnv, label: &str) -> Vec<crate::Applied> {
    env.apply_yaml(
        r#"
apiVersion: v1
kind: Secret
metadata: { name: hf-token }
stringData: { token: hf_e2e }
"#,
    )
    .await;
    let tenant = unique_name("acme");
    env.try_apply_yaml(&examples(label, &tenant))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}
