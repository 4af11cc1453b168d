//! The project's container images (`e2e/images`), without a cluster:
//!
//! - built twice from the same inputs, the busybox and pause archives are
//!   byte-identical (same manifest digest), and their layout is what
//!   `ctr images import` takes (reference annotations, blobs named by their
//!   digest, `rootfs.diff_ids` equal to the layers' digests);
//! - the aleph-operator image carries the config of the Dockerfile's final
//!   stage (user, ports, entrypoint, command, labels) and a static binary;
//! - the CoreDNS image runs as 65532 with the capability to bind port 53;
//! - the model-cache image's downloader, run from the image's own files with
//!   chroot, fetches a key, a prefix and a `.tar.gz` from an S3 server (moto),
//!   and a repository from a stand-in for the Hugging Face Hub (which this
//!   machine cannot reach); it fetches nothing the second time, and explains a
//!   missing object in one line.
//!
//! A missing prerequisite (gcc, apt-get, the CoreDNS binary, moto's virtualenv,
//! root for chroot) fails the test with what to do: nothing is skipped.
//!
//!   cargo test -p aleph-e2e --test images

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository's root")
}

/// The cache directory of e2e/cluster/lib.sh.
fn aleph_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("ALEPH_CACHE") {
        return dir.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME is set");
    base.join("aleph")
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir =
            std::env::temp_dir().join(format!("aleph-images-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Fails the test unless `program` is on PATH.
fn require(program: &str, why: &str) {
    let found = run(Command::new("sh").args(["-c", &format!("command -v {program}")]))
        .status
        .success();
    assert!(found, "{program} is missing: {why}");
}

fn require_root(why: &str) {
    let uid = run(Command::new("id").arg("-u"));
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "this test must run as root: {why}"
    );
}

/// One image as build.sh reports it.
#[derive(Debug, Clone)]
struct Built {
    reference: String,
    digest: String,
    file: PathBuf,
}

/// Runs `e2e/images/build.sh NAMES` (into `out`, or the default directory).
fn build(out: Option<&Path>, names: &[&str]) -> BTreeMap<String, Built> {
    let mut cmd = Command::new(repo().join("e2e/images/build.sh"));
    cmd.args(names).stdin(Stdio::null());
    if let Some(out) = out {
        cmd.env("ALEPH_IMAGES_DIR", out);
    }
    let output = run(&mut cmd);
    assert!(
        output.status.success(),
        "e2e/images/build.sh {} failed:\n{}",
        names.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    let mut built = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [name, reference, digest, file] = fields[..] else {
            panic!("build.sh printed an unexpected line: {line:?}");
        };
        built.insert(
            name.to_string(),
            Built {
                reference: reference.to_string(),
                digest: digest.to_string(),
                file: file.into(),
            },
        );
    }
    for name in names {
        assert!(built.contains_key(*name), "build.sh did not report {name}");
    }
    built
}

fn sha256(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data)
        .expect("write to sha256sum");
    let out = child.wait_with_output().expect("sha256sum");
    let text = String::from_utf8_lossy(&out.stdout);
    format!(
        "sha256:{}",
        text.split_whitespace().next().unwrap_or_default()
    )
}

// --- a tar reader: enough for the archives oci.py writes (ustar + PAX) --------

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    link: String,
    data: Vec<u8>,
    pax: BTreeMap<String, Vec<u8>>,
}

fn octal(field: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(field);
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if text.is_empty() {
        return 0;
    }
    u64::from_str_radix(text, 8).unwrap_or_else(|e| panic!("bad octal field {text:?}: {e}"))
}

