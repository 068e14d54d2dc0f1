#!/usr/bin/env python3
"""Fine-tunes the tiny SD 1.x fixture on procedurally generated images so that its weights get
trained-like statistics (issue 14, item 5: random weights are not trained weights). NOT
committed: the model is made on demand, outside the repository.

  make_trained_tiny.py [--out DIR] [--images N] [--vae-steps N] [--vae-batch N] [--unet-steps N]
                       [--unet-batch N] [--seed N]
  make_trained_tiny.py --out DIR --measure-only WEIGHTPACK

Starts from Fixtures/tiny-sd1/diffusers (make_tiny_sd1.py), renders a synthetic dataset
(64 x 64 images of one coloured shape -- circle, square, triangle, horizontal or vertical
stripes -- at a named position on a plain or gradient background, captioned with its colours,
shape and position), then trains with AdamW, on the CPU in fp32 with one torch thread:

  1. the VAE as an autoencoder (L1 + MSE reconstruction + 1e-6 x KL), encoder and decoder;
     afterwards the latent scale is folded into quant_conv / post_quant_conv (an exact
     reparametrisation) so that latents times SD 1.x's scaling factor 0.18215 have unit
     standard deviation, as SD's VAE was scaled;
  2. the UNet (lr 1e-3) and the text encoder (lr 1e-4) with diffusers' standard objective: MSE
     between the UNet's output and the noise added at a uniformly drawn timestep of the DDPM
     schedule built from the fixture's scheduler configuration (epsilon prediction); 10 % of
     captions are dropped to "" so that classifier-free guidance has an unconditional branch.

Writes to DIR (default /tmp/wpbench/tiny-trained/; refused inside the repository):
  tiny-trained.safetensors  single-file LDM layout of tiny-sd1.safetensors (same names, shapes
                            and schedule buffers), F32; its metadata records how it was made;
                            converted back with diffusers' own converters and compared bit for
                            bit (make_tiny_sd1.verify_ldm)
  diffusers/                the same weights as a diffusers pipeline folder
  stats.json                per-tensor weight statistics before and after, the loss curves
  samples-before.png / samples-after.png
                            diffusers StableDiffusionPipeline (PNDM, 25 steps, guidance 7.5,
                            seed 0) on four dataset-style prompts (SAMPLE_PROMPTS), one row
                            each for the random fixture (before) and the trained model
                            (after); each 64 x 64 image is shown 4x
  dataset.png               the first 16 training images
  vae-reconstructions.png   the trained VAE's reconstructions of those 16 images

Known limit (Fixtures/README.md): the tiny VAE ends in GroupNorm(32 groups, 32 channels), a
per-channel normalisation that removes the absolute level carrying flat colours, so it learns
structure (shapes, stripes, gradients, positions) but not colour.

With --measure-only WEIGHTPACK nothing is trained: the random fixture and DIR's model are
converted with `WEIGHTPACK convert --dtype T` (T = q8_0, q4_k, q4_0, q2_k) and the per-tensor
SNR each conversion records (`inspect --json`) is summarised in DIR/tensor-snr.json.
"""

import argparse
import json
import math
import os
import shutil
import sys
import time

import common  # sets offline env vars first

import numpy as np
import torch

PINNED = ("torch", "diffusers", "transformers", "safetensors", "numpy")
COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40),
    "purple": (140, 50, 180), "orange": (240, 140, 30), "white": (245, 245, 245), "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "horizontal stripes", "vertical stripes")
POSITIONS = {"top left": (0.3, 0.3), "top right": (0.7, 0.3), "bottom left": (0.3, 0.7),
             "bottom right": (0.7, 0.7), "centre": (0.5, 0.5)}
SAMPLE_PROMPTS = ("a red circle at the top left on a blue background",
                  "a yellow square in the centre on a black background",
                  "green vertical stripes on a white background",
                  "a white triangle at the bottom right on a purple to orange gradient")


def fail(msg):
    raise SystemExit("make_trained_tiny: " + msg)


def check_pins():
    """The library versions must be requirements.txt's pins (the figures depend on them)."""
    from importlib.metadata import version
    pins = {}
    with open(os.path.join(common.HERE, "requirements.txt")) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if "==" in line:
                name, v = line.split("==")
                pins[name.strip().lower()] = v.strip()
    found = {}
    for name in PINNED:
        got = version(name)
        found[name] = got
        if got.split("+")[0] != pins[name]:
            fail(f"{name} {got} installed but requirements.txt pins {pins[name]}; use the fixture venv")
    return found


