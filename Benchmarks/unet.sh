#!/usr/bin/env bash
# One SD 1.5 UNet step with classifier-free guidance (batch 2, 64x64 latent = 512x512 image,
# timestep 999) in the engine and in diffusers, on the same machine, in the same run,
# interleaved, fp32 on the CPU with the same thread count (ENGINE_BENCH_THREADS, default 2).
#
#   Benchmarks/unet.sh [ROUNDS] [STEPS]   (defaults 2 and 2; one step is several seconds)
#
# Each process runs STEPS steps on the same inputs and reports its best, so one-time costs of a
# first call (torch's lazy kernel set-up, our first mapping of the weights) are left out when
# STEPS >= 2, as in a generation.
# Reported per side: the best time, the largest peak RSS (ru_maxrss, weights included: the
# engine maps them, diffusers copies them), the load average; then the ratios and the max abs
# difference of the two predictions. Needs the fixture venv and the full-size random model in
# $WEIGHTPACK_BENCH_DIR (default /tmp/wpbench; generated when missing).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ROUNDS="${1:-2}"
STEPS="${2:-2}"
engine_bench_setup
build_engine_bench
unet_inputs_setup
: > "$OUT/unet-results.jsonl"
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then order="engine diffusers"; else order="diffusers engine"; fi
  for side in $order; do
    if [ "$side" = engine ]; then
      "$BENCH" unet "$MODELS/unet" "$INPUTS" "$STEPS" "$OUT/unet-engine.f32" >> "$OUT/unet-results.jsonl"
    else
      (cd "$HERE/python" && "$PY" engine_unet.py "$MODELS/unet" "$INPUTS" "$STEPS" "$OUT/unet-diffusers.f32") >> "$OUT/unet-results.jsonl"
    fi
    tail -n 1 "$OUT/unet-results.jsonl"
  done
done
"$PY" - "$OUT" <<'PYEOF'
import json, sys
import numpy as np
out = sys.argv[1]
rows = [json.loads(l) for l in open(f"{out}/unet-results.jsonl") if l.strip().startswith("{")]
best = {}
for r in rows:
    side = r.get("side", "engine")
    b = best.setdefault(side, {"best": float("inf"), "rss": 0.0})
    b["best"] = min(b["best"], r["best"]); b["rss"] = max(b["rss"], r["peak_rss_mib"])
for side, b in best.items():
    print(f"{side:10s} best {b['best']:.2f} s, peak RSS {b['rss']:.0f} MiB")
e, d = best.get("weightpack"), best.get("diffusers")
if e and d:
    print(f"ratio engine/diffusers: time {e['best'] / d['best']:.2f}, peak RSS {e['rss'] / d['rss']:.2f}")
a = np.fromfile(f"{out}/unet-engine.f32", dtype=np.float32); b = np.fromfile(f"{out}/unet-diffusers.f32", dtype=np.float32)
print(f"max abs difference of the predictions: {np.abs(a - b).max():.2e} (prediction std {b.std():.3f})")
PYEOF
