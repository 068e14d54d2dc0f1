#!/usr/bin/env python3
"""The quality budget against the rules peers use (issue 14, item 5): for each uniform type,
`--dtype auto` at that file's size (--max-size) and at its measured image PSNR (--target-psnr).

  budget.py WEIGHTPACK MODEL.safetensors OUTDIR [--types q4_k,q5_k,q8_0] [--format wpk|gguf]
            [--auto-args "--keep *token_embedding*"]

For each type T: the uniform file (`convert --dtype T`, or `export --format gguf --dtype T`) is
measured with `weightpack verify` using the budget's own proof settings (prompt, seed, 6 steps,
the calibration size), so both sides are judged by the same generation; then `--dtype auto
--max-size <uniform file size>` (image PSNR gained at equal size) and `--dtype auto
--target-psnr <uniform PSNR>` (bytes saved at equal quality). Prints a Markdown table and writes
OUTDIR/budget.json. Uses only the standard library; OUTDIR must be outside the repository.
"""

import argparse
import json
import os
import subprocess
import sys
import time

PROOF = ["--prompt", "a lighthouse on a rocky coast under a stormy sky", "--steps", "6", "--seed", "0"]


def run(cmd):
    start = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr}")
    return p, time.time() - start


def image_psnr(wp, reference, candidate, size):
    p, _ = run([wp, "verify", reference, candidate, "--json", "--size", str(size)] + PROOF)
    stages = json.loads(p.stdout)["stages"]
    return next(s["psnr_db"] for s in stages if s["stage"] == "image")


def auto(wp, model, out, fmt, goal, size, extra):
    cmd = [wp, "convert", model, out, "--dtype", "auto"] if fmt == "wpk" else [wp, "export", model, out, "--format", "gguf", "--dtype", "auto"]
    p, seconds = run(cmd + goal + extra + ["--json", "--calibration-size", str(size)])
    doc = json.loads(p.stdout)
    # The file is the last attempt that passed (a smaller refinement that missed may follow it).
    last = [a for a in doc["attempts"] if a["passed"]][-1]
    return {"bytes": os.path.getsize(out), "psnr": last["measured_image_psnr"], "predicted": last["predicted_image_psnr"],
            "attempts": len(doc["attempts"]), "seconds": round(seconds, 1), "types": last["types"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weightpack")
    ap.add_argument("model")
    ap.add_argument("outdir")
    ap.add_argument("--types", default="q4_k,q5_k,q8_0")
    ap.add_argument("--format", choices=["wpk", "gguf"], default="wpk")
    ap.add_argument("--size", type=int, default=256, help="calibration and proof size in pixels")
    ap.add_argument("--auto-args", default="", help="more arguments for the auto runs, split on spaces")
    args = ap.parse_args()
    os.makedirs(args.outdir, exist_ok=True)
    ext = "wpk" if args.format == "wpk" else "gguf"
    extra = args.auto_args.split()
    rows = []
    for t in args.types.split(","):
        uniform = os.path.join(args.outdir, f"uniform-{t}.{ext}")
        if not os.path.exists(uniform):
            cmd = [args.weightpack, "convert", args.model, uniform, "--dtype", t] if ext == "wpk" else \
                [args.weightpack, "export", args.model, uniform, "--format", "gguf", "--dtype", t]
            run(cmd)
        u_bytes = os.path.getsize(uniform)
        u_psnr = image_psnr(args.weightpack, args.model, uniform, args.size)
        same_size = auto(args.weightpack, args.model, os.path.join(args.outdir, f"auto-size-{t}.{ext}"), args.format,
                         ["--max-size", str(u_bytes), "--force"], args.size, extra)
        same_psnr = auto(args.weightpack, args.model, os.path.join(args.outdir, f"auto-psnr-{t}.{ext}"), args.format,
                         ["--target-psnr", f"{u_psnr:.4f}", "--force"], args.size, extra)
        rows.append({"type": t, "uniform_bytes": u_bytes, "uniform_psnr": u_psnr, "same_size": same_size, "same_psnr": same_psnr})
        print(json.dumps(rows[-1]), flush=True)
    with open(os.path.join(args.outdir, "budget.json"), "w") as f:
        json.dump({"model": args.model, "format": args.format, "size": args.size, "auto_args": extra, "rows": rows}, f, indent=1)
    print(f"\n| uniform type | its size | its image PSNR | auto at that size: PSNR (gain) | auto at that PSNR: size (saved) |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        s, p = r["same_size"], r["same_psnr"]
        print(f"| {r['type']} | {r['uniform_bytes'] / 1e6:.2f} MB | {r['uniform_psnr']:.2f} dB | "
              f"{s['psnr']:.2f} dB ({s['psnr'] - r['uniform_psnr']:+.2f} dB) | "
              f"{p['bytes'] / 1e6:.2f} MB ({100 * (1 - p['bytes'] / r['uniform_bytes']):.1f} % smaller) |")


if __name__ == "__main__":
    main()
