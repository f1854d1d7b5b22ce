# Everything CI runs is `make test`; everything the demo needs is `make demo`. Both set up from scratch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv binaries image-deps image lint unit cluster-test test demo cluster-up cluster-down bench clean

venv: $(STAMP)
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

# Kubernetes control plane + kwok, built from Go modules into ~/.cache/dsguard (skipped when built).
binaries:
	bash localcluster/gobuild/build.sh

# Helm v3, built from Go modules into ~/.cache/dsguard (only to lint and render manifests/helm/dsguard;
# tests/cluster/test_manifests.py builds it when missing). Prints its bin directory.
.PHONY: helm
helm:
	bash localcluster/gobuild/build_helm.sh

# Prometheus, built from Go modules into ~/.cache/dsguard (the waves' Prometheus-gate tests; they
# build it when missing). Prints its bin directory.
.PHONY: prometheus
prometheus:
	bash localcluster/gobuild/build_prometheus.sh

# The Debian packages the image build and its tests need (the list: localcluster/apt/image.txt),
# installed with apt when missing (root or passwordless sudo).
IMAGE_APT := localcluster/apt/image.txt
image-deps:
	bash localcluster/apt/install.sh $(IMAGE_APT)

# dsguard's image from the Dockerfile (buildah on a local Debian base; cached by content key in
# ~/.cache/dsguard/images), imported into the local cluster's real node when one runs.
# The last line is the image reference, e.g. dsguard:0.1.0.
image: venv image-deps
	@$(PY) -m localcluster image

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

unit: venv
	$(PY) -m pytest tests/unit

cluster-test: venv binaries
	$(PY) -m pytest tests/cluster

test: lint binaries image-deps
	$(PY) -m pytest

demo: venv binaries
	$(PY) -m localcluster.demo

cluster-up: venv binaries
	$(PY) -m localcluster up

cluster-down: venv
	$(PY) -m localcluster down

bench: venv
	$(PY) bench/webhook_load.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
