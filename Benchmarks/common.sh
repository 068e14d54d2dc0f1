# Where the benchmark scripts find things; sourced by run.sh, engine.sh, unet.sh and generate.sh.
#   WEIGHTPACK_BENCH_DIR     the full-size model and outputs (default /tmp/wpbench)
#   WEIGHTPACK_FIXTURE_VENV  the fixture Python environment (default ~/.cache/weightpack/fixture-venv)
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
DIR="${WEIGHTPACK_BENCH_DIR:-/tmp/wpbench}"
VENV="${WEIGHTPACK_FIXTURE_VENV:-$HOME/.cache/weightpack/fixture-venv}"
PY="$VENV/bin/python"
