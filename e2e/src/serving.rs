//! Real model serving on the real node: the llama.cpp engine's image, a
//! client pod that speaks OpenAI's API with Python's standard library (from
//! the model-cache image, Debian's Python), and the calls the tests make
//! through it.

use std::collections::BTreeMap;
use std::process::Stdio;

use serde::Deserialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use crate::kubectl;
use crate::kubectl::spawn_kubectl;
use crate::s3::env_var;

/// The llama.cpp server image that e2e/images builds (build b11312).
pub const LLAMACPP_IMAGE: &str = "aleph.local/llama-server:b11312";

/// An AIModel `name` that llama.cpp serves on the CPU from `uri` (read with
/// the `s3` Secret's credentials) through the model cache; `extra` is the
/// rest of its spec (YAML lines indented by two spaces).
pub fn llamacpp_model(name: &str, uri: &str, extra: &str) -> String {
    let rest = format!(
        "  runtime: {{engine: llamacpp, image: {LLAMACPP_IMAGE}}}\n  resources: {{gpus: 0, memory: 256Mi}}\n  cache: {{size: 1Gi, downloadTimeoutSeconds: 300}}\n{extra}"
    );
    crate::s3::s3_model_yaml(name, uri, &rest)
}

/// The name of the model cache's claim in the model's status.
pub fn cache_claim(model: &aleph_crds::aimodel::AIModel) -> Option<String> {
    model
        .status
        .as_ref()
        .and_then(|s| s.cache.as_ref())
        .map(|c| c.claim_name.clone())
}

/// The OpenAI client, run inside the client pod: `MODE BASE_URL MODEL [ARG]`.
/// Every request opens a new connection, so that the Service's proxy picks a
/// backend for each one.
/// - `models`: GET /models, printed as it came;
/// - `chat`: one chat completion, printed with its status (its connection
///   tried for up to 15 s, as `models`: it is often the first call after
///   the model turned Ready);
/// - `stream`: one streamed chat completion: status, content type, events,
///   the content they add up to, and whether `[DONE]` ended it;
/// - `count N`: N one-token completions: how many answers each `model` gave;
/// - `loop STOPFILE`: completions until STOPFILE exists; prints `started`
///   after the first success, and the tally at the end.
pub const CLIENT_SCRIPT: &str = r#"
import http.client, json, os, sys, time, urllib.parse

def call(base, method, path, body=None, timeout=60, connect_for=0):
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    # connect_for: seconds during which a refused or unreachable connection
    # is tried again (the first call after a model is Ready: the network
    # policy controller lets a new pod's address in a moment after it sees
    # the pod, and rejects it until then).
    deadline = time.monotonic() + connect_for
    while True:
        try:
            conn.connect()
            break
        except OSError:
            conn.close()
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, u.path + path, json.dumps(body) if body is not None else None, headers)
    return conn, conn.getresponse()

def chat(model, max_tokens, stream=False):
    body = {"model": model, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "hello aleph, say something"}]}
    if stream:
        body["stream"] = True
    return body

mode, base, model = sys.argv[1:4]
if mode == "models":
    conn, r = call(base, "GET", "/models", connect_for=15)
    print(json.dumps({"status": r.status, "body": json.loads(r.read())}))
elif mode == "chat":
    start = time.monotonic()
    conn, r = call(base, "POST", "/chat/completions", chat(model, 8), connect_for=15)
    body = json.loads(r.read())
    print(json.dumps({"status": r.status, "body": body, "seconds": time.monotonic() - start}))
elif mode == "stream":
    conn, r = call(base, "POST", "/chat/completions", chat(model, 8, stream=True))
    events, done, content = 0, False, ""
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            done = True
            break
        event = json.loads(data)
        events += 1
        for choice in event.get("choices", []):
            content += (choice.get("delta") or {}).get("content") or ""
    print(json.dumps({"status": r.status, "contentType": r.getheader("Content-Type"),
                      "events": events, "content": content, "done": done}))
elif mode in ("count", "loop"):
    seen, ok, failed, errors = {}, 0, 0, []
    n = int(sys.argv[4]) if mode == "count" else None
    stop = sys.argv[4] if mode == "loop" else None
    i = 0
    while (n is not None and i < n) or (stop is not None and not os.path.exists(stop)):
        i += 1
        try:
            conn, r = call(base, "POST", "/chat/completions", chat(model, 1))
            body = r.read()
            conn.close()
            if r.status != 200:
                failed += 1
                errors.append(f"HTTP {r.status}: {body[:200]!r}")
                continue
            name = json.loads(body)["model"]
            seen[name] = seen.get(name, 0) + 1
            ok += 1
            if ok == 1 and stop is not None:
                print("started", flush=True)
        except Exception as e:
            failed += 1
            now = time.time()
            errors.append(f"{time.strftime('%H:%M:%S', time.localtime(now))}.{int(now % 1 * 1000):03d} {e!r}")
    print(json.dumps({"models": seen, "ok": ok, "failed": failed, "errors": errors if len(errors) <= 20 else errors[:10] + errors[-10:]}), flush=True)
"#;

/// The client pod: the model-cache image's Python, idle until exec'd into, as
/// a non-root user with the restricted security context.
pub fn client_pod(name: &str) -> String {
    let image = env_var("ALEPH_MODEL_CACHE_IMAGE");
    let container = format!(
        r#"  - name: client
    image: {image}
    imagePullPolicy: Never
    command: [/usr/bin/python3.11, -c, "import time; time.sleep(3600)"]
    resources:
      requests: {{cpu: 10m, memory: 32Mi}}
      limits: {{memory: 128Mi}}
"#
    );
    crate::real_node::restricted_pod(name, "", &container, "")
}

