//! Running the `kubectl` found on PATH (with-cluster.sh puts the one it built
//! there) against the cluster of `KUBECONFIG`.

use std::ffi::OsStr;
use std::fmt;
use std::process::{ExitStatus, Stdio};

use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

/// What a kubectl run printed and how it ended.
#[derive(Debug)]
pub struct KubectlOutput {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl KubectlOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics with the command's output unless it succeeded.
    #[track_caller]
    pub fn expect_success(self) -> Self {
        assert!(self.success(), "{self}");
        self
    }

    /// Panics with the command's output unless it failed.
    #[track_caller]
    pub fn expect_failure(self) -> Self {
        assert!(!self.success(), "expected a failure: {self}");
        self
    }
}

impl fmt::Display for KubectlOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` ended with {}\n--- stdout\n{}\n--- stderr\n{}",
            self.command, self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `kubectl ARGS...`.
pub async fn kubectl<I, S>(args: I) -> KubectlOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(args, None).await
}

/// Runs `kubectl ARGS...` with `stdin` as its input (`apply -f -`).
pub async fn kubectl_with_stdin<I, S>(args: I, stdin: &str) -> KubectlOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(args, Some(stdin)).await
}

async fn run<I, S>(args: I, stdin: Option<&str>) -> KubectlOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let command = std::iter::once("kubectl".to_owned())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let input = if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    let mut child = spawn_kubectl(&args, input, Stdio::piped());
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("writing to `{command}`: {e}"));
    }
    let output = child
        .wait_with_output()
        .await
        .unwrap_or_else(|e| panic!("waiting for `{command}`: {e}"));
    KubectlOutput {
        command,
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Starts `kubectl ARGS...` with `stdin` and `stderr` as given and its
/// stdout piped; it is killed if the [`Child`] is dropped before it ends.
/// Panics when kubectl cannot be run.
pub(crate) fn spawn_kubectl<I, S>(args: I, stdin: Stdio, stderr: Stdio) -> Child
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new("kubectl")
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run kubectl ({e}); run the tests under e2e/cluster/with-cluster.sh, \
                 which puts it on PATH"
            )
        })
}

/// The words of line `n` of a table `kubectl get` printed (0: the header).
pub fn table_row(table: &str, n: usize) -> Vec<&str> {
    table
        .lines()
        .nth(n)
        .unwrap_or_default()
        .split_whitespace()
        .collect()
}
