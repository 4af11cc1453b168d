#!/usr/bin/env bash
# Builds the project's container images as OCI image-layout archives, for a node
# whose containerd has no registry to pull from: each archive imports with
#   ctr -a SOCKET -n k8s.io images import FILE
#
#   e2e/images/build.sh [NAME...]      NAME: pause busybox coredns aleph-operator aleph-gateway
#                                            model-cache llama-server
#                                      (all of them when none is given)
#
# Output, in ALEPH_IMAGES_DIR (default $ALEPH_CACHE/images):
#   NAME-KEY.tar   the archive; KEY hashes every input of the image (sources, package
#                  versions and hashes, this script, oci.py), so an image whose inputs
#                  have not changed is not built again
#   NAME.tar       a symbolic link to the current NAME-KEY.tar
#   images.tsv     one line per image: NAME, reference, manifest digest, archive path
# Downloads (Debian packages) are kept in $ALEPH_CACHE/images-src and shared by every
# output directory. The archives are reproducible: see e2e/images/README.md.
set -euo pipefail

IMAGES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$IMAGES_DIR/../.." && pwd)"
# ALEPH_CACHE, bin_path and log.
# shellcheck source=../cluster/lib.sh
source "$REPO/e2e/cluster/lib.sh"
OUT="${ALEPH_IMAGES_DIR:-$ALEPH_CACHE/images}"
SRC="$ALEPH_CACHE/images-src"
PYTHON="${PYTHON:-python3}"
OCI=("$PYTHON" "$IMAGES_DIR/oci.py")
ALL=(pause busybox coredns aleph-operator aleph-gateway model-cache llama-server)

die() {
  printf 'build.sh: %s\n' "$*" >&2
  exit 1
}

need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 is missing: $2"
}

# /etc/passwd and /etc/group as distroless has them: root, nobody and nonroot (65532),
# so that numeric users resolve to names and programs that look themselves up work.
# SHELL: root's login shell, where the image has one.
base_files() {
  local root=$1 shell=${2:-/sbin/nologin}
  mkdir -p "$root/etc" "$root/tmp" "$root/root"
  chmod 1777 "$root/tmp"
  cat >"$root/etc/passwd" <<EOF
root:x:0:0:root:/root:$shell
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
  cat >"$root/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
EOF
}

ca_certificates() {
  local root=$1 bundle=/etc/ssl/certs/ca-certificates.crt
  [ -f "$bundle" ] || die "$bundle is missing: install Debian's ca-certificates"
  mkdir -p "$root/etc/ssl/certs"
  cp "$bundle" "$root/etc/ssl/certs/ca-certificates.crt"
}

