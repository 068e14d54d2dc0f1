#!/usr/bin/env bash
# oneDNN's float product against its bfloat16 one (`generate --compute bf16`) on the engine's
# product shapes, one thread, best of 5 each. Needs libdnnl-dev, a C compiler and a processor
# with AVX512_BF16 (elsewhere oneDNN emulates the bf16 dot products).
#   Benchmarks/gemm-bf16.sh
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="${TMPDIR:-/tmp}/weightpack-gemm-bf16"
cc -O2 "$HERE/gemm/bf16.c" -o "$BIN" -ldnnl -lm
echo "uptime: $(uptime)"
OMP_NUM_THREADS=1 "$BIN"
