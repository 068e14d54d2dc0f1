#!/usr/bin/env python3
"""Adapter fixtures and goldens for WeightPack's Adapters library (issue 15).

Writes, under Fixtures/adapters/ (all small, made on the tiny SD 1.x and SDXL fixtures):

  sd1-kohya-lora.safetensors      kohya LoRA (lora_unet_<diffusers path>, lora_te_), per-module
                                  .alpha, ss_* training metadata; factors from a seeded RNG
  sd1-peft-lora.safetensors       diffusers/PEFT LoRA written by save_lora_weights (unet. and
                                  text_encoder. keys, lora_A/lora_B), lora_alpha and an
                                  alpha_pattern in the lora_adapter_metadata key
  sd1-attn-processor-lora.safetensors  the PEFT LoRA's UNet part under diffusers' old
                                  attention-processor names (…processor.to_q_lora.down.weight)
  sd1-locon / -loha / -lokr / -tucker / -dora .safetensors
                                  LyCORIS modules made by lycoris-lora's own LoConModule,
                                  LohaModule, LokrModule classes on the tiny UNet's layers (3×3
                                  convolutions included), parameters re-drawn from a seeded RNG
                                  (LyCORIS zero-initialises one factor), saved under kohya names
  sd1-full-diff.safetensors       diff / diff_b full-weight differences
  sdxl-kohya-lora.safetensors     kohya SDXL LoRA: LDM UNet names (lora_unet_input_blocks_4_1_…),
                                  lora_te1_ / lora_te2_
  <name>.merged.safetensors       the tensors each adapter changes, merged at the scale in its
                                  metadata, under canonical names (unet.…, text_encoder.…):
                                  kohya/PEFT LoRAs: diffusers load_lora_weights + fuse_lora(lora_scale)
                                  on a freshly loaded pipeline (and checked against the numpy
                                  formula below to 1e-6); LyCORIS and full diffs: numpy (float64,
                                  stored as float32) following ComfyUI's comfy/weight_adapter
                                  formulas, alpha/dim applied once (lycoris 4.1.3's own merge of
                                  LoHa applies alpha/dim twice, so it is not the oracle; the
                                  factor it gives is recorded in the LoHa golden's description)
  ti-a1111.pt, ti-a1111.safetensors, ti-diffusers.safetensors, ti-sdxl.safetensors
                                  textual-inversion embeddings in the dialects seen in the wild
  ti-prompt.safetensors           diffusers load_textual_inversion(ti-diffusers, token) on tiny SD1:
                                  token ids and text-encoder output of a prompt using the token
  sd1-lora-pipeline.safetensors   a 6-step StableDiffusionPipeline run on tiny SD 1.x with the
                                  PEFT LoRA loaded (diffusers applies all of it) (load_lora_weights, cross_attention_kwargs
                                  scale 0.8, not fused): latents after every step and the image
  bad-*.safetensors               refused adapters (rank mismatch, alpha 0 / NaN, one module in
                                  two dialects, rank larger than the layer)

Run from the fixture venv (requirements.txt) after make_tiny_sd1.py / make_tiny_sd2_sdxl.py.
"""

import json
import os
import zlib

import common  # offline env vars first

import numpy as np
import torch
from safetensors.torch import save_file, load_file

import make_goldens as sd1

F32 = torch.float32
OUT = os.path.join(common.FIXTURES, "adapters")
SD1 = common.TINY_DIFFUSERS
SDXL = os.path.join(common.FIXTURES, "tiny-sdxl", "diffusers")
SCALE = 0.8
NOT_APPLIED = ("not_applied_by_diffusers (merged by the float64 formula W + scale*alpha/rank*up@down instead; "
               "diffusers 0.42.1 with transformers 5 reports the kohya/PEFT text-encoder keys as UNEXPECTED and leaves the text encoder unchanged)")


def versions():
    import diffusers, peft, transformers, safetensors, lycoris  # noqa: E401
    from importlib.metadata import version
    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "lycoris-lora": version("lycoris-lora"), "safetensors": safetensors.__version__,
            "numpy": np.__version__}


