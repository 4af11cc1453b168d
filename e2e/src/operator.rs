//! Operator processes a test starts itself: a second replica for leader
//! election, one that is killed and restarted, one with another SageMaker
//! endpoint or with a ServiceAccount's permissions.
//!
//! The binary is `$ALEPH_OPERATOR_BIN`, or `aleph-operator` in
//! `$CARGO_TARGET_DIR/debug` (then `target/debug`); `make test` builds it first.
//! Each process gets a free port for its HTTP endpoints and a log file, and is
//! killed when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// The label that hands an object to a test's own operator: the shared
/// operator started by `make test` skips objects that carry it.
pub const PRIVATE_OPERATOR_LABEL: &str = "aleph.dev/e2e-operator";

/// The counter of requests to the Kubernetes API, by verb, resource and code.
pub const KUBE_REQUESTS: &str = "aleph_kube_requests_total";

/// What the operator's log says when its HTTP port is already in use.
pub const PORT_TAKEN: &str = "Address already in use";

/// How many times [`OperatorProcess::wait_ready`] starts the operator again
/// when the free port it was given was taken before it listened.
const PORT_RETRIES: u32 = 3;

/// What to start.
#[derive(Clone, Debug, Default)]
pub struct OperatorOptions {
    /// Extra arguments after `run` (the metrics address is added).
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Reconcile only objects labelled `aleph.dev/e2e-operator=<value>`.
    pub private_label: Option<String>,
    /// A name for the log file.
    pub name: String,
}

/// A running operator process.
#[derive(Debug)]
pub struct OperatorProcess {
    child: Option<Child>,
    options: OperatorOptions,
    metrics_addr: String,
    log: PathBuf,
    started_at: Instant,
}

/// The operator binary the tests run.
pub fn operator_binary() -> PathBuf {
    if let Ok(bin) = std::env::var("ALEPH_OPERATOR_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(
        |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("debug/aleph-operator")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

impl OperatorProcess {
    /// Starts the operator; see [`OperatorProcess::wait_ready`].
    pub async fn start(options: OperatorOptions) -> Self {
        let mut process = OperatorProcess {
            child: None,
            metrics_addr: String::new(),
            log: PathBuf::new(),
            options,
            started_at: Instant::now(),
        };
        process.spawn();
        process
    }

    fn spawn(&mut self) {
        let bin = operator_binary();
        assert!(
            bin.exists(),
            "{} does not exist: build it with `cargo build -p aleph-operator` (make test does)",
            bin.display()
        );
        self.metrics_addr = format!("127.0.0.1:{}", free_port());
        let dir = std::env::temp_dir().join("aleph-e2e-operators");
        let _ = std::fs::create_dir_all(&dir);
        self.log = dir.join(format!(
            "{}-{}.log",
            if self.options.name.is_empty() {
                "operator"
            } else {
                &self.options.name
            },
            crate::unique_name("p")
        ));
        let log = std::fs::File::create(&self.log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", self.log.display()));
        let err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone the log file handle: {e}"));
        let mut cmd = Command::new(&bin);
        // The allocator's setting of the chart's Deployment, unless
        // `ALEPH_OPERATOR_GLIBC_TUNABLES` says another (to compare settings).
        cmd.env(
            "GLIBC_TUNABLES",
            std::env::var("ALEPH_OPERATOR_GLIBC_TUNABLES")
                .unwrap_or_else(|_| "glibc.malloc.arena_max=2".to_string()),
        );
        cmd.arg("run")
            .arg("--metrics-addr")
            .arg(&self.metrics_addr)
            .arg("--log-format")
            .arg("json")
            // The operator `make test` starts keeps the step template index.
            .arg("--step-template-admission=false")
            .args(&self.options.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true);
        if let Some(value) = &self.options.private_label {
            cmd.arg("--watch-label-selector")
                .arg(format!("{PRIVATE_OPERATOR_LABEL}={value}"));
        }
        for (k, v) in &self.options.env {
            cmd.env(k, v);
        }
        self.started_at = Instant::now();
        self.child = Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display())),
        );
    }

    /// The `host:port` of its HTTP endpoints.
    pub fn metrics_addr(&self) -> &str {
        &self.metrics_addr
    }

    /// Its log file.
    pub fn log_path(&self) -> &PathBuf {
        &self.log
    }

    /// The log's last `lines` lines, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The process id, while it runs (for reading `/proc/<pid>/status`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// When the process was (last) started.
    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    /// GETs `path` from its HTTP endpoints: `(status, body)`, or `None` when nothing answers.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.metrics_addr, path).await
    }

    /// Its `/metrics` text (empty when nothing answers).
    pub async fn metrics(&self) -> String {
        self.get("/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// The sum of a metric's samples with these labels (0 when absent or when
    /// nothing answers); see [`metric_sum`].
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics().await, name, labels)
    }

    /// Whether its leader gauge (`aleph_leader`) says it holds the lease.
    pub async fn is_leader(&self) -> bool {
        let text = self.metrics().await;
        text.lines().any(|l| l.trim() == "aleph_leader 1")
    }

    /// Requests that change something (create, update, patch, delete) it sent
    /// to the API server, its Lease's excluded.
    pub async fn writes_besides_the_lease(&self) -> f64 {
        let text = self.metrics().await;
        ["create", "update", "patch", "delete"]
            .iter()
            .map(|verb| {
                metric_sum(&text, KUBE_REQUESTS, &[("verb", verb)])
                    - metric_sum(
                        &text,
                        KUBE_REQUESTS,
                        &[("verb", verb), ("resource", "leases")],
                    )
            })
            .sum()
    }

    /// Waits until `check` holds for its `/metrics` text; panics with the
    /// metrics and the log's tail after `timeout`.
    pub async fn wait_for_metrics(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.metrics().await;
            if check(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}; its metrics:\n{text}\nits log:\n{}",
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the process has exited (or was never started or already reaped).
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Its whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/readyz` answers 200; panics with the log's tail after `timeout`.
    ///
    /// The port comes from binding port 0 and letting go, so another process
    /// (another test's server, or a connection's local end) can take it before
    /// the operator listens; the operator then exits saying so, and is started
    /// again on another port (up to [`PORT_RETRIES`] times).
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut port_retries = 0;
        loop {
            if let Some((200, _)) = self.get("/readyz").await {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                if port_retries < PORT_RETRIES && self.log().contains(PORT_TAKEN) {
                    port_retries += 1;
                    eprintln!(
                        "{} was taken before the operator listened on it; starting it on another port",
                        self.metrics_addr
                    );
                    self.spawn();
                    continue;
                }
                panic!(
                    "the operator exited ({status}) before it was ready; its log:\n{}",
                    self.log_tail(40)
                );
            }
            assert!(
                Instant::now() < deadline,
                "the operator was not ready within {timeout:?}; its log:\n{}",
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
    }

    /// Stops the process with SIGTERM and waits up to `timeout` for it to exit;
    /// returns whether it exited in time (it is killed otherwise).
    pub async fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(_) => true,
            Err(_) => {
                let _ = child.kill().await;
                false
            }
        }
    }

    /// Kills the process and starts it again with the same options (and a new port).
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn();
    }
}

/// A minimal HTTP/1.1 GET: `(status, body)`, or `None` when nothing answers.
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    Some((status, body))
}

/// The sum of a metric's samples whose labels contain every `label="value"` pair.
pub fn metric_sum(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            if metric != name {
                return None;
            }
            if labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            {
                value.parse::<f64>().ok()
            } else {
                None
            }
        })
        .sum()
}
