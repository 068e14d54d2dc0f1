"""Goldens for ggml's importance-weighted quantisers (issues 13 and 14).

    "$VENV/bin/python" Fixtures/generate/make_weighted_goldens.py

Needs the fixture venv with `gguf==0.19.0` and `stable-diffusion-cpp-python==0.4.7` (see
Fixtures/README.md, "GGUF goldens"); WEIGHTPACK_GGML_BASE may name a libggml-base.so built from
the same sdist instead, as for make_gguf_fixtures.py.

Writes Fixtures/gguf/weighted.gguf: small f32 source tensors, two importance vectors (ones, as
stable-diffusion.cpp's `convert` passes, and a positive vector spanning 1e-3 to 1e2), and for every
block type WeightPack writes, the blocks ggml's `ggml_quantize_chunk` makes of each source with each
importance vector (which runs the weighted `quantize_row_*_impl` searches for Q4_0, Q4_1, Q5_0, Q5_1
and Q2_K to Q6_K; Q8_0 ignores the vector). Row length matters (Q4_0 to Q5_1 weight by the row's
mean square), so each source is quantised as rows of its last dimension.
"""
import os
import sys

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T

from common import FIXTURES, SEED
from make_gguf_fixtures import WRITTEN, ggml_library

OUT = os.path.join(FIXTURES, "gguf", "weighted.gguf")


def sources(rng: np.random.Generator) -> dict:
    wide = np.empty((6, 512), dtype=np.float32)
    wide[0] = rng.normal(0, 0.05, 512)                    # typical weights
    wide[1] = rng.standard_t(2, 512) * 0.02               # heavy tails
    wide[2] = 0.0                                         # a row of zeros
    wide[3] = rng.normal(0, 0.05, 512)
    wide[3, 77] = 40.0                                    # one huge outlier
    wide[4] = rng.normal(0, 0.05, 512)
    wide[4, 256:] = 0                                     # an all-zero k-block in a live row
    wide[4, 300] = -3.0
    wide[5] = np.abs(rng.normal(0, 0.05, 512))            # positive only
    narrow = rng.normal(0, 0.1, (5, 96)).astype(np.float32)  # rows of three 32-value blocks
    narrow[1] = rng.standard_t(2, 96) * 0.05
    narrow[2, 40] = 12.0
    narrow[3] = 0.0
    narrow[4] = -np.abs(narrow[4])
    return {"wide": wide, "narrow": narrow}


def importances(rng: np.random.Generator, n: int) -> dict:
    spread = np.logspace(-3, 2, n).astype(np.float32)
    rng.shuffle(spread)
    return {"ones": np.ones(n, dtype=np.float32), "spread": spread}


def quantize(quantize_chunk, data: np.ndarray, qtype: T, imatrix: np.ndarray) -> np.ndarray:
    rows, n = data.shape
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    out = np.zeros(rows * n // block * size, dtype=np.uint8)
    src = np.ascontiguousarray(data, dtype=np.float32)
    im = np.ascontiguousarray(imatrix, dtype=np.float32)
    written = quantize_chunk(int(qtype), src.ctypes.data, out.ctypes.data, 0, rows, n, im.ctypes.data)
    assert written == out.size, (qtype, written, out.size)
    return out.reshape(rows, n // block * size)


def main() -> None:
    _, quantize_chunk = ggml_library()
    rng = np.random.default_rng(SEED + 14)
    srcs = sources(rng)
    if os.path.exists(OUT):
        os.remove(OUT)
    w = gguf.GGUFWriter(OUT, arch="weightpack-goldens")
    w.add_string("weightpack.generator", "Fixtures/generate/make_weighted_goldens.py")
    w.add_string("weightpack.ggml", "ggml 0.9.8 as built by stable-diffusion-cpp-python 0.4.7 (ggml_quantize_chunk with an importance vector)")
    for name, data in srcs.items():
        w.add_tensor(f"source.{name}", data)
        ims = importances(rng, data.shape[1])
        for iname, im in ims.items():
            w.add_tensor(f"importance.{iname}.{name}", im)
        for qtype in WRITTEN:
            block, _ = gguf.GGML_QUANT_SIZES[qtype]
            if data.shape[1] % block:
                continue
            for iname, im in ims.items():
                w.add_tensor(f"ggml.{qtype.name.lower()}.{iname}.{name}", quantize(quantize_chunk, data, qtype, im), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{OUT}: {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    sys.exit(main())