def save(name, tensors, metadata=None, description=None):
    os.makedirs(OUT, exist_ok=True)
    meta = dict(metadata or {})
    if description is not None:
        d = dict(description)
        d["generator"] = "Fixtures/generate/make_adapters.py"
        d["versions"] = versions()
        meta["description"] = json.dumps(d, sort_keys=True)
    path = os.path.join(OUT, name)
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, path, metadata=meta)
    print(f"wrote adapters/{name} ({os.path.getsize(path)} bytes, {len(tensors)} tensors)")
    return path


def rng(seed):
    return torch.Generator().manual_seed(seed)


def randn(shape, seed, std=0.1):
    return torch.randn(shape, generator=rng(seed), dtype=F32) * std


def load_sd1():
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(SD1, torch_dtype=F32, safety_checker=None, requires_safety_checker=False)
    return pipe.to("cpu")


def load_sdxl():
    from diffusers import StableDiffusionXLPipeline
    return StableDiffusionXLPipeline.from_pretrained(SDXL, torch_dtype=F32).to("cpu")


def canonical_weights(pipe, components):
    """Canonical names (component.prefix + diffusers/transformers-4 name) → tensor."""
    out = {}
    for comp in components:
        model = getattr(pipe, comp)
        for k, v in model.state_dict().items():
            if comp.startswith("text_encoder") and not k.startswith("text_model.") and not k.startswith("text_projection"):
                k = "text_model." + k
            out[f"{comp}.{k}"] = v.detach().clone()
    return out


def te_module(name):
    """transformers module path → canonical (text_model.…) path."""
    return name if name.startswith("text_model.") else "text_model." + name


# --------------------------------------------------------------------------------------------
# Module selections (canonical module paths without .weight)

SD1_UNET_TARGETS = [
    "down_blocks.0.attentions.0.proj_in",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0",
    "mid_block.attentions.0.transformer_blocks.0.attn1.to_v",
    "mid_block.attentions.0.transformer_blocks.0.ff.net.2",
    "up_blocks.3.attentions.2.proj_out",
    "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_q",
]
SD1_TE_TARGETS = [
    "text_model.encoder.layers.0.self_attn.q_proj",
    "text_model.encoder.layers.1.self_attn.v_proj",
    "text_model.encoder.layers.2.mlp.fc1",
]


def kohya_key(component, path):
    prefix = {"unet": "lora_unet_", "text_encoder": "lora_te_", "text_encoder_1": "lora_te1_", "text_encoder_2": "lora_te2_"}[component]
    return prefix + path.replace(".", "_")


def lora_factors(weight_shape, rank, seed):
    out_dim, in_dim = weight_shape[0], weight_shape[1]
    if len(weight_shape) == 4:
        down = randn((rank, in_dim, weight_shape[2], weight_shape[3]), seed)
        up = randn((out_dim, rank, 1, 1), seed + 1)
    else:
        down = randn((rank, in_dim), seed)
        up = randn((out_dim, rank), seed + 1)
    return down, up


def lora_delta(down, up):
    """ΔW = up · down in float64 (a k×k down flattened), reshaped to the weight."""
    d = down.double().reshape(down.shape[0], -1)
    u = up.double().reshape(up.shape[0], -1)
    return u @ d


def make_kohya_sd1(pipe):
    weights = canonical_weights(pipe, ["unet", "text_encoder"])
    tensors, modules = {}, []
    seed = 100
    for comp, targets in (("unet", SD1_UNET_TARGETS), ("text_encoder", SD1_TE_TARGETS)):
        for i, path in enumerate(targets):
            w = weights[f"{comp}.{path}.weight"]
            # One alpha per component: diffusers 0.42.1 applies a kohya file's per-module alphas
            # wrongly when they differ within the UNet (measured: alpha = rank modules among
            # alpha 2 ones got alpha/rank 0.5 instead of 1), and it is the oracle here.
            rank = 4 if comp == "unet" else 2
            alpha = 2.0 if comp == "unet" else 1.0
            down, up = lora_factors(tuple(w.shape), rank, seed)
            seed += 2
            key = kohya_key(comp, path)
            tensors[key + ".lora_down.weight"] = down
            tensors[key + ".lora_up.weight"] = up
            tensors[key + ".alpha"] = torch.tensor(alpha, dtype=F32)
            modules.append((comp, path, down, up, alpha, rank))
    tags = {"10_tinycat": {"tinycat": 10, " a photo": 7, "cat": 4}, "5_style": {"sketch": 5, "tinycat": 2}}
    meta = {
        "ss_base_model_version": "sd_v1", "ss_network_module": "networks.lora", "ss_network_dim": "4",
        "ss_network_alpha": "2.0", "ss_resolution": "(512, 512)", "ss_num_train_images": "15",
        "ss_tag_frequency": json.dumps(tags), "ss_sd_model_name": "tiny-sd1",
    }
    return tensors, meta, modules


