#!/usr/bin/env python3
"""Builds OCI image-layout archives from directory trees, without a container engine.

    oci.py build --ref aleph.local/x:dev --layer ROOTFS:/ [--layer FILE:/x] \
        [--entrypoint '["/x"]'] [--cmd '["run"]'] [--env K=V] [--user 65532:65532] \
        [--workdir /] [--expose 8080/tcp] [--label k=v] [--file-cap /x=cap_net_bind_service] \
        --out x.tar
    oci.py unpack x.tar DIR

`build` writes a tar holding `oci-layout`, `index.json` and `blobs/sha256/...`, which
`ctr -n k8s.io images import` takes as is, and prints the manifest's digest.
`unpack` applies an archive's layers in order into DIR (to run an image's files
with chroot in tests).

The same inputs always give the same bytes, hence the same digest: a rebuild of
unchanged inputs changes nothing on a node, and a test can compare two builds.
Everything that would vary between two runs is pinned:
  - entries are sorted by path; hard links point at the first path (in that order)
    of their inode within the layer; symbolic links are kept as they are;
  - mtime is SOURCE_DATE_EPOCH (0 when unset), and so is the config's `created`;
  - owners are 0:0 (or the UID:GID a layer names), user and group names empty;
  - modes depend only on what the build means, not on the umask of the machine
    that produced the files: 0755 for directories and executables, 0644 for the
    rest, and the sticky bit is kept (for /tmp); setuid and setgid are dropped;
  - JSON documents are written with sorted keys and no whitespace.

Layers are plain tars (application/vnd.oci.image.layer.v1.tar): compression would
only add a way for two builds to differ, and the archives never leave the machine.
Python 3 standard library only.
"""

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import stat
import struct
import sys
import tarfile
import tempfile
import time

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
# Images without a PATH of their own would leave it to the runtime's defaults,
# which differ between runtimes; this is the one Docker and containerd use.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The capabilities --file-cap knows (linux/capability.h), enough for network daemons.
CAPABILITIES = {"cap_net_bind_service": 10, "cap_net_admin": 12, "cap_net_raw": 13}


def fail(message):
    print(f"oci.py: {message}", file=sys.stderr)
    sys.exit(1)


def epoch():
    value = os.environ.get("SOURCE_DATE_EPOCH", "0")
    if not value.isdigit():
        fail(f"SOURCE_DATE_EPOCH must be a whole number of seconds, not {value!r}")
    return int(value)


def file_caps(specs):
    """--file-cap /PATH=cap_a,cap_b -> {archive path: PAX records}.

    A file capability lives in the `security.capability` extended attribute; tar
    carries it as a SCHILY.xattr record, which containerd applies when it unpacks
    the layer. It lets a program running as a non-root user do one privileged
    thing (bind port 53) without running as root.
    """
    out = {}
    for spec in specs:
        path, _, names = spec.partition("=")
        bits = 0
        for name in filter(None, names.split(",")):
            if name not in CAPABILITIES:
                fail(f"--file-cap {spec!r}: unknown capability {name}; known: {', '.join(CAPABILITIES)}")
            bits |= 1 << CAPABILITIES[name]
        if not path.startswith("/") or not bits:
            fail(f"--file-cap {spec!r}: expected /PATH=cap_name[,cap_name]")
        # struct vfs_cap_data, revision 2, with the effective flag: permitted
        # (low, high) and inheritable (low, high) 32-bit words.
        value = struct.pack("<IIIII", 0x02000001, bits & 0xFFFFFFFF, 0, bits >> 32, 0)
        # PAX values are text: every byte here is below 0x80, so Latin-1 round-trips.
        out[path.strip("/")] = {"SCHILY.xattr.security.capability": value.decode("latin-1")}
    return out


def normal_mode(st):
    if stat.S_ISDIR(st.st_mode):
        return 0o1777 if st.st_mode & stat.S_ISVTX else 0o755
    if st.st_mode & 0o111:
        return 0o755
    return 0o644


