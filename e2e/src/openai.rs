//! The official `openai` Python client (pinned in e2e/python/venv.sh), as a
//! user's program calls the gateway with it: one call per run of a small
//! script, whose JSON answer the tests read.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// What the script does with the client. It prints one JSON object: the
/// answer, or `{"status", "error_type", "message", "retry_after"}` when the
/// client raised an `APIStatusError`.
pub const SCRIPT: &str = r#"
import json, sys
import openai

base, key, action = sys.argv[1], sys.argv[2], sys.argv[3]
rest = sys.argv[4:]
client = openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=120)
try:
    if action == "models":
        out = {"ids": sorted(m.id for m in client.models.list())}
    elif action == "chat":
        r = client.chat.completions.create(
            model=rest[0], max_tokens=int(rest[1]),
            messages=[{"role": "user", "content": rest[2]}])
        out = {"model": r.model, "content": r.choices[0].message.content or "",
               "prompt_tokens": r.usage.prompt_tokens,
               "completion_tokens": r.usage.completion_tokens}
    elif action == "stream":
        chunks, content, usage = 0, "", None
        for c in client.chat.completions.create(
                model=rest[0], max_tokens=int(rest[1]), stream=True,
                messages=[{"role": "user", "content": rest[2]}]):
            chunks += 1
            if c.choices and c.choices[0].delta.content:
                content += c.choices[0].delta.content
            if c.usage is not None:
                usage = c.usage
        out = {"chunks": chunks, "content": content,
               "prompt_tokens": usage.prompt_tokens if usage else None,
               "completion_tokens": usage.completion_tokens if usage else None}
    elif action == "completion":
        r = client.completions.create(model=rest[0], max_tokens=int(rest[1]), prompt=rest[2])
        out = {"model": r.model, "content": r.choices[0].text,
               "prompt_tokens": r.usage.prompt_tokens,
               "completion_tokens": r.usage.completion_tokens}
    else:
        raise SystemExit("unknown action " + action)
except openai.APIStatusError as e:
    body = e.body if isinstance(e.body, dict) else {}
    out = {"status": e.status_code,
           "error_type": body.get("type") or (body.get("error") or {}).get("type"),
           "message": body.get("message") or (body.get("error") or {}).get("message"),
           "retry_after": e.response.headers.get("retry-after")}
print(json.dumps(out))
"#;

/// The virtualenv's Python (installed on first use by e2e/python/venv.sh).
pub fn python() -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/venv.sh");
    let out = Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Runs `command` (`what`, in messages) to its end and returns its standard
/// output; panics, with its standard error, when it fails.
async fn run_client(command: &mut tokio::process::Command, what: &str) -> String {
    let out = command
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs `action` with the client against `base` (the API's `/v1` URL) with
/// `key`; `args` follow the action (model, max tokens, prompt).
pub async fn call(python: &PathBuf, base: &str, key: &str, action: &str, args: &[&str]) -> Value {
    let mut command = tokio::process::Command::new(python);
    command
        .arg("-c")
        .arg(SCRIPT)
        .arg(base)
        .arg(key)
        .arg(action)
        .args(args);
    let stdout = run_client(&mut command, &format!("the openai client on {action}")).await;
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the openai client printed no JSON ({e}): {stdout}"))
}

/// Many chat completions (temperature 0, each `max_tokens` long: with more
/// than 1, the engine is told to ignore the end of sequence so that each
/// request keeps it busy the same time) from several workers at once, each a thread with a client of its own (`max_retries=0`,
/// connections kept alive): `count N` sends N in all; `loop` runs until its
/// standard input closes, printing `started` after the first success. Prints
/// one JSON tally at the end (see [`Load`]).
pub const LOAD_SCRIPT: &str = r#"
import json, sys, threading, time
import openai

base, key, model, workers, max_tokens, mode = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
total = int(sys.argv[7]) if mode == "count" else None
extra = {"ignore_eos": True} if max_tokens > 1 else None
lock, stop = threading.Lock(), threading.Event()
tally = {"sent": 0, "ok": 0, "failed": 0, "models": {}, "errors": [], "okPerSecond": {},
         "maxSeconds": 0.0, "slowestEndedAt": 0.0}

def worker():
    client = openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=60)
    while True:
        with lock:
            if stop.is_set() or (total is not None and tally["sent"] >= total):
                return
            tally["sent"] += 1
        started = time.time()
        try:
            r = client.chat.completions.create(
                model=model, max_tokens=max_tokens, temperature=0, extra_body=extra,
                messages=[{"role": "user", "content": "Say one word"}])
            ended = time.time()
            with lock:
                tally["ok"] += 1
                tally["models"][r.model] = tally["models"].get(r.model, 0) + 1
                second = str(int(ended))
                tally["okPerSecond"][second] = tally["okPerSecond"].get(second, 0) + 1
                if ended - started > tally["maxSeconds"]:
                    tally["maxSeconds"], tally["slowestEndedAt"] = ended - started, ended
                if tally["ok"] == 1 and total is None:
                    print("started", flush=True)
        except Exception as e:
            with lock:
                tally["failed"] += 1
                if len(tally["errors"]) < 20:
                    tally["errors"].append(f"{time.time():.3f} {type(e).__name__}: {e}")

if total is None:
    def wait_for_eof():
        sys.stdin.read()
        stop.set()
    threading.Thread(target=wait_for_eof, daemon=True).start()
threads = [threading.Thread(target=worker) for _ in range(workers)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(tally), flush=True)
"#;

/// What a run of [`LOAD_SCRIPT`] counted.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Load {
    /// Requests started.
    pub sent: u64,
    /// Requests answered with a completion.
    pub ok: u64,
    /// Requests that raised (an error status, a broken connection, a timeout).
    pub failed: u64,
    /// Completions per `model` of the answer (the name the engine answered with).
    pub models: std::collections::BTreeMap<String, u64>,
    /// The first failures, each with its Unix time.
    pub errors: Vec<String>,
    /// Completions per second they ended in (Unix seconds, as text).
    pub ok_per_second: std::collections::BTreeMap<String, u64>,
    /// The longest a completion took, in seconds.
    pub max_seconds: f64,
    /// When that completion ended (Unix seconds).
    pub slowest_ended_at: f64,
}

