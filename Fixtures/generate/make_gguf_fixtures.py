"""GGUF and ggml block-type goldens for WeightPack (issue 13).

    "$VENV/bin/python" Fixtures/generate/make_gguf_fixtures.py

Needs the fixture venv with `gguf==0.19.0` and `stable-diffusion-cpp-python==0.4.7` (which builds
stable-diffusion.cpp and its ggml from source; see Fixtures/README.md, "GGUF goldens").

Writes, under Fixtures/gguf/:
- blocks.gguf: for every block type WeightPack writes, small f32 source tensors, the blocks
  ggml's own quantiser makes of them (`ggml_quantize_chunk`, no importance matrix, which runs
  `quantize_row_*_ref`, called through stable-diffusion.cpp's shared library), and those blocks
  dequantised by gguf-py (`gguf.quants.dequantize`); plus random blocks of every type WeightPack
  reads (IQ4_NL, IQ4_XS, TQ1_0, TQ2_0 and MXFP4 included) with gguf-py's dequantisation of them.
- tiny-sd1-q8_0.gguf: the tensors of at most 8192 values of Fixtures/tiny-sd1/tiny-sd1.safetensors
  converted to Q8_0 by stable-diffusion.cpp's own `convert` (its whole-model dialect).
- sdcpp-q4_k-pair.gguf: stable-diffusion.cpp's `convert` to Q4_K of one SD 1.5-shaped weight, with
  the same values kept in F16 under a second name by a type rule (the tiny model has no row that
  fits a 256-value k-block; stable-diffusion.cpp leaves such tensors in F32).
- tiny-sd1-unet-comfy.gguf: the tiny model's UNet in ComfyUI-GGUF's dialect (written with
  gguf-py following the conventions of ComfyUI-GGUF's tools/convert.py: UNet only, the
  `model.diffusion_model.` prefix stripped, `general.architecture` = `sd1`, 1-D and small
  tensors in F32, tensors whose last dimension does not divide by 256 reshaped to rows of 256
  with `comfy.gguf.orig_shape.<name>` (an INT32 array), then Q4_0 via gguf-py).
"""
import ctypes
import os
import sys

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T
from safetensors.numpy import load_file

from common import FIXTURES, SEED, TINY_SAFETENSORS

OUT = os.path.join(FIXTURES, "gguf")

WRITTEN = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
READ_ONLY = [T.IQ4_NL, T.IQ4_XS, T.TQ1_0, T.TQ2_0, T.MXFP4]


def ggml_library():
    """stable-diffusion.cpp's shared library, which exports ggml's C API; or, when
    WEIGHTPACK_GGML_BASE names one, a libggml-base.so built from the same sdist with the same
    flags (Fixtures/README.md, "GGUF goldens"), for the block goldens only."""
    sd = None
    override = os.environ.get("WEIGHTPACK_GGML_BASE")
    if override:
        lib = ctypes.CDLL(override)
    else:
        import stable_diffusion_cpp.stable_diffusion_cpp as sd

        lib = sd._lib
    f = lib.ggml_quantize_chunk
    f.restype = ctypes.c_size_t
    f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    return sd, f


