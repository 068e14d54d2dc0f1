#!/usr/bin/env python3
"""Golden outputs of the tiny SD 1.x model (Fixtures/tiny-sd1/diffusers) for WeightPack's tests.

Writes, under Fixtures/golden/:
  tokenizer_cases.json       CLIP tokenizer ids for awkward prompts (SD 1.x and SD 2.x padding)
  text_encoder.safetensors   ids -> last_hidden_state / penultimate hidden state
  vae.safetensors            decode(latent) and encode(image) -> mean, logvar
  unet.safetensors           one UNet forward at t=999 and t=500
  randn.safetensors          torch.randn with seeded CPU generators (mt19937 compatibility)
  pipelines/<scheduler>.safetensors  full 6-step txt2img runs, latents after every step

Every safetensors file carries its inputs as tensors and a JSON description in __metadata__.
Run after make_tiny_sd1.py.
"""

import argparse
import json
import os
import sys

import common  # sets offline env vars first
import clip_bpe

import torch
from safetensors.torch import save_file

F32 = torch.float32

PIPE_PROMPT = "a photo of an astronaut riding a horse"
PIPE_STEPS = 6
PIPE_GUIDANCE = 7.5
PIPE_LATENT_SEED = 1234
PIPE_GENERATOR_SEED = 42

LONG_PROMPT = (
    "a highly detailed matte painting of a medieval castle on a cliff above a stormy sea at dusk, "
    "dramatic lighting, volumetric clouds, crashing waves, seagulls, tiny figures walking on the bridge, "
    "lanterns glowing in the windows, by a famous concept artist, trending on artstation, octane render, "
    "unreal engine, 8k resolution, ultra sharp focus, intricate stonework, moss and ivy, cinematic "
    "composition, golden ratio, warm and cold color contrast, rain, lightning in the distance"
)

TOKENIZER_PROMPTS = [
    ("empty", ""),
    ("simple", "a photo of a cat"),
    ("pipeline_prompt", PIPE_PROMPT),
    ("punctuation", "Hello!!! What?!... (masterpiece:1.2), [best quality], {ultra-detailed}; 8k -- #art @artist $5 % ^_^"),
    ("numbers", "1234567 3.14"),
    ("accents", "caf\u00e9 na\u00efve r\u00e9sum\u00e9"),
    ("accents_decomposed_nfc", "cafe\u0301 nai\u0308ve"),
    ("cjk", "\u6771\u4eac\u306e\u591c\u666f"),
    ("emoji", "\U0001F431\U0001F680 cat astronaut"),
    ("apostrophes", "don't it's we'll they're I'm"),
    ("apostrophes_caps", "DON'T IT'S WE'LL THEY'RE I'M"),
    ("whitespace", "  multiple   spaces\n\nnewlines\ttabs  \r\n end "),
    ("html_entities", "&amp; &lt; &gt; &quot; fish &amp; chips"),
    ("all_caps", "A PHOTO OF A CAT IN ALL CAPS"),
    ("long_over_77", LONG_PROMPT),
    ("exactly_75_words", " ".join(["cat"] * 75)),
    ("exactly_76_words", " ".join(["cat"] * 76)),
    ("long_words", "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis"),
    ("urls", "https://example.com/path?query=1&x=y www.test.org/a_b-c"),
    ("special_token_text", "<|startoftext|>a cat<|endoftext|> and <|endoftext|>"),
    ("german_sharp_s", "\u00dcber die Stra\u00dfe \u00c0\u00c9\u00ce\u00d5"),
    ("cyrillic", "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440"),
    ("devanagari", "\u0939\u093f\u0928\u094d\u0926\u0940"),
    ("nbsp_zero_width", "a\u00a0cat\u200bdog"),
    ("sd_weights", "(((masterpiece))), best quality, 1girl, [[blurry]], (red:0.8)"),
    ("no_spaces_commas", "red,green,blue"),
    ("single_letter", "a"),
]

TEXT_ENCODER_PROMPTS = [("simple", "a photo of a cat"), ("empty", ""), ("emoji", "\U0001F431\U0001F680 cat astronaut")]


def save(path, tensors, meta):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    for k, v in tensors.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
        assert torch.isfinite(v.float()).all(), f"{k} has non-finite values"
    save_file(tensors, path, metadata={"description": json.dumps(meta, ensure_ascii=False)})
    print(f"wrote {os.path.relpath(path, common.FIXTURES)} ({os.path.getsize(path)} bytes, {len(tensors)} tensors)")


def randn(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F32)


