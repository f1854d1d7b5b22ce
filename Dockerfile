# dsguard's one image: `dsguard webhook`, `dsguard guard` and `dsguard certs run` are subcommands
# of its entry point (the manifests pass them as args). Slim Python, non-root, runtime
# dependencies only: every dependency installs from a prebuilt wheel, so no compiler is needed,
# and the build stage's pip and setuptools stay behind.
#
#   docker build -t dsguard:0.1.0 .
#
# `make image` builds this same file here with buildah, on a Debian bookworm base made with
# mmdebstrap (python3 + python3-venv) given as PYTHON_IMAGE; tests/image runs the result as the
# manifests do (docs/install.md). So the steps use only what both bases have: `python3`, not
# `python` (Debian's python3 has no `python`), and groupadd/useradd.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python3 -m venv /opt/dsguard
COPY pyproject.toml README.md constraints.txt ./
COPY dsguard ./dsguard
COPY webhook ./webhook
COPY guard ./guard
COPY certs ./certs
# A regular (not editable) install: the package and its dependencies land in /opt/dsguard, with
# their bytecode compiled now, as the running container's root filesystem is read-only. The
# dependencies at the versions CI tested (constraints.txt).
RUN /opt/dsguard/bin/pip install --only-binary=:all: --no-binary=dsguard -c constraints.txt . \
 && /opt/dsguard/bin/pip uninstall -y pip setuptools \
 && /opt/dsguard/bin/dsguard --version

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="dsguard" \
      org.opencontainers.image.description="Guardrails for Kubernetes DaemonSets: admission webhook, rollout guard, certificate rotation" \
      org.opencontainers.image.licenses="Apache-2.0"
# The same UID/GID as the manifests' runAsUser/runAsGroup.
RUN groupadd --system --gid 65532 dsguard \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin dsguard
COPY --from=build /opt/dsguard /opt/dsguard
ENV PATH=/opt/dsguard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
# 8443: webhook (HTTPS); 8080: guard (/healthz, /readyz, /metrics).
EXPOSE 8443 8080
ENTRYPOINT ["dsguard"]
CMD ["--help"]