fn c_string(field: &[u8]) -> String {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// PAX records: "LENGTH key=value\n", LENGTH counting the whole record.
fn pax_records(mut data: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    while !data.is_empty() {
        let space = data
            .iter()
            .position(|b| *b == b' ')
            .expect("a PAX record's length");
        let len: usize = String::from_utf8_lossy(&data[..space])
            .parse()
            .expect("a PAX record's length");
        let record = &data[space + 1..len - 1]; // without the newline
        let eq = record
            .iter()
            .position(|b| *b == b'=')
            .expect("a PAX key=value");
        out.insert(
            String::from_utf8_lossy(&record[..eq]).into_owned(),
            record[eq + 1..].to_vec(),
        );
        data = &data[len..];
    }
    out
}

fn read_tar(bytes: &[u8]) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut pos = 0;
    let mut pax = BTreeMap::new();
    while pos + 512 <= bytes.len() {
        let header = &bytes[pos..pos + 512];
        if header.iter().all(|b| *b == 0) {
            break;
        }
        let size = usize::try_from(octal(&header[124..136])).expect("a size");
        let kind = header[156];
        let data = bytes[pos + 512..pos + 512 + size].to_vec();
        pos += 512 + size.div_ceil(512) * 512;
        match kind {
            b'x' => {
                pax = pax_records(&data);
                continue;
            }
            b'g' => continue,
            _ => {}
        }
        let prefix = c_string(&header[345..500]);
        let mut name = c_string(&header[0..100]);
        if !prefix.is_empty() {
            name = format!("{prefix}/{name}");
        }
        if let Some(path) = pax.get("path") {
            name = String::from_utf8_lossy(path).into_owned();
        }
        let link = pax.get("linkpath").map_or_else(
            || c_string(&header[157..257]),
            |l| String::from_utf8_lossy(l).into_owned(),
        );
        entries.push(Entry {
            name: name.trim_end_matches('/').to_string(),
            kind,
            mode: u32::try_from(octal(&header[100..108])).expect("a mode"),
            uid: octal(&header[108..116]),
            gid: octal(&header[116..124]),
            link,
            data,
            pax: std::mem::take(&mut pax),
        });
    }
    entries
}

/// An image archive, read whole.
struct Image {
    entries: BTreeMap<String, Entry>,
    index: Value,
    manifest: Value,
    config: Value,
    /// The entries of each layer, in order.
    layers: Vec<Vec<Entry>>,
}

