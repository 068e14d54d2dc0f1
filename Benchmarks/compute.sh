#!/usr/bin/env bash
# `weightpack generate --compute bf16` against the default fp32 products, same machine, same
# run, interleaved: a 20-step 512x512 txt2img generation with guidance on the full-size random
# SD 1.5 model (the diffusers folder generate.sh exports), ENGINE_BENCH_THREADS threads.
#
#   Benchmarks/compute.sh [ROUNDS] [STEPS]     (defaults 1 and 20)
#
# Reported per run: wall seconds of the whole process and peak RSS (/usr/bin/time); then the
# PSNR of the bf16 image against the fp32 one (8-bit RGB, peak 255). Needs a processor with
# AVX512_BF16 (`weightpack version --verbose` says "bf16 compute available").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ROUNDS="${1:-1}"
STEPS="${2:-20}"
engine_bench_setup
# WEIGHTPACK_BIN: a weightpack binary to use instead of building one.
fullsize_diffusers_setup
"$WP" version --verbose
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then order="f32 bf16"; else order="bf16 f32"; fi
  for compute in $order; do
    load="$(cut -d' ' -f1-3 /proc/loadavg)"
    /usr/bin/time -f "compute $compute: %e s %M KiB" -o "$OUT/time.txt" \
      "$WP" generate "$MODEL" --steps "$STEPS" --seed 1 --size 512 --compute "$compute" -o "$OUT/compute-$compute.png" --force >/dev/null
    echo "$(cat "$OUT/time.txt") load $load"
  done
done
"$PY" - "$OUT/compute-f32.png" "$OUT/compute-bf16.png" <<'PYEOF'
import sys
import numpy as np
from PIL import Image
a, b = (np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) for p in sys.argv[1:3])
mse = ((a - b) ** 2).mean()
print(f"bf16 image against fp32: PSNR {10 * np.log10(255 ** 2 / mse) if mse else float('inf'):.2f} dB, max difference {np.abs(a - b).max():.0f} of 255")
PYEOF
