#!/usr/bin/env python3
"""Max abs difference of two raw f32 outputs of the engine benchmark (same element count).

  engine_compare.py A.f32 B.f32 LABEL
"""
import sys

import numpy as np

a = np.fromfile(sys.argv[1], dtype=np.float32)
b = np.fromfile(sys.argv[2], dtype=np.float32)
if a.shape != b.shape:
    raise SystemExit(f"{sys.argv[3]}: {a.size} values against {b.size}")
d = np.abs(a.astype(np.float64) - b.astype(np.float64))
print(f"{sys.argv[3]}: {a.size} values, max abs difference {d.max():.3e} (mean {d.mean():.3e}), output range [{b.min():.3f}, {b.max():.3f}]")