impl Image {
    fn open(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let entries: BTreeMap<String, Entry> = read_tar(&bytes)
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect();
        let json = |name: &str| -> Value {
            let entry = entries
                .get(name)
                .unwrap_or_else(|| panic!("{}: no {name}", path.display()));
            serde_json::from_slice(&entry.data).unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let blob_name = |digest: &Value| {
            let digest = digest.as_str().expect("a digest");
            format!(
                "blobs/sha256/{}",
                digest.strip_prefix("sha256:").expect("a sha256 digest")
            )
        };
        let index = json("index.json");
        let manifest = json(&blob_name(&index["manifests"][0]["digest"]));
        let config = json(&blob_name(&manifest["config"]["digest"]));
        let layers = manifest["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(|l| read_tar(&entries[&blob_name(&l["digest"])].data))
            .collect();
        Self {
            entries,
            index,
            manifest,
            config,
            layers,
        }
    }

    /// The file at `path` (no leading slash) as the last layer holding it has it.
    fn file(&self, path: &str) -> &Entry {
        self.layers
            .iter()
            .rev()
            .flat_map(|l| l.iter())
            .find(|e| e.name == path)
            .unwrap_or_else(|| panic!("the image has no /{path}"))
    }

    fn config_field(&self, field: &str) -> &Value {
        &self.config["config"][field]
    }

    fn strings(&self, field: &str) -> Vec<String> {
        self.config_field(field)
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn ports(&self) -> BTreeSet<String> {
        self.config_field("ExposedPorts")
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn env(&self) -> Vec<(String, String)> {
        self.strings("Env")
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

/// What `ctr images import` needs, and what makes the digests mean something.
fn check_layout(image: &Image, built: &Built) {
    let layout: Value =
        serde_json::from_slice(&image.entries["oci-layout"].data).expect("oci-layout is JSON");
    assert_eq!(layout["imageLayoutVersion"], "1.0.0");
    let manifests = image.index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1, "one manifest per archive");
    let descriptor = &manifests[0];
    assert_eq!(descriptor["digest"], built.digest.as_str());
    for annotation in [
        "org.opencontainers.image.ref.name",
        "io.containerd.image.name",
    ] {
        assert_eq!(
            descriptor["annotations"][annotation],
            built.reference.as_str(),
            "{annotation}"
        );
    }
    // Every blob is named by the digest of its content.
    for (name, entry) in &image.entries {
        if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            assert_eq!(sha256(&entry.data), format!("sha256:{hex}"), "{name}");
        }
    }
    assert_eq!(
        image.manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let layers = image.manifest["layers"].as_array().expect("layers");
    let digests: Vec<&Value> = layers.iter().map(|l| &l["digest"]).collect();
    let diff_ids: Vec<&Value> = image.config["rootfs"]["diff_ids"]
        .as_array()
        .expect("diff_ids")
        .iter()
        .collect();
    // Uncompressed layers: each diff_id is its layer's digest.
    assert_eq!(diff_ids, digests, "rootfs.diff_ids are the layers' digests");
    for layer in layers {
        assert_eq!(layer["mediaType"], "application/vnd.oci.image.layer.v1.tar");
        let name = format!(
            "blobs/sha256/{}",
            layer["digest"]
                .as_str()
                .and_then(|d| d.strip_prefix("sha256:"))
                .expect("a digest")
        );
        assert_eq!(
            layer["size"].as_u64(),
            Some(image.entries[&name].data.len() as u64)
        );
    }
    assert_eq!(image.config["os"], "linux");
    if std::env::var_os("SOURCE_DATE_EPOCH").is_none() {
        assert_eq!(image.config["created"], "1970-01-01T00:00:00Z");
    }
}

#[test]
fn busybox_and_pause_build_byte_identical_twice() {
    require(
        "gcc",
        "the pause image compiles e2e/images/pause/pause.c (apt-get install gcc libc6-dev)",
    );
    require(
        "apt-get",
        "the busybox image comes from Debian's busybox-static (apt-get download)",
    );
    require(
        "dpkg-deb",
        "the busybox image unpacks busybox-static with dpkg-deb",
    );
    let (a, b) = (TempDir::new("a"), TempDir::new("b"));
    let first = build(Some(&a.0), &["busybox", "pause"]);
    let second = build(Some(&b.0), &["busybox", "pause"]);
    for name in ["busybox", "pause"] {
        let (x, y) = (&first[name], &second[name]);
        assert_eq!(x.digest, y.digest, "{name}: two builds, two digests");
        let (bx, by) = (
            std::fs::read(&x.file).expect("first archive"),
            std::fs::read(&y.file).expect("second archive"),
        );
        assert!(bx == by, "{name}: the two archives differ");
        check_layout(&Image::open(&x.file), x);
    }

    let pause = Image::open(&first["pause"].file);
    assert_eq!(first["pause"].reference, "aleph.local/pause:3.10");
    assert_eq!(pause.strings("Entrypoint"), ["/pause"]);
    assert_eq!(pause.config_field("User"), "65535:65535");
    assert_eq!(pause.file("pause").mode, 0o755);

    let busybox = Image::open(&first["busybox"].file);
    assert_eq!(first["busybox"].reference, "aleph.local/busybox:dev");
    // What the tests run in it.
    for applet in ["sh", "nc", "wget", "nslookup", "sleep", "httpd"] {
        let entry = busybox.file(&format!("bin/{applet}"));
        assert_eq!(entry.kind, b'2', "/bin/{applet} is a symbolic link");
        assert_eq!(entry.link, "busybox");
    }
    let passwd = String::from_utf8_lossy(&busybox.file("etc/passwd").data).into_owned();
    for user in ["root:x:0:0:", "nobody:x:65534:", "nonroot:x:65532:65532:"] {
        assert!(passwd.contains(user), "/etc/passwd lacks {user}: {passwd}");
    }
    assert!(String::from_utf8_lossy(&busybox.file("etc/group").data).contains("nonroot:x:65532:"));
    assert_eq!(busybox.file("tmp").mode, 0o1777);
    // Reproducible metadata in the layer itself.
    for layer in &busybox.layers {
        for entry in layer {
            assert_eq!((entry.uid, entry.gid), (0, 0), "{}", entry.name);
        }
    }
}

/// USER, EXPOSE, ENTRYPOINT, CMD and LABELs of the Dockerfile's last stage,
/// with `${ARG}` replaced by the stage's ARG defaults.
#[derive(Debug, Default)]
struct Stage {
    user: String,
    expose: BTreeSet<String>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    labels: BTreeMap<String, String>,
}

fn final_stage(dockerfile: &str) -> Stage {
    // Logical lines: comments dropped, continuations joined.
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            if !current.trim().is_empty() {
                lines.push(current.trim().to_string());
            }
            current.clear();
        }
    }
    let from = lines
        .iter()
        .rposition(|l| l.to_ascii_uppercase().starts_with("FROM "))
        .expect("the Dockerfile has a FROM");
    let mut args: BTreeMap<String, String> = BTreeMap::new();
    let mut stage = Stage::default();
    let expand = |value: &str, args: &BTreeMap<String, String>| {
        let mut out = value.to_string();
        for (k, v) in args {
            out = out
                .replace(&format!("${{{k}}}"), v)
                .replace(&format!("${k}"), v);
        }
        out
    };
    for line in &lines[from + 1..] {
        let (instruction, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        match instruction.to_ascii_uppercase().as_str() {
            "ARG" => {
                let (name, default) = rest.split_once('=').unwrap_or((rest, ""));
                args.insert(name.to_string(), default.trim_matches('"').to_string());
            }
            "USER" => stage.user = expand(rest, &args),
            "EXPOSE" => {
                for port in rest.split_whitespace() {
                    let port = expand(port, &args);
                    stage.expose.insert(if port.contains('/') {
                        port
                    } else {
                        format!("{port}/tcp")
                    });
                }
            }
            "ENTRYPOINT" => {
                stage.entrypoint = serde_json::from_str(rest).expect("ENTRYPOINT in JSON form")
            }
            "CMD" => stage.cmd = serde_json::from_str(rest).expect("CMD in JSON form"),
            "LABEL" => {
                for (k, v) in label_pairs(rest) {
                    stage.labels.insert(k, expand(&v, &args));
                }
            }
            _ => {}
        }
    }
    stage
}

/// `k="v w" k2=v2` -> pairs.
fn label_pairs(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return pairs;
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                value.push(c);
            }
        }
        pairs.push((key.trim().to_string(), value));
    }
}

/// The ELF file has no PT_INTERP program header: no dynamic loader, no shared libraries.
fn has_interpreter(elf: &[u8]) -> bool {
    assert!(
        elf.len() > 64 && &elf[..4] == b"\x7fELF" && elf[4] == 2 && elf[5] == 1,
        "not a 64-bit little-endian ELF file"
    );
    let u16_at = |at: usize| usize::from(u16::from_le_bytes([elf[at], elf[at + 1]]));
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&elf[at..at + 8]);
        usize::try_from(u64::from_le_bytes(b)).expect("an offset")
    };
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        u32::from_le_bytes([elf[at], elf[at + 1], elf[at + 2], elf[at + 3]]) == 3 // PT_INTERP
    })
}

