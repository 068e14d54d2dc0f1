#!/usr/bin/env bash
# Picks the few corpus entries of a fuzz target that cover the most code, for the replay
# fixtures in Fixtures/fuzz/TARGET/ (Docs/fuzzing.md).
#
#   Fuzz/select-fixtures.sh TARGET COUNT
#
# 1. libFuzzer's set-cover merge reduces the working corpus and seeds (Fuzz/.build/fuzz/TARGET/)
#    to inputs that together cover every edge seen (edges only: no hit counters or comparisons).
# 2. Each of those is run alone to learn every edge it covers.
# 3. Greedy choice: each step takes the input adding the most edges not yet covered (the smaller
#    on a tie), up to COUNT inputs.
# The choices are copied to Fixtures/fuzz/TARGET/corpus-<sha1 prefix>; existing files are kept.
set -euo pipefail
export SWIFT_BACKTRACE=${SWIFT_BACKTRACE:-enable=no}
if [[ $# -ne 2 ]]; then echo "usage: $0 safetensors|wpk|torch|pickle|json COUNT" >&2; exit 64; fi
target=$1
count=$2
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
case "$target" in
    safetensors) product=FuzzSafetensors ;; wpk) product=FuzzWPK ;; gguf) product=FuzzGGUF ;; torch) product=FuzzTorch ;;
    pickle) product=FuzzPickle ;; json) product=FuzzJSON ;;
    *) echo "unknown target '$target'" >&2; exit 64 ;;
esac
binary="$here/.build/release/$product"
work="$here/.build/fuzz/$target"
features=(-use_counters=0 -use_value_profile=0 -use_cmp=0 -max_len=1048576)
rm -rf "$work/cover"
mkdir -p "$work/cover" "$root/Fixtures/fuzz/$target"
nice -n "${FUZZ_NICE:-10}" "$binary" -set_cover_merge=1 "${features[@]}" "$work/cover" "$work/corpus" "$work/seeds" \
    > "$work/select.log" 2>&1
python3 - "$binary" "$work" "$count" "$root/Fixtures/fuzz/$target" "${FUZZ_NICE:-10}" "${features[@]}" <<'PY'
import hashlib, os, shutil, subprocess, sys, tempfile
binary, work, count, out, nice, features = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6:]
candidates = sorted(os.path.join(work, "cover", f) for f in os.listdir(os.path.join(work, "cover")))
cover = {}
for path in candidates:
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as empty:
        os.symlink(path, os.path.join(one, "input"))
        control = os.path.join(empty, "..", os.path.basename(empty) + ".control")
        subprocess.run(["nice", "-n", nice, binary, "-merge=1", "-merge_control_file=" + control, *features, empty, one],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        edges = set()
        for line in open(control):
            parts = line.split()
            if parts and parts[0] == "COV":
                edges |= set(parts[2:])
        os.remove(control)
        cover[path] = edges
everything = set().union(*cover.values()) if cover else set()
covered, chosen = set(), []
while len(chosen) < count and cover:
    best = max(cover, key=lambda p: (len(cover[p] - covered), -os.path.getsize(p)))
    if not cover[best] - covered:
        break
    covered |= cover.pop(best)
    chosen.append(best)
total = 0
for path in chosen:
    data = open(path, "rb").read()
    shutil.copyfile(path, os.path.join(out, "corpus-" + hashlib.sha1(data).hexdigest()[:12]))
    total += len(data)
print(f"{len(chosen)} of {len(candidates)} inputs, {total} bytes, cover {len(covered)} of {len(everything)} edges "
      f"({100 * len(covered) / max(1, len(everything)):.1f}%) -> {out}")
PY
