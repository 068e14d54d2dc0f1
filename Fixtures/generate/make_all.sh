#!/usr/bin/env bash
# Regenerates every committed fixture under Fixtures/ (about a minute on 2 cores, after the
# one-time venv install). The full-size SD 1.5 model is NOT made here: see make_fullsize_sd15.py.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"
VENV="$(./setup_venv.sh | tail -n 1)"
PY="$VENV/bin/python"
export PYTHONHASHSEED=0
"$PY" make_malformed.py --check
"$PY" make_tiny_sd1.py
"$PY" make_tiny_sd1_heads16.py
"$PY" make_diffusers_variants.py
"$PY" make_tiny_sd2_sdxl.py
"$PY" make_goldens.py
"$PY" make_engine_goldens.py
{
  echo "# Installed in the fixture venv ($VENV) when the fixtures were last generated."
  echo "# $("$PY" --version 2>&1), $(uname -sm)"
  "$PY" -m pip freeze --all
} > versions.txt
echo "fixtures regenerated; sizes:"
du -sh ../tiny-sd1 ../tiny-sd1-heads16 ../tiny-sd1/diffusers-bin ../tiny-sd1/diffusers-sharded ../tiny-sd2 ../tiny-sdxl ../golden ../malformed
