"""List every tensor of a checkpoint with its shape, as torch users do it safely."""
import sys

import torch

torch.set_num_threads(2)
checkpoint = torch.load(sys.argv[1], mmap=True, weights_only=True, map_location="cpu")
state = checkpoint.get("state_dict", checkpoint)
count = 0
with open("/dev/null", "w") as out:
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor):
            print(name, tuple(tensor.shape), tensor.dtype, file=out)
            count += 1
print(count, file=sys.stderr)
