#!/usr/bin/env python3
"""Builds WeightPack's tiny Stable Diffusion 1.x model (seeded random weights) in three forms:

  Fixtures/tiny-sd1/diffusers/            diffusers pipeline folder (safetensors)
  Fixtures/tiny-sd1/tiny-sd1.safetensors  single-file LDM/CompVis layout, F32 (+ I64 position_ids)
  Fixtures/tiny-sd1/tiny-sd1.ckpt         torch.save zip of {"epoch", "global_step",
                                          "pytorch-lightning_version", "state_dict": <LDM dict>},
                                          floating-point tensors in fp16 (HalfStorage), as the
                                          "pruned fp16" checkpoints people share; int64 kept

The architecture follows SD 1.x (same block structure, so the same LDM index scheme) with tiny
widths. The LDM file is verified by converting it back with diffusers' own converters
(diffusers.loaders.single_file_utils) and comparing every tensor bit for bit; any mismatch
raises and the script exits non-zero.
"""

import argparse
import json
import os
import shutil
import sys

import common  # sets offline env vars first
import clip_bpe

import torch
from safetensors.torch import load_file, save_file


def fail(msg):
    raise SystemExit("make_tiny_sd1: VERIFICATION FAILED: " + msg)


def build_models():
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(common.SEED)
    unet = UNet2DConditionModel(**common.TINY_UNET_CONFIG)
    torch.manual_seed(common.SEED + 1)
    vae = AutoencoderKL(**common.TINY_VAE_CONFIG)
    torch.manual_seed(common.SEED + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**common.TINY_CLIP_CONFIG))
    for m in (unet, vae, text_encoder):
        assert all(p.dtype == torch.float32 for p in m.parameters())
        m.eval()
    scheduler = PNDMScheduler.from_config(common.SD1_SCHEDULER_CONFIG)
    return unet, vae, text_encoder, scheduler


def build_tokenizer(tmp_dir):
    vocab, merges = clip_bpe.build_vocab_and_merges()
    st = clip_bpe.verify_against_open_clip(vocab)
    clip_bpe.write_tokenizer_files(tmp_dir, vocab, merges)
    tok = clip_bpe.make_clip_tokenizer(tmp_dir)
    prompts = ["a photo of a cat", "An astronaut riding a horse, 4k, trending on artstation!",
               "don't it's we'll they're I'm", "caf\u00e9 na\u00efve r\u00e9sum\u00e9", "",
               "1234567 3.14", "\u6771\u4eac\u306e\u591c\u666f"]
    for p in prompts:
        ours = tok(p, padding="max_length", max_length=77, truncation=True).input_ids
        theirs = st([p])[0].tolist()  # open_clip pads with 0
        ours_pad0 = [t if i < len(tok(p).input_ids) else 0 for i, t in enumerate(ours)]
        if ours_pad0 != theirs:
            fail(f"transformers CLIPTokenizer and open_clip disagree on {p!r}:\n{ours}\n{theirs}")
    print(f"tokenizer: {len(vocab)} tokens, matches open_clip's encoder and tokenizes "
          f"{len(prompts)} prompts identically")
    return tok


