"""Shared helpers of the diffusers side of Benchmarks/engine.sh (same JSON line as EngineBench)."""
import json
import os
import resource
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402

THREADS = int(os.environ.get("ENGINE_BENCH_THREADS", "2"))
torch.set_num_threads(THREADS)
torch.set_num_interop_threads(1)


def benchmark_tokens():
    """The benchmark's two prompts as token ids (EngineBench builds the same)."""
    full = [49406] + [(i * 7919 + 11) % 49406 for i in range(75)] + [49407]
    short = [49406] + [(i * 104729 + 5) % 49406 for i in range(20)] + [49407] * 56
    return [full, short]


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def report(task, load_seconds, runs):
    with open("/proc/loadavg") as f:
        loadavg = " ".join(f.read().split()[:3])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"side": "diffusers", "task": task, "best": round(min(runs), 4), "runs": [round(r, 4) for r in runs],
                      "load_seconds": round(load_seconds, 3), "peak_rss_mib": round(peak, 1), "loadavg": loadavg,
                      "torch_threads": torch.get_num_threads()}))


def write_floats(tensor, path):
    tensor.detach().contiguous().to(torch.float32).numpy().tofile(path)
