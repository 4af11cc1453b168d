# The two commands that matter: `make demo` and `make test`.
SHELL := /bin/bash

.PHONY: demo test unit down cluster-up cluster-down binaries images crds lint fmt bench bench-gateway

demo: ## Local control plane + CRDs + operator + examples
	scripts/demo.sh

test: ## Every test: unit, CRD drift, chart, Argo CD health, SageMaker, end to end
	scripts/setup.sh
	scripts/test.sh

unit: ## The tests that need no cluster: the reconcilers' pure stages and sagas, the CRDs, the gateway (stub engines over real HTTP)
	cargo test --workspace --exclude aleph-e2e --exclude tiny-gguf

down: ## Stop what `make demo` started: the emulator, the operator, the local control plane and its real node
	-source e2e/cluster/lib.sh && ALEPH_MOTO_STATE="$$ALEPH_STATE/moto" e2e/sagemaker/moto.sh stop
	-source e2e/cluster/lib.sh && [ -f "$$ALEPH_STATE/pids/operator.pid" ] && kill "$$(cat "$$ALEPH_STATE/pids/operator.pid")"
	e2e/cluster/down.sh

images: ## Build the images the real node runs (e2e/images) into ~/.cache/aleph/images
	e2e/images/build.sh

binaries: ## Build the control plane's binaries into ~/.cache/aleph/bin
	e2e/cluster/build.sh

cluster-up:
	e2e/cluster/up.sh

cluster-down:
	e2e/cluster/down.sh

crds: ## Regenerate crds/ and the chart's copy from the Rust types
	cargo run --quiet -p aleph-operator -- crds --dir crds
	cp crds/*.yaml charts/aleph-operator/crds/

bench: ## The operator (convergence, API requests, memory against a plain client's floor) and the gateway (against nginx); not part of `make test`
	BENCH_GATEWAY_ARGS="$(BENCH_GATEWAY_ARGS)" scripts/bench.sh $(BENCH_ARGS)

bench-gateway: ## The gateway's part of `make bench` alone: latency, throughput and memory against nginx, no cluster
	scripts/bench-gateway.sh $(BENCH_GATEWAY_ARGS)

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
