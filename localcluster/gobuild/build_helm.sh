#!/usr/bin/env bash
# Build the pinned Helm v3 CLI from Go modules (the wrapper module in gobuild/helm, whose go.mod
# pins helm.sh/helm/v3) into a cache outside the repo. Used only to lint and render the chart in
# manifests/helm/dsguard (the tests and `make helm`). Separate from build.sh on purpose: Helm's
# dependencies never touch the Kubernetes build or its cache key.
# Prints the bin directory on its last line; `--print-dir` prints it without building. Like
# build.sh, a finished build is a directory renamed into place once the binary is written, so a
# half-finished one is never used.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mod="$here/helm"

if ! command -v go >/dev/null 2>&1; then
  echo "build_helm.sh: Go is not installed. Install Go >= 1.26 (https://go.dev/doc/install, or your" >&2
  echo "distribution's golang package) and retry; it is only needed to build helm for the chart tests." >&2
  exit 3
fi

# The version is the one go.mod pins (no go command needed to read it).
helm_version=$(awk '$1 == "helm.sh/helm/v3" {print $2; exit}' "$mod/go.mod")
client_go=$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$mod/go.mod")
if [[ -z "$helm_version" || -z "$client_go" ]]; then
  echo "build_helm.sh: $mod/go.mod does not require helm.sh/helm/v3 and k8s.io/client-go" >&2
  exit 2
fi
key=$(cat "$mod/go.mod" "$mod/go.sum" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-10)
cache=${DSGUARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dsguard}
final="$cache/helm-${helm_version}-${key}"
if [[ "${1:-}" == "--print-dir" ]]; then echo "$final/bin"; exit 0; fi
if [[ -x "$final/bin/helm" ]]; then echo "$final/bin"; exit 0; fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/.build-helm-XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin"
export GOTOOLCHAIN=${GOTOOLCHAIN:-auto} GOFLAGS="${GOFLAGS:-} -buildvcs=false -trimpath" CGO_ENABLED=0
start=$(date +%s)
# What helm's own Makefile sets: its version, and the Kubernetes version it assumes offline
# (`helm template` / `helm lint` without a cluster) taken from the client-go it is built with.
k8s_minor=$(echo "$client_go" | cut -d. -f2)
ld="-s -w -X helm.sh/helm/v3/internal/version.version=${helm_version}"
ld+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ld+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=${k8s_minor}"
done
(
  cd "$mod"
  echo "build_helm.sh: building helm ${helm_version} (cold build takes a few minutes on 2 cores)" >&2
  go build -ldflags "$ld" -o "$work/bin/helm" helm.sh/helm/v3/cmd/helm
)
"$work/bin/helm" version --short >/dev/null
echo "helm ${helm_version} built in $(( $(date +%s) - start ))s" > "$work/BUILD_INFO"
rm -rf "$final"
mv "$work" "$final"
trap - EXIT
echo "build_helm.sh: built helm ${helm_version} in $(( $(date +%s) - start ))s" >&2
echo "$final/bin"
