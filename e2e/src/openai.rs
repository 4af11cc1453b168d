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
    elif action == "load":
        # Workers calling in a closed loop for some seconds: what each got.
        import collections, threading, time
        model, workers, seconds, max_tokens = rest[0], int(rest[1]), float(rest[2]), int(rest[3])
        deadline = time.monotonic() + seconds
        counts, lock = collections.Counter(), threading.Lock()
        def work():
            while time.monotonic() < deadline:
                try:
                    client.chat.completions.create(
                        model=model, max_tokens=max_tokens,
                        messages=[{"role": "user", "content": "Tell me a story"}])
                    outcome = "ok"
                except openai.APIStatusError as e:
                    outcome = "status %d" % e.status_code
                except Exception as e:
                    outcome = type(e).__name__
                with lock:
                    counts[outcome] += 1
        threads = [threading.Thread(target=work) for _ in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out = {"ok": counts.pop("ok", 0), "failed": dict(counts)}
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
    let out = command
        .output()
        .await
        .unwrap_or_else(|e| panic!("running the openai client: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the openai client failed on {action}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the openai client printed no JSON ({e}): {stdout}"))
}