impl Load {
    /// Completions that ended at or after `unix_seconds`.
    pub fn ok_since(&self, unix_seconds: u64) -> u64 {
        self.ok_per_second
            .iter()
            .filter(|(second, _)| second.parse::<u64>().is_ok_and(|s| s >= unix_seconds))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Where a load goes, and where its client runs.
#[derive(Clone, Copy, Debug)]
pub struct LoadTarget<'a> {
    /// The client's Python (see [`python`]).
    pub python: &'a PathBuf,
    /// The real node's network namespace to run the client in (`ip netns
    /// exec`, where Services' ClusterIPs work), or `None`: this machine.
    pub netns: Option<&'a str>,
    /// The API's `/v1` URL.
    pub base: &'a str,
    /// The API key.
    pub key: &'a str,
}

impl<'a> LoadTarget<'a> {
    /// The API at `base` with `key`, called from this machine.
    pub fn local(python: &'a PathBuf, base: &'a str, key: &'a str) -> Self {
        LoadTarget {
            python,
            netns: None,
            base,
            key,
        }
    }
}

/// The client's command sending the load of `spec` to `target`, before its
/// mode. Proxies of the environment are dropped: every address is on this
/// machine.
fn load_command(target: LoadTarget<'_>, spec: LoadSpec<'_>) -> tokio::process::Command {
    let mut command = match target.netns {
        Some(netns) => {
            let mut c = tokio::process::Command::new("ip");
            c.args(["netns", "exec", netns]).arg(target.python);
            c
        }
        None => tokio::process::Command::new(target.python),
    };
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        command.env_remove(var);
    }
    command
        .arg("-c")
        .arg(LOAD_SCRIPT)
        .args(spec.args(target.base, target.key));
    command
}

fn parse_load(stdout: &str) -> Load {
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("the load client printed no tally ({e}): {stdout}"))
}

/// Sends `requests` chat completions of `spec` to `target`, and returns the
/// tally.
pub async fn load_count(target: LoadTarget<'_>, spec: LoadSpec<'_>, requests: u64) -> Load {
    let mut command = load_command(target, spec);
    command.args(["count", &requests.to_string()]);
    parse_load(&run_client(&mut command, "the load client").await)
}

/// What a load sends: to which model, from how many workers, how long each
/// answer is.
#[derive(Clone, Copy, Debug)]
pub struct LoadSpec<'a> {
    /// The model requested.
    pub model: &'a str,
    /// Workers, each with one request in flight at a time.
    pub workers: u32,
    /// Tokens each completion generates (1: as short as it gets).
    pub max_tokens: u32,
}

impl<'a> LoadSpec<'a> {
    /// The load script's arguments before its mode.
    fn args(&self, base: &str, key: &str) -> [String; 5] {
        [
            base.to_owned(),
            key.to_owned(),
            self.model.to_owned(),
            self.workers.to_string(),
            self.max_tokens.to_string(),
        ]
    }

    /// `workers` workers sending one-token completions for `model`.
    pub fn short(model: &'a str, workers: u32) -> Self {
        Self {
            model,
            workers,
            max_tokens: 1,
        }
    }
}

/// Chat completions sent without pause until [`LoadLoop::stop`].
pub struct LoadLoop {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl LoadLoop {
    /// Starts the load of `spec` to `target`, and returns once one request
    /// has succeeded (within `timeout`).
    pub async fn start(
        target: LoadTarget<'_>,
        spec: LoadSpec<'_>,
        timeout: std::time::Duration,
    ) -> LoadLoop {
        use tokio::io::AsyncBufReadExt;
        let mut child = load_command(target, spec)
            .arg("loop")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting the load client: {e}"));
        let stdin = child.stdin.take();
        let mut stdout =
            tokio::io::BufReader::new(child.stdout.take().expect("the load client's stdout"))
                .lines();
        let first = tokio::time::timeout(timeout, stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("no request of the load succeeded within {timeout:?}"))
            .expect("read the load client's output");
        assert_eq!(
            first.as_deref(),
            Some("started"),
            "the load did not start: {first:?}"
        );
        LoadLoop {
            child,
            stdin,
            stdout,
        }
    }

    /// Stops sending, waits for the requests in flight, and returns the tally.
    pub async fn stop(mut self) -> Load {
        drop(self.stdin.take());
        let mut out = String::new();
        while let Some(line) = self
            .stdout
            .next_line()
            .await
            .expect("read the load client's tally")
        {
            out.push_str(&line);
            out.push('\n');
        }
        let status = self.child.wait().await.expect("wait for the load client");
        assert!(status.success(), "the load client failed: {out}");
        parse_load(&out)
    }
}
