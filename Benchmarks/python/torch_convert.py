"""Convert a checkpoint to an f16 safetensors file: torch.load, .half(), safetensors save_file."""
import sys

import torch
from safetensors.torch import save_file

torch.set_num_threads(2)
checkpoint = torch.load(sys.argv[1], weights_only=True, map_location="cpu")
state = checkpoint.get("state_dict", checkpoint)
tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
save_file(tensors, sys.argv[2], metadata={"format": "pt"})
