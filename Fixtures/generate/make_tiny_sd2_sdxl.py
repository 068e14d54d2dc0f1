#!/usr/bin/env python3
"""Builds WeightPack's tiny Stable Diffusion 2.x and SDXL models (seeded random weights), each in
two forms:

  Fixtures/tiny-sd2/diffusers/             diffusers folder, fp16 variant files (*.fp16.safetensors):
                                           v-prediction scheduler, linear
                                           proj_in/proj_out, a 3-layer text encoder (diffusers keeps
                                           all but the last OpenCLIP layer)
  Fixtures/tiny-sd2/tiny-sd2.safetensors   single-file LDM layout, F16 (schedule buffers F32): OpenCLIP text encoder under
                                           cond_stage_model.model. (fused in_proj, 4 resblocks,
                                           text_projection [D, P], logit_scale)
  Fixtures/tiny-sdxl/diffusers/            diffusers folder: two text encoders (CLIP-L and a
                                           projection-carrying OpenCLIP bigG stand-in), added
                                           text/time embeddings, three UNet levels
  Fixtures/tiny-sdxl/tiny-sdxl.safetensors single-file LDM layout (conditioner.embedders.0/1)

The LDM files are made by this script's own map (written for WeightPack) and then converted back
with diffusers' own single-file converters (diffusers.loaders.single_file_utils); every tensor must
come back bit for bit, or the script exits non-zero. The tokenizers hold the 512 byte symbols and
the two special tokens only (no merges), which keeps the fixtures small; vocab_size is 514.
"""

import json
import os
import shutil
import sys

import common  # sets offline env vars first
import clip_bpe

import torch
from safetensors.torch import load_file, save_file

SD2_DIR = os.path.join(common.FIXTURES, "tiny-sd2")
SDXL_DIR = os.path.join(common.FIXTURES, "tiny-sdxl")

TINY_VOCAB = 514

SD2_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 32, 32, 32), layers_per_block=1, attention_head_dim=(2, 2, 4, 4),
    cross_attention_dim=32, use_linear_projection=True, norm_num_groups=32,
)
SDXL_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(32, 32, 32), layers_per_block=2, attention_head_dim=(2, 2, 4),
    transformer_layers_per_block=(1, 1, 2), cross_attention_dim=64, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + 32, norm_num_groups=32,
)
TINY_VAE = dict(common.TINY_VAE_CONFIG, block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1)
SD2_SCHEDULER = dict(common.SD1_SCHEDULER_CONFIG, prediction_type="v_prediction")
SDXL_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "num_train_timesteps": 1000, "steps_offset": 1, "prediction_type": "epsilon",
                  "timestep_spacing": "leading", "interpolation_type": "linear", "use_karras_sigmas": False}


def clip_config(layers, act, projection=None):
    c = dict(vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
             num_attention_heads=4, max_position_embeddings=77, hidden_act=act,
             bos_token_id=512, eos_token_id=513, pad_token_id=513)
    if projection:
        c["projection_dim"] = projection
    return c


def fail(msg):
    raise SystemExit("make_tiny_sd2_sdxl: VERIFICATION FAILED: " + msg)


