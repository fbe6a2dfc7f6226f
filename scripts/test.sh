#!/usr/bin/env bash
# The test command of README.md: install what is needed, lint, type-check, run every test.
# Integration tests start their own nats-server and FerretDB (or use PULSE_TEST_NATS_URL /
# PULSE_TEST_MONGO_URL, or testcontainers where a Docker engine answers).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --for-tests
echo "== ruff"; uv run --frozen ruff check .
uv run --frozen ruff format --check . >/dev/null || { uv run --frozen ruff format --check .; exit 1; }
echo "== mypy"; uv run --frozen mypy
echo "== pytest"
# pytest exits 5 when it collected no test: that is a failure here too.
uv run --frozen pytest "$@"
