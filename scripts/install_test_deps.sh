#!/usr/bin/env bash
# What the test suite needs beyond the Python packages: Debian's Chromium for the browser tests (pytest marker
# `browser`, tests/serve/test_browser.py, driven through Playwright; Playwright's own browser download is not
# used). A no-op when it is there. Called by `make test` (and so by .ci/run).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
echo "installing Debian's chromium for the browser tests"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
