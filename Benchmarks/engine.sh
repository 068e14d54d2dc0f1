#!/usr/bin/env bash
# The engine against diffusers on the same machine, in the same run, interleaved: the SD 1.5 text
# encoder on a batch of 2 x 77 tokens and the VAE decode of a 1x4x64x64 latent to 512x512, fp32
# on the CPU with the same thread count on both sides (ENGINE_BENCH_THREADS, default 2).
#
#   Benchmarks/engine.sh [ROUNDS]      (default 3)
#
# Each round runs, in alternating order, one process per side and task: the text encoder does a
# warm-up call and 5 timed calls, the VAE one timed decode. Reported: the best time over all
# rounds, the largest peak RSS (getrusage ru_maxrss of the process, model weights included), the
# load average at each measurement, the ratios, and the max abs difference of the two outputs.
# Needs the fixture venv (Fixtures/generate/setup_venv.sh) and the full-size random model in
# $WEIGHTPACK_BENCH_DIR (default /tmp/wpbench; generated when missing, about 4.3 GB).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ROUNDS="${1:-3}"
engine_bench_setup
build_engine_bench

if [ ! -f "$MODELS/vae/diffusion_pytorch_model.safetensors" ] || [ ! -f "$MODELS/text_encoder/model.safetensors" ]; then
  [ -f "$DIR/sd15-random.safetensors" ] || "$PY" "$ROOT/Fixtures/generate/make_fullsize_sd15.py" --out "$DIR"
  "$PY" "$HERE/python/engine_prepare.py" "$DIR/sd15-random.safetensors" "$MODELS"
fi
LATENT="$OUT/latent.f32"
[ -f "$LATENT" ] || "$PY" -c "import numpy as np; np.random.default_rng(5).standard_normal((1, 4, 64, 64)).astype(np.float32).tofile('$LATENT')"
cat "$MODELS"/*/*.safetensors >/dev/null   # both sides start with the weights in the page cache

RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
LOG="$OUT/stderr.log"
: > "$LOG"
te_py()  { "$PY" "$HERE/python/engine_text_encoder.py" "$MODELS/text_encoder" 5 "$OUT/te.diffusers.f32" >> "$RESULTS" 2>> "$LOG"; }
te_wp()  { "$BENCH" text-encoder "$MODELS/text_encoder" 5 "$OUT/te.weightpack.f32" >> "$RESULTS" 2>> "$LOG"; }
vae_py() { "$PY" "$HERE/python/engine_vae.py" "$MODELS/vae" "$LATENT" 1 "$OUT/vae.diffusers.f32" >> "$RESULTS" 2>> "$LOG"; }
vae_wp() { "$BENCH" vae "$MODELS/vae" "$LATENT" 1 "$OUT/vae.weightpack.f32" >> "$RESULTS" 2>> "$LOG"; }

echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo); threads per side: $ENGINE_BENCH_THREADS; rounds: $ROUNDS"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
"$BENCH" kernels | sed 's/^/kernels: /' 
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then te_py; te_wp; vae_wp; vae_py; else te_wp; te_py; vae_py; vae_wp; fi
  echo "round $round done (load $(cut -d' ' -f1-3 /proc/loadavg))"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

"$PY" - "$RESULTS" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
best = {}
for r in rows:
    key = (r["task"], r["side"])
    b = best.setdefault(key, {"best": float("inf"), "rss": 0.0, "loads": []})
    b["best"] = min(b["best"], r["best"]); b["rss"] = max(b["rss"], r["peak_rss_mib"]); b["loads"].append(r["loadavg"].split()[0])
print(f"{'task':<14}{'side':<12}{'best s':>10}{'peak RSS MiB':>14}   1-min load at each round")
for (task, side), b in sorted(best.items()):
    print(f"{task:<14}{side:<12}{b['best']:>10.3f}{b['rss']:>14.0f}   {' '.join(b['loads'])}")
for task in ("text_encoder", "vae_decode"):
    w, d = best.get((task, "weightpack")), best.get((task, "diffusers"))
    if w and d:
        print(f"ratio {task} weightpack/diffusers: time {w['best'] / d['best']:.2f} (best of each side), peak RSS {w['rss'] / d['rss']:.2f}")
        # Each round measures both sides back to back: the ratio within a round is the least noisy.
        ws = [r["best"] for r in rows if r["task"] == task and r["side"] == "weightpack"]
        ds = [r["best"] for r in rows if r["task"] == task and r["side"] == "diffusers"]
        per_round = sorted(a / b for a, b in zip(ws, ds))
        print(f"  per-round time ratios: {' '.join(f'{x:.2f}' for x in per_round)} (median {per_round[len(per_round) // 2]:.2f})")
PYEOF
"$PY" "$HERE/python/engine_compare.py" "$OUT/te.weightpack.f32" "$OUT/te.diffusers.f32" "text encoder output"
"$PY" "$HERE/python/engine_compare.py" "$OUT/vae.weightpack.f32" "$OUT/vae.diffusers.f32" "VAE decode output"