/// `kubectl` arguments running the Python `script` in `pod`.
fn python_args(namespace: &str, pod: &str, script: &str) -> Vec<String> {
    [
        "exec",
        "-n",
        namespace,
        pod,
        "--",
        "/usr/bin/python3.11",
        "-c",
        script,
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect()
}

fn exec_args(namespace: &str, pod: &str, args: &[&str]) -> Vec<String> {
    let mut all = python_args(namespace, pod, CLIENT_SCRIPT);
    all.extend(args.iter().map(|s| (*s).to_string()));
    all
}

/// Runs the client in `pod` with `args` and parses the JSON it prints.
pub async fn client<T: for<'de> Deserialize<'de>>(namespace: &str, pod: &str, args: &[&str]) -> T {
    let out = kubectl(exec_args(namespace, pod, args))
        .await
        .expect_success();
    let line = out.stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("the client printed no JSON ({e}): {out}"))
}

/// An answer with its HTTP status.
#[derive(Debug, Deserialize)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body.
    pub body: serde_json::Value,
    /// How long the request took, in seconds (`chat` only).
    #[serde(default)]
    pub seconds: f64,
}

/// A streamed chat completion, as the client saw it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Streamed {
    /// The HTTP status.
    pub status: u16,
    /// The response's Content-Type.
    pub content_type: Option<String>,
    /// Server-sent events before `[DONE]`.
    pub events: usize,
    /// The content the events' deltas add up to.
    pub content: String,
    /// Whether `data: [DONE]` ended the stream.
    pub done: bool,
}

/// The tally of `count` and `loop`.
#[derive(Debug, Deserialize)]
pub struct Tally {
    /// Answers per `model` field.
    pub models: BTreeMap<String, u32>,
    /// Successful requests.
    pub ok: u32,
    /// Failed requests (connection errors, non-200 answers).
    pub failed: u32,
    /// The failures: all of them, or the first ten and the last ten.
    pub errors: Vec<String>,
}

impl Tally {
    /// The answers whose `model` field was `model`.
    pub fn answered_by(&self, model: &str) -> u32 {
        self.models.get(model).copied().unwrap_or(0)
    }

    /// Panics when a request failed, with what the network looked like just
    /// after: the pods and EndpointSlices of `namespace`, its recent events,
    /// the real node's neighbours, addresses and routes, and the ARP table of
    /// the client `pod` (a connection error says which layer failed: refused
    /// is a Service without a ready endpoint, no route to host an address
    /// that does not answer).
    pub async fn assert_all_answered(&self, namespace: &str, pod: &str) {
        if self.failed == 0 {
            return;
        }
        let mut report = Vec::new();
        let owned = |args: &[&str]| args.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
        for args in [
            owned(&["get", "pods,endpointslices", "-n", namespace, "-o", "wide"]),
            owned(&["get", "events", "-n", namespace, "--sort-by=.lastTimestamp"]),
            python_args(namespace, pod, "print(open('/proc/net/arp').read())"),
        ] {
            report.push(format!(
                "$ kubectl {}\n{}",
                args.join(" "),
                kubectl(args.clone()).await
            ));
        }
        let netns = crate::real_node::node_netns();
        for what in [&["neigh"][..], &["-br", "addr"], &["route"]] {
            let out = tokio::process::Command::new("ip")
                .args(["-n", &netns])
                .args(what)
                .output()
                .await;
            let shown = match out {
                Ok(o) => format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => e.to_string(),
            };
            report.push(format!("$ ip -n {netns} {}\n{shown}", what.join(" ")));
        }
        panic!(
            "{} of {} requests failed: {self:?}\n{}",
            self.failed,
            self.failed + self.ok,
            report.join("\n")
        );
    }
}

/// A request loop running in the client pod until [`RequestLoop::stop`].
pub struct RequestLoop {
    child: Child,
    output: Lines<BufReader<ChildStdout>>,
    namespace: String,
    pod: String,
    stop_file: String,
}

impl RequestLoop {
    /// Starts the loop against `base` and returns once a request succeeded.
    pub async fn start(namespace: &str, pod: &str, base: &str, model: &str) -> Self {
        let stop_file = format!("/tmp/stop-{}", crate::unique_name("loop"));
        let args = exec_args(namespace, pod, &["loop", base, model, &stop_file]);
        let mut child = spawn_kubectl(args, Stdio::null(), Stdio::inherit());
        let stdout = child.stdout.take().expect("the loop's stdout");
        let mut output = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(std::time::Duration::from_secs(60), output.next_line())
            .await
            .expect("the request loop's first request did not succeed within 60 s")
            .expect("read the loop's output");
        assert_eq!(
            first.as_deref(),
            Some("started"),
            "the request loop did not start"
        );
        Self {
            child,
            output,
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            stop_file,
        }
    }

    /// Stops the loop and returns its tally.
    pub async fn stop(mut self) -> Tally {
        let touch = format!("open({:?}, 'w').close()", self.stop_file);
        kubectl([
            "exec",
            "-n",
            &self.namespace,
            &self.pod,
            "--",
            "/usr/bin/python3.11",
            "-c",
            &touch,
        ])
        .await
        .expect_success();
        let out = rest_of(&mut self.output, "the loop's tally").await;
        let status = self.child.wait().await.expect("wait for the loop");
        assert!(status.success(), "the request loop failed: {out:?}");
        let line = out.last().cloned().unwrap_or_default();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("no tally ({e}): {out:?}"))
    }
}

/// The lines of `lines` up to its end; panics, naming `what`, on a read error.
async fn rest_of<R: AsyncBufRead + Unpin>(lines: &mut Lines<R>, what: &str) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => out.push(line),
            Ok(None) => return out,
            Err(e) => panic!("read {what}: {e}"),
        }
    }
}
