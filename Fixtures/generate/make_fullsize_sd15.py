#!/usr/bin/env python3
"""Writes a full-size Stable Diffusion 1.5-architecture checkpoint with seeded random weights,
for size/speed/memory tests. NOT committed: write it outside the repo (e.g. under /tmp).

  make_fullsize_sd15.py --out DIR [--ckpt] [--seed N]

Writes DIR/sd15-random.safetensors: LDM/CompVis single-file layout (model.diffusion_model.*,
first_stage_model.*, cond_stage_model.transformer.text_model.*, the schedule buffers), F32,
plus I64 position_ids, about 4.27 GB. With --ckpt also DIR/sd15-random.ckpt, a torch.save zip
of {"epoch", "global_step", "pytorch-lightning_version", "state_dict"}.

Streaming: the models are instantiated on torch's "meta" device (shapes only, no memory), and
each tensor is generated, written and freed one at a time, so the .safetensors needs only the
largest tensor in RAM. The .ckpt needs the state dict once in RAM (about 4.3 GB), read back from
the .safetensors.

Values: every tensor is drawn from its own torch.Generator seeded with crc32(name) ^ seed, so
files are reproducible and independent of tensor order. Weights (ndim >= 2) ~ N(0, 1/fan_in),
embeddings ~ N(0, 0.02^2), 1-D weights (norm scales) ~ 1 + N(0, 0.01^2), biases ~ N(0, 0.01^2).
"""

import argparse
import json
import os
import struct
import sys
import time
import zlib

import common  # sets offline env vars first

import torch


def meta_state_dicts():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    with torch.device("meta"):
        unet = UNet2DConditionModel(**common.SD15_UNET_CONFIG)
        vae = AutoencoderKL(**common.SD15_VAE_CONFIG)
        te = CLIPTextModel(CLIPTextConfig(**common.SD15_CLIP_CONFIG))
    return unet, vae, te


def make_tensor(name, shape, dtype, seed):
    if name.endswith("position_ids"):
        return torch.arange(shape[-1], dtype=torch.int64).reshape(shape)
    g = torch.Generator().manual_seed((zlib.crc32(name.encode()) ^ seed) & 0xFFFFFFFF)
    t = torch.randn(shape, generator=g, dtype=torch.float32)
    if len(shape) >= 2:
        if "embedding" in name:
            t.mul_(0.02)
        else:
            fan_in = 1
            for d in shape[1:]:
                fan_in *= d
            t.mul_(fan_in ** -0.5)
    elif name.endswith(".weight"):  # 1-D weights are norm scales (GroupNorm / LayerNorm)
        t.mul_(0.01).add_(1.0)
    else:
        t.mul_(0.01)
    return t


def plan(seed):
    """Returns (schedule buffers dict, [(ldm_name, shape, dtype)]) without allocating weights."""
    unet, vae, te = meta_state_dicts()
    ldm = common.diffusers_to_ldm(torch, unet.state_dict(), vae.state_dict(), te.state_dict(), dict(unet.config))
    schedule = common.sd1_ldm_schedule_buffers(torch)
    entries = []
    for k, v in ldm.items():
        entries.append((k, tuple(v.shape), v.dtype))
    return schedule, entries, (unet, vae, te)


ST_DTYPE = {torch.float32: ("F32", 4), torch.int64: ("I64", 8)}


