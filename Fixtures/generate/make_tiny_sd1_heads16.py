#!/usr/bin/env python3
"""Builds the tiny SD 1.x model whose text encoder has 2 attention heads of 16 (width 32), the
proof that `--config` makes a single file with unpublished head counts match diffusers:

  Fixtures/tiny-sd1-heads16/tiny-sd1-heads16.safetensors  single-file LDM/CompVis layout, F16
                                                          (+ I64 position_ids, F32 schedule)
  Fixtures/tiny-sd1-heads16/config/                       the diffusers folder's JSON files only
                                                          (model_index, unet, vae, text_encoder,
                                                          scheduler): what `--config DIR` reads
  Fixtures/tiny-sd1-heads16/golden.safetensors            transformers' CLIPTextModel output
                                                          (last_hidden_state, F32 [1, 77, 32]) for
                                                          PROMPT, and its input_ids (I64 [1, 77])

A single LDM file does not state head counts; for a width that is not a published one the engine
assumes 64-wide heads, which for width 32 is one head of 32, not two of 16. The vocabulary is
CLIP's full 49,408 tokens (the engine's bundled tokenizer gives ids up to 49,407), so the width
is kept at 32 and the file stored in F16 to stay small. The weights are rounded to F16 before the
golden is computed, so the golden is exactly the model the file holds. The LDM file is verified
with diffusers' own converters (make_tiny_sd1.verify_ldm): every tensor bit-identical.
"""

import argparse
import json
import os
import shutil
import sys

import common  # sets offline env vars first
import make_tiny_sd1

import torch
from safetensors.torch import load_file, save_file

OUT = os.path.join(common.FIXTURES, "tiny-sd1-heads16")
PROMPT = "a photo of an astronaut riding a horse"

UNET_CONFIG = dict(common.TINY_UNET_CONFIG, block_out_channels=(32, 32, 32, 32), layers_per_block=1)
VAE_CONFIG = dict(common.TINY_VAE_CONFIG, block_out_channels=(32, 32, 32, 32), layers_per_block=1)
CLIP_CONFIG = dict(common.TINY_CLIP_CONFIG, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=2)  # head_dim 16


def fail(msg):
    raise SystemExit("make_tiny_sd1_heads16: VERIFICATION FAILED: " + msg)


def build_models():
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(common.SEED + 16)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    torch.manual_seed(common.SEED + 17)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(common.SEED + 18)
    text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_CONFIG))
    with torch.no_grad():
        for m in (unet, vae, text_encoder):
            for p in m.parameters():
                p.copy_(p.half().float())  # what the F16 file holds, exactly
            m.eval()
    scheduler = PNDMScheduler.from_config(common.SD1_SCHEDULER_CONFIG)
    return unet, vae, text_encoder, scheduler


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    st_path = os.path.join(out, "tiny-sd1-heads16.safetensors")
    golden_path = os.path.join(out, "golden.safetensors")
    config_dir = os.path.join(out, "config")

    torch.set_num_threads(1)  # the golden is byte-for-byte reproducible only on one thread
    torch.use_deterministic_algorithms(True)
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    unet, vae, text_encoder, scheduler = build_models()
    # The committed tiny tokenizer is CLIP's BPE (make_tiny_sd1.py checks it against open_clip).
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(common.TINY_DIFFUSERS, "tokenizer"))

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    tmp = os.path.join(out, ".pipeline-tmp")
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp, safe_serialization=True)
    if os.path.exists(config_dir):
        shutil.rmtree(config_dir)
    for rel in ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                "scheduler/scheduler_config.json"):
        os.makedirs(os.path.dirname(os.path.join(config_dir, rel)), exist_ok=True)
        shutil.copy(os.path.join(tmp, rel), os.path.join(config_dir, rel))
    shutil.rmtree(tmp)
    te_config = json.load(open(os.path.join(config_dir, "text_encoder", "config.json")))
    if te_config["num_attention_heads"] != 2 or te_config["hidden_size"] // te_config["num_attention_heads"] != 16:
        fail(f"text encoder config has {te_config['num_attention_heads']} heads of width {te_config['hidden_size']}")

    ldm = common.diffusers_to_ldm(torch, unet.state_dict(), vae.state_dict(), text_encoder.state_dict(),
                                  dict(unet.config))
    ldm = {k: v.detach().contiguous().clone() for k, v in ldm.items()}
    make_tiny_sd1.verify_ldm(ldm, unet, vae, text_encoder)
    # F16 for the weights (exact: they were rounded to F16 above); the schedule stays F32.
    schedule = set(common.sd1_ldm_schedule_buffers(torch))
    ldm_half = {k: (v.half() if v.is_floating_point() and k not in schedule else v) for k, v in ldm.items()}
    for k, v in ldm_half.items():
        if v.dtype == torch.float16 and not torch.equal(v.float(), ldm[k]):
            fail(f"{k} is not exact in F16")
    save_file(ldm_half, st_path, metadata={"format": "pt"})
    back = {k: (v.float() if v.dtype == torch.float16 else v) for k, v in load_file(st_path).items()}
    make_tiny_sd1.verify_ldm(back, unet, vae, text_encoder)

    ids = tokenizer(PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        embeds = text_encoder(ids).last_hidden_state.float().contiguous()
        # The same through the pipeline's own prompt encoding (SD 1.x: no clip skip).
        via_pipe = pipe.encode_prompt(PROMPT, "cpu", 1, False)[0]
    if not torch.equal(embeds, via_pipe):
        fail("CLIPTextModel and StableDiffusionPipeline.encode_prompt disagree")
    # The wrong guess (one head of 32) really differs: the proof would prove nothing otherwise.
    from transformers import CLIPTextConfig, CLIPTextModel
    one_head = CLIPTextModel(CLIPTextConfig(**dict(CLIP_CONFIG, num_attention_heads=1)))
    one_head.load_state_dict(text_encoder.state_dict())
    one_head.eval()
    with torch.no_grad():
        wrong = one_head(ids).last_hidden_state
    gap = (wrong - embeds).abs().max().item()
    if gap < 1e-2:
        fail(f"one head of 32 gives nearly the same output (max abs {gap})")
    save_file({"input_ids": ids.to(torch.int64).contiguous(), "prompt_embeds": embeds}, golden_path,
              metadata={"prompt": PROMPT})  # one key: safetensors writes several in no fixed order

    summary = {
        "prompt": PROMPT,
        "text_encoder": {"hidden": 32, "heads": 2, "head_dim": 16, "layers": 2, "vocab": 49408},
        "one_head_of_32_max_abs_error": gap,
        "files": {os.path.relpath(p, out): os.path.getsize(p) for p in (st_path, golden_path)},
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    sys.exit(main())
