#!/usr/bin/env bash
# README command 2: set up everything the tests use, then run them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
if [[ -x scripts/ci_browser.sh ]]; then
  scripts/ci_browser.sh  # headless Chromium for the playground test
fi
exec .venv/bin/python -m pytest -q "$@"
