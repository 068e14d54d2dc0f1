#!/usr/bin/env python3
"""Writes the VAE and text encoder of the full-size random SD 1.5 checkpoint as diffusers
folders, for the engine benchmark (Benchmarks/engine.sh). Both sides then read the same weights.

  engine_prepare.py MODEL.safetensors OUT_DIR

MODEL is the LDM single file of Fixtures/generate/make_fullsize_sd15.py. Its
`first_stage_model.*` and `cond_stage_model.transformer.text_model.*` tensors are renamed with
diffusers' own single-file converters (`convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`),
loaded into models built from the SD 1.5 configurations of Fixtures/generate/common.py, and saved
with `save_pretrained` (safetensors, F32): OUT_DIR/vae/ and OUT_DIR/text_encoder/.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "Fixtures", "generate"))
import common  # noqa: E402  (sets the offline environment first)

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402


def main():
    model, out = sys.argv[1], sys.argv[2]
    from diffusers import AutoencoderKL
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTextModel

    with safe_open(model, framework="pt") as f:
        vae_ldm = {k: f.get_tensor(k) for k in f.keys() if k.startswith("first_stage_model.")}
        clip_ldm = {k: f.get_tensor(k) for k in f.keys() if k.startswith("cond_stage_model.transformer.")}

    if not os.path.exists(os.path.join(out, "unet", "diffusion_pytorch_model.safetensors")):
        from diffusers import UNet2DConditionModel
        with safe_open(model, framework="pt") as f:
            unet_ldm = {k: f.get_tensor(k) for k in f.keys() if k.startswith("model.diffusion_model.")}
        unet = UNet2DConditionModel(**common.SD15_UNET_CONFIG)
        converted = sfu.convert_ldm_unet_checkpoint(unet_ldm, dict(unet.config))
        unet.load_state_dict(converted, strict=True)
        unet.save_pretrained(os.path.join(out, "unet"), safe_serialization=True)
        print(f"wrote {out}/unet ({len(converted)} tensors)")
        del unet, converted, unet_ldm

    vae = AutoencoderKL(**common.SD15_VAE_CONFIG)
    converted = sfu.convert_ldm_vae_checkpoint(vae_ldm, dict(vae.config))
    vae.load_state_dict(converted, strict=True)
    vae.save_pretrained(os.path.join(out, "vae"), safe_serialization=True)
    print(f"wrote {out}/vae ({len(converted)} tensors)")
    del vae, converted, vae_ldm

    te = CLIPTextModel(CLIPTextConfig(**common.SD15_CLIP_CONFIG))
    converted = sfu.convert_ldm_clip_checkpoint(clip_ldm)
    expected = set(te.state_dict())
    if not any(k in expected for k in converted):  # transformers 5 has no `text_model.` prefix
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    converted = {k: v for k, v in converted.items() if k in expected or not k.endswith("position_ids")}
    result = te.load_state_dict(converted, strict=False)
    bad = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if bad or result.unexpected_keys:
        raise SystemExit(f"text encoder names do not match: missing {bad[:5]}, unexpected {result.unexpected_keys[:5]}")
    te.save_pretrained(os.path.join(out, "text_encoder"), safe_serialization=True)
    print(f"wrote {out}/text_encoder ({len(converted)} tensors)")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
