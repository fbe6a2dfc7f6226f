#!/usr/bin/env bash
# Build promtool once per machine from the Prometheus Go module (through the Go module
# proxy, as install-kustomize.sh builds kustomize), outside the work tree. The deploy
# tests run `promtool check rules` and `promtool test rules` on deploy/prometheus/.
# The version is pinned here and in tests/deploy/test_prometheus.py: bump both together.
#
# Usage: scripts/install-promtool.sh        prints the binary's path on its last line
set -euo pipefail
version=v0.307.3
bindir="${XDG_CACHE_HOME:-$HOME/.cache}/marketpulse/bin"
dest="$bindir/promtool-$version"

if [ -x "$dest" ]; then
  echo "promtool $version: $dest (cached)"
  echo "$dest"
  exit 0
fi
command -v go >/dev/null || { echo "install-promtool: Go 1.23+ is required (https://go.dev/dl/)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$bindir"
# `go install promtool@version` refuses modules whose go.mod has exclude directives
# (Prometheus's has), so build it from a scratch module that requires it instead.
(
  cd "$work"
  go mod init promtool-build >/dev/null 2>&1
  GOFLAGS=-mod=mod go get "github.com/prometheus/prometheus@$version"
  GOFLAGS="-mod=mod -buildvcs=false" go build -o "$work/promtool" github.com/prometheus/prometheus/cmd/promtool
)
mv "$work/promtool" "$dest.tmp.$$"
mv "$dest.tmp.$$" "$dest"
"$dest" --version
echo "promtool $version: $dest"
echo "$dest"
