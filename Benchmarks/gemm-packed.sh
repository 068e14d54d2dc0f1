#!/usr/bin/env bash
# A plain packed AVX-512 GEMM kernel of our own against oneDNN's dnnl_sgemm on the engine's
# product shapes, one thread, best of 5 each (issue 12, item 2's decision; Docs/engine.md).
# Needs libdnnl-dev, clang (or CC=...) and a processor with AVX-512F.
#   Benchmarks/gemm-packed.sh [KC MC NC]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="${TMPDIR:-/tmp}/weightpack-gemm-packed"
"${CC:-clang}" -O3 "$HERE/gemm/packed.c" -o "$BIN" -ldnnl -lm
echo "uptime: $(uptime)"
OMP_NUM_THREADS=1 "$BIN" "$@"