#[test]
fn the_operator_image_is_the_dockerfile_final_stage_with_a_static_binary() {
    require("cargo", "the aleph-operator image builds the operator");
    let built = build(None, &["aleph-operator"]);
    let built = &built["aleph-operator"];
    assert_eq!(built.reference, "aleph.local/aleph-operator:dev");
    let image = Image::open(&built.file);
    check_layout(&image, built);

    let dockerfile =
        std::fs::read_to_string(repo().join("Dockerfile")).expect("the Dockerfile is readable");
    let stage = final_stage(&dockerfile);
    assert_eq!(
        stage.user, "65532:65532",
        "parsed the Dockerfile: {stage:?}"
    );
    assert_eq!(image.config_field("User"), stage.user.as_str());
    assert_eq!(image.ports(), stage.expose);
    assert_eq!(image.strings("Entrypoint"), stage.entrypoint);
    assert_eq!(image.strings("Cmd"), stage.cmd);
    let labels: BTreeMap<String, String> = image
        .config_field("Labels")
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !stage.labels.is_empty(),
        "parsed no LABEL from the Dockerfile"
    );
    assert_eq!(labels, stage.labels);

    // The binary the entrypoint names is static.
    let binary = image.file(stage.entrypoint[0].trim_start_matches('/'));
    assert_eq!(binary.mode, 0o755);
    assert!(
        !has_interpreter(&binary.data),
        "/aleph-operator asks for a dynamic loader (PT_INTERP)"
    );
    let dir = TempDir::new("operator");
    let path = dir.0.join("aleph-operator");
    std::fs::write(&path, &binary.data).expect("write the binary");
    let ldd = run(Command::new("ldd").arg(&path));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&ldd.stdout),
        String::from_utf8_lossy(&ldd.stderr)
    );
    assert!(
        said.contains("not a dynamic executable") || said.contains("statically linked"),
        "ldd: {said}"
    );

    // What distroless/static gives the release image.
    let passwd = String::from_utf8_lossy(&image.file("etc/passwd").data).into_owned();
    assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");
    assert!(String::from_utf8_lossy(&image.file("etc/group").data).contains("nonroot:x:65532:"));
    let bundle = image.file("etc/ssl/certs/ca-certificates.crt");
    assert!(String::from_utf8_lossy(&bundle.data).contains("BEGIN CERTIFICATE"));
    assert_eq!(image.file("tmp").mode, 0o1777);
    let home = image.file("home/nonroot");
    assert_eq!((home.uid, home.gid), (65532, 65532));
    let parent = image.file("home");
    assert_eq!((parent.uid, parent.gid), (0, 0), "/home belongs to root");
}

