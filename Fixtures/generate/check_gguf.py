"""Reads every tensor of a GGUF file with the `gguf` package (gguf-py, pinned in
requirements.txt) and compares it with a reference safetensors file of the same names.

    python check_gguf.py model.gguf reference.safetensors

Prints one JSON object: the file's metadata keys, and per tensor its ggml type, its shape back
in PyTorch order, whether that equals the reference shape, and the max abs error against the
reference. Used by Tests/WeightPackCLITests/QuantizationCLITests.swift (issue 7).
"""
import json
import sys

import gguf
import numpy as np
from safetensors.numpy import load_file


def main() -> None:
    reader = gguf.GGUFReader(sys.argv[1])
    reference = load_file(sys.argv[2])
    fields = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = field.contents()
        fields[key] = value.item() if hasattr(value, "item") else (value if isinstance(value, (str, int, float)) else str(value))
    tensors = []
    for t in reader.tensors:
        T = gguf.GGMLQuantizationType
        if t.tensor_type in (T.I8, T.I16, T.I32, T.I64, T.F64):
            values = np.asarray(t.data)  # plain arrays; gguf has no "dequantisation" for them
        else:
            values = gguf.quants.dequantize(t.data, t.tensor_type)
        shape = [int(d) for d in reversed(t.shape.tolist())]
        ref = reference.get(t.name)
        entry = {"name": t.name, "type": t.tensor_type.name, "shape": shape, "offset": int(t.data_offset)}
        if ref is None:
            entry["missing"] = True
        else:
            entry["shape_ok"] = list(ref.shape) == shape
            a = np.asarray(values, dtype=np.float64).reshape(-1)
            b = ref.astype(np.float64).reshape(-1)
            entry["max_abs"] = float(np.max(np.abs(a - b))) if a.size == b.size and a.size else (0.0 if a.size == b.size else None)
            entry["max_ref"] = float(np.max(np.abs(b))) if b.size else 0.0
        tensors.append(entry)
    print(json.dumps({"fields": fields, "alignment": int(reader.alignment), "tensors": tensors}))


if __name__ == "__main__":
    main()
