"""The Python path people use to convert a safetensors model: load, optionally .half(), save."""
import sys

import torch
from safetensors.torch import load_file, save_file

torch.set_num_threads(2)
source, target, dtype = sys.argv[1], sys.argv[2], sys.argv[3]
tensors = load_file(source)
if dtype == "f16":
    tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in tensors.items()}
save_file(tensors, target, metadata={"format": "pt"})