def tokenizer_cases(tok, tok_pad0, out):
    from open_clip.tokenizer import SimpleTokenizer
    oc = SimpleTokenizer()
    cases = []
    for name, prompt in TOKENIZER_PROMPTS:
        enc = tok(prompt, padding="max_length", max_length=77, truncation=True)
        ids = list(enc.input_ids)
        ids0 = list(tok_pad0(prompt, padding="max_length", max_length=77, truncation=True).input_ids)
        n_real = sum(enc.attention_mask)
        untruncated = len(tok(prompt).input_ids)
        oc_ids = oc([prompt])[0].tolist()
        assert len(ids) == 77 and len(ids0) == 77
        cases.append({
            "name": name,
            "prompt": prompt,
            "ids": ids,
            "ids_pad0": ids0,
            "length": n_real,
            "untruncated_length": untruncated,
            "truncated": untruncated > 77,
            "ids_open_clip": oc_ids,
            "open_clip_agrees": oc_ids == [t if i < n_real else 0 for i, t in enumerate(ids)],
            "pad0_content_differs": ids0[:n_real] != ids[:n_real],
        })
    with open(out, "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {os.path.relpath(out, common.FIXTURES)} ({len(cases)} cases)")
    for c in cases:
        if not c["open_clip_agrees"] or c["pad0_content_differs"]:
            print(f"  note: {c['name']}: open_clip_agrees={c['open_clip_agrees']} "
                  f"pad0_content_differs={c['pad0_content_differs']}")
    return cases


@torch.no_grad()
def text_encoder_goldens(pipe, out):
    te = pipe.text_encoder
    tensors, prompts = {}, {}
    for name, prompt in TEXT_ENCODER_PROMPTS:
        ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids.to(torch.int64)
        o = te(ids, output_hidden_states=True)
        hs = o.hidden_states
        assert len(hs) == te.config.num_hidden_layers + 1, len(hs)
        assert not torch.equal(hs[-1], o.last_hidden_state)  # last_hidden_state has final_layer_norm
        assert torch.allclose(te.final_layer_norm(hs[-1]), o.last_hidden_state)
        tensors[f"{name}.input_ids"] = ids
        tensors[f"{name}.last_hidden_state"] = o.last_hidden_state
        tensors[f"{name}.penultimate_hidden_state"] = hs[-2]
        tensors[f"{name}.pooler_output"] = o.pooler_output
        prompts[name] = prompt
    save(out, tensors, {
        "model": "Fixtures/tiny-sd1/diffusers/text_encoder (CLIPTextModel, fp32)",
        "prompts": prompts,
        "tensors": {
            "<name>.input_ids": "I64 [1,77], tokenizer(prompt, padding='max_length', max_length=77, truncation=True)",
            "<name>.last_hidden_state": "F32 [1,77,32], text_encoder(ids).last_hidden_state (after final_layer_norm); no attention_mask (as SD 1.x)",
            "<name>.penultimate_hidden_state": "F32 [1,77,32], hidden_states[-2]: output of encoder layer 2 of 3, before final_layer_norm (clip skip 2 takes this and applies final_layer_norm)",
            "<name>.pooler_output": "F32 [1,32], last_hidden_state at the first eos (id 49407) position",
        },
    })


@torch.no_grad()
def vae_goldens(pipe, out):
    vae = pipe.vae
    latent = randn((1, 4, 8, 8), 7)
    decoded = vae.decode(latent).sample
    image = torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(8), dtype=F32) * 2 - 1
    dist = vae.encode(image).latent_dist
    save(out, {
        "decode.latent": latent, "decode.sample": decoded,
        "encode.image": image, "encode.mean": dist.mean, "encode.logvar": dist.logvar,
    }, {
        "model": "Fixtures/tiny-sd1/diffusers/vae (AutoencoderKL, fp32)",
        "tensors": {
            "decode.latent": "F32 [1,4,8,8] = torch.randn((1,4,8,8), generator=torch.Generator().manual_seed(7))",
            "decode.sample": "F32 [1,3,64,64] = vae.decode(decode.latent).sample. No scaling: the latent is NOT divided by scaling_factor 0.18215 first, and the output is NOT mapped from [-1,1] to [0,1]",
            "encode.image": "F32 [1,3,64,64] = torch.rand((1,3,64,64), generator=torch.Generator().manual_seed(8)) * 2 - 1",
            "encode.mean": "F32 [1,4,8,8] = vae.encode(encode.image).latent_dist.mean (not multiplied by scaling_factor)",
            "encode.logvar": "F32 [1,4,8,8] = vae.encode(encode.image).latent_dist.logvar (diffusers clamps it to [-30, 20])",
        },
    })


