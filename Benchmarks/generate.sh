#!/usr/bin/env bash
# A full 20-step txt2img generation at 512x512 with classifier-free guidance (the scheduler of
# the model folder: PNDM for SD 1.5) on the full-size random SD 1.5 model, by `weightpack
# generate` and by diffusers' StableDiffusionPipeline, same machine, same run, interleaved, fp32
# on the CPU, ENGINE_BENCH_THREADS threads each (default 2).
#
#   Benchmarks/generate.sh [ROUNDS] [STEPS]     (defaults 1 and 20; a round is several minutes)
#
# Reported per side: wall seconds of the whole process (loading included) and peak RSS, from
# /usr/bin/time; diffusers' JSON line also gives its run time without loading. The two PNGs
# are compared (PSNR). Needs the fixture venv and the full-size model in $WEIGHTPACK_BENCH_DIR
# (default /tmp/wpbench; generated when missing), which is exported once as a complete diffusers
# folder by the built weightpack so both sides read the same files.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ROUNDS="${1:-1}"
STEPS="${2:-20}"
engine_bench_setup
# WEIGHTPACK_BIN: a weightpack binary to use instead of building one (in GENERATE_BENCH_SCRATCH).
fullsize_diffusers_setup "${GENERATE_BENCH_SCRATCH:-$ROOT/.build}"
: > "$OUT/generate-results.txt"
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then order="engine diffusers"; else order="diffusers engine"; fi
  for side in $order; do
    load="$(cut -d' ' -f1-3 /proc/loadavg)"
    if [ "$side" = engine ]; then
      /usr/bin/time -f "weightpack %e s %M KiB" -o "$OUT/time.txt" \
        "$WP" generate "$MODEL" --steps "$STEPS" --seed 1 --size 512 -o "$OUT/generate-engine.png" --force >/dev/null
    else
      (cd "$HERE/python" && /usr/bin/time -f "diffusers %e s %M KiB" -o "$OUT/time.txt" \
        "$PY" engine_generate.py "$MODEL" "$STEPS" 1 "$OUT/generate-diffusers.png" 2>/dev/null)
    fi
    echo "$(cat "$OUT/time.txt") load $load" | tee -a "$OUT/generate-results.txt"
  done
done
"$PY" - "$OUT" <<'PYEOF'
import sys
import numpy as np
from PIL import Image
out = sys.argv[1]
best = {}
for line in open(f"{out}/generate-results.txt"):
    side, seconds, _, kib = line.split()[:4]
    b = best.setdefault(side, [float("inf"), 0.0])
    b[0] = min(b[0], float(seconds)); b[1] = max(b[1], float(kib) / 1024)
for side, (s, m) in best.items():
    print(f"{side:10s} best {s:.1f} s, peak RSS {m:.0f} MiB")
if "weightpack" in best and "diffusers" in best:
    e, d = best["weightpack"], best["diffusers"]
    print(f"ratio weightpack/diffusers: time {e[0] / d[0]:.2f}, peak RSS {e[1] / d[1]:.2f}")
a = np.asarray(Image.open(f"{out}/generate-engine.png"), dtype=np.float64)
b = np.asarray(Image.open(f"{out}/generate-diffusers.png"), dtype=np.float64)
mse = ((a - b) ** 2).mean()
print(f"image PSNR engine vs diffusers: {10 * np.log10(255 ** 2 / mse) if mse > 0 else float('inf'):.1f} dB")
PYEOF
