#!/usr/bin/env bash
# Build FerretDB v1.24.2 (SQLite backend) from the Go module proxy, once per machine.
#
# `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2` builds, but the binary
# panics at start ("Invalid build/version/version.txt"): release builds get that file from
# FerretDB's own build tooling. So we fetch the same module with `go mod download`, add the
# version file, and `go build` it. The result is cached outside the work tree and the Go
# build cache is reused, so later runs take no time.
set -euo pipefail
version=v1.24.2
dest="${XDG_CACHE_HOME:-$HOME/.cache}/marketpulse/bin/ferretdb-$version"
if [ -x "$dest" ] && "$dest" --version >/dev/null 2>&1; then
  echo "ferretdb $version: $dest (cached)"
  exit 0
fi
command -v go >/dev/null || { echo "install-ferretdb: Go is required (https://go.dev/dl/)" >&2; exit 1; }
echo "ferretdb: building FerretDB $version with Go for the optional-store tests (once per machine, one to five minutes the first time)"
src=$(go mod download -json "github.com/FerretDB/FerretDB@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$src" "$work/ferretdb"
chmod -R u+w "$work/ferretdb"
echo "$version" > "$work/ferretdb/build/version/version.txt"
mkdir -p "$(dirname "$dest")"
(cd "$work/ferretdb" && GOFLAGS=-buildvcs=false go build -trimpath -o "$dest.tmp" ./cmd/ferretdb)
mv "$dest.tmp" "$dest"
"$dest" --version | head -1
echo "ferretdb $version: $dest"