def ggml_quantize(quantize_chunk, data: np.ndarray, qtype: T) -> np.ndarray:
    rows, n = data.shape
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    out = np.zeros(rows * n // block * size, dtype=np.uint8)
    src = np.ascontiguousarray(data, dtype=np.float32)
    written = quantize_chunk(int(qtype), src.ctypes.data, out.ctypes.data, 0, rows, n, None)
    assert written == out.size, (qtype, written, out.size)
    return out.reshape(rows, n // block * size)


def source_tensors(rng: np.random.Generator) -> dict:
    """Rows chosen to reach the quantisers' corners (see Fixtures/README.md)."""
    wide = np.empty((10, 768), dtype=np.float32)
    wide[0] = rng.normal(0, 0.05, 768)                       # typical weights
    wide[1] = rng.normal(0, 0.05, 768)
    wide[1, rng.choice(768, 6, replace=False)] *= 60         # outliers
    wide[2] = rng.normal(0, 0.05, 768)
    wide[2, :256] = 0                                        # an all-zero k-block (and 8 zero 32-blocks)
    wide[3] = -np.abs(rng.normal(0, 0.05, 768))              # negative only
    wide[4] = np.abs(rng.normal(0, 0.05, 768))               # positive only
    wide[5] = rng.normal(0, 1e-6, 768)                       # tiny values
    wide[6] = 0.0123                                         # constant blocks
    wide[6, 300:340] = -0.5
    wide[7] = rng.uniform(-1000, 1000, 768)                  # a wide range
    wide[7, ::7] = rng.normal(0, 1e-3, 110)
    wide[8] = rng.standard_t(2, 768) * 0.02                  # heavy tails
    wide[9] = np.round(rng.normal(0, 4, 768)) / 8            # values on a grid (ties)
    narrow = rng.normal(0, 0.1, (7, 96)).astype(np.float32)  # an odd row count, rows of 3 blocks of 32
    narrow[3] = -np.abs(narrow[3])
    narrow[5, 32:64] = 0
    return {"wide": wide, "narrow": narrow}


def random_blocks(rng: np.random.Generator, qtype: T, count: int) -> np.ndarray:
    """Random bytes for `count` blocks, with every f16 scale replaced by a finite value."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (count, size), dtype=np.uint8)
    half_offsets = {
        T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
        T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
        T.IQ4_NL: [0], T.IQ4_XS: [0], T.TQ1_0: [52], T.TQ2_0: [64], T.MXFP4: [],
    }[qtype]
    for off in half_offsets:
        scales = rng.normal(0, 0.01, count).astype(np.float16)
        raw[:, off:off + 2] = scales.view(np.uint8).reshape(count, 2)
    return raw


def write_blocks(path: str, quantize_chunk, sdcpp_pair: str | None = None) -> None:
    rng = np.random.default_rng(SEED)
    sources = source_tensors(rng)
    w = gguf.GGUFWriter(path, arch="weightpack-goldens")
    w.add_string("weightpack.generator", "Fixtures/generate/make_gguf_fixtures.py")
    w.add_string("weightpack.gguf_py", "gguf " + getattr(gguf, "__version__", "0.19.0"))
    w.add_string("weightpack.ggml", "ggml as built by stable-diffusion-cpp-python 0.4.7 (ggml_quantize_chunk, no imatrix)")
    for name, data in sources.items():
        w.add_tensor(f"source.{name}", data)
    for qtype in WRITTEN:
        tag = qtype.name.lower()
        for name, data in sources.items():
            block, _ = gguf.GGML_QUANT_SIZES[qtype]
            if data.shape[1] % block:
                continue
            blocks = ggml_quantize(quantize_chunk, data, qtype)
            w.add_tensor(f"ggml.{tag}.{name}", blocks, raw_dtype=qtype)
            w.add_tensor(f"dequantized.{tag}.{name}", gguf.quants.dequantize(blocks, qtype).astype(np.float32))
    for qtype in WRITTEN + READ_ONLY:
        tag = qtype.name.lower()
        block, _ = gguf.GGML_QUANT_SIZES[qtype]
        raw = random_blocks(rng, qtype, 2 * max(1, 512 // block))
        raw = raw.reshape(2, -1)
        w.add_tensor(f"random.{tag}", raw, raw_dtype=qtype)
        w.add_tensor(f"random.{tag}.dequantized", gguf.quants.dequantize(raw, qtype).astype(np.float32))
    if sdcpp_pair:
        # gguf-py's dequantisation of the first 16 rows of stable-diffusion.cpp's Q4_K tensor.
        reader = gguf.GGUFReader(sdcpp_pair)
        blocks = np.array({t.name: t for t in reader.tensors}[KQUANT_PAIR[0]].data)
        w.add_tensor("sdcpp.q4_k.dequantized", gguf.quants.dequantize(blocks[:16], T.Q4_K).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


SDCPP_SUBSET_LIMIT = 8192


def write_sdcpp(sd, path: str, sd_type: int) -> None:
    """stable-diffusion.cpp's `convert` of the tiny model's tensors of at most 8192 values (885 of
    993, every name an LDM name; the larger convolutions and the token embedding are left out to
    keep the fixture small), from a temporary safetensors file outside the repository."""
    import tempfile

    from safetensors.numpy import save_file

    if os.path.exists(path):
        os.remove(path)
    state = load_file(TINY_SAFETENSORS)
    subset = {k: v for k, v in state.items() if v.size <= SDCPP_SUBSET_LIMIT}
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "tiny-sd1-subset.safetensors")
        save_file(subset, src)
        ok = sd.convert(src.encode(), b"", path.encode(), sd_type, b"", False)
    assert ok and os.path.exists(path), f"stable-diffusion.cpp convert failed for {path}"


KQUANT_PAIR = (
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight",
)


def write_sdcpp_kquant(sd, path: str) -> None:
    """stable-diffusion.cpp's `convert` to Q4_K of two SD 1.5-shaped cross-attention weights
    ([320, 768]: the tiny model has no row that fits a 256-value k-block) holding the same
    random f16 values; the rule `attn2\\.to_v=f16` keeps the second as the source of the first."""
    import tempfile

    from safetensors.numpy import save_file

    if os.path.exists(path):
        os.remove(path)
    rng = np.random.default_rng(SEED + 13)
    w = rng.normal(0, 768 ** -0.5, (320, 768)).astype(np.float32)
    w[5, rng.choice(768, 4, replace=False)] *= 25   # outliers
    w[9, :256] = 0                                    # an all-zero k-block
    w[11] = -np.abs(w[11])                            # negative only
    w = w.astype(np.float16)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "pair.safetensors")
        save_file({KQUANT_PAIR[0]: w, KQUANT_PAIR[1]: w.copy()}, src)
        ok = sd.convert(src.encode(), b"", path.encode(), int(T.Q4_K), b"attn2\\.to_v=f16", False)
    assert ok and os.path.exists(path), f"stable-diffusion.cpp convert failed for {path}"
    reader = gguf.GGUFReader(path)
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types == {KQUANT_PAIR[0]: T.Q4_K, KQUANT_PAIR[1]: T.F16}, types


def write_comfy(path: str) -> None:
    """The tiny UNet as ComfyUI-GGUF's tools/convert.py would write it (its conventions, our code)."""
    state = load_file(TINY_SAFETENSORS)
    prefix = "model.diffusion_model."
    unet = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    w = gguf.GGUFWriter(path, arch="sd1")
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_file_type(int(T.Q4_0))
    keep_f32 = ("time_embed.", "label_emb.")
    for key, data in unet.items():
        data = data.astype(np.float32)
        qtype = T.Q4_0
        if data.ndim == 1 or data.size <= 1024 or (any(x in key for x in keep_f32) and ".weight" in key):
            qtype = T.F32
        if data.ndim > 1 and data.size >= 512 and data.size % 256 == 0 and data.shape[-1] % 256 != 0:
            w.add_array(f"comfy.gguf.orig_shape.{key}", [int(d) for d in data.shape])
            data = data.reshape(data.size // 256, 256)
        try:
            blocks = gguf.quants.quantize(data, qtype)
        except gguf.QuantError:
            qtype = T.F16
            blocks = gguf.quants.quantize(data, qtype)
        w.add_tensor(key, blocks, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    sd, quantize_chunk = ggml_library()
    pair = None
    if sd is not None:
        write_sdcpp(sd, os.path.join(OUT, "tiny-sd1-q8_0.gguf"), int(T.Q8_0))
        pair = os.path.join(OUT, "sdcpp-q4_k-pair.gguf")
        write_sdcpp_kquant(sd, pair)
    write_blocks(os.path.join(OUT, "blocks.gguf"), quantize_chunk, pair)
    write_comfy(os.path.join(OUT, "tiny-sd1-unet-comfy.gguf"))
    for name in sorted(os.listdir(OUT)):
        p = os.path.join(OUT, name)
        if os.path.isfile(p):
            print(f"{name}: {os.path.getsize(p)} bytes")


if __name__ == "__main__":
    sys.exit(main())
