#!/usr/bin/env python3
"""Checks that diffusers loads WeightPack's kohya -> diffusers/PEFT conversion of
sd1-kohya-lora.safetensors and fuses it to the merged golden (1e-6 relative).

    WEIGHTPACK_KEEP_CONVERTED=/tmp/x swift test --skip-build --filter AdaptersTests.ConversionTests
    python check_adapter_conversion.py /tmp/x/sd1-kohya-as-diffusers.safetensors

Not part of make_all: it reads a file the Swift tests write. Recorded result in Docs/adapters.md.
"""

import sys

import common  # noqa: F401  (offline env vars)

from safetensors.torch import load_file

import make_adapters as M


def main():
    path = sys.argv[1]
    changed, _ = M.fused(M.load_sd1, path, M.SCALE, ["unet", "text_encoder"])
    golden = load_file(M.os.path.join(M.OUT, "sd1-kohya-lora.merged.safetensors"))
    assert set(changed) == set(golden), sorted(set(changed) ^ set(golden))
    worst = max(M.rel(changed[k], golden[k]) for k in golden)
    assert worst <= 1e-6, worst
    print(f"diffusers applied all {len(golden)} modules of the converted file; max relative difference to the golden {worst:.2e}")


if __name__ == "__main__":
    main()
