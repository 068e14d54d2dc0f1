"""Shared settings for WeightPack's fixture generators (paths, SD 1.x configs, helpers)."""

import os

# Never touch the network: everything is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.normpath(os.path.join(HERE, ".."))
TINY_DIR = os.path.join(FIXTURES, "tiny-sd1")
TINY_DIFFUSERS = os.path.join(TINY_DIR, "diffusers")
TINY_SAFETENSORS = os.path.join(TINY_DIR, "tiny-sd1.safetensors")
TINY_CKPT = os.path.join(TINY_DIR, "tiny-sd1.ckpt")
GOLDEN = os.path.join(FIXTURES, "golden")

SEED = 20240229

# Stable Diffusion 1.x's published scheduler configuration (scheduler_config.json of SD 1.4/1.5).
SD1_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "clip_sample": False,
    "trained_betas": None,
}

TINY_UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 32, 32, 64),
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=32,
    norm_num_groups=32,
)

TINY_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(32, 32, 32, 64),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=64,
    scaling_factor=0.18215,
)

TINY_CLIP_CONFIG = dict(
    vocab_size=49408,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)

# Stable Diffusion 1.5's architecture (diffusers defaults / runwayml config).
SD15_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=768,
    norm_num_groups=32,
)

SD15_VAE_CONFIG = dict(TINY_VAE_CONFIG, block_out_channels=(128, 256, 512, 512), sample_size=512)

# CLIP ViT-L/14 text tower (openai/clip-vit-large-patch14 text_config).
SD15_CLIP_CONFIG = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=1,  # as in openai/clip-vit-large-patch14's config.json (unused by the model)
)


def sd1_ldm_schedule_buffers(torch, num_timesteps=1000, linear_start=0.00085, linear_end=0.012):
    """The noise-schedule buffers that CompVis LatentDiffusion.register_schedule stores in every
    SD 1.x checkpoint, computed in float64 and stored as float32 [1000] tensors.

    SD 1.x's "linear" LDM schedule is diffusers' "scaled_linear": betas are the squares of a
    linear ramp between sqrt(linear_start) and sqrt(linear_end)."""
    f64 = torch.float64
    betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, num_timesteps, dtype=f64) ** 2
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)
    alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=f64), alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)  # v_posterior = 0
    buffers = {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": alphas_cumprod_prev,
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod),
    }
    return {k: v.to(torch.float32).contiguous() for k, v in buffers.items()}


# ---------------------------------------------------------------------------------------------
# diffusers -> LDM (CompVis) key mapping for SD 1.x. Written for WeightPack; the inverse is
# checked against diffusers' own single_file_utils converters in make_tiny_sd1.py.
# ---------------------------------------------------------------------------------------------

