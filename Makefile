# The two commands that matter: `make demo` and `make test`.
SHELL := /bin/bash

.PHONY: demo test down cluster-up cluster-down binaries crds lint fmt bench

demo: ## Local control plane + CRDs + operator + examples
	scripts/demo.sh

test: ## Every test: unit, CRD drift, chart, Argo CD health, SageMaker, end to end
	scripts/setup.sh
	e2e/cluster/with-cluster.sh scripts/run-tests.sh

down: ## Stop the operator and the local control plane started by `make demo`
	-source e2e/cluster/lib.sh && [ -f "$$ALEPH_STATE/pids/operator.pid" ] && kill "$$(cat "$$ALEPH_STATE/pids/operator.pid")"
	e2e/cluster/down.sh

binaries: ## Build the control plane's binaries into ~/.cache/aleph/bin
	e2e/cluster/build.sh

cluster-up:
	e2e/cluster/up.sh

cluster-down:
	e2e/cluster/down.sh

crds: ## Regenerate crds/ and the chart's copy from the Rust types
	cargo run --quiet -p aleph-operator -- crds --dir crds
	cp crds/*.yaml charts/aleph-operator/crds/

bench: ## Convergence, API requests and memory of the operator against a plain client's floor (not part of `make test`)
	scripts/bench.sh $(BENCH_ARGS)

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