class Layer:
    """One layer: a source (a directory tree or one file) placed at `dest`."""

    def __init__(self, spec):
        # SRC:DEST or SRC:DEST:UID:GID (a source path holding ':' is not supported).
        parts = spec.split(":")
        if len(parts) not in (2, 4) or not parts[0] or not parts[1].startswith("/"):
            fail(f"--layer {spec!r}: expected SRC:/DEST or SRC:/DEST:UID:GID")
        self.src = parts[0]
        self.dest = parts[1].strip("/")
        self.uid, self.gid = (int(parts[2]), int(parts[3])) if len(parts) == 4 else (0, 0)
        if not os.path.lexists(self.src):
            fail(f"--layer {spec!r}: {self.src} does not exist")

    def entries(self):
        """(archive path, source path) pairs, parents before children, sorted."""
        out = []
        # The parents of the destination, so the layer stands on its own.
        parts = self.dest.split("/") if self.dest else []
        for i in range(1, len(parts)):
            out.append(("/".join(parts[:i]), None))
        if not os.path.isdir(self.src) or os.path.islink(self.src):
            if not self.dest:
                fail(f"{self.src} is a file: give it a destination path, not /")
            out.append((self.dest, self.src))
            return out
        if self.dest:
            out.append((self.dest, self.src))
        for root, dirs, files in os.walk(self.src):
            # os.walk follows the order of the directory on disk: sort in place,
            # which also makes it descend in sorted order.
            dirs.sort()
            rel = os.path.relpath(root, self.src)
            for name in sorted(dirs + files):
                path = name if rel == "." else f"{rel}/{name}"
                out.append((f"{self.dest}/{path}" if self.dest else path, os.path.join(root, name)))
        # A stable order that does not depend on how os.walk interleaves levels.
        out.sort(key=lambda e: e[0].split("/"))
        return out

    def write(self, fileobj, mtime, xattrs):
        """Writes the layer; returns the archive paths of its regular files."""
        seen = {}  # (device, inode) -> first archive path, for hard links
        with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, src in self.entries():
                info = tarfile.TarInfo(name)
                info.mtime = mtime
                info.uid, info.gid = self.uid, self.gid
                info.uname = info.gname = ""
                if src is None:
                    # A parent of the destination belongs to root, whoever owns what is placed in it.
                    info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o755, 0, 0
                    tar.addfile(info)
                    continue
                st = os.lstat(src)
                if stat.S_ISLNK(st.st_mode):
                    info.type, info.mode = tarfile.SYMTYPE, 0o777
                    info.linkname = os.readlink(src)
                    tar.addfile(info)
                elif stat.S_ISDIR(st.st_mode):
                    info.type, info.mode = tarfile.DIRTYPE, normal_mode(st)
                    tar.addfile(info)
                elif stat.S_ISREG(st.st_mode):
                    info.mode = normal_mode(st)
                    key = (st.st_dev, st.st_ino)
                    if st.st_nlink > 1 and key in seen:
                        info.type, info.linkname = tarfile.LNKTYPE, seen[key]
                        tar.addfile(info)
                        continue
                    seen[key] = name
                    info.size = st.st_size
                    info.pax_headers = dict(xattrs.get(name, {}))
                    with open(src, "rb") as f:
                        tar.addfile(info, f)
                else:
                    # Devices, sockets and pipes come from the runtime, never from an image.
                    fail(f"{src}: not a file, directory or symbolic link")
        return set(seen.values())


