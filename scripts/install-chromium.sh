#!/usr/bin/env bash
# Install Debian's chromium once per machine, for the dashboard's browser tests
# (Playwright drives it through executable_path; `playwright install` is never used).
# Skipped when /usr/bin/chromium exists. Needs root (or sudo) and apt.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  echo "chromium: /usr/bin/chromium (installed)"
  exit 0
fi
command -v apt-get >/dev/null || { echo "install-chromium: needs apt-get (Debian/Ubuntu) or a /usr/bin/chromium" >&2; exit 1; }
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
/usr/bin/chromium --version