#[test]
fn the_coredns_image_binds_port_53_as_nonroot() {
    // build.sh fails, naming e2e/cluster/build.sh, when the binary is not built.
    let built = build(None, &["coredns"]);
    let built = &built["coredns"];
    let image = Image::open(&built.file);
    check_layout(&image, built);
    assert_eq!(image.strings("Entrypoint"), ["/coredns"]);
    assert_eq!(image.config_field("User"), "65532:65532");
    assert_eq!(
        image.ports(),
        BTreeSet::from(["53/tcp".to_string(), "53/udp".to_string()])
    );
    // security.capability: revision 2 with the effective flag, permitted = bit 10.
    let cap = image
        .file("coredns")
        .pax
        .get("SCHILY.xattr.security.capability")
        .expect("/coredns carries a file capability");
    assert_eq!(
        cap,
        &[1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
}

// --- the model-cache image against moto's S3 ----------------------------------

/// moto's server, stopped when dropped.
struct Moto {
    child: Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The virtualenv `e2e/sagemaker/moto.sh install` makes.
fn moto_venv() -> PathBuf {
    let script = std::fs::read_to_string(repo().join("e2e/sagemaker/moto.sh")).expect("moto.sh");
    let version = script
        .lines()
        .find_map(|l| l.strip_prefix("MOTO_VERSION="))
        .expect("moto.sh sets MOTO_VERSION");
    let venv = aleph_cache().join(format!("venv-moto-{version}"));
    assert!(
        venv.join("bin/moto_server").is_file() && venv.join(".installed").is_file(),
        "moto's virtualenv {} is missing: run e2e/sagemaker/moto.sh install",
        venv.display()
    );
    venv
}

fn start_moto(venv: &Path, log: &Path) -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let log = std::fs::File::create(log).expect("moto's log");
    let child = Command::new(venv.join("bin/moto_server"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start moto_server");
    let moto = Moto {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    wait_listening(port, Duration::from_secs(60), "moto_server");
    moto
}

/// The AWS settings of every process talking to moto: fixed test credentials and
/// no instance metadata (nothing may leave the machine).
fn aws_env(moto: &Moto) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", moto.url.clone()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}

/// The objects of the test: a model file, a config under a sub-directory, and
/// both of them again as a .tar.gz.
const SEED: &str = r#"
import io, os, tarfile, boto3
s3 = boto3.client("s3")
s3.create_bucket(Bucket="models")
model = bytes(range(256)) * 400
config = b'{"layers": 2}\n'
s3.put_object(Bucket="models", Key="tiny/model.gguf", Body=model)
s3.put_object(Bucket="models", Key="tiny/sub/config.json", Body=config)
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w:gz") as tar:
    for name, data in (("model.gguf", model), ("sub/config.json", config)):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
s3.put_object(Bucket="models", Key="bundles/tiny.tar.gz", Body=buf.getvalue())
"#;

/// Runs the image's entrypoint in `root` with chroot, with the image's
/// environment and `env`: exit code, stdout, stderr.
fn run_image(image: &Image, root: &Path, env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new("/usr/sbin/chroot");
    cmd.arg(root)
        .args(image.strings("Entrypoint"))
        .env_clear()
        .envs(image.env())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null());
    run(&mut cmd)
}

fn download(image: &Image, root: &Path, moto: &Moto, source: &str, target: &str) -> Output {
    let mut env = aws_env(moto);
    env.extend([
        ("SOURCE", source.to_string()),
        ("TARGET", target.to_string()),
    ]);
    run_image(image, root, &env)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts that the run said `said` on its standard output.
fn assert_said(out: &Output, said: &str) {
    let stdout = text(&out.stdout);
    assert!(stdout.contains(said), "{stdout}");
}

/// Asserts that the run reported `expected` as its error, on its standard
/// error and in the termination log.
fn assert_reported(out: &Output, root: &Path, expected: &str) {
    assert_eq!(text(&out.stderr).trim_end(), expected);
    assert_eq!(
        std::fs::read_to_string(root.join("dev/termination-log"))
            .expect("termination-log")
            .trim_end(),
        expected
    );
}

/// Waits until something listens on the local `port`, for at most `within`;
/// `what` names it in the failure.
fn wait_listening(port: u16, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port} in {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_world_readable(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("read the target") {
        let path = entry.expect("an entry").path();
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        if path.is_dir() {
            assert_eq!(mode & 0o555, 0o555, "{} is not a+rx", path.display());
            assert_world_readable(&path);
        } else {
            assert_eq!(mode & 0o444, 0o444, "{} is not a+r", path.display());
        }
    }
}

/// The model-cache image, built and unpacked into a temporary directory (its
/// `rootfs`), with the file where the kubelet would take the termination message.
fn model_cache_rootfs() -> (Image, TempDir, PathBuf) {
    require_root("the downloader runs from the image's files with chroot");
    require(
        "dpkg-deb",
        "the model-cache image unpacks Debian's python3.11",
    );
    let built = build(None, &["model-cache"]);
    let built = &built["model-cache"];
    assert_eq!(built.reference, "aleph.local/model-cache:dev");
    let image = Image::open(&built.file);
    check_layout(&image, built);
    assert!(
        image
            .env()
            .iter()
            .any(|(k, v)| k == "PYTHONDONTWRITEBYTECODE" && v == "1")
    );
    assert_eq!(image.config_field("WorkingDir"), "/tmp");

    let dir = TempDir::new("model-cache");
    let root = dir.0.join("rootfs");
    let unpack = run(Command::new("python3")
        .arg(repo().join("e2e/images/oci.py"))
        .arg("unpack")
        .arg(&built.file)
        .arg(&root));
    assert!(
        unpack.status.success(),
        "oci.py unpack: {}",
        text(&unpack.stderr)
    );
    // Where the kubelet would put the termination message file.
    std::fs::create_dir_all(root.join("dev")).expect("mkdir /dev");
    std::fs::write(root.join("dev/termination-log"), "").expect("termination-log");
    (image, dir, root)
}

#[test]
fn the_model_cache_image_downloads_from_s3_once_and_explains_failures() {
    let venv = moto_venv();
    let (image, dir, root) = model_cache_rootfs();
    let moto = start_moto(&venv, &dir.0.join("moto.log"));
    let seed = run(Command::new(venv.join("bin/python"))
        .args(["-c", SEED])
        .envs(aws_env(&moto)));
    assert!(
        seed.status.success(),
        "seeding moto: {}",
        text(&seed.stderr)
    );
    let model: Vec<u8> = (0..=255u8).cycle().take(256 * 400).collect();

    // One object.
    let out = download(
        &image,
        &root,
        &moto,
        "s3://models/tiny/model.gguf",
        "/mnt/single",
    );
    assert!(out.status.success(), "single key: {}", text(&out.stderr));
    assert_said(&out, "downloaded 1 files");
    let file = root.join("mnt/single/model.gguf");
    assert_eq!(std::fs::read(&file).expect("the model file"), model);
    let again = download(
        &image,
        &root,
        &moto,
        "s3://models/tiny/model.gguf",
        "/mnt/single",
    );
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).contains("nothing to download"),
        "a second run fetches nothing: {}",
        text(&again.stdout)
    );
    // A file of the wrong size (a run killed by hand, say) is fetched again.
    std::fs::write(&file, b"truncated").expect("truncate");
    let repair = download(
        &image,
        &root,
        &moto,
        "s3://models/tiny/model.gguf",
        "/mnt/single",
    );
    assert!(repair.status.success(), "{}", text(&repair.stderr));
    assert_eq!(std::fs::read(&file).expect("the model file"), model);

    // A prefix: every object under it, at its relative path.
    for _ in 0..2 {
        let out = download(&image, &root, &moto, "s3://models/tiny", "/mnt/prefix");
        assert!(out.status.success(), "prefix: {}", text(&out.stderr));
    }
    let out = download(&image, &root, &moto, "s3://models/tiny/", "/mnt/prefix");
    assert_said(&out, "nothing to download: all 2 files");
    assert_eq!(
        std::fs::read(root.join("mnt/prefix/model.gguf")).expect("model"),
        model
    );
    assert_eq!(
        std::fs::read(root.join("mnt/prefix/sub/config.json")).expect("config"),
        b"{\"layers\": 2}\n"
    );

    // A .tar.gz: extracted.
    let out = download(
        &image,
        &root,
        &moto,
        "s3://models/bundles/tiny.tar.gz",
        "/mnt/archive",
    );
    assert!(out.status.success(), "archive: {}", text(&out.stderr));
    assert_eq!(
        std::fs::read(root.join("mnt/archive/model.gguf")).expect("model"),
        model
    );
    assert!(root.join("mnt/archive/sub/config.json").is_file());
    let again = download(
        &image,
        &root,
        &moto,
        "s3://models/bundles/tiny.tar.gz",
        "/mnt/archive",
    );
    assert_said(&again, "nothing to download");

    // Serving pods run as other users: everything is readable by all.
    assert_world_readable(&root.join("mnt"));
    // No temporary file is left behind.
    for target in ["single", "prefix", "archive"] {
        let leftovers: Vec<_> = std::fs::read_dir(root.join("mnt").join(target))
            .expect("target")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
            .collect();
        assert!(leftovers.is_empty(), "{target}: {leftovers:?}");
    }

    // A missing object: one line naming the source and the cause, also in the
    // termination log.
    let missing = "s3://models/tiny/missing.gguf";
    let out = download(&image, &root, &moto, missing, "/mnt/missing");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let expected = format!("{missing}: no such object (NoSuchKey)");
    assert_reported(&out, &root, &expected);
    let out = download(
        &image,
        &root,
        &moto,
        "s3://no-such-bucket/x",
        "/mnt/missing",
    );
    assert_eq!(
        text(&out.stderr).trim_end(),
        "s3://no-such-bucket/x: no such bucket (NoSuchBucket)"
    );
}

/// A stand-in for the Hugging Face Hub: the two calls `huggingface_hub` makes
/// (a model's info at a revision, then each file at the commit it names), one
/// repository `org/tiny`, 404 with the Hub's error code for anything else.
const FAKE_HUB: &str = r#"
import hashlib, json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
FILES = {"config.json": b'{"layers": 2}\n', "weights/model.safetensors": bytes(range(256)) * 100}
SHA = "0123456789abcdef0123456789abcdef01234567"
class Hub(BaseHTTPRequestHandler):
    def reply(self, code, body, headers):
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
    def do_HEAD(self):
        self.do_GET()
    def do_GET(self):
        path = self.path.split("?")[0]
        sys.stderr.write(f"{self.command} {path}\n")
        if path in ("/api/models/org/tiny", "/api/models/org/tiny/revision/main"):
            siblings = [{"rfilename": n, "size": len(d)} for n, d in FILES.items()]
            body = json.dumps({"id": "org/tiny", "sha": SHA, "siblings": siblings}).encode()
            return self.reply(200, body, {"Content-Type": "application/json"})
        if path.startswith("/api/models/"):
            return self.reply(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
        prefix = f"/org/tiny/resolve/{SHA}/"
        name = path[len(prefix):] if path.startswith(prefix) else None
        if name in FILES:
            etag = '"' + hashlib.sha1(FILES[name]).hexdigest() + '"'
            return self.reply(200, FILES[name], {"X-Repo-Commit": SHA, "ETag": etag})
        self.reply(404, b"not found", {"X-Error-Code": "EntryNotFound"})
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Hub).serve_forever()
"#;

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_model_cache_image_downloads_a_hugging_face_repository_once() {
    let (image, dir, root) = model_cache_rootfs();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let log = std::fs::File::create(dir.0.join("hub.log")).expect("the hub's log");
    let _hub = Killed(
        Command::new("python3")
            .args(["-c", FAKE_HUB, &port.to_string()])
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the stand-in Hub"),
    );
    wait_listening(port, Duration::from_secs(30), "the stand-in Hub");
    let hf = |source: &str, target: &str| {
        run_image(
            &image,
            &root,
            &[
                ("HF_ENDPOINT", format!("http://127.0.0.1:{port}")),
                ("SOURCE", source.to_string()),
                ("TARGET", target.to_string()),
            ],
        )
    };
    let out = hf("hf://org/tiny@main", "/mnt/hf");
    assert!(out.status.success(), "hf: {}", text(&out.stderr));
    assert_said(&out, "downloaded 2 files");
    assert_eq!(
        std::fs::read(root.join("mnt/hf/weights/model.safetensors")).expect("weights"),
        (0..=255u8).cycle().take(25600).collect::<Vec<u8>>()
    );
    assert_eq!(
        std::fs::read(root.join("mnt/hf/config.json")).expect("config"),
        b"{\"layers\": 2}\n"
    );
    // huggingface_hub's bookkeeping does not stay in the model's directory.
    let names: BTreeSet<String> = std::fs::read_dir(root.join("mnt/hf"))
        .expect("target")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["config.json".to_string(), "weights".to_string()])
    );
    assert_world_readable(&root.join("mnt/hf"));
    let again = hf("hf://org/tiny@main", "/mnt/hf");
    assert_said(&again, "nothing to download");

    let out = hf("hf://org/missing", "/mnt/missing");
    assert_eq!(out.status.code(), Some(1));
    let expected = "hf://org/missing: no such repository, or it is private and no token can read it (HTTP 404)";
    assert_reported(&out, &root, expected);
}
