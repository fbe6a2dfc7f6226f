#!/usr/bin/env bash
# Install kustomize once per machine, from the Go module proxy, outside the work tree.
#
# The deploy tests render deploy/k8s/overlays/* with this binary. The version is pinned
# here and in tests/deploy/kustomize.py (KUSTOMIZE_VERSION): bump both together. A binary
# already at the install path with the right version is reused, so CI pays once.
#
# Usage: scripts/install-kustomize.sh        prints the binary's path on its last line
set -euo pipefail
version=v5.8.1
bindir="${XDG_CACHE_HOME:-$HOME/.cache}/marketpulse/bin"
dest="$bindir/kustomize-$version"

if [ -x "$dest" ] && "$dest" version 2>/dev/null | grep -q "$version"; then
  echo "kustomize $version: $dest (cached)"
  echo "$dest"
  exit 0
fi
command -v go >/dev/null || { echo "install-kustomize: Go 1.22+ is required (https://go.dev/dl/)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$bindir"
# GOBIN into a scratch folder, then an atomic rename: a half-written binary is never
# left at the path the tests look for, even when two installs race.
GOBIN="$work" GOFLAGS=-buildvcs=false go install "sigs.k8s.io/kustomize/kustomize/v5@$version"
mv "$work/kustomize" "$dest.tmp.$$"
mv "$dest.tmp.$$" "$dest"
"$dest" version
echo "kustomize $version: $dest"
echo "$dest"