def render(rng, size):
    """One image (uint8 HxWx3) and its caption."""
    from PIL import Image, ImageDraw
    names = list(COLOURS)
    fg = names[rng.integers(len(names))]
    bg = names[rng.integers(len(names))]
    while bg == fg:
        bg = names[rng.integers(len(names))]
    gradient = rng.random() < 0.3
    if gradient:
        bg2 = names[rng.integers(len(names))]
        while bg2 in (bg, fg):
            bg2 = names[rng.integers(len(names))]
        t = np.linspace(0.0, 1.0, size, dtype=np.float64)[None, :, None]
        a, b = np.array(COLOURS[bg], np.float64), np.array(COLOURS[bg2], np.float64)
        arr = np.broadcast_to(a * (1 - t) + b * t, (size, size, 3)).round().astype(np.uint8)
        img = Image.fromarray(np.ascontiguousarray(arr))
        background = f"a {bg} to {bg2} gradient"
    else:
        img = Image.new("RGB", (size, size), COLOURS[bg])
        background = f"a {bg} background"
    d = ImageDraw.Draw(img)
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = COLOURS[fg]
    if "stripes" in shape:
        period = int(rng.integers(8, 17))
        width = period // 2
        for o in range(int(rng.integers(0, period)) - period, size, period):
            box = (0, o, size, o + width - 1) if shape.startswith("horizontal") else (o, 0, o + width - 1, size)
            d.rectangle(box, fill=colour)
        caption = f"{fg} {shape} on {background}"
    else:
        pos = list(POSITIONS)[rng.integers(len(POSITIONS))]
        cx, cy = (v * size for v in POSITIONS[pos])
        r = size * (0.12 + 0.1 * rng.random())
        if shape == "circle":
            d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        elif shape == "square":
            d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
        else:
            d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
        where = "in the centre" if pos == "centre" else f"at the {pos}"
        caption = f"a {fg} {shape} {where} on {background}"
    return np.asarray(img, dtype=np.uint8), caption


