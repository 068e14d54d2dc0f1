#!/usr/bin/env bash
# Side-by-side benchmarks of WeightPack against the Python tools people use, on the same machine
# in the same run. Usage: Benchmarks/run.sh [convert|int8|ckpt|open|compress|all]
# WEIGHTPACK_BIN: a weightpack binary to use instead of building one.
# Needs the fixture venv (Fixtures/generate/setup_venv.sh) for the Python side and ~20 GB of free
# space in $WEIGHTPACK_BENCH_DIR (default /tmp/wpbench), where the full-size model is generated.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
WP="${WEIGHTPACK_BIN:-$ROOT/.build/release/weightpack}"
WHAT="${1:-all}"
mkdir -p "$DIR"

[ -n "${WEIGHTPACK_BIN:-}" ] || (cd "$ROOT" && swift build -c release --static-swift-stdlib >/dev/null)
[ -x "$PY" ] || { echo "no fixture venv at $VENV: run Fixtures/generate/setup_venv.sh" >&2; exit 1; }
MODEL="$DIR/sd15-random.safetensors"
CKPT="$DIR/sd15-random.ckpt"
NEEDS_CKPT=0
[ "$WHAT" = ckpt ] || [ "$WHAT" = all ] && NEEDS_CKPT=1
if [ ! -f "$MODEL" ] || { [ "$NEEDS_CKPT" = 1 ] && [ ! -f "$CKPT" ]; }; then
  "$PY" "$ROOT/Fixtures/generate/make_fullsize_sd15.py" --out "$DIR" --ckpt
fi

# measure LABEL COMMAND...: prints "LABEL seconds peak-RSS-MB", best wall time of 3 runs (peak RSS
# of that run). Inputs are read once beforehand so every run starts with them in the page cache.
measure() {
  local label="$1"; shift
  local best="" rss=""
  for _ in 1 2 3; do
    rm -f "$DIR"/out.*
    local stats
    /usr/bin/time -f "%e %M" -o "$DIR/t.measure" "$@" >/dev/null 2>"$DIR/t.stderr" || { echo "failed: $*" >&2; cat "$DIR/t.stderr" >&2; exit 1; }
    stats=$(tail -n 1 "$DIR/t.measure")
    local t="${stats% *}" m="${stats#* }"
    if [ -z "$best" ] || awk "BEGIN{exit !($t < $best)}"; then best="$t"; rss="$m"; fi
  done
  printf "%-48s %8.2f s %8.0f MB\n" "$label" "$best" "$((rss / 1024))"
  echo "$label|$best|$((rss / 1024))" >> "$DIR/results.txt"
}

ratio() {  # ratio LABEL_A LABEL_B: time and memory of A over B, from results.txt
  awk -F'|' -v a="$1" -v b="$2" '$1==a{ta=$2;ma=$3} $1==b{tb=$2;mb=$3} END{printf "  ratio %s / %s: time %.2f, peak memory %.3f\n", a, b, ta/tb, ma/mb}' "$DIR/results.txt"
}

: > "$DIR/results.txt"
echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo); model: $MODEL ($(stat -c %s "$MODEL") bytes)"
cat "$MODEL" >/dev/null
[ "$NEEDS_CKPT" = 0 ] || cat "$CKPT" >/dev/null

