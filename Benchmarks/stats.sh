#!/usr/bin/env bash
# `weightpack inspect MODEL --stats` against a numpy loop computing the same figures
# (Benchmarks/python/stats.py), same machine, same run, interleaved (issue 12, item 7):
#
#   Benchmarks/stats.sh [ROUNDS] [MODEL]   (defaults 2 and $WEIGHTPACK_BENCH_DIR/sd15-random.safetensors)
#
# Each run starts with the file in the page cache (read once before), so both sides measure
# computation and memory, not the disk. Prints wall seconds and peak RSS per run and the ratios.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ROUNDS="${1:-2}"
MODEL="${2:-$DIR/sd15-random.safetensors}"
[ -x "$PY" ] || { echo "no fixture venv at $VENV: run Fixtures/generate/setup_venv.sh" >&2; exit 1; }
WP="${WEIGHTPACK_BIN:-$ROOT/.build/release/weightpack}"
[ -n "${WEIGHTPACK_BIN:-}" ] || (cd "$ROOT" && swift build -c release --static-swift-stdlib >/dev/null)
cat "$MODEL" >/dev/null
results="$(mktemp)"
for round in $(seq 1 "$ROUNDS"); do
  # inspect exits 1 when it reports error findings (NaN, infinities): still a timed run;
  # anything else is a failure, not a figure.
  status=0
  /usr/bin/time -f "weightpack %e %M" "$WP" inspect "$MODEL" --stats --json >/dev/null 2>>"$results.err" || status=$?
  [ "$status" -le 1 ] || { echo "weightpack inspect failed ($status):" >&2; cat "$results.err" >&2; exit 1; }
  tail -n 1 "$results.err" >> "$results"
  /usr/bin/time -f "numpy %e %M" "$PY" "$HERE/python/stats.py" "$MODEL" >/dev/null 2>>"$results.err"
  tail -n 1 "$results.err" >> "$results"
done
cat "$results"
awk '{ if (!($1 in t) || $2 < t[$1]) t[$1] = $2; if ($3 > m[$1]) m[$1] = $3 }
     END { printf "best: weightpack %.2f s, %.0f MiB; numpy %.2f s, %.0f MiB; time ratio %.2f, memory ratio %.2f\n",
           t["weightpack"], m["weightpack"] / 1024, t["numpy"], m["numpy"] / 1024, t["weightpack"] / t["numpy"], m["weightpack"] / m["numpy"] }' "$results"
rm -f "$results" "$results.err"
