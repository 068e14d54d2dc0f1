#!/usr/bin/env python3
"""The peer of `weightpack inspect MODEL --stats` (issue 12, item 7): the same figures per
tensor with numpy, the way a user would script them (safetensors' `safe_open` with numpy
arrays, one tensor at a time): count, finite count, min, max, mean, std over finite values,
NaN, infinity and zero counts.

  stats.py MODEL.safetensors      prints the tensor count and the sum of the means (a checksum)
"""

import sys

import numpy as np
from safetensors import safe_open


def main() -> int:
    total = 0.0
    n = 0
    with safe_open(sys.argv[1], framework="np") as f:
        for name in f.keys():
            a = f.get_tensor(name).astype(np.float32, copy=False).ravel()
            finite = np.isfinite(a)
            values = a[finite] if not finite.all() else a
            stats = {
                "count": a.size, "finite": int(values.size), "nan": int(np.isnan(a).sum()),
                "inf": int(np.isinf(a).sum()), "zero": int((a == 0).sum()),
                "min": float(values.min()) if values.size else float("nan"),
                "max": float(values.max()) if values.size else float("nan"),
                "mean": float(values.mean(dtype=np.float64)) if values.size else float("nan"),
                "std": float(values.std(dtype=np.float64)) if values.size else float("nan"),
            }
            total += stats["mean"]
            n += 1
    print(n, total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
