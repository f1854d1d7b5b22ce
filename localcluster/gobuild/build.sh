#!/usr/bin/env bash
# Build the pinned Kubernetes control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, etcd) and kwok from Go modules into a cache outside the repo.
# Prints the bin directory on its last line. A finished build is a directory that was
# renamed into place after every binary was written, so a half-finished one is never used.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

if ! command -v go >/dev/null 2>&1; then
  echo "build.sh: Go is not installed. Install Go >= 1.26 (https://go.dev/doc/install, or your" >&2
  echo "distribution's golang package) and retry; it is only needed to build the test cluster." >&2
  exit 3
fi

# The cache key covers the versions and the wrapper modules, so editing either rebuilds.
key=$(cat "$here/versions.env" "$here"/k8s/go.mod "$here"/k8s/go.sum "$here"/kwok/go.mod "$here"/kwok/go.sum | sha256sum | cut -c1-10)
cache=${DSGUARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dsguard}
final="$cache/k8s-v${KUBERNETES_VERSION}-kwok-v${KWOK_VERSION}-${key}"
if [[ "${1:-}" == "--print-dir" ]]; then echo "$final/bin"; exit 0; fi
if [[ -x "$final/bin/kube-apiserver" ]]; then echo "$final/bin"; exit 0; fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin"
export GOTOOLCHAIN=${GOTOOLCHAIN:-auto} GOFLAGS="${GOFLAGS:-} -buildvcs=false -trimpath"
start=$(date +%s)
ver="v${KUBERNETES_VERSION}"; minor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2)
ldk=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldk+=" -X $p.gitVersion=$ver -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
(
  cd "$here/k8s"
  echo "build.sh: building Kubernetes $ver binaries (cold build takes a while on 2 cores)" >&2
  go build -ldflags "-s -w $ldk" -o "$work/bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
  go build -ldflags "-s -w" -o "$work/bin/etcd" go.etcd.io/etcd/server/v3
)
(
  cd "$here/kwok"
  go build -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=v${KWOK_VERSION}" -o "$work/bin/kwok" sigs.k8s.io/kwok/cmd/kwok
)
echo "built in $(( $(date +%s) - start ))s" > "$work/BUILD_INFO"
rm -rf "$final"
mv "$work" "$final"
trap - EXIT
echo "build.sh: built in $(( $(date +%s) - start ))s" >&2
echo "$final/bin"
