# syntax=docker/dockerfile:1.7
#
# The aleph-operator image: a static (musl) binary on distroless, running as non-root.
#
#   docker build -t aleph-operator:dev .
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/aleph-operator:TAG --push .
#   docker build --build-arg FEATURES=otlp -t aleph-operator:dev-otlp .   # with OpenTelemetry export
#
# Each platform is compiled natively (under emulation when it is not the build host's), which
# keeps the C parts of the TLS stacks (ring, aws-lc) on their usual toolchain.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS builder
ARG TARGETARCH
# Cargo features of aleph-operator, comma-separated (otlp: OpenTelemetry trace export).
ARG FEATURES=""
# musl-tools for the static C runtime; cmake, clang and perl for aws-lc-sys (the AWS SDK's TLS).
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools cmake clang perl make \
 && rm -rf /var/lib/apt/lists/*
RUN case "${TARGETARCH:-amd64}" in \
      amd64) echo x86_64-unknown-linux-musl ;; \
      arm64) echo aarch64-unknown-linux-musl ;; \
      *) echo "unsupported architecture ${TARGETARCH}" >&2; exit 1 ;; \
    esac > /rust-target \
 && rustup target add "$(cat /rust-target)"
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    CARGO_NET_RETRY=5
WORKDIR /src
COPY . .
# musl targets link statically by default; not position-independent (relocation-model=static),
# as e2e/cluster/lib.sh's STATIC_RUSTFLAGS says why. The `image` profile (Cargo.toml) is the
# build that docs/benchmarks.md measures. The registry and target caches survive between builds; the
# binary is copied out of the cache mount.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    target="$(cat /rust-target)" \
 && RUSTFLAGS="-C relocation-model=static" \
    cargo build --profile image --locked -p aleph-operator --bin aleph-operator --target "$target" \
      ${FEATURES:+--features "$FEATURES"} \
 && mkdir -p /out \
 && cp "target/$target/image/aleph-operator" /out/aleph-operator \
 && /out/aleph-operator --help >/dev/null

# distroless/static: no shell, no package manager, CA certificates and /etc/passwd with the
# "nonroot" user (65532) only.
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.title="aleph-operator" \
      org.opencontainers.image.description="Kubernetes operator for the Aleph AI platform" \
      org.opencontainers.image.source="https://github.com/aleph-dev/aleph" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=builder /out/aleph-operator /aleph-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/aleph-operator"]
CMD ["run"]
