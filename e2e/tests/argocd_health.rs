//! The Argo CD health checks, run against their `health_test.yaml` cases the way Argo CD runs
//! them. Each kind's script is `deploy/argocd/health/common.lua`, a blank line, then the kind's
//! own rules in `deploy/argocd/health/<Kind>/health.lua`, exactly as `render-cm-patch.sh` puts it
//! into `argocd-cm-patch.yaml`. Argo CD runs it in Lua 5.1 with only the base and table
//! libraries (and a safe `os`), the object as the global `obj`, the result a table with
//! `status` and `message`.
//!
//! Needs the `lua5.1` interpreter (Debian package `lua5.1`; `ALEPH_LUA` names another);
//! without it every test here fails rather than skips.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use aleph_e2e::repo_root;
use serde::Deserialize;
use serde_json::Value;

const KINDS: [&str; 7] = [
    "Tenant",
    "AIModel",
    "Plugin",
    "Pipeline",
    "PipelineRun",
    "StepTemplate",
    "ClusterStepTemplate",
];

/// Health statuses Argo CD knows.
const STATUSES: [&str; 6] = [
    "Healthy",
    "Progressing",
    "Degraded",
    "Suspended",
    "Missing",
    "Unknown",
];

/// Loads the health script (path in `ALEPH_HEALTH_SCRIPT`) into an environment holding only
/// what Argo CD's gopher-lua VM offers, with `obj` built from the Lua table literal on standard
/// input, runs it, checks the shape of its result and prints the status and the message on
/// two lines. Strings lose their methods too: without the string library they have none.
const HARNESS: &str = r#"
local scriptPath = os.getenv("ALEPH_HEALTH_SCRIPT")
local file = assert(io.open(scriptPath, "rb"))
local source = file:read("*a")
file:close()
local literal = io.stdin:read("*a")

local objectChunk = assert(loadstring("return " .. literal, "=object"))
setfenv(objectChunk, {})
local object = objectChunk()

local env = {
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
  pcall = pcall, xpcall = xpcall, select = select, tonumber = tonumber,
  tostring = tostring, type = type, unpack = unpack, print = print,
  rawequal = rawequal, rawget = rawget, rawset = rawset,
  getmetatable = getmetatable, setmetatable = setmetatable, _VERSION = _VERSION,
  table = {
    concat = table.concat, insert = table.insert, remove = table.remove,
    sort = table.sort, getn = table.getn, maxn = table.maxn,
  },
  os = { time = os.time, clock = os.clock, date = os.date },
  obj = object,
}
env._G = env

local chunk, loadError = loadstring(source, "=" .. scriptPath)
if chunk == nil then
  io.stderr:write("cannot load: " .. loadError .. "\n")
  os.exit(2)
end
setfenv(chunk, env)

local stringMeta = getmetatable("")
local stringIndex = stringMeta.__index
stringMeta.__index = nil
local ok, result = pcall(chunk)
stringMeta.__index = stringIndex

if not ok then
  io.stderr:write("failed: " .. tostring(result) .. "\n")
  os.exit(3)
end
if type(result) ~= "table" then
  io.stderr:write("returned a " .. type(result) .. ", not a table\n")
  os.exit(4)
end
if type(result.status) ~= "string" then
  io.stderr:write("status is a " .. type(result.status) .. ", not a string\n")
  os.exit(4)
end
if result.message ~= nil and type(result.message) ~= "string" then
  io.stderr:write("message is a " .. type(result.message) .. ", not a string\n")
  os.exit(4)
end
io.write(result.status, "\n", result.message or "", "\n")
"#;

