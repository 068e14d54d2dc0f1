#!/usr/bin/env python3
"""Golden outputs of the tiny SD 2.x and SDXL models, and of scheduler options, for WeightPack's
engine tests (the parity that make_goldens.py, SD 1.x only, does not cover).

Writes, under Fixtures/golden/:
  sd2/text_encoder.safetensors       ids -> last_hidden_state (what StableDiffusionPipeline feeds the
                                     UNet for SD 2.x), hidden_states[-2], pooler_output
  sd2/unet.safetensors               one UNet forward (batch 2) at t=999 and t=500
  sd2/pipelines/<scheduler>.safetensors  6-step v-prediction runs (PNDM, DDIM, Euler, Euler a,
                                     DPM++ 2M), latents after every step and the decoded image
  sdxl/text_encoders.safetensors     StableDiffusionXLPipeline.encode_prompt: both encoders'
                                     penultimate states concatenated, encoder 2's pooled projection,
                                     for the prompt and for an explicit negative prompt
  sdxl/unet.safetensors              one UNet forward (batch 2) with added_cond_kwargs
                                     (text_embeds, time_ids with non-default micro-conditioning)
  sdxl/pipelines/euler.safetensors   a 6-step Euler run (force_zeros_for_empty_prompt: no negative
                                     prompt), the UNet's added conditions, latents, image
  schedulers/timesteps.safetensors   timesteps / sigmas / init_noise_sigma of 19 scheduler
                                     configurations x 5 step counts, from set_timesteps alone
  schedulers/<variant>.safetensors   6-step runs on the tiny SD 1.x model with Karras sigmas and
                                     the trailing / linspace spacings

Every file's __metadata__ holds "description" (JSON: how each tensor was made, the scheduler
configuration, this script's name and the library versions). Run after make_tiny_sd1.py,
make_tiny_sd2_sdxl.py (the models) and from the fixture venv (requirements.txt).
"""

import argparse
import os
import sys

import common  # sets offline env vars first

import torch

import make_goldens as sd1

F32 = torch.float32
I64 = torch.int64

SD2_DIFFUSERS = os.path.join(common.FIXTURES, "tiny-sd2", "diffusers")
SDXL_DIFFUSERS = os.path.join(common.FIXTURES, "tiny-sdxl", "diffusers")

PROMPT = sd1.PIPE_PROMPT
STEPS = sd1.PIPE_STEPS
GUIDANCE = sd1.PIPE_GUIDANCE
LATENT_SEED = sd1.PIPE_LATENT_SEED
GENERATOR_SEED = sd1.PIPE_GENERATOR_SEED
SDXL_NEGATIVE = "blurry, low quality"


def versions():
    import diffusers
    import numpy
    import safetensors
    import transformers
    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "safetensors": safetensors.__version__, "numpy": numpy.__version__}


def save(path, tensors, meta):
    """make_goldens.save plus this script's name and the library versions in the description."""
    meta = dict(meta)
    meta["generator"] = "Fixtures/generate/make_engine_goldens.py"
    meta["versions"] = versions()
    meta["threads"] = "torch.set_num_threads(1), torch.use_deterministic_algorithms(True), CPU, fp32"
    sd1.save(path, tensors, meta)


def randn(shape, seed):
    return sd1.randn(shape, seed)


def plain_config(scheduler):
    return {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}


