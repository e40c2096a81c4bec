# grpcmesh task runner. `make demo` and `make test` work on a fresh clone: the first target that
# needs the environment bootstraps a pinned uv, syncs the locked venv and generates proto code.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/uv/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
GEN := gen/python
PROTOS := $(shell find protos -name '*.proto')
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export BUF_CACHE_DIR ?= $(CURDIR)/.tools/buf-cache

.PHONY: help
help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(UV):
	python3 -m venv $(TOOLS)/uv
	$(TOOLS)/uv/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen
	# xds-protos ships an old copy of opentelemetry/proto; the real package must overwrite it.
	$(UV) pip install --python $(PY) --reinstall --no-deps \
	  opentelemetry-proto==$$(sed -n 's/.*"opentelemetry-proto==\([0-9.]*\)".*/\1/p' pyproject.toml)
	touch $@

.PHONY: venv
venv: $(VENV)/.synced ## create/refresh the locked virtualenv

# checkov (the third-party policy scan of the rendered chart, tests/chart/test_policy_scan.py)
# pins older packaging, pytest and python-dateutil than the dev venv, so it lives in a venv of
# its own and the tests call its executable.
CHECKOV_VERSION := 3.3.30
CHECKOV := $(TOOLS)/checkov/bin/checkov

$(CHECKOV): $(UV)
	$(UV) venv --quiet --allow-existing $(TOOLS)/checkov
	$(UV) pip install --quiet --python $(TOOLS)/checkov/bin/python checkov==$(CHECKOV_VERSION)

.PHONY: checkov
checkov: $(CHECKOV) ## install checkov in its own venv (.tools/checkov), for the chart policy scan

$(GEN)/.stamp: $(VENV)/.synced $(PROTOS)
	rm -rf $(GEN) && mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc -Iprotos \
	  --python_out=$(GEN) --grpc_python_out=$(GEN) \
	  --mypy_out=$(GEN) --mypy_grpc_out=$(GEN) $(PROTOS)
	find $(GEN)/grpcmesh -type d -exec touch {}/__init__.py \;
	touch $(GEN)/grpcmesh/py.typed $@

.PHONY: gen
gen: $(GEN)/.stamp ## generate Python code from protos/ (never edited by hand)

DESCRIPTOR_SET := charts/grpcmesh/files/descriptors/grpcmesh.shop.v1.binpb

.PHONY: chart-assets
chart-assets: gen ## regenerate charts/grpcmesh/files (dashboards, rules, scrape data, descriptor set)
	$(PY) -m scripts.chart_assets --chart charts/grpcmesh
	mkdir -p $(dir $(DESCRIPTOR_SET))
	$(PY) -m grpc_tools.protoc -Iprotos --descriptor_set_out=$(DESCRIPTOR_SET) $(sort $(PROTOS))
	$(PY) -m scripts.copies

.PHONY: copies
copies: venv ## copy manifests/crds and manifests/examples where the chart and the package ship them
	$(PY) -m scripts.copies

.PHONY: goldens
goldens: gen ## regenerate tests/golden (Envoy snapshots, Kubernetes objects of the reference services)
	$(PY) -m tests.golden.generate

.PHONY: gen-check
gen-check: gen ## fail when a committed generated file is stale (copies, chart assets, descriptor set, install manifest, goldens)
	$(PY) -m scripts.copies --check
	$(PY) -m scripts.chart_assets --chart charts/grpcmesh --check
	@fresh=$$(mktemp) && $(PY) -m grpc_tools.protoc -Iprotos --descriptor_set_out=$$fresh $(sort $(PROTOS)) \
	  && cmp -s $$fresh $(DESCRIPTOR_SET) || { echo "out of date: $(DESCRIPTOR_SET): run \`make chart-assets\`" >&2; exit 1; }
	$(PY) -m scripts.render_manifests --check
	$(PY) -m tests.golden.generate --check

.PHONY: manifests
manifests: venv ## regenerate manifests/install/operator.yaml from charts/grpcmesh (kubectl apply -k)
	$(PY) -m scripts.render_manifests

.PHONY: sysdeps
sysdeps: ## install system packages the tests use (promtool, curl, h2load, node and npm), if missing
	@# Only the packages whose command is missing: a machine with its own Node.js (NodeSource's
	@# nodejs ships npm) cannot take Debian's npm beside it, and apt then refuses everything.
	@missing=$$(for pair in promtool:prometheus curl:curl h2load:nghttp2-client node:nodejs npm:npm; do \
	  command -v $${pair%%:*} >/dev/null || echo $${pair#*:}; done); \
	[ -z "$$missing" ] || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; }

JS_TOOLS := tests/js

$(JS_TOOLS)/node_modules/.installed: $(JS_TOOLS)/package.json $(JS_TOOLS)/package-lock.json
	npm ci --prefix $(JS_TOOLS) --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

.PHONY: test-tools
test-tools: $(JS_TOOLS)/node_modules/.installed ## install the grpc-js clients some tests run (tests/js, from its lock file)

.PHONY: lint
lint: gen ## ruff, mypy, import layers (lint-imports), buf lint, buf breaking against the released API
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/buf lint
	$(VENV)/bin/buf breaking --against protos/baseline/image.json

.PHONY: fmt
fmt: venv ## format and autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

.PHONY: test
test: gen sysdeps test-tools checkov lint gen-check ## every test tier (lint, generated files, unit, integration, cluster, images, end to end)
	$(PY) -m pytest --durations=25  # the slowest tests in the log: CI has a 25-minute budget

.PHONY: demo
demo: gen ## start the reference services locally and place demo orders through them
	$(VENV)/bin/grpcmesh demo --up

.PHONY: bench
bench: gen ## benchmarks: kit tax, PlaceOrder per core, sidecar overhead, mTLS handshake, xDS convergence, workers
	$(PY) bench/kit_tax.py
	$(PY) -m bench.place_order
	$(PY) -m bench.sidecar_overhead
	$(PY) -m bench.mtls_handshake
	$(PY) -m bench.xds_convergence
	$(PY) -m bench.workers

.PHONY: bench-kube
bench-kube: gen ## operator: 200 and 1000 MeshServices to Ready on the real control plane (~30 min)
	$(PY) -m bench.operator_apply_kube --services 200
	$(PY) -m bench.operator_apply_kube --services 1000 --timeout 1200

.PHONY: proto-baseline
proto-baseline: venv ## record the current protos as the released API (buf breaking compares to it)
	$(VENV)/bin/buf build -o protos/baseline/image.json
