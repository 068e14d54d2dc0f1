#!/usr/bin/env bash
# Where a UNet step's time goes, against the machine's ceiling: the single-precision FMA peak of
# one core (Benchmarks/gemm/peak.c, 512-bit and 256-bit; then on every core at once), then one SD
# 1.5 UNet step with guidance at 512 px (as Benchmarks/unet.sh) with its products and fused
# attention timed per layer kind and per shape (`ENGINE_BENCH_PROFILE=1`: every step after the
# first, whose products include oneDNN's kernel generation).
#
#   Benchmarks/profile.sh [STEPS]   (default 3)
#
# The per-kind seconds are per calling thread: in the guidance pair each core runs one element
# with single-threaded products, so they are core-seconds, and GFLOP/s per kind compare with the
# one-core peak. Needs a C compiler, the fixture venv and the full-size random model in
# $WEIGHTPACK_BENCH_DIR (default /tmp/wpbench; generated when missing, as unet.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
STEPS="${1:-3}"
engine_bench_setup
build_engine_bench
PEAK="${TMPDIR:-/tmp}/weightpack-peak"
cc -O2 "$HERE/gemm/peak.c" -o "$PEAK"
echo "uptime: $(uptime)"
"$PEAK"
"$PEAK" avx2
echo "every core at once (a line per core):"
for _ in $(seq 1 "$(nproc)"); do "$PEAK" & done
wait
unet_inputs_setup
ENGINE_BENCH_PROFILE=1 "$BENCH" unet "$MODELS/unet" "$INPUTS" "$STEPS" "$OUT/unet-engine.f32" 2>&1 | grep -v "^shared conversions"
echo "uptime: $(uptime)"