def tiny_tokenizer(tmp_dir, pad_token=clip_bpe.EOS):
    _, chars = clip_bpe.byte_symbols()
    tokens = chars + [c + "</w>" for c in chars] + [clip_bpe.BOS, clip_bpe.EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == TINY_VOCAB
    clip_bpe.write_tokenizer_files(tmp_dir, vocab, [])
    return clip_bpe.make_clip_tokenizer(tmp_dir, pad_token=pad_token)


# --- our diffusers -> LDM map for OpenCLIP text towers (the UNet and VAE maps are common.py's) ---

def open_clip_to_ldm(text_sd, prefix, hidden):
    """transformers CLIPTextModel(WithProjection) keys -> OpenCLIP keys under `prefix`:
    q/k/v are stacked into in_proj (rows q, k, v); text_projection.weight [P, D] is stored
    transposed as text_projection [D, P]."""
    out = {}
    sd = {k.removeprefix("text_model."): v for k, v in text_sd.items()}
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")})
    out[prefix + "positional_embedding"] = sd["embeddings.position_embedding.weight"]
    out[prefix + "token_embedding.weight"] = sd["embeddings.token_embedding.weight"]
    for n in layers:
        a = f"encoder.layers.{n}."
        b = f"{prefix}transformer.resblocks.{n}."
        for kind in ("weight", "bias"):
            out[b + f"attn.in_proj_{kind}"] = torch.cat([sd[a + f"self_attn.{x}_proj.{kind}"] for x in "qkv"], 0)
            out[b + f"attn.out_proj.{kind}"] = sd[a + f"self_attn.out_proj.{kind}"]
            out[b + f"ln_1.{kind}"] = sd[a + f"layer_norm1.{kind}"]
            out[b + f"ln_2.{kind}"] = sd[a + f"layer_norm2.{kind}"]
            out[b + f"mlp.c_fc.{kind}"] = sd[a + f"mlp.fc1.{kind}"]
            out[b + f"mlp.c_proj.{kind}"] = sd[a + f"mlp.fc2.{kind}"]
    out[prefix + "ln_final.weight"] = sd["final_layer_norm.weight"]
    out[prefix + "ln_final.bias"] = sd["final_layer_norm.bias"]
    if "text_projection.weight" in sd:
        out[prefix + "text_projection"] = sd["text_projection.weight"].T
    return out


def unet_to_ldm(unet):
    cfg = dict(unet.config)
    up_has_attn = tuple("CrossAttn" in t for t in cfg["up_block_types"])
    out = {}
    for k, v in unet.state_dict().items():
        if k.startswith("add_embedding.linear_1."):
            name = "label_emb.0.0." + k.split(".")[-1]
        elif k.startswith("add_embedding.linear_2."):
            name = "label_emb.0.2." + k.split(".")[-1]
        else:
            name = common.unet_key_to_ldm(k, cfg["layers_per_block"], len(cfg["block_out_channels"]), up_has_attn)
        out["model.diffusion_model." + name] = v
    return out


def vae_to_ldm(vae):
    out = {}
    n = len(vae.config.block_out_channels)
    for k, v in vae.state_dict().items():
        name, reshape = common.vae_key_to_ldm(k, num_levels=n)
        if reshape:
            v = v.reshape(v.shape[0], v.shape[1], 1, 1)
        out["first_stage_model." + name] = v
    return out


def compare(label, converted, reference, ignore=()):
    ref_keys = set(reference)
    got_keys = set(converted) - set(ignore)
    if ref_keys != got_keys:
        fail(f"{label}: key sets differ; missing {sorted(ref_keys - got_keys)[:8]}, unexpected {sorted(got_keys - ref_keys)[:8]}")
    for k, ref in reference.items():
        got = converted[k]
        if got.dtype != ref.dtype or tuple(got.shape) != tuple(ref.shape):
            fail(f"{label}: {k}: {got.dtype}{tuple(got.shape)} != {ref.dtype}{tuple(ref.shape)}")
        if not torch.equal(got.contiguous().view(torch.uint8), ref.contiguous().view(torch.uint8)):
            fail(f"{label}: {k}: values differ")
    print(f"verified {label}: {len(reference)} tensors bit-identical after diffusers' conversion")


def save_pipeline(pipe, out_dir, tok_dirs, variant=None):
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    pipe.save_pretrained(out_dir, safe_serialization=True, variant=variant)
    for sub, src in tok_dirs.items():
        for name in ("vocab.json", "merges.txt"):
            dst = os.path.join(out_dir, sub, name)
            if not os.path.exists(dst):
                shutil.copy(os.path.join(src, name), dst)
        shutil.rmtree(src)


def make_sd2():
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(common.SEED + 10)
    unet = UNet2DConditionModel(**SD2_UNET).eval()
    torch.manual_seed(common.SEED + 11)
    vae = AutoencoderKL(**TINY_VAE).eval()
    # The OpenCLIP tower has one more layer than diffusers keeps, and a projection diffusers drops.
    torch.manual_seed(common.SEED + 12)
    full = CLIPTextModelWithProjection(CLIPTextConfig(**clip_config(4, "gelu", projection=32))).eval()
    text_encoder = CLIPTextModel(CLIPTextConfig(**clip_config(3, "gelu"))).eval()
    # SD 2.x is stored in fp16 (a diffusers `variant="fp16"` folder and an fp16 single file), as
    # most shared SD 2.x files are; the schedule buffers of the single file stay f32.
    for m in (unet, vae, full, text_encoder):
        m.half()
    full_sd = full.state_dict()
    te_sd = text_encoder.state_dict()
    te_sd_new = {}
    for k in te_sd:
        src = k if k in full_sd else "text_model." + k
        te_sd_new[k] = full_sd[src].clone()
    text_encoder.load_state_dict(te_sd_new)
    scheduler = PNDMScheduler.from_config(SD2_SCHEDULER)
    tmp = os.path.join(SD2_DIR, ".tok")
    tok = tiny_tokenizer(tmp, pad_token="!")  # SD 2.x pads with '!' (id 0)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    save_pipeline(pipe, os.path.join(SD2_DIR, "diffusers"), {"tokenizer": tmp}, variant="fp16")

    ldm = dict(common.sd1_ldm_schedule_buffers(torch))
    ldm.update(unet_to_ldm(unet))
    ldm.update(vae_to_ldm(vae))
    ldm.update(open_clip_to_ldm(full_sd, "cond_stage_model.model.", 32))
    ldm["cond_stage_model.model.logit_scale"] = torch.tensor(4.6052, dtype=torch.float16)
    ldm = {k: v.detach().contiguous().clone() for k, v in ldm.items()}
    path = os.path.join(SD2_DIR, "tiny-sd2.safetensors")
    save_file(ldm, path, metadata={"format": "pt"})
    ldm = load_file(path)

    compare("sd2 unet", sfu.convert_ldm_unet_checkpoint(ldm, dict(unet.config)), unet.state_dict())
    compare("sd2 vae", sfu.convert_ldm_vae_checkpoint(ldm, dict(vae.config)), vae.state_dict())
    conv = sfu.convert_open_clip_checkpoint(full, ldm, prefix="cond_stage_model.model.")
    # diffusers' ignore list names SD 2's resblock 23; at tiny size the dropped layer is 3.
    conv = {k.removeprefix("text_model."): v for k, v in conv.items()}
    dropped = [k for k in conv if k.startswith("encoder.layers.3.")] + ["text_projection.weight"]
    compare("sd2 text_encoder", conv, {k.removeprefix("text_model."): v for k, v in te_sd_new.items()}, ignore=dropped)
    return path


def make_sdxl():
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(common.SEED + 20)
    unet = UNet2DConditionModel(**SDXL_UNET).eval()
    torch.manual_seed(common.SEED + 21)
    vae = AutoencoderKL(**dict(TINY_VAE, scaling_factor=0.13025)).eval()
    torch.manual_seed(common.SEED + 22)
    te1 = CLIPTextModel(CLIPTextConfig(**clip_config(3, "quick_gelu"))).eval()
    torch.manual_seed(common.SEED + 23)
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**clip_config(3, "gelu", projection=32))).eval()
    scheduler = EulerDiscreteScheduler.from_config(SDXL_SCHEDULER)
    t1, t2 = os.path.join(SDXL_DIR, ".tok1"), os.path.join(SDXL_DIR, ".tok2")
    tok1 = tiny_tokenizer(t1)
    tok2 = tiny_tokenizer(t2, pad_token="!")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok1, tokenizer_2=tok2,
                                     unet=unet, scheduler=scheduler)
    save_pipeline(pipe, os.path.join(SDXL_DIR, "diffusers"), {"tokenizer": t1, "tokenizer_2": t2})

    ldm = {}
    ldm.update(unet_to_ldm(unet))
    ldm.update(vae_to_ldm(vae))
    for k, v in te1.state_dict().items():
        ldm["conditioner.embedders.0.transformer." + common.clip_key_to_ldm(k)] = v
    ldm["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64).unsqueeze(0)
    ldm.update(open_clip_to_ldm(te2.state_dict(), "conditioner.embedders.1.model.", 32))
    ldm = {k: v.detach().contiguous().clone() for k, v in ldm.items()}
    path = os.path.join(SDXL_DIR, "tiny-sdxl.safetensors")
    save_file(ldm, path, metadata={"format": "pt"})
    ldm = load_file(path)

    compare("sdxl unet", sfu.convert_ldm_unet_checkpoint(ldm, dict(unet.config)), unet.state_dict())
    compare("sdxl vae", sfu.convert_ldm_vae_checkpoint(ldm, dict(vae.config)), vae.state_dict())
    c1 = sfu.convert_ldm_clip_checkpoint(ldm, "conditioner.embedders.0.transformer.")
    c1 = {k.removeprefix("text_model."): v for k, v in c1.items()}
    compare("sdxl text_encoder", c1, te1.state_dict(), ignore=["embeddings.position_ids"])
    c2 = sfu.convert_open_clip_checkpoint(te2, ldm, prefix="conditioner.embedders.1.model.")
    compare("sdxl text_encoder_2", c2, te2.state_dict())
    return path


def main():
    torch.use_deterministic_algorithms(True)
    os.makedirs(SD2_DIR, exist_ok=True)
    os.makedirs(SDXL_DIR, exist_ok=True)
    paths = [make_sd2(), make_sdxl()]
    # The folders must load with diffusers and round-trip.
    from diffusers import DiffusionPipeline
    DiffusionPipeline.from_pretrained(os.path.join(SD2_DIR, "diffusers"), variant="fp16", torch_dtype=torch.float16)
    DiffusionPipeline.from_pretrained(os.path.join(SDXL_DIR, "diffusers"))
    sizes = {}
    for d in (SD2_DIR, SDXL_DIR):
        for root, _, files in os.walk(d):
            for f in files:
                p = os.path.join(root, f)
                sizes[os.path.relpath(p, common.FIXTURES)] = os.path.getsize(p)
    print(json.dumps({"total_bytes": sum(sizes.values()), "largest": max(sizes.items(), key=lambda kv: kv[1])}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
