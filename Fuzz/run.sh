#!/usr/bin/env bash
# Builds one libFuzzer target of WeightPack and runs it (Docs/fuzzing.md).
#
#   Fuzz/run.sh TARGET SECONDS [libFuzzer options...]
#
# TARGET is safetensors, wpk, gguf, torch, pickle or json. The working corpus, crash artifacts and
# logs go to Fuzz/.build/fuzz/TARGET/ (ignored by git); seeds come from the committed fixtures
# and Fixtures/fuzz/TARGET/. Extra arguments go to libFuzzer, e.g. -fork=1 -ignore_crashes=1
# to keep going after a crash. Given an input file, it runs on that file alone (no corpus):
#   Fuzz/run.sh torch 0 crash-1234                          replay one input
#   Fuzz/run.sh torch 60 -minimize_crash=1 crash-1234       minimise a crash for 60 s
# FUZZ_NICE (default 10) sets the niceness; FUZZ_SKIP_BUILD=1 skips the build.
set -euo pipefail
# Let libFuzzer, not the Swift backtracer, handle traps (it saves the input and is fast).
export SWIFT_BACKTRACE=${SWIFT_BACKTRACE:-enable=no}

if [[ $# -lt 2 ]]; then
    echo "usage: $0 safetensors|wpk|gguf|torch|pickle|json|tokenizer SECONDS [libFuzzer options...]" >&2
    exit 64
fi
target=$1
seconds=$2
shift 2

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
scratch="$here/.build"
nice_level=${FUZZ_NICE:-10}

case "$target" in
    safetensors) product=FuzzSafetensors; max_len=8192 ;;
    wpk)         product=FuzzWPK;         max_len=8192 ;;
    gguf)        product=FuzzGGUF;        max_len=8192 ;;
    torch)       product=FuzzTorch;       max_len=16384 ;;
    pickle)      product=FuzzPickle;      max_len=4096 ;;
    json)        product=FuzzJSON;        max_len=4096 ;;
    tokenizer)   product=FuzzTokenizer;   max_len=16384 ;;
    *) echo "unknown target '$target' (safetensors, wpk, gguf, torch, pickle, json, tokenizer)" >&2; exit 64 ;;
esac

# Instrument every module (the main package's parsers too) for coverage and AddressSanitizer,
# and keep the standard library's debug checks (raw-buffer bounds) in the optimised build.
build_flags=(
    -c release --package-path "$here" --scratch-path "$scratch" --product "$product"
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library
    -Xswiftc -assert-config -Xswiftc Debug
)
if [[ "${FUZZ_SKIP_BUILD:-0}" != 1 ]]; then
    # SwiftPM does not notice files added to or removed from a path dependency's targets and
    # builds from a stale plan ("missing inputs"); dropping the cached plan makes it re-plan
    # (nothing is recompiled that has not changed).
    rm -f "$scratch/release.yaml" "$scratch"/*/release/description.json
    nice -n "$nice_level" swift build "${build_flags[@]}"
fi
binary="$scratch/release/$product"

work="$scratch/fuzz/$target"
seeds="$work/seeds"
corpus="$work/corpus"
artifacts="$work/artifacts"
mkdir -p "$seeds" "$corpus" "$artifacts"

# Seeds: copies of the committed fixtures (idempotent).
seed_files() {
    for f in "$@"; do [[ -f "$f" ]] && cp -n "$f" "$seeds/" || true; done
}
# The JSON header of each safetensors file (bytes 8 ..< 8 + N).
seed_safetensors_headers() {
    python3 - "$seeds" "$@" <<'PY'
import os, struct, sys
out = sys.argv[1]
for path in sys.argv[2:]:
    data = open(path, "rb").read()
    if len(data) < 8: continue
    (n,) = struct.unpack("<Q", data[:8])
    if 0 < n <= len(data) - 8:
        open(os.path.join(out, "header-" + os.path.basename(path) + ".json"), "wb").write(data[8:8 + n])
PY
}
# Every pickle member of the torch zip fixtures, and the legacy files as they are.
seed_pickles() {
    python3 - "$seeds" "$@" <<'PY'
import os, sys, zipfile
out = sys.argv[1]
for path in sys.argv[2:]:
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if name.endswith(".pkl"):
                    open(os.path.join(out, os.path.basename(path) + "-" + name.replace("/", "_")), "wb").write(z.read(name))
    except Exception:
        pass
PY
}
shopt -s nullglob
fixtures=("$root"/Fixtures/fuzz/"$target"/*)
case "$target" in
    safetensors)
        seed_files "$root"/Fixtures/malformed/safetensors/*.safetensors "${fixtures[@]}" ;;
    wpk)
        seed_files "${fixtures[@]}" ;;
    gguf)
        seed_files "$root"/Fixtures/gguf/malformed/*.gguf "${fixtures[@]}" ;;
    torch)
        seed_files "$root"/Fixtures/torch/valid/*.{ckpt,pt,pth} "$root"/Fixtures/torch/malformed/* \
            "$root"/Fixtures/torch/malicious/* "$root"/Fixtures/torch/bypass/*.{ckpt,pt,pkl} "${fixtures[@]}" ;;
    pickle)
        seed_files "$root"/Fixtures/torch/malicious/*.pkl "$root"/Fixtures/torch/bypass/*.{pkl,pt} \
            "$root"/Fixtures/torch/valid/*legacy* "${fixtures[@]}"
        seed_pickles "$root"/Fixtures/torch/valid/*.{ckpt,pth,pt} "$root"/Fixtures/torch/malicious/*.ckpt \
            "$root"/Fixtures/torch/bypass/*.ckpt ;;
    json)
        seed_files "${fixtures[@]}"
        seed_safetensors_headers "$root"/Fixtures/malformed/safetensors/*.safetensors ;;
    tokenizer)
        # tiny-sd2's 514-token tokenizer: tokenizer.json, and vocab.json NUL merges.txt.
        seed_files "$root"/Fixtures/tiny-sd2/diffusers/tokenizer/tokenizer.json "${fixtures[@]}"
        tokenizer_pair="$seeds/vocab-merges"
        [[ -f "$tokenizer_pair" ]] || { cat "$root"/Fixtures/tiny-sd2/diffusers/tokenizer/vocab.json; printf '\0';
            cat "$root"/Fixtures/tiny-sd2/diffusers/tokenizer/merges.txt; } > "$tokenizer_pair" ;;
esac

# Given an input file (replay, -minimize_crash=1), run on it alone, without the corpus.
for argument in "$@"; do
    if [[ "$argument" != -* && -f "$argument" ]]; then
        limit=()
        [[ "$seconds" != 0 ]] && limit=(-max_total_time="$seconds")
        exec nice -n "$nice_level" "$binary" -artifact_prefix="$artifacts/" "${limit[@]}" "$@"
    fi
done

log="$work/run-$(date +%Y%m%d-%H%M%S).log"
echo "fuzzing $target for $seconds s: corpus $corpus, artifacts $artifacts, log $log" >&2
set +e
nice -n "$nice_level" "$binary" "$corpus" "$seeds" \
    -dict="$here/Dictionaries/$target.dict" \
    -max_total_time="$seconds" -max_len="$max_len" \
    -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 \
    "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# Scratch files of crashed runs (normal exits remove their own).
rm -f /dev/shm/weightpack-fuzz-"$target"-* /tmp/weightpack-fuzz-"$target"-*
exit "$status"
