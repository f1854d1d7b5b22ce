#!/usr/bin/env bash
# Build the pinned Prometheus server and promtool from Go modules (the wrapper module in
# gobuild/prometheus, whose go.mod pins github.com/prometheus/prometheus) into a cache outside the
# repo. Used by the wave rollouts' Prometheus-gate tests (a real Prometheus scraping an exporter
# the test controls) and by the alert-rule tests (`promtool check rules`, `promtool test rules`).
# Built with `remove_all_sd` (Prometheus >= 3.10): no bundled service discovery, which the tests
# don't use (static targets), and a build several times smaller.
# Prints the bin directory on its last line; `--print-dir` prints it without building. A
# finished build is a directory renamed into place once the binary is written.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mod="$here/prometheus"

if ! command -v go >/dev/null 2>&1; then
  echo "build_prometheus.sh: Go is not installed. Install Go >= 1.26 (https://go.dev/doc/install, or" >&2
  echo "your distribution's golang package) and retry; it is needed to build Prometheus for the tests." >&2
  exit 3
fi

version=$(awk '$1 == "github.com/prometheus/prometheus" {print $2; exit}' "$mod/go.mod")
if [[ -z "$version" ]]; then
  echo "build_prometheus.sh: $mod/go.mod does not require github.com/prometheus/prometheus" >&2
  exit 2
fi
key=$(cat "$mod/go.mod" "$mod/go.sum" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-10)
cache=${DSGUARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dsguard}
final="$cache/prometheus-${version}-${key}"
if [[ "${1:-}" == "--print-dir" ]]; then echo "$final/bin"; exit 0; fi
if [[ -x "$final/bin/prometheus" && -x "$final/bin/promtool" ]]; then echo "$final/bin"; exit 0; fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/.build-prometheus-XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin"
export GOTOOLCHAIN=${GOTOOLCHAIN:-auto} GOFLAGS="${GOFLAGS:-} -buildvcs=false -trimpath" CGO_ENABLED=0
start=$(date +%s)
(
  cd "$mod"
  echo "build_prometheus.sh: building prometheus ${version} (cold build takes a few minutes on 2 cores)" >&2
  go build -tags remove_all_sd -ldflags "-s -w" -o "$work/bin/prometheus" \
    github.com/prometheus/prometheus/cmd/prometheus
  go build -tags remove_all_sd -ldflags "-s -w" -o "$work/bin/promtool" \
    github.com/prometheus/prometheus/cmd/promtool
)
"$work/bin/prometheus" --version >/dev/null
"$work/bin/promtool" --version >/dev/null
echo "prometheus and promtool ${version} built in $(( $(date +%s) - start ))s" > "$work/BUILD_INFO"
rm -rf "$final"
mv "$work" "$final"
trap - EXIT
echo "build_prometheus.sh: built prometheus and promtool ${version} in $(( $(date +%s) - start ))s" >&2
echo "$final/bin"
