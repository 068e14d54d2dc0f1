#!/usr/bin/env bash
# Creates (if missing) the Python venv used to generate WeightPack's fixtures and
# installs the pinned requirements into it. Prints the venv path on the last line.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${WEIGHTPACK_FIXTURE_VENV:-$HOME/.cache/weightpack/fixture-venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install -r "$HERE/requirements.txt"
echo "$VENV"