def numpy_merge(weights, modules, scale):
    """W + scale · alpha/rank · up·down for every module (float64), as float32."""
    out = {}
    for comp, path, down, up, alpha, rank in modules:
        name = f"{comp}.{path}.weight"
        w = weights[name].double()
        out[name] = (w + scale * (alpha / rank) * lora_delta(down, up).reshape(w.shape)).to(F32)
    return out


def fused(pipe_loader, lora_path, scale, components):
    pipe = pipe_loader()
    before = canonical_weights(pipe, components)
    pipe.load_lora_weights(lora_path)
    pipe.fuse_lora(lora_scale=scale, components=components)
    pipe.unload_lora_weights()
    after = {k.replace(".base_layer.", "."): v for k, v in canonical_weights(pipe, components).items() if "lora_" not in k}
    changed = {k: v for k, v in after.items() if not torch.equal(v, before[k])}
    return changed, before


def rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def check_against(changed, expected, label, tol=1e-6):
    """diffusers' fused tensors where it applied the LoRA (checked against the formula), the
    formula's where it did not (text encoders: reported, never silently)."""
    extra = sorted(set(changed) - set(expected))
    assert not extra, (label, "diffusers changed tensors the LoRA does not target", extra[:5])
    missing = sorted(set(expected) - set(changed))
    assert all(k.startswith("text_encoder") for k in missing), (label, "diffusers did not apply UNet modules", missing[:5])
    worst = max(rel(changed[k], expected[k]) for k in changed)
    assert worst <= tol, (label, worst)
    print(f"  {label}: diffusers fuse_lora matches the formula on {len(changed)} tensors (max rel {worst:.2e}); not applied by diffusers: {len(missing)}")
    oracle = dict(expected)
    oracle.update(changed)
    return worst, missing, oracle


def merged_golden(name, tensors, source, scale, how, extra=None):
    d = {"adapter": source, "scale": scale, "how": how, "tensors": "merged weights under canonical names (unet.…, text_encoder.…); every other tensor is unchanged"}
    d.update(extra or {})
    save(name, tensors, {"scale": repr(scale)}, d)


# --------------------------------------------------------------------------------------------

def make_peft_sd1(pipe):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from diffusers import StableDiffusionPipeline
    unet_targets = ["to_q", "to_v", "proj_in"]
    unet_cfg = LoraConfig(r=4, lora_alpha=8, target_modules=unet_targets, init_lora_weights=False,
                          alpha_pattern={"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": 2})
    te_cfg = LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "out_proj"], init_lora_weights=False)
    pipe.unet.add_adapter(unet_cfg)
    pipe.text_encoder.add_adapter(te_cfg)
    torch.manual_seed(7)
    for model in (pipe.unet, pipe.text_encoder):
        for n, p in model.named_parameters():
            if "lora_" in n:
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=rng(zlib.crc32(n.encode()))) * 0.1)
    unet_sd = get_peft_model_state_dict(pipe.unet)
    te_sd = get_peft_model_state_dict(pipe.text_encoder)
    tmp = os.path.join(OUT, "_peft")
    # The configs as diffusers saves them, without the local path PEFT records.
    unet_meta, te_meta = unet_cfg.to_dict(), te_cfg.to_dict()
    for m in (unet_meta, te_meta):
        m.pop("base_model_name_or_path", None)
    StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=unet_sd, text_encoder_lora_layers=te_sd,
                                              unet_lora_adapter_metadata=unet_meta,
                                              text_encoder_lora_adapter_metadata=te_meta)
    src = os.path.join(tmp, "pytorch_lora_weights.safetensors")
    dst = os.path.join(OUT, "sd1-peft-lora.safetensors")
    os.replace(src, dst)
    os.rmdir(tmp)
    print(f"wrote adapters/sd1-peft-lora.safetensors ({os.path.getsize(dst)} bytes)")
    return dst