UNET_RESNET_RENAMES = [  # diffusers ResnetBlock2D -> LDM ResBlock
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("time_emb_proj.", "emb_layers.1."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("conv_shortcut.", "skip_connection."),
]

VAE_ATTN_RENAMES = [  # diffusers Attention (VAE mid block) -> LDM AttnBlock
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
]


def _rename(rest, table):
    for old, new in table:
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest


def unet_key_to_ldm(key, layers_per_block=2, num_levels=4, up_has_attention=(False, True, True, True)):
    """Maps one diffusers UNet2DConditionModel key to its LDM name (without the
    'model.diffusion_model.' prefix). Raises KeyError for an unknown key."""
    simple = {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
    }
    for old, new in simple.items():
        if key.startswith(old):
            return new + key[len(old):]
    p = key.split(".")
    per_down = layers_per_block + 1  # resnets (+ attentions) + one downsampler slot per level
    per_up = layers_per_block + 1
    if p[0] == "down_blocks":
        b = int(p[1])
        kind = p[2]
        if kind in ("resnets", "attentions"):
            l = int(p[3])
            i = per_down * b + l + 1
            rest = ".".join(p[4:])
            if kind == "resnets":
                return f"input_blocks.{i}.0." + _rename(rest, UNET_RESNET_RENAMES)
            return f"input_blocks.{i}.1." + rest
        if kind == "downsamplers" and p[3] == "0" and p[4] == "conv":
            i = per_down * (b + 1)
            return f"input_blocks.{i}.0.op." + ".".join(p[5:])
    if p[0] == "mid_block":
        kind, l, rest = p[1], int(p[2]), ".".join(p[3:])
        if kind == "resnets":
            return f"middle_block.{2 * l}." + _rename(rest, UNET_RESNET_RENAMES)
        if kind == "attentions":
            return f"middle_block.1." + rest
    if p[0] == "up_blocks":
        b = int(p[1])
        kind = p[2]
        if kind in ("resnets", "attentions"):
            l = int(p[3])
            j = per_up * b + l
            rest = ".".join(p[4:])
            if kind == "resnets":
                return f"output_blocks.{j}.0." + _rename(rest, UNET_RESNET_RENAMES)
            return f"output_blocks.{j}.1." + rest
        if kind == "upsamplers" and p[3] == "0" and p[4] == "conv":
            j = per_up * b + layers_per_block
            slot = 2 if up_has_attention[b] else 1
            return f"output_blocks.{j}.{slot}.conv." + ".".join(p[5:])
    raise KeyError("unmapped UNet key: " + key)


def vae_key_to_ldm(key, num_levels=4):
    """Maps one diffusers AutoencoderKL key to its LDM name (without 'first_stage_model.').
    Returns (ldm_key, needs_conv_reshape): VAE mid-block attention q/k/v/proj_out weights are
    Linear [C,C] in diffusers and 1x1 Conv2d [C,C,1,1] in LDM."""
    p = key.split(".")
    if p[0] in ("quant_conv", "post_quant_conv"):
        return key, False
    side = p[0]  # encoder / decoder
    assert side in ("encoder", "decoder"), key
    q = p[1:]
    if q[0] in ("conv_in", "conv_out"):
        return key, False
    if q[0] == "conv_norm_out":
        return f"{side}.norm_out." + ".".join(q[1:]), False
    if q[0] == "mid_block":
        kind, l, rest = q[1], int(q[2]), ".".join(q[3:])
        if kind == "resnets":
            return f"{side}.mid.block_{l + 1}." + _rename(rest, [("conv_shortcut.", "nin_shortcut.")]), False
        if kind == "attentions":
            new = _rename(rest, VAE_ATTN_RENAMES)
            return f"{side}.mid.attn_1." + new, new.endswith(".weight") and not new.startswith("norm.")
    if q[0] in ("down_blocks", "up_blocks"):
        b = int(q[1])
        ldm_level = b if side == "encoder" else num_levels - 1 - b  # LDM decoder counts up from 0 = lowest res
        name = "down" if side == "encoder" else "up"
        if q[2] == "resnets":
            rest = ".".join(q[4:])
            return f"{side}.{name}.{ldm_level}.block.{q[3]}." + _rename(rest, [("conv_shortcut.", "nin_shortcut.")]), False
        if q[2] in ("downsamplers", "upsamplers") and q[3] == "0":
            what = "downsample" if side == "encoder" else "upsample"
            return f"{side}.{name}.{ldm_level}.{what}." + ".".join(q[4:]), False
    raise KeyError("unmapped VAE key: " + key)


def clip_key_to_ldm(key):
    """transformers 5 CLIPTextModel keys have no 'text_model.' level (the model was flattened);
    LDM checkpoints keep the transformers 4 layout under 'cond_stage_model.transformer.'."""
    if key.startswith("text_model."):
        key = key[len("text_model."):]
    return "text_model." + key


def diffusers_to_ldm(torch, unet_sd, vae_sd, text_sd, unet_config):
    """Builds the full SD 1.x LDM state dict (a dict of name -> tensor, insertion order = real
    checkpoints' order: schedule buffers, UNet, VAE, CLIP)."""
    up_has_attn = tuple("CrossAttn" in t for t in unet_config["up_block_types"])
    ldm = dict(sd1_ldm_schedule_buffers(torch))
    for k, v in unet_sd.items():
        ldm["model.diffusion_model." + unet_key_to_ldm(k, unet_config["layers_per_block"],
                                                       len(unet_config["block_out_channels"]), up_has_attn)] = v
    for k, v in vae_sd.items():
        name, reshape = vae_key_to_ldm(k)
        if reshape:
            assert v.ndim == 2, (k, v.shape)
            v = v.reshape(v.shape[0], v.shape[1], 1, 1)
        ldm["first_stage_model." + name] = v
    for k, v in text_sd.items():
        ldm["cond_stage_model.transformer." + clip_key_to_ldm(k)] = v
    pos = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    if pos not in ldm:
        n = text_sd[[k for k in text_sd if k.endswith("position_embedding.weight")][0]].shape[0]
        ldm[pos] = torch.arange(n, dtype=torch.int64).unsqueeze(0)
    return ldm
