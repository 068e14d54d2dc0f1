#!/usr/bin/env python3
"""diffusers' side of the engine benchmark: the SD 1.5 VAE decoder (`AutoencoderKL.decode`,
no tiling, no slicing) on a 1x4x64x64 latent, giving 1x3x512x512, fp32 on the CPU,
ENGINE_BENCH_THREADS (default 2) torch threads.

  engine_vae.py VAE_DIR LATENT.f32 RUNS OUT.f32

RUNS timed calls of `vae.decode(latent).sample` (no warm-up: one call is 20 s); prints a JSON
line (best and every run in seconds, load time, peak RSS) and writes the last output as raw f32.
"""
import sys

import engine_common as common
import numpy as np
import torch
from diffusers import AutoencoderKL


def main():
    directory, latent_path, runs, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    load, vae = common.timed(lambda: AutoencoderKL.from_pretrained(directory, torch_dtype=torch.float32).eval())
    latent = torch.from_numpy(np.fromfile(latent_path, dtype=np.float32).reshape(1, 4, 64, 64))
    times = []
    with torch.inference_mode():
        for _ in range(runs):
            t, result = common.timed(lambda: vae.decode(latent).sample)
            times.append(t)
    common.write_floats(result, out)
    common.report("vae_decode", load, times)


if __name__ == "__main__":
    main()
