#!/usr/bin/env python3
"""A valid safetensors file of many tiny tensors, made on demand (never committed), and the
reference's inspection of it, for the issue-16 bound on header parsing (Docs/performance.md).

    python3 many_tensors.py make OUT.safetensors [COUNT]   # COUNT F32 [1] tensors, default 1,000,000
    python3 many_tensors.py inspect FILE                   # safetensors.safe_open, every key and shape

`make` writes the file directly (the layout of `safetensors.torch.save_file`: keys sorted, data
in key order, header padded with spaces to 8 bytes) so it needs no torch. `inspect` is what a
Python user runs to list a file: safe_open + keys + get_slice(k).get_shape() for every key.
"""
import json
import struct
import sys


def make(out, count):
    names = sorted(f"model.layers.{i}.weight" for i in range(count))
    header = {}
    for i, name in enumerate(names):
        header[name] = {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        f.write(struct.pack("<f", 1.0) * count)
    print(f"wrote {out}: {count} tensors, header {len(text)} bytes")


def inspect(path):
    from safetensors import safe_open
    with safe_open(path, framework="numpy") as f:
        keys = list(f.keys())
        shapes = [f.get_slice(k).get_shape() for k in keys]
    print(f"{len(keys)} tensors, {sum(len(s) for s in shapes)} dimensions")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "make":
        make(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 1_000_000)
    elif len(sys.argv) == 3 and sys.argv[1] == "inspect":
        inspect(sys.argv[2])
    else:
        sys.exit(__doc__)
