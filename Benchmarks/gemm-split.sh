#!/usr/bin/env bash
# Products with an F16 weight on one thread: the split bfloat16 products on AMX tiles against the
# float products the engine runs without them, on SD 1.5's UNet shapes (Docs/engine.md, "F16
# weights on AMX tiles"). Needs libdnnl-dev, clang (or CC=...) and a processor with AMX-BF16.
#   Benchmarks/gemm-split.sh [ROUNDS]   (default 3)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
BIN="${TMPDIR:-/tmp}/weightpack-gemm-split"
"${CC:-clang}" -O2 -I "$ROOT/Sources/CEngineKernels/include" "$HERE/gemm/split.c" "$ROOT"/Sources/CEngineKernels/*.c -o "$BIN" \
  -ldnnl -lm -lpthread
echo "uptime: $(uptime)"
OMP_NUM_THREADS=1 "$BIN" "$@"