@torch.no_grad()
def unet_goldens(pipe, out):
    unet = pipe.unet
    sample = randn((2, 4, 8, 8), 11)
    ehs = randn((2, 77, 32), 12)
    tensors = {"sample": sample, "encoder_hidden_states": ehs}
    for t in (999, 500):
        tensors[f"t{t}.timestep"] = torch.tensor([t], dtype=torch.int64)
        tensors[f"t{t}.out"] = unet(sample, torch.tensor(t, dtype=torch.int64), encoder_hidden_states=ehs).sample
    save(out, tensors, {
        "model": "Fixtures/tiny-sd1/diffusers/unet (UNet2DConditionModel, fp32)",
        "tensors": {
            "sample": "F32 [2,4,8,8] = torch.randn((2,4,8,8), generator=torch.Generator().manual_seed(11))",
            "encoder_hidden_states": "F32 [2,77,32] = torch.randn((2,77,32), generator=torch.Generator().manual_seed(12))",
            "t999.timestep / t500.timestep": "I64 [1], the timestep (the same scalar for both batch items)",
            "t999.out / t500.out": "F32 [2,4,8,8] = unet(sample, t, encoder_hidden_states).sample",
        },
    })


def randn_goldens(out):
    tensors = {}
    for s in (0, 42, 1234):
        tensors[f"seed{s}.shape_1x4x8x8"] = randn((1, 4, 8, 8), s)
    tensors["seed42.shape_1x4x64x64"] = randn((1, 4, 64, 64), 42)
    # torch's CPU normal_ takes a different code path below 16 elements and handles a tail
    # when the count is not a multiple of 16; cover those too.
    for n in (1, 7, 15, 16, 17, 33):
        tensors[f"seed42.shape_{n}"] = randn((n,), 42)
    two = torch.Generator().manual_seed(42)
    tensors["seed42.two_draws.first_1x4x8x8"] = torch.randn((1, 4, 8, 8), generator=two)
    tensors["seed42.two_draws.second_1x4x8x8"] = torch.randn((1, 4, 8, 8), generator=two)
    save(out, tensors, {
        "what": "torch.randn(shape, generator=torch.Generator().manual_seed(S)) on CPU, float32",
        "torch": torch.__version__,
        "tensors": {
            "seed<S>.shape_<dims>": "one draw from a fresh generator seeded with S",
            "seed42.two_draws.first_1x4x8x8 / second_1x4x8x8": "two consecutive draws from one generator seeded 42 (the generator state carries over)",
        },
    })


def sd1_scheduler(kind):
    from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                           EulerDiscreteScheduler, PNDMScheduler)
    cfg = dict(common.SD1_SCHEDULER_CONFIG)
    if kind == "pndm":
        return PNDMScheduler.from_config(cfg)
    if kind == "ddim":
        return DDIMScheduler.from_config(cfg)
    if kind == "euler":
        return EulerDiscreteScheduler.from_config(cfg)
    if kind == "euler_ancestral":
        return EulerAncestralDiscreteScheduler.from_config(cfg)
    if kind == "dpmpp_2m":
        return DPMSolverMultistepScheduler.from_config(cfg, algorithm_type="dpmsolver++", solver_order=2)
    raise ValueError(kind)


