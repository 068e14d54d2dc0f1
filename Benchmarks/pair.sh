#!/usr/bin/env bash
# One SD 1.5 UNet step with guidance (batch 2, 64x64 latent, timestep 999), F32 weights against
# another type's, both loaded in ONE process and their steps alternated (A B, B A, A B, ...), so
# that the machine's slow and fast spells fall on both alike (issue 12, item 2). Whole processes
# run one after another differ here by up to 10 % on identical code; the ratio of the two steps
# of a pair does not drift with the machine. Set TYPE to f32 for a control run (the F32 file
# against itself: how far from 1.00 the method's median lands on identical work).
#
#   Benchmarks/pair.sh [PAIRS] [TYPE]   (defaults 10 and f16)
#
# The weights are `weightpack convert` outputs of $WEIGHTPACK_BENCH_DIR/sd15-random.safetensors
# (made when missing, as blocks.sh does; WEIGHTPACK_BIN: a weightpack binary to use), their mapped pages kept resident as blocks.sh keeps
# them (RESIDENT=0: released after each layer, as `generate` does by default).
# COMPUTE (default f32) sets the products' arithmetic for both, as ENGINE_BENCH_COMPUTE does;
# COMPUTE=auto runs each as `generate` would (int8 products for int8 and Q8_0 weights with VNNI).
# Prints EngineBench's JSON line, then the median and mean of B/A over the pairs and the mean's
# 95 % interval (t distribution).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PAIRS="${1:-10}"
TYPE="${2:-f16}"
engine_bench_setup
build_engine_bench
wpk_models_setup "$TYPE"
unet_step_inputs
cat "$DIR/sd15-f32.wpk" "$DIR/sd15-$TYPE.wpk" >/dev/null
echo "uptime: $(uptime)"
ENGINE_BENCH_COMPUTE="${COMPUTE:-f32}" WEIGHTPACK_KEEP_RESIDENT="${RESIDENT:-1}" \
  "$BENCH" unet-pair "$DIR/sd15-f32.wpk" "$DIR/sd15-$TYPE.wpk" "$INPUTS" "$PAIRS" | tee "$OUT/pair-$TYPE.json"
echo "uptime: $(uptime)"
"$PY" - "$OUT/pair-$TYPE.json" <<'PYEOF'
import json, sys
import numpy as np
# Two-sided 95 % quantiles of Student's t for 1 to 30 degrees of freedom; 1.96 beyond.
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
x = np.array(r["ratios"])
half = (T975[len(x) - 2] if len(x) - 1 <= 30 else 1.96) * x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else float("nan")
print(f"B / A over {len(x)} pairs: median {np.median(x):.3f}, mean {x.mean():.3f} (95 % interval {x.mean() - half:.3f} to {x.mean() + half:.3f}); "
      f"medians {r['a_median']:.2f} s and {r['b_median']:.2f} s; predictions differ by at most {r['largest_difference']:.3g}")
PYEOF