# "PACKAGE=VERSION SHA256" for each package: its candidate version and the SHA-256
# of that .deb, as apt knows them.
deb_id() {
  local out
  out=$(apt-cache show --no-all-versions "$@" 2>/dev/null |
    awk '/^Package:/ {p=$2} /^Version:/ {v=$2} /^SHA256:/ {print p "=" v " " $2}') || true
  [ "$(wc -l <<<"$out")" = $# ] || die "apt does not know all of $* (apt-get update?)"
  echo "$out"
}

# The path of a .deb in the download cache, fetched on first use.
# Arguments: a line of deb_id ("PACKAGE=VERSION SHA256").
deb_file() {
  local pkg version sha file tmp
  read -r pkg sha <<<"$*"
  version=${pkg#*=} pkg=${pkg%%=*}
  file="$SRC/debs/${pkg}_$sha.deb"
  if [ ! -f "$file" ]; then
    need apt-get "this script downloads Debian packages with apt-get download"
    mkdir -p "$SRC/debs"
    tmp=$(mktemp -d "$SRC/debs/.get.XXXXXX")
    (cd "$tmp" && apt-get download -q=2 -o APT::Sandbox::User=root "$pkg=$version" >&2) || { rm -rf "$tmp"; die "apt-get download $pkg=$version failed"; }
    [ "$(sha256sum "$tmp"/*.deb | cut -d' ' -f1)" = "$sha" ] || { rm -rf "$tmp"; die "$pkg: the download does not have the SHA-256 apt expects"; }
    mv "$tmp"/*.deb "$file"
    rm -rf "$tmp"
  fi
  echo "$file"
}

# The packages to unpack for the given ones: their Depends and Pre-Depends, recursively.
# Of alternatives (a | b) the first real package is taken; virtual packages are left
# out. Packages that only matter to a system managed with dpkg (dpkg itself, debconf,
# install-info, tar and perl, which maintainer scripts use) are not followed: an
# image is unpacked, never configured.
DEB_SKIP=" dpkg debconf install-info tar perl perl-base "
deb_closure() {
  local -A seen=()
  local level=("$@") next line kind name alt taken pkg
  # One apt-cache call per level of the graph: each call costs seconds.
  while [ ${#level[@]} -gt 0 ]; do
    next=()
    for pkg in "${level[@]}"; do seen[$pkg]=1; done
    while IFS= read -r line; do
      # "name" starts a package; then "  Depends: dep", " |Depends: dep" (an
      # alternative follows), "  Depends: <virtual>".
      if [[ $line != " "* ]]; then
        taken=0 alt=0
        continue
      fi
      [[ $line =~ ^\ (\||\ )(Pre)?Depends:\ (.*)$ ]] || continue
      kind=${BASH_REMATCH[1]} name=${BASH_REMATCH[3]%:any}
      [ "$alt" = 1 ] || taken=0
      if [ "$taken" = 0 ] && [[ $name != \<* ]] && [[ $DEB_SKIP != *" $name "* ]]; then
        [ -n "${seen[$name]:-}" ] || next+=("$name")
        taken=1
      fi
      [ "$kind" = "|" ] && alt=1 || alt=0
    done < <(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
      --no-replaces --no-enhances "${level[@]}" 2>/dev/null)
    mapfile -t level < <(printf '%s\n' "${next[@]}" | sort -u | grep . || true)
  done
  printf '%s\n' "${!seen[@]}" | sort
}

# --- the images ------------------------------------------------------------------
# Each image has:
#   ref_NAME            its reference
#   inputs_NAME         prints what the image is made from (hashed into its key); fails
#                       with a clear message when a prerequisite is missing
#   stage_NAME ROOT     fills ROOT with the files and sets OCI_ARGS (layers and config);
#                       INPUTS holds what inputs_NAME printed

ref_pause() { echo aleph.local/pause:3.10; }
inputs_pause() {
  need gcc "the pause image compiles e2e/images/pause/pause.c (apt-get install gcc libc6-dev)"
  sha256sum "$IMAGES_DIR/pause/pause.c" | cut -d' ' -f1
  gcc --version | head -1
  deb_id libc6-dev
}
stage_pause() {
  local root=$1
  # -s: no symbols, so nothing of the build (paths, object names) ends up in the file.
  (cd "$IMAGES_DIR/pause" && gcc -static -Os -s -Wall -Wextra -o "$root/pause" pause.c) ||
    die "compiling pause.c failed (a static link needs libc6-dev's libc.a)"
  OCI_ARGS=(--layer "$root:/" --entrypoint '["/pause"]' --user 65535:65535)
}

ref_busybox() { echo aleph.local/busybox:dev; }
inputs_busybox() {
  need dpkg-deb "the busybox image unpacks Debian's busybox-static package"
  deb_id busybox-static
}
stage_busybox() {
  local root=$1 deb applet
  deb=$(deb_file "$INPUTS")
  mkdir -p "$root/.deb"
  dpkg-deb -x "$deb" "$root/.deb"
  mkdir -p "$root/bin"
  mv "$root/.deb/bin/busybox" "$root/bin/busybox"
  rm -rf "$root/.deb"
  # The binary knows its applets; one link per applet makes `sh`, `wget`, ... commands.
  for applet in $("$root/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
  done
  base_files "$root" /bin/sh
  mkdir -p "$root/home/nonroot"
  OCI_ARGS=(--layer "$root:/" --env PATH=/bin --cmd '["sh"]')
}

ref_coredns() { echo aleph.local/coredns:dev; }
coredns_bin() { bin_path coredns; }
inputs_coredns() {
  local bin
  bin=$(coredns_bin)
  [ -x "$bin" ] || die "the CoreDNS binary $bin is missing: build it with e2e/cluster/build.sh"
  sha256sum "$bin" | cut -d' ' -f1
}
stage_coredns() {
  local root=$1
  cp "$(coredns_bin)" "$root/coredns"
  base_files "$root"
  # Port 53 as user 65532: like the upstream image, the binary carries the file
  # capability cap_net_bind_service (the pod adds NET_BIND_SERVICE to its bounding set).
  OCI_ARGS=(--layer "$root:/" --file-cap /coredns=cap_net_bind_service --entrypoint '["/coredns"]'
    --user 65532:65532 --expose 53/udp --expose 53/tcp)
}

ref_aleph-operator() { echo aleph.local/aleph-operator:dev; }
OPERATOR_TARGET_DIR="${ALEPH_STATIC_TARGET_DIR:-$ALEPH_CACHE/target-static}"
operator_bin() { echo "$OPERATOR_TARGET_DIR/x86_64-unknown-linux-gnu/image/aleph-operator"; }
gateway_bin() { echo "$OPERATOR_TARGET_DIR/x86_64-unknown-linux-gnu/image/aleph-gateway"; }
STATIC_BUILT=""
# Both binaries in one cargo build (they share most of their dependencies), once per run.
static_build() {
  [ -z "$STATIC_BUILT" ] || return 0
  need cargo "the aleph-operator and aleph-gateway images build their binaries with cargo"
  need file "the static link of the binaries is checked with file(1)"
  # No musl target here: glibc, linked statically (see e2e/images/README.md). Cargo
  # rebuilds only what changed; the binary's hash keys the image.
  log "cargo build --profile image (static glibc) of aleph-operator and aleph-gateway into $OPERATOR_TARGET_DIR"
  # Run from a cargo test, this script inherits what cargo sets for the test
  # (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ...); build scripts that watch those (ring's)
  # would then rebuild the whole tree. Cargo sets them itself where they belong.
  local var
  for var in $(compgen -e | grep -E '^(CARGO|OUT_DIR|CARGO_(MANIFEST|PKG|CRATE|BIN|PRIMARY|TARGET_TMPDIR|CFG)_?.*)$' |
    grep -vE '^CARGO_(HOME|NET_.*|HTTP_.*|REGISTRIES_.*|TERM_.*|BUILD_JOBS)$'); do
    unset "$var"
  done
  (cd "$REPO" && CARGO_TARGET_DIR="$OPERATOR_TARGET_DIR" \
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="$STATIC_RUSTFLAGS" \
    cargo build --quiet --profile image --locked -p aleph-operator --bin aleph-operator \
    -p aleph-gateway --bin aleph-gateway \
    --target x86_64-unknown-linux-gnu >&2) || die "cargo build of the static binaries failed"
  local bin
  for bin in "$(operator_bin)" "$(gateway_bin)"; do
    file -L "$bin" | grep -Eq 'statically linked|static-pie linked' ||
      die "$bin is not statically linked: $(file -L "$bin")"
    if ldd "$bin" >/dev/null 2>&1 && ! ldd "$bin" 2>&1 | grep -q 'statically linked'; then
      die "$bin has dynamic dependencies: $(ldd "$bin" 2>&1 | tr '\n' ' ')"
    fi
  done
  STATIC_BUILT=1
}
inputs_aleph-operator() {
  static_build
  sha256sum "$(operator_bin)" | cut -d' ' -f1
  sha256sum /etc/ssl/certs/ca-certificates.crt | cut -d' ' -f1
}
# A static binary of the workspace as distroless/static would hold it: ROOT NAME
# BINARY DESCRIPTION, then the ports it exposes.
stage_static() {
  local root=$1 name=$2 bin=$3 description=$4
  shift 4
  mkdir -p "$root/rootfs" "$root/home"
  cp "$bin" "$root/rootfs/$name"
  base_files "$root/rootfs"
  ca_certificates "$root/rootfs"
  OCI_ARGS=(--layer "$root/rootfs:/" --layer "$root/home:/home/nonroot:65532:65532"
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
    --label "org.opencontainers.image.title=$name"
    --label "org.opencontainers.image.description=$description"
    --label org.opencontainers.image.source=https://github.com/aleph-dev/aleph
    --label org.opencontainers.image.licenses=Apache-2.0
    --label org.opencontainers.image.version=dev
    --user 65532:65532 --entrypoint "[\"/$name\"]" --cmd '["run"]')
  local port
  for port in "$@"; do OCI_ARGS+=(--expose "$port"); done
}
# The final stage of the Dockerfile, which stays the release recipe; its base,
# distroless/static, adds the files of base_files and the CA bundle.
stage_aleph-operator() {
  stage_static "$1" aleph-operator "$(operator_bin)" "Kubernetes operator for the Aleph AI platform" 8080
}

ref_aleph-gateway() { echo aleph.local/aleph-gateway:dev; }
inputs_aleph-gateway() {
  static_build
  sha256sum "$(gateway_bin)" | cut -d' ' -f1
  sha256sum /etc/ssl/certs/ca-certificates.crt | cut -d' ' -f1
}
stage_aleph-gateway() {
  stage_static "$1" aleph-gateway "$(gateway_bin)" "OpenAI-compatible gateway in front of Aleph's models" 8080 9090
}

# Debian's Python, unpacked from its packages, with pinned wheels beside it.
ref_model-cache() { echo aleph.local/model-cache:dev; }
MODEL_CACHE_DEBS=(python3.11-minimal libpython3.11-stdlib)
MODEL_CACHE_SITE=/usr/local/lib/aleph-model-cache
inputs_model-cache() {
  need dpkg-deb "the model-cache image unpacks Debian's python3.11 packages"
  "$PYTHON" -m pip --version >/dev/null 2>&1 || die "pip is missing: the model-cache image installs its wheels with $PYTHON -m pip"
  # shellcheck disable=SC2046 # one package a word
  deb_id $(deb_closure "${MODEL_CACHE_DEBS[@]}")
  sha256sum "$IMAGES_DIR/model-cache/requirements.txt" "$IMAGES_DIR/model-cache/aleph-model-download" | cut -d' ' -f1
  sha256sum /etc/ssl/certs/ca-certificates.crt | cut -d' ' -f1
}
stage_model-cache() {
  local root=$1 id
  # The packages inputs_model-cache listed (their closure takes long to compute).
  while read -r id; do
    dpkg-deb -x "$(deb_file "$id")" "$root"
  done < <(grep -E '^[a-z0-9][a-z0-9.+-]*=' <<<"$INPUTS")
  # Documentation is of no use in an image.
  rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/info" "$root/usr/share/lintian"
  ln -sf python3.11 "$root/usr/bin/python3"
  # Wheels for Debian's CPython 3.11 whatever Python runs pip; hash-checked, with
  # every dependency pinned. No .pyc files: they would embed build times.
  PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-warn-conflicts --no-compile \
    --target "$root$MODEL_CACHE_SITE" --require-hashes --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --python-version 3.11 --implementation cp --abi cp311 \
    -r "$IMAGES_DIR/model-cache/requirements.txt" >&2 || die "pip install of model-cache/requirements.txt failed"
  # Console scripts carry the shebang of the Python that ran pip: not this image's.
  rm -rf "$root$MODEL_CACHE_SITE/bin"
  mkdir -p "$root/usr/local/bin"
  cp "$IMAGES_DIR/model-cache/aleph-model-download" "$root/usr/local/bin/aleph-model-download"
  chmod 755 "$root/usr/local/bin/aleph-model-download"
  base_files "$root"
  ca_certificates "$root"
  # User 0: the cache volume is a hostPath (or a fresh claim) owned by root, which
  # the download writes into; serving pods read it as other users, which the
  # downloader allows with chmod a+rX.
  OCI_ARGS=(--layer "$root:/" --user 0:0 --workdir /tmp
    --entrypoint '["/usr/bin/python3.11", "/usr/local/bin/aleph-model-download"]'
    --env "PYTHONPATH=$MODEL_CACHE_SITE" --env PYTHONDONTWRITEBYTECODE=1 --env PYTHONUNBUFFERED=1
    --env HF_HOME=/tmp/hf --env HF_HUB_DISABLE_TELEMETRY=1
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt)
}

# llama.cpp's server, built from the llama.cpp tree that llama-cpp-python's source
# distribution vendors (PyPI is reachable here, GitHub is not): build b11312, commit
# 0c1e57098, the version of ghcr.io/ggml-org/llama.cpp:server-b11312. One static
# binary; CPU only, for any x86-64 with AVX2 (no -march=native), no OpenSSL, no web UI.
LLAMACPP_PYPI=llama-cpp-python==0.3.36
LLAMACPP_SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
LLAMACPP_BUILD=11312
LLAMACPP_COMMIT=0c1e57098
LLAMACPP_CMAKE=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF
  -DGGML_OPENMP=OFF -DGGML_CCACHE=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF
  -DLLAMA_BUILD_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
  -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON
  "-DLLAMA_BUILD_NUMBER=$LLAMACPP_BUILD" "-DLLAMA_BUILD_COMMIT=$LLAMACPP_COMMIT"
  -DCMAKE_EXE_LINKER_FLAGS=-static)
ref_llama-server() { echo "aleph.local/llama-server:b$LLAMACPP_BUILD"; }
# The binary, built once per source and recipe into $ALEPH_CACHE/build (a cold build
# takes about 20 minutes on two cores; see e2e/images/README.md).
llamacpp_key() {
  { echo "$LLAMACPP_SDIST_SHA256"; printf '%s\n' "${LLAMACPP_CMAKE[@]}"; g++ --version | head -1; cmake --version | head -1; } |
    sha256sum | cut -c1-16
}
llamacpp_bin() { echo "$ALEPH_CACHE/build/llama-server-b$LLAMACPP_BUILD-$(llamacpp_key)/llama-server"; }
llamacpp_build() {
  local bin dir sdist tmp
  bin=$(llamacpp_bin)
  [ -x "$bin" ] && return 0
  dir=$(dirname "$bin")
  sdist="$SRC/llama_cpp_python-${LLAMACPP_PYPI#*==}.tar.gz"
  if [ ! -f "$sdist" ] || [ "$(sha256sum "$sdist" | cut -d' ' -f1)" != "$LLAMACPP_SDIST_SHA256" ]; then
    log "downloading the source distribution of $LLAMACPP_PYPI"
    mkdir -p "$SRC"
    tmp=$(mktemp -d "$SRC/.get.XXXXXX")
    printf '%s --hash=sha256:%s\n' "$LLAMACPP_PYPI" "$LLAMACPP_SDIST_SHA256" >"$tmp/req.txt"
    # --no-binary: the source distribution (the only one for Linux), hash-checked.
    "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: --require-hashes \
      -r "$tmp/req.txt" -d "$tmp" >&2 || { rm -rf "$tmp"; die "pip download of $LLAMACPP_PYPI failed"; }
    mv "$tmp"/llama_cpp_python-*.tar.gz "$sdist"
    rm -rf "$tmp"
  fi
  log "building llama-server b$LLAMACPP_BUILD (static, CPU) into $dir; the first build takes about 20 minutes"
  rm -rf "$dir.part"
  mkdir -p "$dir.part/src"
  tar -xzf "$sdist" -C "$dir.part/src" --strip-components=3 "llama_cpp_python-${LLAMACPP_PYPI#*==}/vendor/llama.cpp"
  (cmake -S "$dir.part/src" -B "$dir.part/build" -G Ninja "${LLAMACPP_CMAKE[@]}" >"$dir.part/build.log" 2>&1 &&
    cmake --build "$dir.part/build" --target llama-server -j "$(nproc)" >>"$dir.part/build.log" 2>&1) ||
    die "building llama-server failed; its log: $dir.part/build.log"
  mkdir -p "$dir"
  strip -o "$dir/llama-server.part" "$dir.part/build/bin/llama-server"
  mv "$dir/llama-server.part" "$bin"
  rm -rf "$dir.part"
}
inputs_llama-server() {
  need cmake "the llama-server image compiles llama.cpp (apt-get install cmake)"
  need g++ "the llama-server image compiles llama.cpp (apt-get install g++)"
  need ninja "the llama-server image compiles llama.cpp with Ninja (apt-get install ninja-build)"
  need file "the static link of llama-server is checked with file(1)"
  "$PYTHON" -m pip --version >/dev/null 2>&1 || die "pip is missing: the llama-server image downloads llama.cpp's source with $PYTHON -m pip"
  llamacpp_build
  local bin
  bin=$(llamacpp_bin)
  file -L "$bin" | grep -Eq 'statically linked|static-pie linked' || die "$bin is not statically linked: $(file -L "$bin")"
  sha256sum "$bin" | cut -d' ' -f1
}
stage_llama-server() {
  local root=$1
  mkdir -p "$root/app"
  cp "$(llamacpp_bin)" "$root/app/llama-server"
  base_files "$root"
  # Upstream's server image: /app/llama-server as the entrypoint, port 8080,
  # listening on every address. Here it runs as nonroot.
  OCI_ARGS=(--layer "$root:/" --entrypoint '["/app/llama-server"]' --user 65532:65532 --workdir /app
    --env LLAMA_ARG_HOST=0.0.0.0 --expose 8080
    --label org.opencontainers.image.title=llama-server
    --label "org.opencontainers.image.version=b$LLAMACPP_BUILD"
    --label "org.opencontainers.image.revision=$LLAMACPP_COMMIT")
}

# --- driver ------------------------------------------------------------------------

build_one() {
  local name=$1 inputs key file stage digest ref
  ref=$("ref_$name")
  inputs=$("inputs_$name") || exit 1
  key=$({
    echo "$ref"
    echo "$inputs"
    echo "SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-0}"
    sha256sum "$IMAGES_DIR/oci.py" "$IMAGES_DIR/build.sh" | cut -d' ' -f1
  } | sha256sum | cut -c1-16)
  file="$OUT/$name-$key.tar"
  if [ -f "$file" ] && [ -f "$file.digest" ]; then
    digest=$(cat "$file.digest")
    log "$name: inputs unchanged, keeping $file"
  else
    log "building $name ($ref)"
    stage=$(mktemp -d "$OUT/.stage-$name.XXXXXX")
    STAGES+=("$stage")
    mkdir -p "$stage/root"
    OCI_ARGS=()
    INPUTS=$inputs
    "stage_$name" "$stage/root"
    digest=$("${OCI[@]}" build --ref "$ref" "${OCI_ARGS[@]}" --out "$file.part") || die "oci.py build of $name failed"
    mv "$file.part" "$file"
    echo "$digest" >"$file.digest"
    rm -rf "$stage"
    # Earlier builds of this image are superseded.
    find "$OUT" -maxdepth 1 -name "$name-*.tar*" ! -name "$(basename "$file")*" -delete
  fi
  ln -sfn "$(basename "$file")" "$OUT/$name.tar"
  printf '%s\t%s\t%s\t%s\n' "$name" "$ref" "$digest" "$file"
  # images.tsv: this image's line replaces the one of its earlier build.
  { grep -v "^$name	" "$OUT/images.tsv" 2>/dev/null || true; printf '%s\t%s\t%s\t%s\n' "$name" "$ref" "$digest" "$file"; } |
    sort >"$OUT/images.tsv.part"
  mv "$OUT/images.tsv.part" "$OUT/images.tsv"
}

main() {
  local names=("$@") name
  [ ${#names[@]} -gt 0 ] || names=("${ALL[@]}")
  for name in "${names[@]}"; do
    [[ " ${ALL[*]} " == *" $name "* ]] || die "unknown image $name; the images are: ${ALL[*]}"
  done
  need "$PYTHON" "oci.py needs Python 3"
  mkdir -p "$OUT"
  exec 9>"$OUT/.lock"
  flock 9
  STAGES=()
  trap 'for s in "${STAGES[@]}"; do rm -rf "$s"; done; rm -f "$OUT"/*.part' EXIT
  for name in "${names[@]}"; do
    build_one "$name"
  done
}

main "$@"