if [ "$WHAT" = convert ] || [ "$WHAT" = all ]; then
  measure "python safetensors f32->f16" "$PY" "$HERE/python/convert_safetensors.py" "$MODEL" "$DIR/out.st" f16
  measure "weightpack convert --dtype f16" "$WP" convert "$MODEL" "$DIR/out.wpk" --dtype f16
  ratio "weightpack convert --dtype f16" "python safetensors f32->f16"
  measure "weightpack convert --dtype f16 --no-source-hash" "$WP" convert "$MODEL" "$DIR/out.wpk" --dtype f16 --no-source-hash
  ratio "weightpack convert --dtype f16 --no-source-hash" "python safetensors f32->f16"
  measure "python safetensors keep" "$PY" "$HERE/python/convert_safetensors.py" "$MODEL" "$DIR/out.st" keep
  measure "weightpack convert --dtype keep" "$WP" convert "$MODEL" "$DIR/out.wpk"
  ratio "weightpack convert --dtype keep" "python safetensors keep"
  measure "weightpack convert --dtype keep --no-source-hash" "$WP" convert "$MODEL" "$DIR/out.wpk" --no-source-hash
  ratio "weightpack convert --dtype keep --no-source-hash" "python safetensors keep"
fi

if [ "$WHAT" = int8 ] || [ "$WHAT" = all ]; then
  # Issue 12, item 6: the default conversions (source SHA-256 recorded) against Python's f16.
  measure "python safetensors f32->f16" "$PY" "$HERE/python/convert_safetensors.py" "$MODEL" "$DIR/out.st" f16
  measure "weightpack convert --dtype f16" "$WP" convert "$MODEL" "$DIR/out.wpk" --dtype f16
  measure "weightpack convert --dtype int8" "$WP" convert "$MODEL" "$DIR/out.wpk" --dtype int8
  ratio "weightpack convert --dtype f16" "python safetensors f32->f16"
  ratio "weightpack convert --dtype int8" "weightpack convert --dtype f16"
fi

if [ "$WHAT" = open ] || [ "$WHAT" = all ]; then
  "$WP" convert "$MODEL" "$DIR/keep.wpk" --force 2>/dev/null
  measure "weightpack inspect --json (4.27 GB .wpk)" "$WP" inspect "$DIR/keep.wpk" --json
fi

if [ "$WHAT" = ckpt ] || [ "$WHAT" = all ]; then
  measure "torch.load(mmap, weights_only) list tensors" "$PY" "$HERE/python/torch_list.py" "$CKPT"
  measure "weightpack inspect (ckpt)" "$WP" inspect "$CKPT" --json
  ratio "weightpack inspect (ckpt)" "torch.load(mmap, weights_only) list tensors"
  measure "torch.load + save_file f16" "$PY" "$HERE/python/torch_convert.py" "$CKPT" "$DIR/out.st"
  measure "weightpack convert ckpt --dtype f16" "$WP" convert "$CKPT" "$DIR/out.wpk" --dtype f16
  ratio "weightpack convert ckpt --dtype f16" "torch.load + save_file f16"
  measure "weightpack convert ckpt --dtype f16 --no-source-hash" "$WP" convert "$CKPT" "$DIR/out.wpk" --dtype f16 --no-source-hash
  ratio "weightpack convert ckpt --dtype f16 --no-source-hash" "torch.load + save_file f16"
fi

if [ "$WHAT" = compress ] || [ "$WHAT" = all ]; then
  for level in 3 9; do
    rm -f "$DIR"/out.*
    /usr/bin/time -f "%e" -o "$DIR/t.zstd" zstd -q -"$level" -T1 "$MODEL" -o "$DIR/out.zst"
    /usr/bin/time -f "%e" -o "$DIR/t.wpk" "$WP" convert "$MODEL" "$DIR/out.wpk" --compress --compression-level "$level" 2>/dev/null
    awk -v s="$(stat -c %s "$MODEL")" -v z="$(stat -c %s "$DIR/out.zst")" -v w="$(stat -c %s "$DIR/out.wpk")" \
        -v tz="$(cat "$DIR/t.zstd")" -v tw="$(cat "$DIR/t.wpk")" -v l="$level" \
      'BEGIN{printf "zstd -%d (1 thread): ratio %.3f in %.1f s; weightpack --compress level %d: ratio %.3f in %.1f s\n", l, s/z, tz, l, s/w, tw}'
  done
fi
rm -f "$DIR"/out.* "$DIR"/t.*
