#!/usr/bin/env bash
# One SD 1.5 UNet step with classifier-free guidance (batch 2, 64x64 latent = 512x512 image,
# timestep 999) computed from F32 weights and from ggml block weights (issue 13, item 7), in the
# same run, interleaved, on the full-size random model:
#
#   Benchmarks/blocks.sh [ROUNDS] [STEPS] [TYPES]   (defaults 2, 2 and "q4_k q8_0")
#
# The weights are `weightpack convert` outputs of $WEIGHTPACK_BENCH_DIR/sd15-random.safetensors
# (F32 kept, and --dtype TYPE), run by `EngineBench unet FILE.wpk` with WEIGHTPACK_KEEP_RESIDENT=1
# (mapped weight pages stay resident, so peak RSS counts every weight the step touched, as an
# application keeping a model loaded would see it). Reported per file: the best step time, the
# largest peak RSS, the file size; then each block type's ratios to F32 and the SNR of its
# prediction against F32's. Each file computes as `generate` would by default
# (ENGINE_BENCH_COMPUTE=auto: int8 products for int8 and Q8_0 weights where the processor has
# AVX512_VNNI, float otherwise); COMPUTE=f32 (or bf16, int8) sets one arithmetic for all.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ROUNDS="${1:-2}"
STEPS="${2:-2}"
TYPES="${3:-q4_k q8_0}"
engine_bench_setup
build_engine_bench
# WEIGHTPACK_BIN: a weightpack binary to use instead of building one.
# shellcheck disable=SC2086
wpk_models_setup $TYPES
unet_step_inputs
: > "$OUT/blocks-results.jsonl"
for round in $(seq 1 "$ROUNDS"); do
  files="f32 $TYPES"
  [ $((round % 2)) -eq 0 ] && files="$(echo "$files" | tr ' ' '\n' | tac | tr '\n' ' ')"
  for f in $files; do
    cat "$DIR/sd15-$f.wpk" >/dev/null
    ENGINE_BENCH_COMPUTE="${COMPUTE:-auto}" WEIGHTPACK_KEEP_RESIDENT=1 "$BENCH" unet "$DIR/sd15-$f.wpk" "$INPUTS" "$STEPS" "$OUT/blocks-$f.f32" >> "$OUT/blocks-results.jsonl"
    tail -n 1 "$OUT/blocks-results.jsonl"
  done
done
"$PY" - "$OUT" "$DIR" $TYPES <<'PYEOF'
import json, os, sys
import numpy as np
out, models, types = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = [json.loads(l) for l in open(f"{out}/blocks-results.jsonl") if l.strip().startswith("{")]
best = {}
for r in rows:
    name = r["task"].split(" ")[1].rstrip(",").removeprefix("sd15-").removesuffix(".wpk")
    b = best.setdefault(name, {"best": float("inf"), "rss": 0.0})
    b["best"] = min(b["best"], r["best"]); b["rss"] = max(b["rss"], r["peak_rss_mib"])
ref = np.fromfile(f"{out}/blocks-f32.f32", dtype=np.float32).astype(np.float64)
f32 = best["f32"]
size32 = os.path.getsize(f"{models}/sd15-f32.wpk")
print(f"{'weights':8s} {'step':>8s} {'peak RSS':>10s} {'file':>10s} {'time/f32':>9s} {'RSS/f32':>8s} {'size/f32':>9s} {'SNR':>8s}")
for name in ["f32"] + types:
    b = best[name]
    size = os.path.getsize(f"{models}/sd15-{name}.wpk")
    pred = np.fromfile(f"{out}/blocks-{name}.f32", dtype=np.float32).astype(np.float64)
    err = ((ref - pred) ** 2).sum()
    snr = "exact" if err == 0 else f"{10 * np.log10((ref ** 2).sum() / err):.2f} dB"
    print(f"{name:8s} {b['best']:7.2f}s {b['rss']:8.0f} MiB {size / 2**20:7.0f} MiB {b['best'] / f32['best']:9.2f} {b['rss'] / f32['rss']:8.2f} {size / size32:9.3f} {snr:>8s}")
PYEOF
