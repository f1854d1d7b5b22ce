#!/usr/bin/env bash
# Build what a real local node needs from the pinned Kubernetes module: kubelet, kube-proxy (the
# wrapper module in gobuild/node, whose go.mod pins the same k8s.io/kubernetes as gobuild/k8s) and
# the pause binary (`gcc -static` of build/pause/linux/pause.c from that module, as its Makefile
# does). Separate from build.sh on purpose: the node's dependencies never touch the control plane's
# cache key, so adding the node didn't invalidate an existing control-plane build.
# Prints the bin directory on its last line; `--print-dir` prints it without building. A finished
# build is a directory renamed into place once every binary is written (never half-used).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mod="$here/node"
# shellcheck source=versions.env
source "$here/versions.env"

for tool in go gcc; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "build_node.sh: $tool is not installed. Install Go >= 1.26 and gcc (Debian: apt-get install" >&2
    echo "golang gcc libc6-dev) and retry; they are only needed to build the local cluster's real node." >&2
    exit 3
  fi
done

key=$(cat "$here/versions.env" "$mod/go.mod" "$mod/go.sum" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-10)
cache=${DSGUARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dsguard}
final="$cache/node-v${KUBERNETES_VERSION}-${key}"
if [[ "${1:-}" == "--print-dir" ]]; then echo "$final/bin"; exit 0; fi
if [[ -x "$final/bin/kubelet" && -x "$final/bin/kube-proxy" && -x "$final/bin/pause" ]]; then
  echo "$final/bin"; exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/.build-node-XXXXXX")
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
  cd "$mod"
  echo "build_node.sh: building kubelet and kube-proxy $ver (cold build takes a few minutes on 2 cores)" >&2
  go build -ldflags "-s -w $ldk" -o "$work/bin/" k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
  src=$(go list -m -f '{{.Dir}}' k8s.io/kubernetes)
  # build/pause/Makefile: CFLAGS = -Os -Wall -Werror -static -DVERSION=v$(TAG)-$(REV)
  tag=$(awk -F' [?]= ' '$1 == "TAG" {print $2; exit}' "$src/build/pause/Makefile")
  gcc -Os -Wall -Werror -static -DVERSION="v${tag}-${ver}" -o "$work/bin/pause" "$src/build/pause/linux/pause.c"
  echo "$tag" > "$work/PAUSE_VERSION"
)
"$work/bin/kubelet" --version >/dev/null
echo "built in $(( $(date +%s) - start ))s" > "$work/BUILD_INFO"
rm -rf "$final"
mv "$work" "$final"
trap - EXIT
echo "build_node.sh: built in $(( $(date +%s) - start ))s" >&2
echo "$final/bin"
