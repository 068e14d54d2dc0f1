#!/usr/bin/env bash
# F16 weights in the engine's product shapes, one thread: F32 weights read by oneDNN's sgemm in
# place; F16 converted whole first; F16 converted a slab at a time into a buffer that stays in
# L2, each slab multiplied as soon as it is made; and the engine's products reading F16 as stored
# (issue 12, item 2; Docs/engine.md, "F16 weights read as stored"). Weights cycle through copies
# that pass the cache.
# Needs libdnnl-dev, clang (or CC=...) and a processor with AVX-512F.
#   Benchmarks/gemm-slabs.sh [SLAB_KIB [ROUNDS]]   (defaults 768 and 3)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="${TMPDIR:-/tmp}/weightpack-gemm-slabs"
ROOT="$(cd "$HERE/.." && pwd)"
"${CC:-clang}" -O2 -I "$ROOT/Sources/CEngineKernels/include" "$HERE/gemm/slabs.c" "$ROOT"/Sources/CEngineKernels/*.c -o "$BIN" \
  -ldnnl -lm -lpthread
echo "uptime: $(uptime)"
OMP_NUM_THREADS=1 "$BIN" "$@"
