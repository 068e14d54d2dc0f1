#!/usr/bin/env python3
"""diffusers' side of the UNet benchmark: one SD 1.5 UNet step with classifier-free guidance
(batch 2: unconditional and conditional) on a 64x64 latent (512x512 image), fp32 on the CPU,
ENGINE_BENCH_THREADS (default 2) torch threads.

  engine_unet.py UNET_DIR INPUTS.f32 RUNS OUT.f32

INPUTS.f32 holds the sample [2,4,64,64] then the text embeddings [2,77,768]; the timestep is 999.
Prints a JSON line (best and every run in seconds, load time, peak RSS) and writes the output.
"""
import sys

import engine_common as common
import numpy as np
import torch
from diffusers import UNet2DConditionModel


def main():
    directory, inputs_path, runs, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    load, unet = common.timed(lambda: UNet2DConditionModel.from_pretrained(directory, torch_dtype=torch.float32).eval())
    values = np.fromfile(inputs_path, dtype=np.float32)
    sample = torch.from_numpy(values[: 2 * 4 * 64 * 64].reshape(2, 4, 64, 64))
    context = torch.from_numpy(values[2 * 4 * 64 * 64:].reshape(2, 77, 768))
    times = []
    with torch.inference_mode():
        for _ in range(runs):
            t, result = common.timed(lambda: unet(sample, 999, encoder_hidden_states=context).sample)
            times.append(t)
    common.write_floats(result, out)
    common.report("unet_step", load, times)


if __name__ == "__main__":
    main()