def write_safetensors(path, schedule, entries, seed):
    # Order as the safetensors writer does: by descending dtype alignment, then by name.
    entries = sorted(entries, key=lambda e: (-ST_DTYPE[e[2]][1], e[0]))
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype in entries:
        n = 1
        for d in shape:
            n *= d
        size = n * ST_DTYPE[dtype][1]
        header[name] = {"dtype": ST_DTYPE[dtype][0], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * ((-len(hbytes)) % 8)
    tmp = path + ".partial"
    t0 = time.time()
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for i, (name, shape, dtype) in enumerate(entries):
            t = schedule[name] if name in schedule else make_tensor(name, shape, dtype, seed)
            assert tuple(t.shape) == shape and t.dtype == dtype, name
            f.write(memoryview(t.contiguous().numpy()).cast("B"))
            del t
            if i % 200 == 0:
                print(f"  {i}/{len(entries)} tensors, {f.tell() / 1e9:.2f} GB, {time.time() - t0:.0f}s", flush=True)
        assert f.tell() == 8 + len(hbytes) + offset
    os.replace(tmp, path)
    print(f"wrote {path}: {os.path.getsize(path)} bytes, {len(entries)} tensors, {time.time() - t0:.0f}s")


def verify(path, models, seed):
    """Header-level check with diffusers' own converters (on meta tensors, no data loaded),
    plus a few sampled tensors read back and compared with regenerated values."""
    from diffusers.loaders import single_file_utils as sfu
    from safetensors import safe_open
    unet, vae, te = models
    with safe_open(path, framework="pt") as f:
        keys = list(f.keys())
        metas = {}
        for k in keys:
            sl = f.get_slice(k)
            dt = {"F32": torch.float32, "I64": torch.int64}[sl.get_dtype()]
            metas[k] = torch.empty(sl.get_shape(), dtype=dt, device="meta")
        for k in ("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                  "first_stage_model.decoder.mid.attn_1.q.weight",
                  "cond_stage_model.transformer.text_model.final_layer_norm.weight"):
            got = f.get_tensor(k)
            want = make_tensor(k, tuple(got.shape), got.dtype, seed)
            assert torch.equal(got, want), k
        assert torch.equal(f.get_tensor("cond_stage_model.transformer.text_model.embeddings.position_ids"),
                           torch.arange(77).unsqueeze(0))
    for name, conv, model in (
            ("unet", sfu.convert_ldm_unet_checkpoint(metas, dict(unet.config)), unet),
            ("vae", sfu.convert_ldm_vae_checkpoint(metas, dict(vae.config)), vae),
            ("text_encoder", {k.removeprefix("text_model."): v for k, v in sfu.convert_ldm_clip_checkpoint(metas).items()
                              if not k.endswith("position_ids")}, te)):
        ref = model.state_dict()
        assert set(conv) == set(ref), (name, sorted(set(conv) ^ set(ref))[:8])
        for k in ref:
            assert tuple(conv[k].shape) == tuple(ref[k].shape), (name, k)
        print(f"verified {name}: {len(ref)} tensors map back to diffusers' names and shapes")
    n = sum(v.numel() for k, v in metas.items())
    print(f"total elements {n:,}")


def write_ckpt(st_path, ckpt_path):
    from safetensors.torch import load_file
    t0 = time.time()
    sd = load_file(st_path)
    ckpt = {"epoch": 6, "global_step": 470, "pytorch-lightning_version": "1.4.2", "state_dict": sd}
    tmp = ckpt_path + ".partial"
    with open(tmp, "wb") as f:  # a file object makes torch name the zip's root folder "archive/",
        torch.save(ckpt, f)     # as in the real SD 1.x .ckpt files
    del ckpt, sd
    os.replace(tmp, ckpt_path)
    print(f"wrote {ckpt_path}: {os.path.getsize(ckpt_path)} bytes, {time.time() - t0:.0f}s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (keep it outside the repository)")
    ap.add_argument("--ckpt", action="store_true", help="also write a torch zip .ckpt")
    ap.add_argument("--seed", type=int, default=common.SEED)
    ap.add_argument("--no-verify", action="store_true")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    repo = os.path.dirname(common.FIXTURES)
    if out == repo or out.startswith(repo + os.sep):
        raise SystemExit("refusing to write the full-size model inside the repository")
    os.makedirs(out, exist_ok=True)
    st_path = os.path.join(out, "sd15-random.safetensors")
    schedule, entries, models = plan(args.seed)
    write_safetensors(st_path, schedule, entries, args.seed)
    if not args.no_verify:
        verify(st_path, models, args.seed)
    if args.ckpt:
        write_ckpt(st_path, os.path.join(out, "sd15-random.ckpt"))


if __name__ == "__main__":
    sys.exit(main())
