#!/usr/bin/env bash
# The run command of README.md: install what is needed, then start the whole system
# locally (nats-server, FerretDB, the provider simulator, the ticker and every service)
# with a live status view. Ctrl-C stops everything. Extra arguments go to `pulse up`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec uv run --frozen pulse up "$@"