def numpy_merge_peft(weights, path, scale):
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
        keys = list(f.keys())
        sd = {k: f.get_tensor(k) for k in keys}
    out = {}
    for k in keys:
        if ".lora_A." not in k:
            continue
        module = k.split(".lora_A.")[0]
        comp = module.split(".")[0]
        path_in = module[len(comp) + 1:]
        canon = f"{comp}.{te_module(path_in) if comp.startswith('text_encoder') else path_in}.weight"
        down, up = sd[k], sd[k.replace(".lora_A.", ".lora_B.")]
        r = down.shape[0]
        alpha = meta[f"{comp}.lora_alpha"]
        for pat, a in meta.get(f"{comp}.alpha_pattern", {}).items():
            if path_in == pat or path_in.endswith("." + pat):
                alpha = a
        w = weights[canon].double()
        out[canon] = (w + scale * (alpha / r) * lora_delta(down, up).reshape(w.shape)).to(F32)
    return out


def make_attn_processor(peft_path):
    sd = load_file(peft_path)
    out = {}
    names = {"to_q": "to_q_lora", "to_k": "to_k_lora", "to_v": "to_v_lora", "to_out.0": "to_out_lora"}
    for k, v in sd.items():
        if not k.startswith("unet.") or ".lora_A." not in k and ".lora_B." not in k:
            continue
        module, rest = k.split(".lora_A.") if ".lora_A." in k else k.split(".lora_B.")
        last = next((n for n in names if module.endswith("." + n)), None)
        if last is None:
            continue
        parent = module[: -len(last) - 1]
        role = "down" if ".lora_A." in k else "up"
        out[f"{parent}.processor.{names[last]}.{role}.weight"] = v
    save("sd1-attn-processor-lora.safetensors", out, None,
         {"made_from": "sd1-peft-lora.safetensors: its unet to_q/to_v modules renamed to diffusers' old attention-processor keys (no alpha: scale alpha/rank = 1)"})


# --------------------------------------------------------------------------------------------
# LyCORIS

def lycoris_module(kind, name, layer, **kw):
    from lycoris.modules.locon import LoConModule
    from lycoris.modules.loha import LohaModule
    from lycoris.modules.lokr import LokrModule
    cls = {"locon": LoConModule, "loha": LohaModule, "lokr": LokrModule}[kind]
    m = cls(name, layer, **kw)
    g = rng(zlib.crc32((name + kind).encode()))
    with torch.no_grad():
        for pn, p in m.named_parameters():
            if pn == "dora_scale":
                p.mul_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return m


def comfy_delta(kind, sd, alpha):
    """ΔW in float64 as ComfyUI's comfy/weight_adapter computes it (alpha/dim applied once)."""
    d = {k: v.double() for k, v in sd.items()}
    if kind == "locon":
        down, up = d["lora_down.weight"], d["lora_up.weight"]
        rank = down.shape[0]
        if "lora_mid.weight" in d:
            mid = d["lora_mid.weight"]
            w = torch.einsum("m n ..., i m, n j -> i j ...", mid, up.reshape(up.shape[0], up.shape[1]), down.reshape(down.shape[0], down.shape[1]))
            return w, alpha / rank
        return lora_delta(down, up), alpha / rank
    if kind == "loha":
        w1a, w1b, w2a, w2b = d["hada_w1_a"], d["hada_w1_b"], d["hada_w2_a"], d["hada_w2_b"]
        if "hada_t1" in d:
            m1 = torch.einsum("i j k l, j r, i p -> p r k l", d["hada_t1"], w1b, w1a)
            m2 = torch.einsum("i j k l, j r, i p -> p r k l", d["hada_t2"], w2b, w2a)
        else:
            m1, m2 = w1a @ w1b, w2a @ w2b
        return m1 * m2, alpha / w1b.shape[0]
    if kind == "lokr":
        dim = None
        if "lokr_w1" in d:
            w1 = d["lokr_w1"]
        else:
            dim = d["lokr_w1_b"].shape[0]
            w1 = d["lokr_w1_a"] @ d["lokr_w1_b"]
        if "lokr_w2" in d:
            w2 = d["lokr_w2"]
        else:
            dim = d["lokr_w2_b"].shape[0]
            if "lokr_t2" in d:
                w2 = torch.einsum("i j k l, j r, i p -> p r k l", d["lokr_t2"], d["lokr_w2_b"], d["lokr_w2_a"])
            else:
                w2 = d["lokr_w2_a"] @ d["lokr_w2_b"]
        if w2.dim() == 4:
            w1 = w1.unsqueeze(2).unsqueeze(2)
        return torch.kron(w1, w2), (alpha / dim if dim is not None else 1.0)
    raise ValueError(kind)


