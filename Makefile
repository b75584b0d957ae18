# spotrun: `make demo` runs a TrainingRun through spot interruptions on the local cluster;
# `make test` runs every test. Both install what they need, idempotently.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
# Fake fleet size of the local cluster.
export SPOT_NODES ?= 8
export ON_DEMAND_NODES ?= 2
PYTEST_ARGS ?=

.PHONY: help venv binaries tools prometheus chart-sync cluster-up cluster-down demo test \
	test-unit test-integration test-e2e lint fmt crds bench clean images node-packages release

help:
	@echo "make demo         a TrainingRun surviving spot interruptions on the local cluster"
	@echo "make test         lint + unit + integration + e2e tests (brings the local cluster up)"
	@echo "make cluster-up   build the control plane from Go modules and start it"
	@echo "make cluster-down stop the local cluster"
	@echo "make bench        run the benchmarks in bench/ (figures in bench/results/)"
	@echo "make crds         regenerate the TrainingRun CRD (and the chart's copy) from api/spotrun_api"

# The venv is rebuilt only when pyproject.toml changes. --compile-bytecode: where
# PYTHONDONTWRITEBYTECODE is set (CI sandboxes set it) nothing would ever write a pyc, and
# every process the tests start would compile torch's 2,500 modules again (6 s, not 3.5 s).
$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/pip install -q uv==$(UV_VERSION)
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -e '.[operator,trainer,cli,dev]'
	@touch $@

venv: $(VENV)/.installed

binaries:
	@bash hack/build-binaries.sh

# helm, kwok, kwokctl, coredns, training-operator and kueue only (no kube build): what the
# unit tests need, and what `make test` builds before the cluster.
tools:
	@bash hack/build-binaries.sh tools

# containerd, runc, CNI plugins, socat, mmdebstrap, buildah (real nodes and image builds).
node-packages:
	@bash hack/install-node-packages.sh

# Prometheus and promtool from Debian's package (tests start a real one on loopback).
prometheus:
	@bash hack/install-prometheus.sh

# Copy the single-source CRD, dashboards and alert rules into the chart.
chart-sync:
	bash hack/sync-chart-crds.sh

# Regenerate the TrainingRun CRD from the pydantic models in api/spotrun_api (the models are
# its single source; docs/operator.md, "Changing the API") and its copy in the chart.
crds: venv
	$(BIN)/python -m spotrun_dev.crdgen
	bash hack/sync-chart-crds.sh

# The control plane, the kwok fleet and REAL_NODES (default 3) real nodes; the first run
# also builds the images (docs/images.md) and caches them machine-wide.
cluster-up: venv binaries node-packages images
	$(BIN)/spotrun-dev up

cluster-down: venv
	$(BIN)/spotrun-dev down

demo: cluster-up
	$(BIN)/python -m spotrun_dev.demo $(if $(EXAMPLE),--example $(EXAMPLE))

# Pause, PyTorch init, operator and trainer images as docker-archive tarballs (buildah on a
# Debian base from mmdebstrap; docs/images.md), cached machine-wide.
images: venv node-packages
	$(BIN)/python -m spotrun_dev.images

# A release (docs/release.md): the operator and trainer images and the chart pushed to
# REGISTRY (host[:port][/namespace]) as <REGISTRY>/spotrun/{operator,trainer}:<VERSION> and
# oci://<REGISTRY>/spotrun/charts/spotrun, the Python distributions built into
# build/release/dist. VERSION (semver) defaults to pyproject.toml's and must equal it.
# INSECURE=1 for a plain-HTTP registry; REGISTRY_USERNAME/REGISTRY_PASSWORD to log in.
# Plan only: .venv/bin/python -m spotrun_dev.release run --dry-run --registry ...
release: venv node-packages tools
	$(BIN)/python -m spotrun_dev.release run --registry "$(REGISTRY)" --version "$(VERSION)" \
		$(if $(filter-out 0,$(INSECURE)),--insecure)

# mypy's cache lives machine-wide, like Go's build cache: a fresh clone type-checks torch's
# and the kubernetes client's stubs again otherwise (56 s here, 3 s warm). mypy revalidates
# every cached module against its source's hash, so a stale entry is never trusted.
MYPY_CACHE ?= $(HOME)/.cache/spotrun/mypy

lint: venv
	$(BIN)/python -m spotrun_dev.crdgen --check
	bash hack/sync-chart-crds.sh --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --cache-dir "$(MYPY_CACHE)" api operator trainer hack/spotrun_dev cli bench tests

fmt: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# tests/unit needs only the venv; tests/e2e needs the cluster (marker e2e) or, for the chart
# tests in tests/e2e/chart, helm and promtool (marker tools).
test-unit: venv
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: venv
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

test-e2e: tools prometheus cluster-up
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

# The unit and trainer-process tests need no cluster: they run first, before the cluster
# takes its share of the 2 cores (its apiserver, kubelets and kwok use ~8% while idle),
# and a failure there shows in minutes. Then the cluster (with its real nodes and images)
# comes up, so no e2e test's timeout pays for a first build, and the e2e tests run. Both
# pytest runs always run; make test fails if either did. Each lists its slowest tests.
# (Lanes do not pay on 2 cores: the kwok e2e tests beside the trainer tests ran 2-3x
# slower each (stop 45); the real-node tests beside them, about 3x slower (stop 48).)
test: lint
	@rc=0; $(BIN)/pytest tests/unit tests/integration --durations=20 $(PYTEST_ARGS) || rc=$$?; \
	$(MAKE) --no-print-directory tools prometheus cluster-up || exit $$?; \
	$(BIN)/pytest tests/e2e --durations=30 $(PYTEST_ARGS) || rc=$$?; \
	exit $$rc

bench: venv
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b; done

clean: cluster-down
	rm -rf $(VENV) .cache/cluster .cache/kwok
