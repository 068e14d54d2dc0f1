#!/usr/bin/env bash
# oneDNN against OpenBLAS on the engine's product shapes, same process, interleaved (best of 5
# each), for OpenBLAS's own CPU detection and for the Prescott fallback it picks on processors
# it does not know; then oneDNN limited to each kernel family the build can select.
#   Benchmarks/gemm.sh [THREADS]   (default 2)
# Needs libopenblas-dev, libdnnl-dev and a C compiler.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
THREADS="${1:-2}"
BIN="${TMPDIR:-/tmp}/weightpack-gemm-compare"
cc -O2 "$HERE/gemm/compare.c" -o "$BIN" -lopenblas -ldnnl -ldl
echo "uptime: $(uptime)"
export OPENBLAS_NUM_THREADS="$THREADS"
echo "== OpenBLAS's own detection"
"$BIN" "$THREADS"
echo "== OPENBLAS_CORETYPE=Prescott (what OpenBLAS 0.3.21 picks for a CPU model it does not know)"
OPENBLAS_CORETYPE=Prescott "$BIN" "$THREADS"
for isa in AVX512_CORE AVX2 SSE41; do
  echo "== DNNL_MAX_CPU_ISA=$isa"
  DNNL_MAX_CPU_ISA=$isa "$BIN" "$THREADS"
done
echo "uptime: $(uptime)"
