#!/usr/bin/env bash
# Float products on one thread, oneDNN's sgemm against the engine's own tiles, on the Winograd
# products and pointwise convolutions of an SD 1.5 UNet step and a grid around them; marks the
# shapes `GEMM.f32TilesSuit` gives to our tiles (Docs/engine.md, "Our tiles for float products").
# Needs libdnnl-dev, clang (or CC=...) and a processor with AVX-512F.
#   Benchmarks/gemm-tiles.sh [ROUNDS]   (default 3)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
BIN="${TMPDIR:-/tmp}/weightpack-gemm-tiles"
"${CC:-clang}" -O2 -I "$ROOT/Sources/CEngineKernels/include" "$HERE/gemm/tiles.c" "$ROOT"/Sources/CEngineKernels/*.c -o "$BIN" \
  -ldnnl -lm -lpthread
echo "uptime: $(uptime)"
OMP_NUM_THREADS=1 "$BIN" "$@"
