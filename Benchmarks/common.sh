# Where the benchmark scripts find things; sourced by run.sh, engine.sh, unet.sh, generate.sh,
# compute.sh and the others.
#   WEIGHTPACK_BENCH_DIR     the full-size model and outputs (default /tmp/wpbench)
#   WEIGHTPACK_FIXTURE_VENV  the fixture Python environment (default ~/.cache/weightpack/fixture-venv)
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
DIR="${WEIGHTPACK_BENCH_DIR:-/tmp/wpbench}"
VENV="${WEIGHTPACK_FIXTURE_VENV:-$HOME/.cache/weightpack/fixture-venv}"
PY="$VENV/bin/python"

# The engine benchmarks' shared set-up (engine.sh, unet.sh, generate.sh): thread counts of both
# sides, the output folder, and a check for the fixture venv.
engine_bench_setup() {
  export ENGINE_BENCH_THREADS="${ENGINE_BENCH_THREADS:-2}"
  # The engine's BLAS threads; its own elementwise workers follow the active processor count.
  export OPENBLAS_NUM_THREADS="$ENGINE_BENCH_THREADS"
  MODELS="$DIR/sd15-diffusers"
  OUT="$DIR/engine-out"
  mkdir -p "$DIR" "$OUT"
  [ -x "$PY" ] || { echo "no fixture venv at $VENV: run Fixtures/generate/setup_venv.sh" >&2; exit 1; }
}

# The full-size random SD 1.5 UNet as a diffusers folder and one guidance pair's inputs (a 64x64
# latent and 77 tokens of context for each element, seed 7) for unet.sh and profile.sh: made
# when missing, sets INPUTS, and reads the weights into the page cache.
unet_inputs_setup() {
  if [ ! -f "$MODELS/unet/diffusion_pytorch_model.safetensors" ]; then
    [ -f "$DIR/sd15-random.safetensors" ] || "$PY" "$ROOT/Fixtures/generate/make_fullsize_sd15.py" --out "$DIR"
    "$PY" "$HERE/python/engine_prepare.py" "$DIR/sd15-random.safetensors" "$MODELS"
  fi
  unet_step_inputs
  cat "$MODELS/unet/"*.safetensors >/dev/null
}

# The guidance pair's inputs alone (sets INPUTS; blocks.sh and int8.sh bring their own weights).
unet_step_inputs() {
  INPUTS="$OUT/unet-inputs.f32"
  [ -f "$INPUTS" ] || "$PY" -c "import numpy as np; r=np.random.default_rng(7); np.concatenate([r.standard_normal(2*4*64*64), r.standard_normal(2*77*768)*0.5]).astype(np.float32).tofile('$INPUTS')"
}

# Builds Benchmarks/EngineBench (release, with @testable access to the engine) and sets BENCH.
build_engine_bench() {
  local scratch="${ENGINE_BENCH_SCRATCH:-$ROOT/.build-perf-bench}"
  swift build -c release -Xswiftc -enable-testing --package-path "$HERE/EngineBench" --scratch-path "$scratch" >/dev/null
  BENCH="$scratch/release/EngineBench"
}

# The full-size random SD 1.5 as a complete diffusers folder (generate.sh, compute.sh): sets WP
# (WEIGHTPACK_BIN, else a release build in SCRATCH, default $ROOT/.build) and MODEL, making the
# model and exporting the folder with that binary when missing, then reads it into the page cache.
fullsize_diffusers_setup() {
  local scratch="${1:-$ROOT/.build}"
  WP="${WEIGHTPACK_BIN:-$scratch/release/weightpack}"
  [ -n "${WEIGHTPACK_BIN:-}" ] || swift build -c release --package-path "$ROOT" --scratch-path "$scratch" >/dev/null
  [ -f "$DIR/sd15-random.safetensors" ] || "$PY" "$ROOT/Fixtures/generate/make_fullsize_sd15.py" --out "$DIR"
  MODEL="$DIR/sd15-full-diffusers"
  [ -f "$MODEL/model_index.json" ] || "$WP" export "$DIR/sd15-random.safetensors" "$MODEL" --layout diffusers
  cat "$MODEL"/*/*.safetensors >/dev/null
}

# The full-size random SD 1.5 as `.wpk` files for blocks.sh and pair.sh: sets WP (WEIGHTPACK_BIN,
# else a release build) and MODEL, and makes $DIR/sd15-f32.wpk and $DIR/sd15-TYPE.wpk for each
# TYPE given (`convert --dtype TYPE --no-source-hash`) when missing.
wpk_models_setup() {
  WP="${WEIGHTPACK_BIN:-$ROOT/.build/release/weightpack}"
  [ -n "${WEIGHTPACK_BIN:-}" ] || (cd "$ROOT" && swift build -c release --static-swift-stdlib >/dev/null)
  MODEL="$DIR/sd15-random.safetensors"
  [ -f "$MODEL" ] || "$PY" "$ROOT/Fixtures/generate/make_fullsize_sd15.py" --out "$DIR"
  [ -f "$DIR/sd15-f32.wpk" ] || "$WP" convert "$MODEL" "$DIR/sd15-f32.wpk" --no-source-hash
  local t
  for t in "$@"; do
    [ "$t" = f32 ] || [ -f "$DIR/sd15-$t.wpk" ] || /usr/bin/time -f "convert --dtype $t: %e s, %M KB" "$WP" convert "$MODEL" "$DIR/sd15-$t.wpk" --dtype "$t" --no-source-hash
  done
}