def weight_stats(t):
    """Statistics of one weight tensor (ndim >= 2; dim 0 = output channels)."""
    w = t.detach().double().flatten()
    n = w.numel()
    mean, std = w.mean(), w.std(unbiased=False)
    z = (w - mean) / std
    kurt = float((z ** 4).mean() - 3.0)
    absw = w.abs()
    top = max(1, n // 100)
    energy = w.square()
    top_energy = float(torch.topk(energy, top).values.sum() / energy.sum())
    ch_absmax = t.detach().double().reshape(t.shape[0], -1).abs().amax(dim=1)
    ch_rms = t.detach().double().reshape(t.shape[0], -1).square().mean(dim=1).sqrt()
    return {"kurtosis": kurt, "max_over_std": float(absw.max() / std),
            "channel_absmax_max_over_median": float(ch_absmax.max() / ch_absmax.median()),
            "channel_rms_cv": float(ch_rms.std(unbiased=False) / ch_rms.mean()),
            "top1pct_energy": top_energy, "numel": n}


STAT_KEYS = ("kurtosis", "max_over_std", "channel_absmax_max_over_median", "channel_rms_cv", "top1pct_energy")


def all_stats(models):
    out = {}
    for comp, m in models.items():
        for k, v in m.state_dict().items():
            if v.ndim >= 2 and v.is_floating_point() and v.shape[0] > 1 and "embedding" not in k:
                out[f"{comp}.{k}"] = weight_stats(v)
    return out


def summarise(stats):
    """Median and 90th percentile of each statistic per component and over all tensors."""
    groups = {"all": list(stats.values())}
    for k, v in stats.items():
        groups.setdefault(k.split(".")[0], []).append(v)
    res = {}
    for g, rows in groups.items():
        res[g] = {"tensors": len(rows)}
        for s in STAT_KEYS:
            vals = np.array([r[s] for r in rows])
            res[g][s] = {"median": float(np.median(vals)), "p90": float(np.percentile(vals, 90)),
                         "max": float(vals.max())}
    return res


def sample_grid(pipe, path, steps=25):
    from PIL import Image
    tiles = []
    for p in SAMPLE_PROMPTS:
        g = torch.Generator().manual_seed(0)
        img = pipe(p, num_inference_steps=steps, guidance_scale=7.5, generator=g, output_type="pil").images[0]
        tiles.append(img.resize((img.width * 4, img.height * 4), Image.NEAREST))
    w, h = tiles[0].size
    grid = Image.new("RGB", (w * len(tiles), h))
    for i, t in enumerate(tiles):
        grid.paste(t, (i * w, 0))
    grid.save(path)


def save_grid(arrs, path, scale=2):
    from PIL import Image
    n = len(arrs)
    cols = min(n, 8)
    rows = (n + cols - 1) // cols
    s = arrs[0].shape[0]
    grid = np.zeros((rows * s, cols * s, 3), np.uint8)
    for i, a in enumerate(arrs):
        grid[(i // cols) * s:(i // cols + 1) * s, (i % cols) * s:(i % cols + 1) * s] = a
    img = Image.fromarray(grid)
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)


def curve(losses, every):
    """Loss averaged over windows of `every` steps (start/end are the first and last window)."""
    return [float(np.mean(losses[i:i + every])) for i in range(0, len(losses), every)]


def tensor_snr(weightpack, out, types=("q8_0", "q4_k", "q4_0", "q2_k")):
    """Per-tensor SNR that `weightpack convert --dtype T` records for each quantised tensor, for
    the random fixture and the trained model (read back with `weightpack inspect --json`)."""
    import subprocess
    models = {"random": common.TINY_SAFETENSORS, "trained": os.path.join(out, "tiny-trained.safetensors")}
    res = {}
    for t in types:
        res[t] = {}
        for which, path in models.items():
            if not os.path.isfile(path):
                fail(f"{path} is missing: run without --measure-only first")
            wpk = os.path.join(out, f".snr-{which}-{t}.wpk")
            p = subprocess.run([weightpack, "convert", path, wpk, "--dtype", t, "--no-source-hash", "--force"],
                               capture_output=True, text=True)
            if p.returncode != 0:
                fail(f"weightpack convert {t}: {p.stderr.strip()}")
            p = subprocess.run([weightpack, "inspect", wpk, "--json"], capture_output=True, text=True)
            os.remove(wpk)
            if p.returncode != 0:
                fail(f"weightpack inspect: {p.stderr.strip()}")
            groups = {}
            for row in json.loads(p.stdout)["tensors"]:
                q = row.get("quantization")
                if q and q.get("error"):
                    groups.setdefault(row["name"].split(".")[0], []).append(float(q["error"]["snr_db"]))
            groups["all"] = [v for g in list(groups.values()) for v in g]
            res[t][which] = {g: {"tensors": len(v), "median_db": float(np.median(v)),
                                 "p10_db": float(np.percentile(v, 10)), "min_db": float(min(v))}
                             for g, v in groups.items()}
    with open(os.path.join(out, "tensor-snr.json"), "w") as f:
        json.dump(res, f, indent=1)
    print("per-tensor SNR recorded by weightpack convert (median / 10th percentile, dB):")
    for t, r in res.items():
        for g in r["random"]:
            a, b = r["random"][g], r["trained"][g]
            print(f"{t:<5} {g:<13} {a['tensors']:>4} tensors  random {a['median_db']:6.2f} / {a['p10_db']:6.2f}"
                  f"   trained {b['median_db']:6.2f} / {b['p10_db']:6.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/wpbench/tiny-trained")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--vae-steps", type=int, default=400)
    ap.add_argument("--vae-batch", type=int, default=4)
    ap.add_argument("--unet-steps", type=int, default=700)
    ap.add_argument("--unet-batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=common.SEED)
    ap.add_argument("--measure-only", metavar="WEIGHTPACK",
                    help="skip training: convert the random fixture and DIR's trained model with this weightpack "
                         "binary and write DIR/tensor-snr.json (per-tensor quantisation SNR)")
    args = ap.parse_args()
    for name in ("images", "vae_steps", "vae_batch", "unet_steps", "unet_batch"):
        v = getattr(args, name)
        if not 1 <= v <= 100_000:
            fail(f"--{name.replace('_', '-')} must be between 1 and 100000 (got {v})")
    if max(args.vae_batch, args.unet_batch) > args.images:
        fail(f"batch sizes must not exceed --images ({args.images})")
    out = os.path.abspath(args.out)
    repo = os.path.normpath(os.path.join(common.FIXTURES, ".."))
    if out == repo or out.startswith(repo + os.sep):
        fail(f"refusing to write inside the repository ({out}); the trained model is not committed")
    if args.measure_only:
        return tensor_snr(args.measure_only, out)
    versions = check_pins()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t_start, cpu_start = time.time(), time.process_time()

    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from safetensors.torch import load_file, save_file
    import make_tiny_sd1

    pipe = StableDiffusionPipeline.from_pretrained(common.TINY_DIFFUSERS, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    unet, vae, te, tok = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    models = {"unet": unet, "vae": vae, "text_encoder": te}
    size = vae.config.sample_size
    os.makedirs(out, exist_ok=True)

    before = all_stats(models)
    sample_grid(pipe, os.path.join(out, "samples-before.png"))

    # ---- data
    imgs, caps = zip(*(render(rng, size) for _ in range(args.images)))
    save_grid(list(imgs[:16]), os.path.join(out, "dataset.png"))
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    print(f"dataset: {len(imgs)} images {size}x{size}, e.g. {caps[0]!r}, {caps[1]!r}", flush=True)

    # ---- 1. VAE
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=1e-2)
    vae_losses = []
    t0 = time.time()
    for step in range(args.vae_steps):
        idx = torch.from_numpy(rng.choice(len(x), args.vae_batch, replace=False))
        batch = x[idx]
        post = vae.encode(batch).latent_dist
        rec = vae.decode(post.sample()).sample
        rec_loss = (rec - batch).abs().mean() + (rec - batch).square().mean()
        kl = post.kl().mean() / post.mean[0].numel()
        loss = rec_loss + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        vae_losses.append(rec_loss.item())
        if step % 25 == 0 or step == args.vae_steps - 1:
            print(f"vae step {step}: reconstruction {rec_loss.item():.4f} (kl/elem {kl.item():.3f}) "
                  f"{time.time() - t0:.0f} s", flush=True)
    vae.eval()
    with torch.no_grad():
        mean = torch.cat([vae.encode(x[i:i + 64]).latent_dist.mean for i in range(0, len(x), 64)])
        rec = torch.cat([vae.decode(mean[i:i + 64]).sample for i in range(0, len(x), 64)])
        vae_psnr = float(10 * torch.log10(4.0 / (rec.clamp(-1, 1) - x).square().mean()))
        # Fold the latent scale into quant_conv / post_quant_conv: z' = s z with s chosen so that
        # z' * scaling_factor has unit std. quant_conv's first half of output channels is the mean,
        # the second half the log-variance (log-variance of s z = logvar + 2 log s).
        sf = vae.config.scaling_factor
        s = 1.0 / (sf * float(mean.std()))
        c = vae.config.latent_channels
        vae.quant_conv.weight[:c] *= s
        vae.quant_conv.bias[:c] *= s
        vae.quant_conv.bias[c:] += 2 * math.log(s)
        vae.post_quant_conv.weight *= 1.0 / s
        latents = torch.cat([vae.encode(x[i:i + 64]).latent_dist.mean for i in range(0, len(x), 64)]) * sf
        rec2 = torch.cat([vae.decode(latents[i:i + 64] / sf).sample for i in range(0, len(x), 64)])
        if float((rec2 - rec).abs().max()) > 1e-3:
            fail("latent rescaling changed the VAE's reconstructions")
    print(f"vae: reconstruction PSNR {vae_psnr:.2f} dB over the dataset; latent scale folded in "
          f"(x{s:.3f}), scaled latents std {float(latents.std()):.3f}", flush=True)
    save_grid([((a.permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy() for a in rec[:16]],
              os.path.join(out, "vae-reconstructions.png"))

    # ---- 2. UNet + text encoder
    ddpm = DDPMScheduler.from_config(pipe.scheduler.config)
    if ddpm.config.prediction_type != "epsilon":
        fail(f"unexpected prediction type {ddpm.config.prediction_type}")
    ids = tok(list(caps), padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    empty = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    unet.train()
    te.train()
    opt = torch.optim.AdamW([{"params": unet.parameters(), "lr": 1e-3},
                             {"params": te.parameters(), "lr": 1e-4}], weight_decay=1e-2)
    warmup = min(50, args.unet_steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / max(1, warmup)))
    unet_losses = []
    t0 = time.time()
    for step in range(args.unet_steps):
        idx = torch.from_numpy(rng.choice(len(x), args.unet_batch, replace=False))
        lat = latents[idx]
        tid = ids[idx].clone()
        drop = torch.from_numpy(rng.random(len(idx)) < 0.1)
        tid[drop] = empty[0]
        noise = torch.randn_like(lat)
        t = torch.randint(0, ddpm.config.num_train_timesteps, (len(idx),))
        noisy = ddpm.add_noise(lat, noise, t)
        cond = te(tid)[0]
        pred = unet(noisy, t, encoder_hidden_states=cond).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(te.parameters()), 1.0)
        opt.step()
        sched.step()
        unet_losses.append(loss.item())
        if step % 50 == 0 or step == args.unet_steps - 1:
            print(f"unet step {step}: noise MSE {loss.item():.4f} (mean of last 50: "
                  f"{np.mean(unet_losses[-50:]):.4f}) {time.time() - t0:.0f} s", flush=True)
    unet.eval()
    te.eval()
    train_seconds, train_cpu_seconds = time.time() - t_start, time.process_time() - cpu_start

    # ---- results
    sample_grid(pipe, os.path.join(out, "samples-after.png"))
    after = all_stats(models)
    recipe = {
        "generator": "Fixtures/generate/make_trained_tiny.py",
        "start": "Fixtures/tiny-sd1/diffusers (make_tiny_sd1.py, seeded random weights)",
        "seed": args.seed, "images": args.images, "image_size": size,
        "vae": {"steps": args.vae_steps, "batch": args.vae_batch, "optimizer": "AdamW lr 1e-3 wd 1e-2",
                "loss": "L1 + MSE + 1e-6 KL", "dataset_psnr_db": round(vae_psnr, 2),
                "latent_scale_folded": round(s, 6)},
        "unet": {"steps": args.unet_steps, "batch": args.unet_batch,
                 "optimizer": "AdamW wd 1e-2, UNet lr 1e-3, text encoder lr 1e-4, warm-up %d, clip 1.0" % warmup,
                 "loss": "MSE(eps_pred, eps), DDPM scaled_linear 1000 steps, 10% empty captions"},
        "threads": "torch.set_num_threads(1), deterministic, CPU fp32",
        "train_seconds": round(train_seconds, 1), "train_cpu_seconds": round(train_cpu_seconds, 1),
        "versions": versions,
    }
    doc = {"recipe": recipe,
           "loss": {"vae_reconstruction": {"first25": float(np.mean(vae_losses[:25])),
                                           "last25": float(np.mean(vae_losses[-25:])),
                                           "every25": curve(vae_losses, 25)},
                    "unet_noise_mse": {"first50": float(np.mean(unet_losses[:50])),
                                       "last50": float(np.mean(unet_losses[-50:])),
                                       "every50": curve(unet_losses, 50)}},
           "summary": {"before": summarise(before), "after": summarise(after)},
           "tensors": {k: {"before": before[k], "after": after[k]} for k in before}}

    ldm = common.diffusers_to_ldm(torch, unet.state_dict(), vae.state_dict(), te.state_dict(), dict(unet.config))
    ldm = {k: v.detach().contiguous().clone() for k, v in ldm.items()}
    make_tiny_sd1.verify_ldm(ldm, unet, vae, te)
    st_path = os.path.join(out, "tiny-trained.safetensors")
    tmp = st_path + ".tmp"
    save_file(ldm, tmp, metadata={"format": "pt", "weightpack.made_by": json.dumps(recipe, sort_keys=True)})
    make_tiny_sd1.verify_ldm(load_file(tmp), unet, vae, te)
    os.replace(tmp, st_path)
    diff_dir = os.path.join(out, "diffusers")
    if os.path.exists(diff_dir):
        shutil.rmtree(diff_dir)
    pipe.save_pretrained(diff_dir, safe_serialization=True)
    with open(os.path.join(out, "stats.json"), "w") as f:
        json.dump(doc, f, indent=1)

    print(f"trained in {train_seconds:.0f} s ({train_cpu_seconds:.0f} s of CPU); VAE reconstruction {doc['loss']['vae_reconstruction']['first25']:.4f} -> "
          f"{doc['loss']['vae_reconstruction']['last25']:.4f}; UNet noise MSE {doc['loss']['unet_noise_mse']['first50']:.4f} "
          f"-> {doc['loss']['unet_noise_mse']['last50']:.4f}")
    print("weight statistics (median / p90 over weight tensors, before -> after):")
    print(f"{'component':<13} {'tensors':>7}  " + "  ".join(f"{s:>30}" for s in STAT_KEYS))
    for g in doc["summary"]["after"]:
        b, a = doc["summary"]["before"][g], doc["summary"]["after"][g]
        cells = [f"{b[s]['median']:.3g}/{b[s]['p90']:.3g} -> {a[s]['median']:.3g}/{a[s]['p90']:.3g}" for s in STAT_KEYS]
        print(f"{g:<13} {a['tensors']:>7}  " + "  ".join(f"{c:>30}" for c in cells))
    print(f"wrote {st_path} ({os.path.getsize(st_path)} bytes), {diff_dir}, stats.json, samples-*.png")


if __name__ == "__main__":
    sys.exit(main())
