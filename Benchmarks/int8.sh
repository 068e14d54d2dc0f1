#!/usr/bin/env bash
# `--compute int8` (int8 block weights times inputs quantised 32 values per scale, AVX512_VNNI)
# against float compute, and against stable-diffusion.cpp running q8_0, same machine, same run,
# on the full-size random SD 1.5 (`convert --dtype int8` of it for ours):
#
#   Benchmarks/int8.sh [ROUNDS] [STEPS] [SDCPP]   (defaults 2, 20 and 1; SDCPP=0 skips the peer)
#
# 1. One UNet step with guidance (EngineBench, best of 3 per process), interleaved: the F32
#    file in float, the int8 file in float, the int8 file in int8.
# 2. A 20-step 512 px generation (whole process, /usr/bin/time): the F32 model in float, the
#    int8 file in float and in int8; then the images' PSNR against the F32 model's (8-bit RGB).
# 3. stable-diffusion.cpp (stable-diffusion-cpp-python in the fixture venv) generating from the
#    same safetensors with wtype q8_0 (it converts as it loads; its load is reported apart), the
#    same size, steps, guidance and thread count. Its sampler and noise differ from ours, so
#    only its time and memory compare.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ROUNDS="${1:-2}"
STEPS="${2:-20}"
SDCPP="${3:-1}"
engine_bench_setup
build_engine_bench
fullsize_diffusers_setup
"$WP" version --verbose
SRC="$DIR/sd15-random.safetensors"
F32="$DIR/sd15-f32.wpk"
INT8="$DIR/sd15-int8.wpk"
[ -f "$F32" ] || "$WP" convert "$SRC" "$F32" --dtype f32
[ -f "$INT8" ] || "$WP" convert "$SRC" "$INT8" --dtype int8
unet_step_inputs
cat "$F32" "$INT8" >/dev/null
step() {  # FILE COMPUTE
  env ENGINE_BENCH_COMPUTE="$2" WEIGHTPACK_KEEP_RESIDENT=1 "$BENCH" unet "$1" "$INPUTS" 3 "$OUT/int8-$(basename "$1" .wpk)-$2.f32" 2>/dev/null \
    | grep '"side"' | "$PY" -c "import json,sys; r=json.loads(sys.stdin.read()); print(f\"step $(basename "$1") compute $2: best {r['best']:.3f} s runs {r['runs']} peak RSS {r['peak_rss_mib']} MiB load {r['loadavg']}\")"
}
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then
    step "$F32" f32; step "$INT8" f32; step "$INT8" int8
  else
    step "$INT8" int8; step "$INT8" f32; step "$F32" f32
  fi
done
"$PY" - "$OUT/int8-sd15-int8-f32.f32" "$OUT/int8-sd15-int8-int8.f32" "$OUT/int8-sd15-f32-f32.f32" <<'PYEOF'
import sys
import numpy as np
f, i, ref = (np.fromfile(p, dtype=np.float32) for p in sys.argv[1:4])
snr = lambda r, x: 10 * np.log10((r.astype(np.float64) ** 2).sum() / ((r.astype(np.float64) - x) ** 2).sum())
print(f"step predictions: int8 compute against float compute on the int8 file {snr(f, i):.2f} dB; "
      f"against the F32 file {snr(ref, i):.2f} dB (the int8 file in float: {snr(ref, f):.2f} dB)")
PYEOF
generate() {  # NAME MODEL COMPUTE
  load="$(cut -d' ' -f1-3 /proc/loadavg)"
  /usr/bin/time -f "generate $1 compute $3: %e s %M KiB" -o "$OUT/time.txt" \
    "$WP" generate "$2" --steps "$STEPS" --seed 1 --size 512 --compute "$3" -o "$OUT/int8-gen-$1-$3.png" --force >/dev/null
  echo "$(cat "$OUT/time.txt") load $load"
}
generate f32 "$MODEL" f32
generate int8 "$INT8" int8
generate int8 "$INT8" f32
"$PY" - "$OUT/int8-gen-f32-f32.png" "$OUT/int8-gen-int8-f32.png" "$OUT/int8-gen-int8-int8.png" <<'PYEOF'
import sys
import numpy as np
from PIL import Image
ref, f, i = (np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) for p in sys.argv[1:4])
psnr = lambda a, b: 10 * np.log10(255 ** 2 / ((a - b) ** 2).mean())
print(f"images: int8 file, int8 compute against float compute {psnr(f, i):.2f} dB; against the F32 model "
      f"{psnr(ref, i):.2f} dB (int8 file in float: {psnr(ref, f):.2f} dB)")
PYEOF
if [ "$SDCPP" = 1 ]; then
  /usr/bin/time -f "stable-diffusion.cpp process: %e s %M KiB" -o "$OUT/time.txt" \
    "$PY" "$HERE/python/sdcpp_generate.py" "$SRC" q8_0 "$ENGINE_BENCH_THREADS" "$STEPS" 512 "$OUT/int8-sdcpp-q8_0.png"
  cat "$OUT/time.txt"
fi