def verify_ldm(ldm, unet, vae, text_encoder):
    """Convert LDM -> diffusers with diffusers' own converters and compare bit for bit."""
    from diffusers.loaders import single_file_utils as sfu

    def compare(name, converted, reference, ignore=()):
        ref_keys = set(reference)
        got_keys = set(converted) - set(ignore)
        if ref_keys != got_keys:
            fail(f"{name}: key sets differ; missing {sorted(ref_keys - got_keys)[:8]}, "
                 f"unexpected {sorted(got_keys - ref_keys)[:8]}")
        for k, ref in reference.items():
            got = converted[k]
            if got.dtype != ref.dtype or tuple(got.shape) != tuple(ref.shape):
                fail(f"{name}: {k}: {got.dtype}{tuple(got.shape)} != {ref.dtype}{tuple(ref.shape)}")
            if not torch.equal(got.contiguous().view(torch.uint8), ref.contiguous().view(torch.uint8)):
                fail(f"{name}: {k}: values differ")
        print(f"verified {name}: {len(reference)} tensors bit-identical after diffusers' conversion")

    unet_conv = sfu.convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    compare("unet", unet_conv, unet.state_dict())
    vae_conv = sfu.convert_ldm_vae_checkpoint(ldm, dict(vae.config))
    compare("vae", vae_conv, vae.state_dict())
    clip_conv = sfu.convert_ldm_clip_checkpoint(ldm)
    # diffusers yields transformers-4 names ('text_model.' prefix); create_diffusers_clip_model_from_ldm
    # strips it for the flattened transformers>=5.6 CLIPTextModel. Do the same here.
    clip_conv = {k.removeprefix("text_model."): v for k, v in clip_conv.items()}
    pos = clip_conv.get("embeddings.position_ids")
    if pos is None or pos.dtype != torch.int64 or not torch.equal(pos, torch.arange(77).unsqueeze(0)):
        fail("position_ids missing or wrong")
    compare("text_encoder", clip_conv, text_encoder.state_dict(), ignore=["embeddings.position_ids"])
    # Everything else in the file is the schedule.
    used = {k for k in ldm if k.startswith(("model.diffusion_model.", "first_stage_model.",
                                            "cond_stage_model."))}
    rest = sorted(set(ldm) - used)
    expected_rest = sorted(common.sd1_ldm_schedule_buffers(torch))
    if rest != expected_rest:
        fail(f"unexpected extra keys {rest}")
    # The schedule matches diffusers' PNDM/DDPM scaled_linear betas and alphas_cumprod.
    from diffusers import DDPMScheduler
    ddpm = DDPMScheduler.from_config(common.SD1_SCHEDULER_CONFIG)
    if not torch.allclose(ldm["betas"], ddpm.betas.float(), rtol=0, atol=1e-7):
        fail("betas differ from diffusers' scaled_linear")
    if not torch.allclose(ldm["alphas_cumprod"], ddpm.alphas_cumprod.float(), rtol=0, atol=1e-6):
        fail("alphas_cumprod differ from diffusers'")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=common.TINY_DIR)
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    diff_dir = os.path.join(out, "diffusers")
    st_path = os.path.join(out, "tiny-sd1.safetensors")
    ckpt_path = os.path.join(out, "tiny-sd1.ckpt")

    torch.use_deterministic_algorithms(True)
    from diffusers import StableDiffusionPipeline

    unet, vae, text_encoder, scheduler = build_models()
    tmp_tok = os.path.join(out, ".tokenizer-tmp")
    tokenizer = build_tokenizer(tmp_tok)

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    if os.path.exists(diff_dir):
        shutil.rmtree(diff_dir)
    pipe.save_pretrained(diff_dir, safe_serialization=True)
    # Keep the classic slow-tokenizer files next to tokenizer.json so any reader finds them.
    for name in ("vocab.json", "merges.txt"):
        dst = os.path.join(diff_dir, "tokenizer", name)
        if not os.path.exists(dst):
            shutil.copy(os.path.join(tmp_tok, name), dst)
    shutil.rmtree(tmp_tok)

    te_file = os.path.join(diff_dir, "text_encoder", "model.safetensors")
    te_keys = sorted(load_file(te_file))
    prefixed = sum(k.startswith("text_model.") for k in te_keys)
    print(f"text_encoder/model.safetensors: {len(te_keys)} tensors, {prefixed} with 'text_model.' prefix; "
          f"e.g. {te_keys[0]}")

    # Reload the saved folder and check that it round-trips bit for bit.
    re = StableDiffusionPipeline.from_pretrained(diff_dir, safety_checker=None, requires_safety_checker=False)
    for name, a, b in (("unet", unet, re.unet), ("vae", vae, re.vae), ("text_encoder", text_encoder, re.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        if set(sa) != set(sb) or any(not torch.equal(sa[k], sb[k]) for k in sa):
            fail(f"{name} does not round-trip through save_pretrained/from_pretrained")
    print("diffusers folder reloads bit-identically")

    ldm = common.diffusers_to_ldm(torch, unet.state_dict(), vae.state_dict(), text_encoder.state_dict(),
                                  dict(unet.config))
    ldm = {k: v.detach().contiguous().clone() for k, v in ldm.items()}
    verify_ldm(ldm, unet, vae, text_encoder)
    save_file(ldm, st_path, metadata={"format": "pt"})
    # Re-read the written file and verify it again (what is on disk is what was checked).
    verify_ldm(load_file(st_path), unet, vae, text_encoder)

    # fp16 halves the committed size and is the common shape of shared SD checkpoints.
    ldm_half = {k: (v.half() if v.is_floating_point() else v) for k, v in ldm.items()}
    ckpt = {"epoch": 6, "global_step": 470, "pytorch-lightning_version": "1.4.2", "state_dict": ldm_half}
    # zip format (the default since torch 1.6). Saving through a file object makes torch name the
    # archive's root folder "archive/", as in the real SD 1.x .ckpt files (a path would give "tiny-sd1/").
    with open(ckpt_path, "wb") as f:
        torch.save(ckpt, f)
    back = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if set(back["state_dict"]) != set(ldm_half) or any(not torch.equal(back["state_dict"][k], ldm_half[k]) for k in ldm_half):
        fail("ckpt does not reload identically")
    if back["epoch"] != 6 or back["global_step"] != 470:
        fail("ckpt metadata")

    n_params = {n: sum(p.numel() for p in m.parameters()) for n, m in
                (("unet", unet), ("vae", vae), ("text_encoder", text_encoder))}
    summary = {
        "tensors_in_ldm_file": len(ldm),
        "parameters": n_params,
        "text_encoder_keys_have_text_model_prefix": prefixed == len(te_keys),
        "files": {os.path.relpath(p, out): os.path.getsize(p) for p in (st_path, ckpt_path)},
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    sys.exit(main())