def make_lycoris(pipe, name, kind, specs, scale, dora=False):
    """specs: [(canonical module path, kwargs)]; writes the adapter and its merged golden."""
    weights = canonical_weights(pipe, ["unet"])
    tensors, merged, notes = {}, {}, {}
    for path, kw in specs:
        layer = pipe.unet.get_submodule(path)
        key = kohya_key("unet", path)
        m = lycoris_module(kind, key, layer, **kw)
        sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
        alpha = float(sd["alpha"])
        for k, v in sd.items():
            if k in ("alpha",) or k.startswith("org_") or k == "scalar":
                continue
            tensors[f"{key}.{k}"] = v
        tensors[f"{key}.alpha"] = torch.tensor(alpha, dtype=F32)
        w = weights[f"unet.{path}.weight"].double()
        delta, factor = comfy_delta(kind, sd, alpha)
        delta = delta.reshape(w.shape) * factor
        if dora:
            mag = sd["dora_scale"].double()
            v = w + delta
            norm = v.reshape(v.shape[0], -1).norm(dim=1).reshape(mag.shape)
            vprime = v * (mag / norm)
            merged[f"unet.{path}.weight"] = (w + scale * (vprime - w)).to(F32)
        else:
            merged[f"unet.{path}.weight"] = (w + scale * delta).to(F32)
        # lycoris-lora's own merged weight, for the record (its LoHa applies alpha/dim twice).
        try:
            with torch.no_grad():
                own = m.get_merged_weight(multiplier=scale)[0].double()
            own_delta = (own - w)
            ours = merged[f"unet.{path}.weight"].double() - w
            notes[path] = {"lycoris_merge_over_comfy": float((own_delta * ours).sum() / (ours * ours).sum())}
        except Exception as e:  # noqa: BLE001
            notes[path] = {"lycoris_merge": f"not comparable: {type(e).__name__}: {e}"}
    meta = {"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps({"algo": kind, "dora_wd": dora}), "ss_base_model_version": "sd_v1"}
    save(f"{name}.safetensors", tensors, meta, {"lycoris_classes": kind, "modules": [p for p, _ in specs]})
    merged_golden(f"{name}.merged.safetensors", merged, f"{name}.safetensors", scale,
                  "numpy/float64 following ComfyUI comfy/weight_adapter (" + kind + (", DoRA per output channel as lycoris wd_on_out=True, scale interpolating W + s·(W_dora - W)" if dora else "") + "), alpha/dim once",
                  {"lycoris_own_merge": notes})


def make_full_diff(pipe, scale):
    weights = canonical_weights(pipe, ["unet"])
    tensors, merged = {}, {}
    for i, path in enumerate(["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0", "up_blocks.3.resnets.0.conv1"]):
        w, b = weights[f"unet.{path}.weight"], weights[f"unet.{path}.bias"]
        key = kohya_key("unet", path)
        dw, db = randn(tuple(w.shape), 900 + i, 0.01), randn(tuple(b.shape), 950 + i, 0.01)
        tensors[key + ".diff"], tensors[key + ".diff_b"] = dw, db
        merged[f"unet.{path}.weight"] = (w.double() + scale * dw.double()).to(F32)
        merged[f"unet.{path}.bias"] = (b.double() + scale * db.double()).to(F32)
    save("sd1-full-diff.safetensors", tensors, None, {"what": "full-weight differences diff/diff_b"})
    merged_golden("sd1-full-diff.merged.safetensors", merged, "sd1-full-diff.safetensors", scale, "W + scale·diff, b + scale·diff_b in float64")


# --------------------------------------------------------------------------------------------
# SDXL kohya LoRA with LDM UNet names

SDXL_UNET = [  # (diffusers path, LDM path)
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "input_blocks.4.1.transformer_blocks.0.attn1.to_q"),
    ("down_blocks.2.attentions.1.transformer_blocks.1.attn2.to_k", "input_blocks.8.1.transformer_blocks.1.attn2.to_k"),
    ("down_blocks.2.attentions.1.proj_in", "input_blocks.8.1.proj_in"),
    ("mid_block.attentions.0.transformer_blocks.1.ff.net.0.proj", "middle_block.1.transformer_blocks.1.ff.net.0.proj"),
    ("up_blocks.0.attentions.2.transformer_blocks.0.attn2.to_v", "output_blocks.2.1.transformer_blocks.0.attn2.to_v"),
    ("up_blocks.1.attentions.1.proj_out", "output_blocks.4.1.proj_out"),
]
SDXL_TE = [("text_encoder_1", "text_encoder", "text_model.encoder.layers.0.self_attn.q_proj"),
           ("text_encoder_2", "text_encoder_2", "text_model.encoder.layers.1.self_attn.k_proj"),
           ("text_encoder_2", "text_encoder_2", "text_model.encoder.layers.0.mlp.fc2")]


