# Everything CI runs is `make test`; everything the demo needs is `make demo`. Both set up from scratch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv constraints binaries node-binaries node-packages image-deps image lint unit cluster-test test demo cluster-up cluster-down bench clean

venv: $(STAMP)
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints.txt --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

# The newest versions pyproject.toml allows, frozen into constraints.txt (its comment kept); then
# `make test` and commit both.
constraints:
	rm -rf .venv-constraints
	$(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/pip install -q --upgrade pip
	.venv-constraints/bin/pip install -q -e '.[dev]'
	{ grep '^#' constraints.txt; .venv-constraints/bin/pip freeze --all --exclude-editable | grep -v '^setuptools=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-constraints

# Kubernetes control plane + kwok, built from Go modules into ~/.cache/dsguard (skipped when built).
binaries:
	bash localcluster/gobuild/build.sh

# The real node's kubelet, kube-proxy and pause, built from the same pinned Kubernetes module into
# ~/.cache/dsguard (skipped when built; a separate cache key from the control plane's).
node-binaries:
	bash localcluster/gobuild/build_node.sh

# The Debian packages the real node runs on (localcluster/apt/node.txt), installed with apt when
# missing (root or passwordless sudo; otherwise it fails naming them). DSGUARD_NO_REAL_NODE=1 skips it,
# and opts out of the real-node tests.
NODE_APT := localcluster/apt/node.txt
node-packages:
	@if [ "$${DSGUARD_NO_REAL_NODE:-}" = 1 ]; then echo "node-packages: DSGUARD_NO_REAL_NODE=1, skipped"; \
	else bash localcluster/apt/install.sh $(NODE_APT) || { echo "node-packages: the real node's packages are \
	missing; without root, DSGUARD_NO_REAL_NODE=1 runs make demo host-run and make test without the real node" >&2; exit 1; }; fi

# Helm v3, built from Go modules into ~/.cache/dsguard (to lint and render manifests/helm/dsguard, and
# to install it in the demo and the in-cluster tests; they build it when missing). Prints its bin directory.
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

# The real-node tests run unless DSGUARD_NO_REAL_NODE=1 (then their build and packages are skipped).
REAL_NODE_DEPS := $(if $(filter 1,$(DSGUARD_NO_REAL_NODE)),,node-packages node-binaries)

cluster-test: venv binaries $(REAL_NODE_DEPS)
	$(PY) -m pytest tests/cluster

test: lint binaries image-deps $(REAL_NODE_DEPS)
	$(PY) -m pytest

# The demo installs dsguard with Helm on the cluster's real node (its image built and cached):
# everything from scratch on a fresh machine (root). DSGUARD_NO_REAL_NODE=1 runs dsguard on the
# host instead (python -m localcluster.demo --host-run), needing none of the real-node parts.
DEMO_DEPS := $(if $(filter 1,$(DSGUARD_NO_REAL_NODE)),,node-packages node-binaries image-deps helm)

demo: venv binaries $(DEMO_DEPS)
	$(PY) -m localcluster.demo

cluster-up: venv binaries
	$(PY) -m localcluster up

cluster-down: venv
	$(PY) -m localcluster down

bench: venv
	$(PY) bench/webhook_load.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