@torch.no_grad()
def pipeline_goldens(pipe, out_dir):
    init_latents = randn((1, 4, 8, 8), PIPE_LATENT_SEED)
    # The prompt embeddings the pipeline builds (negative first, as classifier-free guidance batches them).
    ids = pipe.tokenizer([PIPE_PROMPT, ""], padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids
    emb = pipe.text_encoder(ids).last_hidden_state
    for kind in ("pndm", "ddim", "euler", "euler_ancestral", "dpmpp_2m"):
        pipe.scheduler = sd1_scheduler(kind)
        steps = []

        def on_step_end(p, i, t, kwargs):
            steps.append((i, float(t), kwargs["latents"].detach().clone()))
            return kwargs

        result = pipe(PIPE_PROMPT, negative_prompt="", guidance_scale=PIPE_GUIDANCE, height=64, width=64,
                      num_inference_steps=PIPE_STEPS, latents=init_latents.clone(),
                      generator=torch.Generator().manual_seed(PIPE_GENERATOR_SEED),
                      output_type="np", callback_on_step_end=on_step_end,
                      callback_on_step_end_tensor_inputs=["latents"])
        image = torch.from_numpy(result.images[0]).to(F32)
        assert image.shape == (64, 64, 3)
        timesteps = pipe.scheduler.timesteps.to(F32)
        assert len(steps) == len(timesteps), (len(steps), len(timesteps))
        tensors = {
            "init_latents": init_latents,
            "prompt_ids": ids[0:1].to(torch.int64),
            "negative_prompt_ids": ids[1:2].to(torch.int64),
            "prompt_embeds": emb[0:1],
            "negative_prompt_embeds": emb[1:2],
            "timesteps": timesteps,
            "image": image,
        }
        if hasattr(pipe.scheduler, "sigmas") and pipe.scheduler.sigmas is not None and kind != "ddim":
            tensors["sigmas"] = torch.as_tensor(pipe.scheduler.sigmas).to(F32)
        for i, _, lat in steps:
            tensors[f"step{i}.latents"] = lat
        save(os.path.join(out_dir, f"{kind}.safetensors"), tensors, {
            "pipeline": "StableDiffusionPipeline on Fixtures/tiny-sd1/diffusers, fp32, CPU",
            "scheduler": type(pipe.scheduler).__name__,
            "scheduler_config": {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")},
            "call": {
                "prompt": PIPE_PROMPT, "negative_prompt": "", "guidance_scale": PIPE_GUIDANCE,
                "height": 64, "width": 64, "num_inference_steps": PIPE_STEPS,
                "latents": "init_latents", "generator": f"torch.Generator().manual_seed({PIPE_GENERATOR_SEED})",
                "output_type": "np",
            },
            "tensors": {
                "init_latents": f"F32 [1,4,8,8] = torch.randn((1,4,8,8), generator=torch.Generator().manual_seed({PIPE_LATENT_SEED})), passed as latents=; the pipeline multiplies it by scheduler.init_noise_sigma ({float(pipe.scheduler.init_noise_sigma)!r})",
                "prompt_ids / negative_prompt_ids": "I64 [1,77] token ids of the prompt and of the empty negative prompt",
                "prompt_embeds / negative_prompt_embeds": "F32 [1,77,32] text encoder last_hidden_state for them (CFG batch is [negative, prompt])",
                "timesteps": "F32 [N] scheduler.timesteps after set_timesteps(6) (PNDM with skip_prk_steps runs 7 UNet calls)",
                "sigmas": "F32 [N+1] scheduler.sigmas (Euler, Euler a, DPM++ only)",
                "step<i>.latents": "F32 [1,4,8,8] latents after scheduler.step of loop iteration i (from callback_on_step_end)",
                "image": "F32 [64,64,3] final image in [0,1] (output_type='np'): vae.decode(latents / 0.18215), then (x/2+0.5).clamp(0,1)",
            },
            "randomness": "Euler ancestral draws its per-step noise from the generator (randn_tensor of shape [1,4,8,8] each step); the others do not use it because latents are given",
            "step_timesteps": [t for _, t, _ in steps],
        })


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=common.GOLDEN)
    ap.add_argument("--model", default=common.TINY_DIFFUSERS)
    args = ap.parse_args()
    torch.set_num_threads(1)  # reproducible float reductions
    torch.use_deterministic_algorithms(True)
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as dlog
    dlog.disable_progress_bar()

    pipe = StableDiffusionPipeline.from_pretrained(args.model, safety_checker=None, requires_safety_checker=False,
                                                   dtype=F32)
    pipe.set_progress_bar_config(disable=True)
    os.makedirs(args.out, exist_ok=True)

    tok_dir = os.path.join(args.model, "tokenizer")
    tok = clip_bpe.make_clip_tokenizer(tok_dir)
    tok_pad0 = clip_bpe.make_clip_tokenizer(tok_dir, pad_token="!")
    assert tok_pad0.pad_token_id == 0
    # the pipeline's own tokenizer (loaded from the folder) must agree with the one built here
    for _, p in TOKENIZER_PROMPTS:
        a = pipe.tokenizer(p, padding="max_length", max_length=77, truncation=True).input_ids
        b = tok(p, padding="max_length", max_length=77, truncation=True).input_ids
        assert list(a) == list(b), p
    tokenizer_cases(tok, tok_pad0, os.path.join(args.out, "tokenizer_cases.json"))
    text_encoder_goldens(pipe, os.path.join(args.out, "text_encoder.safetensors"))
    vae_goldens(pipe, os.path.join(args.out, "vae.safetensors"))
    unet_goldens(pipe, os.path.join(args.out, "unet.safetensors"))
    randn_goldens(os.path.join(args.out, "randn.safetensors"))
    pipeline_goldens(pipe, os.path.join(args.out, "pipelines"))


if __name__ == "__main__":
    sys.exit(main())
