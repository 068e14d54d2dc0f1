#!/usr/bin/env python3
"""diffusers' side of the generation benchmark (Benchmarks/generate.sh): a full txt2img run of
StableDiffusionPipeline on the CPU, fp32, ENGINE_BENCH_THREADS (default 2) torch threads.

  engine_generate.py MODEL_DIR STEPS SEED OUT.png

MODEL_DIR is a complete diffusers folder (written by `weightpack export --layout diffusers`, so
both sides read the same tensors, tokenizer and scheduler configuration). Prompt, guidance 7.5,
512x512 and `torch.Generator().manual_seed(SEED)` are the same as the engine's side. Prints the
same JSON line as the other benchmarks: the run's seconds (model loading excluded, reported
apart) and the process's peak RSS.
"""
import sys

import engine_common as common
import torch
from diffusers import StableDiffusionPipeline

PROMPT = "a photo of an astronaut riding a horse"


def main():
    directory, steps, seed, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    load, pipe = common.timed(lambda: StableDiffusionPipeline.from_pretrained(
        directory, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False))
    pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        seconds, result = common.timed(lambda: pipe(
            PROMPT, num_inference_steps=steps, guidance_scale=7.5, height=512, width=512,
            generator=torch.Generator().manual_seed(seed)).images[0])
    result.save(out)
    common.report(f"generate_{steps}_steps", load, [seconds])


if __name__ == "__main__":
    main()
