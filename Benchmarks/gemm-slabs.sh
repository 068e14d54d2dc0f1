#!/usr/bin/env bash
# F16 weights in the engine's product shapes, one thread: F32 weights read by oneDNN's sgemm in
# place, F16 converted whole first (the engine's way), and F16 converted a slab at a time into a
# buffer that stays in L2, each slab multiplied as soon as it is made (issue 12, item 2;
# Docs/engine.md, "Where item 2 stands"). Weights cycle through copies that pass the cache.
# Needs libdnnl-dev, a C compiler and a processor with AVX-512F.
#   Benchmarks/gemm-slabs.sh [SLAB_KIB [ROUNDS]]   (defaults 768 and 3)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="${TMPDIR:-/tmp}/weightpack-gemm-slabs"
"${CC:-cc}" -O2 "$HERE/gemm/slabs.c" -o "$BIN" -ldnnl
echo "uptime: $(uptime)"
OMP_NUM_THREADS=1 "$BIN" "$@"