def make_kohya_sdxl():
    pipe = load_sdxl()
    weights = canonical_weights(pipe, ["unet", "text_encoder", "text_encoder_2"])
    tensors, modules = {}, []
    seed = 500
    for diff_path, ldm_path in SDXL_UNET:
        w = weights[f"unet.{diff_path}.weight"]
        down, up = lora_factors(tuple(w.shape), 4, seed)
        seed += 2
        key = kohya_key("unet", ldm_path)
        tensors[key + ".lora_down.weight"], tensors[key + ".lora_up.weight"] = down, up
        tensors[key + ".alpha"] = torch.tensor(2.0)
        modules.append(("unet", diff_path, down, up, 2.0, 4))
    for kohya_comp, comp, path in SDXL_TE:
        w = weights[f"{comp}.{path}.weight"]
        down, up = lora_factors(tuple(w.shape), 2, seed)
        seed += 2
        key = kohya_key(kohya_comp, path)
        tensors[key + ".lora_down.weight"], tensors[key + ".lora_up.weight"] = down, up
        tensors[key + ".alpha"] = torch.tensor(1.0)
        modules.append((comp, path, down, up, 1.0, 2))
    meta = {"ss_base_model_version": "sdxl_base_v1-0", "ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "2.0", "ss_resolution": "(1024, 1024)"}
    path = save("sdxl-kohya-lora.safetensors", tensors, meta, {"what": "kohya SDXL LoRA with LDM UNet names and lora_te1_/lora_te2_"})
    expected = numpy_merge(weights, modules, SCALE)
    # diffusers 0.42.1 raises "Could not automatically infer state dict type" on the lora_te1_/
    # lora_te2_ keys with transformers 5, so it fuses the UNet part and the formula the rest.
    unet_only = os.path.join(OUT, "_sdxl-unet-only.safetensors")
    save_file({k: v for k, v in tensors.items() if k.startswith("lora_unet_")}, unet_only)
    changed, _ = fused(load_sdxl, unet_only, SCALE, ["unet"])
    os.remove(unet_only)
    worst, missing, oracle = check_against(changed, expected, "sdxl kohya")
    merged_golden("sdxl-kohya-lora.merged.safetensors", oracle, "sdxl-kohya-lora.safetensors", SCALE,
                  "StableDiffusionXLPipeline.load_lora_weights + fuse_lora(lora_scale=0.8) on a fresh pipeline", {"max_rel_vs_formula": worst, NOT_APPLIED: missing})


# --------------------------------------------------------------------------------------------
# Embeddings

def make_embeddings():
    vec = randn((2, 32), 777, 0.3)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": "tinycat", "step": 100,
                "sd_checkpoint": "0123abcd", "sd_checkpoint_name": "tiny-sd1"}, os.path.join(OUT, "ti-a1111.pt"))
    print(f"wrote adapters/ti-a1111.pt ({os.path.getsize(os.path.join(OUT, 'ti-a1111.pt'))} bytes)")
    save("ti-a1111.safetensors", {"emb_params": vec}, None, {"what": "A1111 safetensors embedding (emb_params), the vectors of ti-a1111.pt"})
    save("ti-diffusers.safetensors", {"<tinycat>": vec}, None, {"what": "diffusers one-tensor embedding, the vectors of ti-a1111.pt"})
    save("ti-sdxl.safetensors", {"clip_l": randn((3, 32), 778, 0.3), "clip_g": randn((3, 32), 779, 0.3)}, None,
         {"what": "SDXL embedding pair (tiny SDXL's encoders are both 32 wide)"})
    pipe = load_sd1()
    pipe.load_textual_inversion(os.path.join(OUT, "ti-diffusers.safetensors"), token="<tinycat>")
    prompt = "a photo of <tinycat> riding a horse"
    text = pipe.maybe_convert_prompt(prompt, pipe.tokenizer)
    ids = pipe.tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        emb = pipe.text_encoder(ids).last_hidden_state
    added = pipe.tokenizer.convert_tokens_to_ids(["<tinycat>", "<tinycat>_1"])
    save("ti-prompt.safetensors", {"ids": ids[0].to(torch.int64), "prompt_embeds": emb[0], "added_token_ids": torch.tensor(added, dtype=torch.int64)},
         {"prompt": prompt, "expanded_prompt": text, "token": "<tinycat>"},
         {"how": "StableDiffusionPipeline.load_textual_inversion(ti-diffusers.safetensors, token='<tinycat>') on tiny SD1; ids = tokenizer(maybe_convert_prompt(prompt)); prompt_embeds = text_encoder(ids).last_hidden_state"})