def run_pipeline(pipe, call, capture_unet=False):
    """Runs pipe(**call) and returns (steps, image, first UNet call's kwargs or None)."""
    steps, captured = [], {}

    def on_step_end(p, i, t, kwargs):
        steps.append((i, float(t), kwargs["latents"].detach().clone()))
        return kwargs

    handle = None
    if capture_unet:
        def hook(module, args, kwargs):
            if not captured:
                captured["sample"] = (args[0] if args else kwargs["sample"]).detach().clone()
                captured["timestep"] = args[1] if len(args) > 1 else kwargs["timestep"]
                captured["encoder_hidden_states"] = kwargs["encoder_hidden_states"].detach().clone()
                added = kwargs.get("added_cond_kwargs") or {}
                captured.update({k: v.detach().clone() for k, v in added.items()})
        handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        result = pipe(**call, callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"])
    finally:
        if handle is not None:
            handle.remove()
    image = torch.from_numpy(result.images[0]).to(F32)
    assert len(steps) == len(pipe.scheduler.timesteps), (len(steps), len(pipe.scheduler.timesteps))
    return steps, image, captured or None


def step_tensors(steps):
    return {f"step{i}.latents": lat for i, _, lat in steps}


# ---------------------------------------------------------------------------------------------
# SD 2.x
# ---------------------------------------------------------------------------------------------

SD2_TEXT_PROMPTS = [("pipeline_prompt", PROMPT), ("empty", ""), ("pad_token_in_prompt", "Hello!!! a cat")]


@torch.no_grad()
def sd2_goldens(out_dir):
    from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                           EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline)
    pipe = StableDiffusionPipeline.from_pretrained(SD2_DIFFUSERS, variant="fp16", dtype=F32, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.dtype == F32 and pipe.text_encoder.dtype == F32 and pipe.vae.dtype == F32
    assert pipe.tokenizer.pad_token_id == 0, pipe.tokenizer.pad_token_id
    assert pipe.vae_scale_factor == 2, pipe.vae_scale_factor
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor  # the pipeline's default: 16 px
    model_note = ("Fixtures/tiny-sd2/diffusers, loaded with variant='fp16', dtype=torch.float32 (the fp16 weights "
                  "widened exactly to fp32)")

    # Text encoder: SD 2.x's StableDiffusionPipeline feeds last_hidden_state (final_layer_norm
    # applied) of diffusers' text encoder, which already lacks OpenCLIP's last layer.
    te = pipe.text_encoder
    tensors, prompts = {}, {}
    for name, prompt in SD2_TEXT_PROMPTS:
        ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids.to(I64)
        o = te(ids, output_hidden_states=True)
        assert len(o.hidden_states) == te.config.num_hidden_layers + 1
        embeds, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
        assert torch.equal(embeds, o.last_hidden_state), "encode_prompt is not last_hidden_state"
        tensors[f"{name}.input_ids"] = ids
        tensors[f"{name}.last_hidden_state"] = o.last_hidden_state
        if name == "pipeline_prompt":
            tensors[f"{name}.penultimate_hidden_state"] = o.hidden_states[-2]
            tensors[f"{name}.pooler_output"] = o.pooler_output
        prompts[name] = prompt
    save(os.path.join(out_dir, "text_encoder.safetensors"), tensors, {
        "model": model_note + "; text_encoder is CLIPTextModel (gelu, 3 layers, hidden 32)",
        "prompts": prompts,
        "tokenizer": "Fixtures/tiny-sd2/diffusers/tokenizer: 514 tokens (byte symbols, no merges), pad_token '!' = id 0 (a special token: every '!' in a prompt becomes id 0)",
        "tensors": {
            "<name>.input_ids": "I64 [1,77] = tokenizer(prompt, padding='max_length', max_length=77, truncation=True)",
            "<name>.last_hidden_state": "F32 [1,77,32] = text_encoder(ids).last_hidden_state: what StableDiffusionPipeline.encode_prompt returns for SD 2.x (checked equal); no attention mask",
            "pipeline_prompt.penultimate_hidden_state": "F32 [1,77,32] = hidden_states[-2], before final_layer_norm (pipeline prompt only)",
            "pipeline_prompt.pooler_output": "F32 [1,32] = last_hidden_state at the first eos (id 513) (pipeline prompt only)",
        },
    })

    # One UNet pass.
    sample = randn((2, 4, 8, 8), 21)
    ehs = randn((2, 77, 32), 22)
    tensors = {"sample": sample, "encoder_hidden_states": ehs}
    for t in (999, 500):
        tensors[f"t{t}.timestep"] = torch.tensor([t], dtype=I64)
        tensors[f"t{t}.out"] = pipe.unet(sample, torch.tensor(t, dtype=I64), encoder_hidden_states=ehs).sample
    save(os.path.join(out_dir, "unet.safetensors"), tensors, {
        "model": model_note + "; unet: linear proj_in/proj_out, attention_head_dim (heads per level) [2,2,4,4], one resnet per level",
        "unet_config": {k: v for k, v in dict(pipe.unet.config).items() if not k.startswith("_")},
        "tensors": {
            "sample": "F32 [2,4,8,8] = torch.randn((2,4,8,8), generator=torch.Generator().manual_seed(21))",
            "encoder_hidden_states": "F32 [2,77,32] = torch.randn((2,77,32), generator=torch.Generator().manual_seed(22))",
            "t999.timestep / t500.timestep": "I64 [1], the same timestep for both batch items",
            "t999.out / t500.out": "F32 [2,4,8,8] = unet(sample, t, encoder_hidden_states).sample (a v prediction for this model)",
        },
    })

    # 6-step pipelines, v-prediction, from the folder's scheduler configuration.
    folder_config = dict(pipe.scheduler.config)
    assert folder_config["prediction_type"] == "v_prediction"
    init_latents = randn((1, 4, 8, 8), LATENT_SEED)
    ids = pipe.tokenizer([PROMPT, ""], padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids.to(I64)
    for kind, cls in (("pndm", PNDMScheduler), ("ddim", DDIMScheduler), ("euler", EulerDiscreteScheduler),
                      ("euler_ancestral", EulerAncestralDiscreteScheduler), ("dpmpp_2m", DPMSolverMultistepScheduler)):
        pipe.scheduler = cls.from_config(folder_config)
        assert pipe.scheduler.config.prediction_type == "v_prediction"
        call = dict(prompt=PROMPT, negative_prompt="", guidance_scale=GUIDANCE, height=size, width=size,
                    num_inference_steps=STEPS, latents=init_latents.clone(),
                    generator=torch.Generator().manual_seed(GENERATOR_SEED), output_type="np")
        steps, image, _ = run_pipeline(pipe, call)
        assert image.shape == (size, size, 3)
        tensors = {"init_latents": init_latents, "prompt_ids": ids[0:1], "negative_prompt_ids": ids[1:2],
                   "timesteps": pipe.scheduler.timesteps.to(F32), "image": image, **step_tensors(steps)}
        if kind in ("euler", "euler_ancestral", "dpmpp_2m"):
            tensors["sigmas"] = pipe.scheduler.sigmas.to(F32)
        save(os.path.join(out_dir, "pipelines", f"{kind}.safetensors"), tensors, {
            "pipeline": "StableDiffusionPipeline on " + model_note,
            "scheduler": type(pipe.scheduler).__name__,
            "scheduler_config": plain_config(pipe.scheduler),
            "scheduler_made_by": f"{type(pipe.scheduler).__name__}.from_config(<the folder's scheduler_config.json>) (PNDMScheduler, v_prediction, leading spacing, steps_offset 1); DPMSolverMultistepScheduler takes its defaults algorithm_type 'dpmsolver++', solver_order 2",
            "randomness": "Euler ancestral draws its per-step noise from the generator; the others do not use it because latents are given",
            "call": {"prompt": PROMPT, "negative_prompt": "", "guidance_scale": GUIDANCE, "height": size, "width": size,
                     "num_inference_steps": STEPS, "latents": "init_latents",
                     "generator": f"torch.Generator().manual_seed({GENERATOR_SEED})", "output_type": "np"},
            "tensors": {
                "init_latents": f"F32 [1,4,8,8] = torch.randn((1,4,8,8), generator=torch.Generator().manual_seed({LATENT_SEED})), passed as latents= (multiplied by init_noise_sigma {float(pipe.scheduler.init_noise_sigma)!r})",
                "prompt_ids / negative_prompt_ids": "I64 [1,77] token ids (pad '!' = 0); their embeddings are pipeline_prompt / empty .last_hidden_state in sd2/text_encoder.safetensors",
                "timesteps": "F32 [N] scheduler.timesteps (PNDM: 7 UNet calls)",
                "sigmas": "F32 [7] scheduler.sigmas (Euler, Euler a, DPM++ 2M)",
                "step<i>.latents": "F32 [1,4,8,8] latents after scheduler.step of loop iteration i (callback_on_step_end)",
                "image": f"F32 [{size},{size},3] in [0,1]: vae.decode(latents / 0.18215), (x/2+0.5).clamp(0,1) (output_type='np'); the tiny VAE has 2 levels, so 8x8 latents give {size}x{size} pixels",
            },
            "step_timesteps": [t for _, t, _ in steps],
        })


# ---------------------------------------------------------------------------------------------
# SDXL
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def sdxl_goldens(out_dir):
    from diffusers import StableDiffusionXLPipeline
    pipe = StableDiffusionXLPipeline.from_pretrained(SDXL_DIFFUSERS, dtype=F32, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.force_zeros_for_empty_prompt
    assert pipe.vae.config.scaling_factor == 0.13025
    assert pipe.tokenizer_2.pad_token_id == 0 and pipe.tokenizer.pad_token_id == 513
    size = pipe.default_sample_size * pipe.vae_scale_factor  # 16 px
    model_note = "Fixtures/tiny-sdxl/diffusers (fp32 weights), dtype=torch.float32"

    def ids_of(tokenizer, text):
        return tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids.to(I64)

    # encode_prompt with and without a negative prompt.
    pe, npe_zero, pooled, npooled_zero = pipe.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1,
                                                            do_classifier_free_guidance=True, negative_prompt=None)
    assert torch.count_nonzero(npe_zero) == 0 and torch.count_nonzero(npooled_zero) == 0
    pe2, npe, pooled2, npooled = pipe.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1,
                                                    do_classifier_free_guidance=True, negative_prompt=SDXL_NEGATIVE)
    assert torch.equal(pe, pe2) and torch.equal(pooled, pooled2)
    # The same by hand: penultimate hidden states side by side, text_embeds of encoder 2.
    ids1, ids2 = ids_of(pipe.tokenizer, PROMPT), ids_of(pipe.tokenizer_2, PROMPT)
    h1 = pipe.text_encoder(ids1, output_hidden_states=True).hidden_states[-2]
    o2 = pipe.text_encoder_2(ids2, output_hidden_states=True)
    assert torch.equal(torch.cat([h1, o2.hidden_states[-2]], dim=-1), pe)
    assert torch.equal(o2.text_embeds, pooled)
    # Configurations written before transformers PR 24773 say eos_token_id 2 (SDXL base's published
    # text_encoder_2/config.json does); transformers then pools at input_ids.argmax(-1). With CLIP
    # token ids that is the first end token too: the goldens hold for such configurations.
    te2 = pipe.text_encoder_2.text_model
    assert te2.eos_token_id == 513
    te2.eos_token_id = 2
    try:
        for text in (PROMPT, SDXL_NEGATIVE, ""):
            ids = ids_of(pipe.tokenizer_2, text)
            legacy = pipe.text_encoder_2(ids).text_embeds
            te2.eos_token_id = 513
            assert torch.equal(legacy, pipe.text_encoder_2(ids).text_embeds), text
            te2.eos_token_id = 2
    finally:
        te2.eos_token_id = 513
    _, npe_empty, _, npooled_empty = pipe.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1,
                                                        do_classifier_free_guidance=True, negative_prompt="")
    assert torch.count_nonzero(npe_empty) > 0  # negative_prompt="" is encoded; only None is zeroed
    tensors = {
        "prompt_ids": ids1, "prompt_ids_2": ids2,
        "negative_prompt_ids": ids_of(pipe.tokenizer, SDXL_NEGATIVE), "negative_prompt_ids_2": ids_of(pipe.tokenizer_2, SDXL_NEGATIVE),
        "prompt_embeds": pe, "pooled_prompt_embeds": pooled,
        "negative_prompt_embeds": npe, "negative_pooled_prompt_embeds": npooled,
    }
    save(os.path.join(out_dir, "text_encoders.safetensors"), tensors, {
        "model": model_note + "; text_encoder: CLIPTextModel (quick_gelu, 3 layers, 32), text_encoder_2: CLIPTextModelWithProjection (gelu, 3 layers, 32, projection 32)",
        "prompt": PROMPT, "negative_prompt": SDXL_NEGATIVE,
        "tokenizers": "tokenizer pads with <|endoftext|> (513), tokenizer_2 with '!' (0); 514-token vocabularies without merges",
        "call": "pipe.encode_prompt(prompt, device='cpu', num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=...)",
        "tensors": {
            "prompt_ids / negative_prompt_ids": "I64 [1,77] tokenizer (text_encoder) ids",
            "prompt_ids_2 / negative_prompt_ids_2": "I64 [1,77] tokenizer_2 (text_encoder_2) ids",
            "prompt_embeds": "F32 [1,77,64] = cat(text_encoder(ids).hidden_states[-2], text_encoder_2(ids_2).hidden_states[-2], dim=-1) (penultimate layers, no final_layer_norm; checked equal)",
            "pooled_prompt_embeds": "F32 [1,32] = text_encoder_2(ids_2).text_embeds: final_layer_norm(last layer) at the first eos, times text_projection (checked equal)",
            "negative_prompt_embeds / negative_pooled_prompt_embeds": f"the same for negative_prompt={SDXL_NEGATIVE!r}",
        },
        "legacy_eos_token_id": "checked: with text_encoder_2's eos_token_id set to 2 (as in SDXL base's published config; transformers then pools at input_ids.argmax(-1)) the pooled projections of the prompt, the negative prompt and '' are unchanged",
        "force_zeros_for_empty_prompt": "model_index.json sets it: with negative_prompt=None encode_prompt returns all-zero negative_prompt_embeds [1,77,64] and negative_pooled_prompt_embeds [1,32] (checked, not stored). With negative_prompt='' diffusers encodes the empty string instead (checked non-zero); WeightPack's empty negative prompt stands for None.",
    })

    # One UNet pass with added conditions; row 1 has non-default micro-conditioning.
    sample = randn((2, 4, 8, 8), 31)
    ehs = randn((2, 77, 64), 32)
    text_embeds = randn((2, 32), 33)
    time_ids = torch.tensor([[16, 16, 0, 0, 16, 16], [1024, 768, 32, 16, 512, 640]], dtype=F32)
    tensors = {"sample": sample, "encoder_hidden_states": ehs, "text_embeds": text_embeds, "time_ids": time_ids}
    for t in (999, 500):
        tensors[f"t{t}.timestep"] = torch.tensor([t], dtype=I64)
        tensors[f"t{t}.out"] = pipe.unet(sample, torch.tensor(t, dtype=I64), encoder_hidden_states=ehs,
                                         added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}).sample
    save(os.path.join(out_dir, "unet.safetensors"), tensors, {
        "model": model_note + "; unet: 3 levels (DownBlock2D first), attention_head_dim [2,2,4], transformer_layers_per_block [1,1,2], addition_embed_type text_time (addition_time_embed_dim 8, projection_class_embeddings_input_dim 80 = 32 + 6 x 8)",
        "unet_config": {k: v for k, v in dict(pipe.unet.config).items() if not k.startswith("_")},
        "tensors": {
            "sample": "F32 [2,4,8,8] = torch.randn((2,4,8,8), generator=torch.Generator().manual_seed(31))",
            "encoder_hidden_states": "F32 [2,77,64] = torch.randn((2,77,64), generator=torch.Generator().manual_seed(32))",
            "text_embeds": "F32 [2,32] = torch.randn((2,32), generator=torch.Generator().manual_seed(33))",
            "time_ids": "F32 [2,6] (original h, w, crop top, left, target h, w): row 0 the pipeline's default for 16 px, row 1 (1024, 768, 32, 16, 512, 640)",
            "t999.timestep / t500.timestep": "I64 [1]",
            "t999.out / t500.out": "F32 [2,4,8,8] = unet(sample, t, encoder_hidden_states, added_cond_kwargs={'text_embeds', 'time_ids'}).sample",
        },
    })

    # 6-step Euler from the folder's scheduler (leading spacing, steps_offset 1), no negative prompt.
    init_latents = randn((1, 4, 8, 8), LATENT_SEED)
    call = dict(prompt=PROMPT, guidance_scale=GUIDANCE, height=size, width=size, num_inference_steps=STEPS,
                latents=init_latents.clone(), generator=torch.Generator().manual_seed(GENERATOR_SEED), output_type="np")
    steps, image, unet_in = run_pipeline(pipe, call, capture_unet=True)
    assert image.shape == (size, size, 3)
    assert torch.equal(unet_in["encoder_hidden_states"], torch.cat([torch.zeros_like(pe), pe]))
    assert torch.equal(unet_in["text_embeds"], torch.cat([torch.zeros_like(pooled), pooled]))
    expected_ids = torch.tensor([[size, size, 0, 0, size, size]] * 2, dtype=F32)
    assert torch.equal(unet_in["time_ids"], expected_ids), unet_in["time_ids"]
    tensors = {"init_latents": init_latents, "timesteps": pipe.scheduler.timesteps.to(F32),
               "sigmas": pipe.scheduler.sigmas.to(F32), "image": image,
               "unet_input.text_embeds": unet_in["text_embeds"], "unet_input.time_ids": unet_in["time_ids"],
               "unet_input.sample": unet_in["sample"], **step_tensors(steps)}
    save(os.path.join(out_dir, "pipelines", "euler.safetensors"), tensors, {
        "pipeline": "StableDiffusionXLPipeline on " + model_note + ", add_watermarker=False",
        "scheduler": type(pipe.scheduler).__name__,
        "scheduler_config": plain_config(pipe.scheduler),
        "call": {"prompt": PROMPT, "negative_prompt": None, "guidance_scale": GUIDANCE, "height": size, "width": size,
                 "num_inference_steps": STEPS, "latents": "init_latents",
                 "generator": f"torch.Generator().manual_seed({GENERATOR_SEED})", "output_type": "np",
                 "original_size / crops_coords_top_left / target_size": "defaults: (16, 16), (0, 0), (16, 16)"},
        "tensors": {
            "init_latents": f"F32 [1,4,8,8] = torch.randn((1,4,8,8), generator=torch.Generator().manual_seed({LATENT_SEED})), passed as latents= (multiplied by init_noise_sigma {float(pipe.scheduler.init_noise_sigma)!r})",
            "timesteps / sigmas": "F32 [6] / [7] scheduler.timesteps and sigmas",
            "unet_input.*": "captured from the first UNet call (forward pre-hook): sample [2,4,8,8] (latents scaled by scale_model_input), text_embeds [2,32] = cat(zeros, pooled_prompt_embeds), time_ids [2,6]. Its encoder_hidden_states was checked equal to cat(zeros [1,77,64], prompt_embeds of sdxl/text_encoders.safetensors) and is not stored",
            "step<i>.latents": "F32 [1,4,8,8] latents after scheduler.step of loop iteration i",
            "image": f"F32 [{size},{size},3] in [0,1]: vae.decode(latents / 0.13025), (x/2+0.5).clamp(0,1)",
        },
        "step_timesteps": [t for _, t, _ in steps],
    })


