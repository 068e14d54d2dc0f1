#!/usr/bin/env python3
"""diffusers' side of the engine benchmark: the SD 1.5 text encoder (transformers CLIPTextModel)
on a batch of 2 x 77 tokens, fp32 on the CPU, ENGINE_BENCH_THREADS (default 2) torch threads.

  engine_text_encoder.py TEXT_ENCODER_DIR RUNS OUT.f32

One warm-up call, then RUNS timed calls of `model(input_ids).last_hidden_state`; prints a JSON
line (best and every run in seconds, load time, peak RSS) and writes the last output as raw f32.
"""
import sys

import engine_common as common
import torch
from transformers import CLIPTextModel


def main():
    directory, runs, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    load, model = common.timed(lambda: CLIPTextModel.from_pretrained(directory, torch_dtype=torch.float32).eval())
    ids = torch.tensor(common.benchmark_tokens(), dtype=torch.int64)
    with torch.inference_mode():
        result = model(input_ids=ids).last_hidden_state
        times = []
        for _ in range(runs):
            t, result = common.timed(lambda: model(input_ids=ids).last_hidden_state)
            times.append(t)
    common.write_floats(result, out)
    common.report("text_encoder", load, times)


if __name__ == "__main__":
    main()