class Blobs:
    """Content-addressed blobs in a scratch directory."""

    def __init__(self, directory):
        self.dir = directory
        self.digests = []

    def add_bytes(self, data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with open(self.path(digest), "wb") as f:
            f.write(data)
        self.digests.append(digest)
        return digest, len(data)

    def add_file(self, path):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = "sha256:" + h.hexdigest()
        os.replace(path, self.path(digest))
        self.digests.append(digest)
        return digest, os.path.getsize(self.path(digest))

    def path(self, digest):
        return os.path.join(self.dir, digest.split(":", 1)[1])


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def key_values(items, what):
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--{what} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def json_list(value, what):
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        fail(f"--{what}: not JSON ({e}); give a list such as '[\"/x\", \"run\"]'")
    if not isinstance(parsed, list) or not all(isinstance(s, str) for s in parsed):
        fail(f"--{what}: expected a JSON list of strings")
    return parsed


def host_arch():
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def build(args):
    mtime = epoch()
    layers = [Layer(spec) for spec in args.layer]
    xattrs = file_caps(args.file_cap)
    env = key_values(args.env, "env")
    env.setdefault("PATH", DEFAULT_PATH)
    labels = key_values(args.label, "label")
    for port in args.expose:
        number, _, proto = port.partition("/")
        if not number.isdigit() or proto not in ("", "tcp", "udp", "sctp"):
            fail(f"--expose {port!r}: expected PORT or PORT/tcp|udp|sctp")
    ports = {p if "/" in p else f"{p}/tcp": {} for p in args.expose}

    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".oci-") as scratch:
        blobs = Blobs(scratch)
        layer_descs = []
        files = set()
        for i, layer in enumerate(layers):
            path = os.path.join(scratch, f"layer-{i}.tar")
            with open(path, "wb") as f:
                files |= layer.write(f, mtime, xattrs)
            digest, size = blobs.add_file(path)
            layer_descs.append({"mediaType": MEDIA_LAYER, "digest": digest, "size": size})

        for missing in sorted(set(xattrs) - files):
            fail(f"--file-cap /{missing}: no layer has that file")
        config = {
            "Env": [f"{k}={v}" for k, v in env.items()],
        }
        if args.entrypoint is not None:
            config["Entrypoint"] = json_list(args.entrypoint, "entrypoint")
        if args.cmd is not None:
            config["Cmd"] = json_list(args.cmd, "cmd")
        if args.user:
            config["User"] = args.user
        if args.workdir:
            config["WorkingDir"] = args.workdir
        if ports:
            config["ExposedPorts"] = ports
        if labels:
            config["Labels"] = labels
        image_config = {
            "architecture": args.arch or host_arch(),
            "os": "linux",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime)),
            "config": config,
            # Uncompressed layers: each diff_id is the layer's own digest.
            "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in layer_descs]},
        }
        config_digest, config_size = blobs.add_bytes(canonical(image_config))
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config_size},
            "layers": layer_descs,
        }
        manifest_digest, manifest_size = blobs.add_bytes(canonical(manifest))
        index = {
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [
                {
                    "mediaType": MEDIA_MANIFEST,
                    "digest": manifest_digest,
                    "size": manifest_size,
                    "platform": {"architecture": image_config["architecture"], "os": "linux"},
                    # containerd names the imported image from the first; the OCI
                    # annotation is the standard one other tools read.
                    "annotations": {
                        "io.containerd.image.name": args.ref,
                        "org.opencontainers.image.ref.name": args.ref,
                    },
                }
            ],
        }
        tmp_out = os.path.join(scratch, "image.tar")
        with open(tmp_out, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:

            def add(name, data=None, path=None):
                info = tarfile.TarInfo(name)
                info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "", ""
                if data is None and path is None:
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                    return
                info.mode = 0o644
                if path is not None:
                    info.size = os.path.getsize(path)
                    with open(path, "rb") as blob:
                        tar.addfile(info, blob)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))

            add("oci-layout", canonical({"imageLayoutVersion": "1.0.0"}))
            add("index.json", canonical(index))
            add("blobs")
            add("blobs/sha256")
            for digest in sorted(set(blobs.digests)):
                add("blobs/sha256/" + digest.split(":", 1)[1], path=blobs.path(digest))
        os.replace(tmp_out, args.out)
    print(manifest_digest)


def unpack(args):
    """Applies the layers of the archive's (only) manifest, in order, into a directory."""
    os.makedirs(args.dir, exist_ok=True)
    with tarfile.open(args.image) as image:

        def read(name):
            return image.extractfile(name).read()

        index = json.loads(read("index.json"))
        if len(index["manifests"]) != 1:
            fail(f"{args.image}: expected one manifest, found {len(index['manifests'])}")
        digest = index["manifests"][0]["digest"]
        manifest = json.loads(read("blobs/sha256/" + digest.split(":", 1)[1]))
        for layer in manifest["layers"]:
            blob = image.extractfile("blobs/sha256/" + layer["digest"].split(":", 1)[1])
            with tarfile.open(fileobj=io.BytesIO(blob.read())) as tar:
                # The archive was made by `build` on this machine: keep owners,
                # modes (the sticky bit of /tmp) and absolute symbolic links.
                if hasattr(tarfile, "fully_trusted_filter"):
                    tar.extractall(args.dir, filter="fully_trusted")
                else:  # Pythons before extraction filters: the same behaviour
                    tar.extractall(args.dir)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build an OCI image-layout archive")
    b.add_argument("--ref", required=True, help="the image's full reference, e.g. aleph.local/x:dev")
    b.add_argument("--layer", action="append", required=True, help="SRC:/DEST[:UID:GID], one per layer, in order")
    b.add_argument("--entrypoint", help="a JSON list")
    b.add_argument("--cmd", help="a JSON list")
    b.add_argument("--env", action="append", default=[], help="KEY=VALUE (PATH defaults to the usual one)")
    b.add_argument("--user", help="USER[:GROUP], names or numbers")
    b.add_argument("--workdir")
    b.add_argument("--expose", action="append", default=[], help="PORT[/tcp|udp|sctp]")
    b.add_argument("--label", action="append", default=[], help="KEY=VALUE")
    b.add_argument("--file-cap", action="append", default=[], help="/PATH=cap_name[,cap_name]: a file capability")
    b.add_argument("--arch", help="the image's architecture; the host's by default")
    b.add_argument("--out", required=True, help="the archive to write")
    b.set_defaults(func=build)
    u = sub.add_parser("unpack", help="extract an archive's layers into a directory")
    u.add_argument("image")
    u.add_argument("dir")
    u.set_defaults(func=unpack)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
