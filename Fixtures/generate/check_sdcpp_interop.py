#!/usr/bin/env python3
"""Loads GGUF files in stable-diffusion.cpp (stable-diffusion-cpp-python 0.4.7, the fixture
venv's pinned version) and generates with each, to prove that files WeightPack writes are used
by the runtime people run (issue 13, item 5).

  check_sdcpp_interop.py REFERENCE MODEL.gguf [MODEL.gguf ...] [--size 256] [--steps 2] [--out DIR]

REFERENCE is the model the GGUFs were made from (an LDM single-file safetensors, which
stable-diffusion.cpp also reads). For each file, in a child process (stable-diffusion.cpp logs
from C to stderr, which is captured): load it, record the version stable-diffusion.cpp detected
and any tensor it could not place or did not find, generate one image (Euler, `--steps`,
`--size`, seed 42, guidance 7), and compare it with the REFERENCE's image from the same call
(PSNR, peak 255). Prints one JSON object per file on stdout; exits 1 when a file fails to load,
is not detected as SD 1.x, leaves a tensor unplaced, or gives a non-finite or flat image.

Not a fixture generator: nothing is written to the repository. Used by
`Tests/WeightPackCLITests/SDCppInteropTests.swift`, which runs where the venv and the full-size
model exist.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

CHILD = r"""
import sys, numpy as np
from stable_diffusion_cpp import StableDiffusion
path, size, steps, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
sd = StableDiffusion(model_path=path, n_threads=2, verbose=True, wtype="default")
images = sd.generate_image(prompt="a photo of an astronaut riding a horse", negative_prompt="",
                           width=size, height=size, cfg_scale=7.0, sample_method="euler",
                           sample_steps=steps, seed=42)
np.save(out, np.asarray(images[0].convert("RGB"), dtype=np.uint8))
"""


def run(path: str, size: int, steps: int, out_dir: str) -> dict:
    npy = os.path.join(out_dir, os.path.basename(path) + ".npy")
    if os.path.exists(npy):
        os.remove(npy)
    p = subprocess.run([sys.executable, "-c", CHILD, path, str(size), str(steps), npy],
                       capture_output=True, text=True)
    log = p.stdout + p.stderr
    version = None
    for line in log.splitlines():
        if "Version: " in line:
            version = line.split("Version: ", 1)[1].strip()
    unplaced = [l.strip() for l in log.splitlines() if "unknown tensor" in l or "not in model file" in l or "tensor not found" in l.lower()]
    result = {"file": os.path.basename(path), "exit": p.returncode, "version": version, "unplaced": unplaced[:5],
              "unplaced_count": len(unplaced)}
    if p.returncode == 0 and os.path.exists(npy):
        image = np.load(npy)
        result["image_std"] = float(image.astype(np.float64).std())
        result["_image"] = image
    else:
        result["log_tail"] = log.splitlines()[-8:]
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("reference")
    parser.add_argument("models", nargs="+")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", default="/tmp/wp-sdcpp-interop")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    reference = run(args.reference, args.size, args.steps, args.out)
    ref_image = reference.pop("_image", None)
    print(json.dumps({"reference": reference}), flush=True)
    failed = ref_image is None
    for path in args.models:
        r = run(path, args.size, args.steps, args.out)
        image = r.pop("_image", None)
        ok = (r["exit"] == 0 and image is not None and r["version"] is not None and r["version"].startswith("SD 1.x")
              and r["unplaced_count"] == 0 and r.get("image_std", 0) > 1.0)
        if image is not None and ref_image is not None:
            mse = float(np.mean((image.astype(np.float64) - ref_image.astype(np.float64)) ** 2))
            r["psnr_vs_reference"] = None if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
        r["ok"] = bool(ok)
        failed = failed or not ok
        print(json.dumps(r), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