#[derive(Debug, Deserialize)]
struct HealthTests {
    tests: Vec<HealthTest>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HealthTest {
    health_status: HealthStatus,
    input_path: String,
}

#[derive(Debug, Deserialize)]
struct HealthStatus {
    status: String,
    #[serde(default)]
    message: String,
}

fn health_dir() -> PathBuf {
    repo_root().join("deploy/argocd/health")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn lua() -> String {
    let lua = std::env::var("ALEPH_LUA").unwrap_or_else(|_| "lua5.1".to_string());
    match Command::new(&lua).arg("-v").output() {
        Ok(out) if out.status.success() => lua,
        Ok(out) => panic!(
            "`{lua} -v` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "cannot run `{lua}` ({e}): the Argo CD health checks need the Lua 5.1 interpreter; \
             install it (`apt-get install lua5.1`) or point ALEPH_LUA at one"
        ),
    }
}

/// Writes `value` as a Lua table constructor; JSON null becomes nil, as in Argo CD.
fn lua_literal(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("nil"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => lua_string(s, out),
        Value::Array(items) => {
            out.push('{');
            for item in items {
                lua_literal(item, out);
                out.push_str(", ");
            }
            out.push('}');
        }
        Value::Object(fields) => {
            out.push('{');
            for (key, item) in fields {
                out.push('[');
                lua_string(key, out);
                out.push_str("] = ");
                lua_literal(item, out);
                out.push_str(", ");
            }
            out.push('}');
        }
    }
}

/// A Lua string literal: printable ASCII and UTF-8 bytes as they are, the rest as `\ddd`.
fn lua_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\{:03}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Runs a health script on an object: its status and message, or why it failed.
fn run_health(lua: &str, script: &Path, object: &Value) -> Result<(String, String), String> {
    let mut literal = String::new();
    lua_literal(object, &mut literal);
    let mut child = Command::new(lua)
        .arg("-e")
        .arg(HARNESS)
        .env("ALEPH_HEALTH_SCRIPT", script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {lua}: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(literal.as_bytes())
        .map_err(|e| format!("cannot write the object: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("cannot wait for {lua}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{} exited with {}: {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let stdout = String::from_utf8(out.stdout).map_err(|e| format!("output not UTF-8: {e}"))?;
    let body = stdout.strip_suffix('\n').unwrap_or(&stdout);
    let (status, message) = body
        .split_once('\n')
        .ok_or_else(|| format!("unexpected output {stdout:?}"))?;
    Ok((status.to_string(), message.to_string()))
}

/// The self-contained script of a kind, as Argo CD gets it: the shared part, a blank line, then
/// the kind's own rules (what `deploy/argocd/render-cm-patch.sh` writes into the ConfigMap).
fn health_script(kind: &str) -> String {
    let kind_rules = health_dir().join(kind).join("health.lua");
    assert!(kind_rules.is_file(), "{} is missing", kind_rules.display());
    format!(
        "{}\n{}",
        read(&health_dir().join("common.lua")),
        read(&kind_rules)
    )
}

fn load_tests(kind: &str) -> HealthTests {
    let path = health_dir().join(kind).join("health_test.yaml");
    serde_saphyr::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not a health test file: {e}", path.display()))
}

fn check_kind(kind: &str) {
    let lua = lua();
    let dir = health_dir().join(kind);
    let script = Scratch::new(&format!("{kind}.lua"), &health_script(kind));
    let tests = load_tests(kind);
    assert!(
        tests.tests.len() >= 5,
        "{kind}: only {} test cases",
        tests.tests.len()
    );
    let mut failures = Vec::new();
    for case in &tests.tests {
        let expected = &case.health_status;
        assert!(
            STATUSES.contains(&expected.status.as_str()),
            "{kind}/{}: {:?} is not an Argo CD health status",
            case.input_path,
            expected.status
        );
        let input = dir.join(&case.input_path);
        let object: Value = serde_saphyr::from_str(&read(&input))
            .unwrap_or_else(|e| panic!("{} is not YAML: {e}", input.display()));
        assert_eq!(
            object.get("kind").and_then(Value::as_str),
            Some(kind),
            "{}: wrong kind",
            input.display()
        );
        match run_health(&lua, &script.path, &object) {
            Ok((status, message)) => {
                if status != expected.status || message != expected.message {
                    failures.push(format!(
                        "{}: got {status} {message:?}, want {} {:?}",
                        case.input_path, expected.status, expected.message
                    ));
                }
            }
            Err(e) => failures.push(format!("{}: {e}", case.input_path)),
        }
    }
    assert!(
        failures.is_empty(),
        "{kind} health check:\n  {}",
        failures.join("\n  ")
    );
}

#[test]
fn tenant_health() {
    check_kind("Tenant");
}

#[test]
fn aimodel_health() {
    check_kind("AIModel");
}

#[test]
fn plugin_health() {
    check_kind("Plugin");
}

#[test]
fn pipeline_health() {
    check_kind("Pipeline");
}

#[test]
fn pipelinerun_health() {
    check_kind("PipelineRun");
}

#[test]
fn steptemplate_health() {
    check_kind("StepTemplate");
}

#[test]
fn clustersteptemplate_health() {
    check_kind("ClusterStepTemplate");
}

#[test]
fn every_testdata_file_is_a_test_case() {
    for kind in KINDS {
        let tests = load_tests(kind);
        let used: Vec<&str> = tests.tests.iter().map(|t| t.input_path.as_str()).collect();
        let testdata = health_dir().join(kind).join("testdata");
        let entries = fs::read_dir(&testdata)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", testdata.display()));
        for entry in entries {
            let name = entry.expect("a directory entry").file_name();
            let path = format!("testdata/{}", name.to_string_lossy());
            assert!(
                used.contains(&path.as_str()),
                "{kind}/{path} is in no test case"
            );
        }
    }
}

#[test]
fn every_status_is_covered() {
    for kind in KINDS {
        let statuses: Vec<String> = load_tests(kind)
            .tests
            .into_iter()
            .map(|t| t.health_status.status)
            .collect();
        for wanted in ["Healthy", "Progressing", "Degraded"] {
            assert!(
                statuses.iter().any(|s| s == wanted),
                "{kind} has no test case that is {wanted}"
            );
        }
    }
}

/// The ConfigMap patch must carry exactly the scripts that these tests run.
#[test]
fn argocd_cm_patch_embeds_every_health_check() {
    let path = repo_root().join("deploy/argocd/argocd-cm-patch.yaml");
    let patch: Value = serde_saphyr::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    assert_eq!(patch["kind"], "ConfigMap");
    assert_eq!(patch["metadata"]["name"], "argocd-cm");
    for kind in KINDS {
        let key = format!("resource.customizations.health.aleph.dev_{kind}");
        let embedded = patch["data"][&key]
            .as_str()
            .unwrap_or_else(|| panic!("{} has no {key}", path.display()));
        assert!(
            embedded == health_script(kind),
            "{key} in {} differs from common.lua and {kind}/health.lua: \
             run deploy/argocd/render-cm-patch.sh",
            path.display()
        );
    }
}

static SCRATCH: AtomicUsize = AtomicUsize::new(0);

/// A script written to a file of its own for the harness to load, removed when dropped.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new(name: &str, script: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "aleph-health-{}-{}-{name}",
            std::process::id(),
            SCRATCH.fetch_add(1, Ordering::Relaxed)
        ));
        fs::write(&path, script).expect("write a scratch script");
        Scratch { path }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Runs a throw-away script through the harness.
fn run_snippet(script: &str, object: &Value) -> Result<(String, String), String> {
    let lua = lua();
    let script = Scratch::new("snippet.lua", script);
    run_health(&lua, &script.path, object)
}

#[test]
fn sandbox_offers_only_base_table_and_safe_os() {
    let object = serde_json::json!({"kind": "Tenant"});
    for forbidden in [
        "return { status = string.upper('x') }",
        "return { status = ('x'):upper() }",
        "return { status = io.read() }",
        "return { status = os.getenv('HOME') }",
        "return { status = debug.traceback() }",
        "return { status = dofile('/etc/hostname') }",
        "return { status = require('string') }",
    ] {
        assert!(
            run_snippet(forbidden, &object).is_err(),
            "the sandbox let `{forbidden}` run"
        );
    }
    let allowed = "local t = {} table.insert(t, obj.kind) \
                   return { status = 'Healthy', message = table.concat(t, ',') .. tostring(os.time() > 0) }";
    assert_eq!(
        run_snippet(allowed, &object),
        Ok(("Healthy".to_string(), "Tenanttrue".to_string()))
    );
}

#[test]
fn objects_reach_lua_intact() {
    let object = serde_json::json!({
        "message": "quote \" backslash \\ newline \n tab \t bell \u{7} unicode é ✓ ]] [[",
        "count": 3,
        "ratio": 0.5,
        "flag": false,
        "missing": null,
        "list": ["a", null, "c"],
    });
    let script = "local m = obj.message .. '|' .. obj.count .. '|' .. obj.ratio .. '|' \
                  .. tostring(obj.flag) .. '|' .. tostring(obj.missing) .. '|' .. obj.list[1] .. obj.list[3] \
                  return { status = 'Healthy', message = m }";
    let (status, message) = run_snippet(script, &object).expect("the snippet runs");
    assert_eq!(status, "Healthy");
    assert_eq!(
        message,
        "quote \" backslash \\ newline \n tab \t bell \u{7} unicode é ✓ ]] [[|3|0.5|false|nil|ac"
    );
}
