//! Running `helm` against the cluster of `KUBECONFIG`, and the chart's path.
//!
//! The binary is `$HELM`, else `helm` on `PATH`, else the newest one
//! `e2e/cluster/build.sh` built under `$ALEPH_CACHE/bin`
//! (`~/.cache/aleph/bin/helm-*/helm`).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

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
