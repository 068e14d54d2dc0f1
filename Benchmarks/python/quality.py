#!/usr/bin/env python3
"""What each ggml block type costs (issue 13, item 6): for one model and a list of types,
the file size relative to F32, the UNet single-pass SNR and the image PSNR of a short generation
against the F32 model, all measured by `weightpack verify` (our engine on both sides, the same
prompt, seed, scheduler, steps and size).

  quality.py WEIGHTPACK MODEL.safetensors OUTDIR [--types q8_0,q4_k,...] [--steps 6] [--size 256]
             [--kinds wpk,gguf,sdcpp]

Rows per type: our `.wpk` (`convert --dtype TYPE`: engine rows, so convolutions quantise too),
our GGUF (`export --format gguf --dtype TYPE`: stable-diffusion.cpp's rows and name rules), and
(kind `sdcpp`) stable-diffusion.cpp's own `convert` of the same model to that type
(stable-diffusion-cpp-python 0.4.7, in this venv), read and run by our engine. Prints a
Markdown table and writes OUTDIR/quality.json. Outputs are large (the full-size model's files
are GB each): OUTDIR must be outside the repository.
"""

import argparse
import json
import os
import subprocess
import sys
import time

GGML_TYPE = {"q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "q2_k": 10, "q3_k": 11,
             "q4_k": 12, "q5_k": 13, "q6_k": 14}


def verify(wp, reference, candidate, steps, size):
    p = subprocess.run([wp, "verify", reference, candidate, "--steps", str(steps), "--size", str(size), "--json"],
                       capture_output=True, text=True)
    if not p.stdout.strip():
        raise RuntimeError(f"verify {candidate}: {p.stderr.strip()}")
    doc = json.loads(p.stdout)
    stages = {s["stage"]: s for s in doc["stages"]}
    num = lambda v: float(v)  # "inf" for identical outputs
    return {"unet_snr": num(stages["unet"]["snr_db"]), "text_snr": num(stages["text"]["snr_db"]),
            "image_psnr": num(stages["image"]["psnr_db"]), "passed": doc["passed"], "judged_as": doc["candidate_dtype"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("weightpack")
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--types", default=",".join(GGML_TYPE))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--kinds", default="wpk,gguf,sdcpp")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    f32_size = os.path.getsize(a.model)
    rows = []

    def measure(kind, t, path, made_in):
        m = verify(a.weightpack, a.model, path, a.steps, a.size)
        row = {"type": t, "kind": kind, "bytes": os.path.getsize(path), "of_f32": os.path.getsize(path) / f32_size,
               "made_seconds": round(made_in, 1), **m}
        rows.append(row)
        print(json.dumps(row), flush=True)
        os.remove(path)

    kinds = set(a.kinds.split(","))
    for t in a.types.split(","):
        if "wpk" in kinds:
            path = os.path.join(a.out, f"ours-{t}.wpk")
            start = time.time()
            subprocess.run([a.weightpack, "convert", a.model, path, "--dtype", t, "--no-source-hash", "--force"], check=True,
                           capture_output=True)
            measure("ours .wpk", t, path, time.time() - start)
        if "gguf" in kinds:
            path = os.path.join(a.out, f"ours-{t}.gguf")
            start = time.time()
            subprocess.run([a.weightpack, "export", a.model, path, "--format", "gguf", "--dtype", t, "--force"], check=True,
                           capture_output=True)
            measure("ours GGUF", t, path, time.time() - start)
        if "sdcpp" in kinds:
            import stable_diffusion_cpp.stable_diffusion_cpp as sd
            path = os.path.join(a.out, f"sdcpp-{t}.gguf")
            start = time.time()
            ok = sd.convert(a.model.encode(), b"", path.encode(), GGML_TYPE[t], b"", False)
            if not ok:
                raise RuntimeError(f"stable-diffusion.cpp convert to {t} failed")
            measure("stable-diffusion.cpp GGUF", t, path, time.time() - start)
    with open(os.path.join(a.out, "quality.json"), "w") as f:
        json.dump({"model": os.path.basename(a.model), "steps": a.steps, "size": a.size, "rows": rows}, f, indent=1)
    print()
    print("| type | file | size of F32 | UNet SNR | text SNR | image PSNR | verify |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['type'].upper()} | {r['kind']} | {100 * r['of_f32']:.1f} % | {r['unet_snr']:.2f} dB | {r['text_snr']:.2f} dB | "
              f"{r['image_psnr']:.2f} dB | {'pass' if r['passed'] else 'fail'} ({r['judged_as']}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