# ---------------------------------------------------------------------------------------------
# Scheduler options (SD 1.x configuration)
# ---------------------------------------------------------------------------------------------

# name -> (class name, overrides of SD1_SCHEDULER_CONFIG)
SCHEDULER_TABLE = [
    ("ddim.leading", "DDIMScheduler", {}),
    ("ddim.linspace", "DDIMScheduler", {"timestep_spacing": "linspace"}),
    ("ddim.trailing", "DDIMScheduler", {"timestep_spacing": "trailing"}),
    ("pndm.leading", "PNDMScheduler", {}),
    ("pndm.linspace", "PNDMScheduler", {"timestep_spacing": "linspace"}),
    ("pndm.trailing", "PNDMScheduler", {"timestep_spacing": "trailing"}),
    ("euler.leading", "EulerDiscreteScheduler", {"timestep_spacing": "leading"}),
    ("euler.linspace", "EulerDiscreteScheduler", {}),
    ("euler.trailing", "EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    ("euler.karras_leading", "EulerDiscreteScheduler", {"timestep_spacing": "leading", "use_karras_sigmas": True}),
    ("euler.karras_linspace", "EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    ("euler.karras_trailing", "EulerDiscreteScheduler", {"timestep_spacing": "trailing", "use_karras_sigmas": True}),
    ("euler_ancestral.leading", "EulerAncestralDiscreteScheduler", {"timestep_spacing": "leading"}),
    ("euler_ancestral.linspace", "EulerAncestralDiscreteScheduler", {}),
    ("euler_ancestral.trailing", "EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}),
    ("dpmpp_2m.leading", "DPMSolverMultistepScheduler", {"timestep_spacing": "leading"}),
    ("dpmpp_2m.linspace", "DPMSolverMultistepScheduler", {}),
    ("dpmpp_2m.trailing", "DPMSolverMultistepScheduler", {"timestep_spacing": "trailing"}),
    ("dpmpp_2m.karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
]
TABLE_STEPS = (1, 6, 7, 25, 50)

# 6-step runs on the tiny SD 1.x model: file name, table entry, whether the 64x64 image is stored
# (48 KiB each: only for the Karras runs; the spacing variants keep their per-step latents, which
# the image is a fixed function of, to keep the goldens small).
PIPELINE_VARIANTS = [
    ("dpmpp_2m_karras", "dpmpp_2m.karras", True),
    ("euler_karras", "euler.karras_linspace", True),
    ("euler_trailing", "euler.trailing", False),
    ("ddim_linspace", "ddim.linspace", False),
    ("ddim_trailing", "ddim.trailing", False),
    ("pndm_linspace", "pndm.linspace", False),
    ("pndm_trailing", "pndm.trailing", False),
]


def make_scheduler(name):
    import diffusers
    entry = {n: (c, o) for n, c, o in SCHEDULER_TABLE}[name]
    cls_name, overrides = entry
    cfg = dict(common.SD1_SCHEDULER_CONFIG, **overrides)
    extra = {"algorithm_type": "dpmsolver++", "solver_order": 2} if cls_name == "DPMSolverMultistepScheduler" else {}
    return getattr(diffusers, cls_name).from_config(cfg, **extra)


def scheduler_table_goldens(out):
    tensors, cases = {}, {}
    for name, cls_name, overrides in SCHEDULER_TABLE:
        cfg = None
        for n in TABLE_STEPS:
            s = make_scheduler(name)
            s.set_timesteps(n)
            cfg = plain_config(s)
            key = f"{name}.s{n}"
            tensors[key + ".timesteps"] = s.timesteps.to(F32)
            if getattr(s, "sigmas", None) is not None and cls_name != "DDIMScheduler" and cls_name != "PNDMScheduler":
                tensors[key + ".sigmas"] = torch.as_tensor(s.sigmas).to(F32)
            tensors[key + ".init_noise_sigma"] = torch.tensor([float(s.init_noise_sigma)], dtype=F32)
        cases[name] = {"class": cls_name, "overrides": overrides, "scheduler_config": cfg}
    save(out, tensors, {
        "what": "scheduler.set_timesteps(n) for each configuration and n; no model involved",
        "base_config": common.SD1_SCHEDULER_CONFIG,
        "made_by": "<class>.from_config(dict(base_config, **overrides)); DPMSolverMultistepScheduler also gets algorithm_type='dpmsolver++', solver_order=2",
        "steps": list(TABLE_STEPS),
        "cases": cases,
        "tensors": {
            "<case>.s<n>.timesteps": "F32 [N] scheduler.timesteps (I64 for DDIM/PNDM/DPM, converted exactly); PNDM has n+1 (PLMS repeats one)",
            "<case>.s<n>.sigmas": "F32 [n+1] scheduler.sigmas (Euler, Euler a, DPM++ 2M)",
            "<case>.s<n>.init_noise_sigma": "F32 [1] scheduler.init_noise_sigma",
        },
    })


@torch.no_grad()
def scheduler_pipeline_goldens(out_dir):
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(common.TINY_DIFFUSERS, safety_checker=None,
                                                   requires_safety_checker=False, dtype=F32)
    pipe.set_progress_bar_config(disable=True)
    init_latents = randn((1, 4, 8, 8), LATENT_SEED)
    ids = pipe.tokenizer([PROMPT, ""], padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids.to(I64)
    for file, name, keep_image in PIPELINE_VARIANTS:
        pipe.scheduler = make_scheduler(name)
        call = dict(prompt=PROMPT, negative_prompt="", guidance_scale=GUIDANCE, height=64, width=64,
                    num_inference_steps=STEPS, latents=init_latents.clone(),
                    generator=torch.Generator().manual_seed(GENERATOR_SEED), output_type="np")
        steps, image, _ = run_pipeline(pipe, call)
        tensors = {"init_latents": init_latents, "prompt_ids": ids[0:1], "timesteps": pipe.scheduler.timesteps.to(F32),
                   **step_tensors(steps)}
        if keep_image:
            tensors["image"] = image
        if type(pipe.scheduler).__name__ not in ("DDIMScheduler", "PNDMScheduler"):
            tensors["sigmas"] = pipe.scheduler.sigmas.to(F32)
        save(os.path.join(out_dir, f"{file}.safetensors"), tensors, {
            "pipeline": "StableDiffusionPipeline on Fixtures/tiny-sd1/diffusers, fp32, CPU",
            "scheduler": type(pipe.scheduler).__name__,
            "table_case": name,
            "scheduler_config": plain_config(pipe.scheduler),
            "call": {"prompt": PROMPT, "negative_prompt": "", "guidance_scale": GUIDANCE, "height": 64, "width": 64,
                     "num_inference_steps": STEPS, "latents": "init_latents",
                     "generator": f"torch.Generator().manual_seed({GENERATOR_SEED})", "output_type": "np"},
            "tensors": {
                "init_latents": f"F32 [1,4,8,8] = torch.randn((1,4,8,8), generator=torch.Generator().manual_seed({LATENT_SEED})) (the same as golden/pipelines/*), multiplied by init_noise_sigma {float(pipe.scheduler.init_noise_sigma)!r}",
                "prompt_ids": "I64 [1,77]; the prompt and negative embeddings are those of golden/pipelines/*.safetensors",
                "timesteps / sigmas": "scheduler.timesteps (F32 [N]) and scheduler.sigmas (F32 [N+1], not for DDIM/PNDM)",
                "step<i>.latents": "F32 [1,4,8,8] latents after scheduler.step of loop iteration i",
                "image": "F32 [64,64,3] in [0,1]: vae.decode(latents / 0.18215), (x/2+0.5).clamp(0,1)" if keep_image
                         else "not stored (the Karras runs store theirs); the final image is vae.decode(last step latents / 0.18215)",
            },
            "step_timesteps": [t for _, t, _ in steps],
        })


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=common.GOLDEN)
    ap.add_argument("--only", choices=["sd2", "sdxl", "schedulers"], action="append")
    args = ap.parse_args()
    torch.set_num_threads(1)  # reproducible float reductions
    torch.use_deterministic_algorithms(True)
    from diffusers.utils import logging as dlog
    dlog.disable_progress_bar()
    only = set(args.only or ["sd2", "sdxl", "schedulers"])
    if "sd2" in only:
        sd2_goldens(os.path.join(args.out, "sd2"))
    if "sdxl" in only:
        sdxl_goldens(os.path.join(args.out, "sdxl"))
    if "schedulers" in only:
        scheduler_table_goldens(os.path.join(args.out, "schedulers", "timesteps.safetensors"))
        scheduler_pipeline_goldens(os.path.join(args.out, "schedulers"))


if __name__ == "__main__":
    sys.exit(main())