# --------------------------------------------------------------------------------------------

@torch.no_grad()
def make_pipeline_golden(lora_path):
    pipe = load_sd1()
    pipe.scheduler = sd1.sd1_scheduler("pndm")
    pipe.load_lora_weights(lora_path)
    init = sd1.randn((1, 4, 8, 8), sd1.PIPE_LATENT_SEED)
    steps = []

    def on_step_end(p, i, t, kwargs):
        steps.append(kwargs["latents"].detach().clone())
        return kwargs

    result = pipe(sd1.PIPE_PROMPT, negative_prompt="", guidance_scale=sd1.PIPE_GUIDANCE, height=64, width=64,
                  num_inference_steps=sd1.PIPE_STEPS, latents=init.clone(), cross_attention_kwargs={"scale": SCALE},
                  generator=torch.Generator().manual_seed(sd1.PIPE_GENERATOR_SEED), output_type="np",
                  callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"])
    tensors = {"init_latents": init, "image": torch.from_numpy(result.images[0]).to(F32)}
    for i, lat in enumerate(steps):
        tensors[f"step{i}.latents"] = lat
    save("sd1-lora-pipeline.safetensors", tensors, {"scale": repr(SCALE)},
         {"how": "StableDiffusionPipeline (tiny SD1, PNDM as make_goldens.py) with load_lora_weights(sd1-peft-lora.safetensors), not fused, cross_attention_kwargs={'scale': 0.8} (which also scales the text-encoder LoRA)",
          "call": {"prompt": sd1.PIPE_PROMPT, "negative_prompt": "", "guidance_scale": sd1.PIPE_GUIDANCE, "steps": sd1.PIPE_STEPS, "size": 64,
                   "latents": f"torch.randn((1,4,8,8), generator=manual_seed({sd1.PIPE_LATENT_SEED}))"}})


def make_bad():
    def lora(key, down, up, alpha=None):
        t = {key + ".lora_down.weight": down, key + ".lora_up.weight": up}
        if alpha is not None:
            t[key + ".alpha"] = torch.tensor(alpha, dtype=F32)
        return t
    k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save("bad-rank-mismatch.safetensors", lora(k, randn((4, 32), 1), randn((32, 3), 2), 4.0), None, {"bad": "lora_up has 3 columns, lora_down rank 4"})
    save("bad-alpha-zero.safetensors", lora(k, randn((4, 32), 1), randn((32, 4), 2), 0.0), None, {"bad": "alpha 0"})
    save("bad-alpha-nan.safetensors", lora(k, randn((4, 32), 1), randn((32, 4), 2), float("nan")), None, {"bad": "alpha NaN"})
    dup = lora(k, randn((4, 32), 1), randn((32, 4), 2), 4.0)
    dup["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"] = randn((4, 32), 3)
    dup["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight"] = randn((32, 4), 4)
    save("bad-duplicate-dialects.safetensors", dup, None, {"bad": "one module as kohya and as PEFT keys"})
    save("bad-rank-too-large.safetensors", lora(k, randn((40, 32), 1), randn((32, 40), 2), 4.0), None, {"bad": "rank 40 on a 32×32 layer"})


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT, exist_ok=True)

    # kohya SD1 LoRA and its diffusers merge
    pipe = load_sd1()
    tensors, meta, modules = make_kohya_sd1(pipe)
    kohya_path = save("sd1-kohya-lora.safetensors", tensors, meta, {"what": "kohya LoRA, diffusers-style module names, per-module alpha"})
    expected = numpy_merge(canonical_weights(pipe, ["unet", "text_encoder"]), modules, SCALE)
    changed, _ = fused(load_sd1, kohya_path, SCALE, ["unet", "text_encoder"])
    worst, missing, oracle = check_against(changed, expected, "sd1 kohya")
    merged_golden("sd1-kohya-lora.merged.safetensors", oracle, "sd1-kohya-lora.safetensors", SCALE,
                  "StableDiffusionPipeline.load_lora_weights + fuse_lora(lora_scale=0.8) on a fresh pipeline", {"max_rel_vs_formula": worst, NOT_APPLIED: missing})

    # PEFT SD1 LoRA
    peft_path = make_peft_sd1(load_sd1())
    base = load_sd1()
    expected = numpy_merge_peft(canonical_weights(base, ["unet", "text_encoder"]), peft_path, SCALE)
    changed, _ = fused(load_sd1, peft_path, SCALE, ["unet", "text_encoder"])
    worst, missing, oracle = check_against(changed, expected, "sd1 peft")
    merged_golden("sd1-peft-lora.merged.safetensors", oracle, "sd1-peft-lora.safetensors", SCALE,
                  "StableDiffusionPipeline.load_lora_weights + fuse_lora(lora_scale=0.8) on a fresh pipeline", {"max_rel_vs_formula": worst, NOT_APPLIED: missing})
    make_attn_processor(peft_path)

    # LyCORIS
    pipe = load_sd1()
    conv = "down_blocks.0.resnets.0.conv1"
    lin = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"
    make_lycoris(pipe, "sd1-locon", "locon", [(conv, dict(lora_dim=4, alpha=2)), (lin, dict(lora_dim=4, alpha=1))], SCALE)
    make_lycoris(pipe, "sd1-tucker", "locon", [(conv, dict(lora_dim=4, alpha=2, use_tucker=True))], SCALE)
    make_lycoris(pipe, "sd1-loha", "loha", [(conv, dict(lora_dim=4, alpha=2)), (lin, dict(lora_dim=4, alpha=2)),
                                             ("up_blocks.1.resnets.0.conv1", dict(lora_dim=2, alpha=1, use_tucker=True))], SCALE)
    make_lycoris(pipe, "sd1-lokr", "lokr", [(conv, dict(lora_dim=2, alpha=2, factor=4)), (lin, dict(lora_dim=2, alpha=1, factor=4, decompose_both=True)),
                                             ("mid_block.attentions.0.transformer_blocks.0.ff.net.2", dict(lora_dim=100000, alpha=1, factor=8))], SCALE)
    make_lycoris(pipe, "sd1-dora", "locon", [(lin, dict(lora_dim=4, alpha=2, weight_decompose=True, wd_on_out=True))], 1.0, dora=True)
    make_full_diff(pipe, SCALE)

    make_kohya_sdxl()
    make_embeddings()
    # The PEFT LoRA, which diffusers applies whole (it leaves some kohya text-encoder modules out).
    make_pipeline_golden(peft_path)
    make_bad()


if __name__ == "__main__":
    main()
