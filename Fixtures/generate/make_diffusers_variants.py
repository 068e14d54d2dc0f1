#!/usr/bin/env python3
"""Writes the tiny SD 1.x diffusers folder (Fixtures/tiny-sd1/diffusers) again in the other
weight-file forms diffusers produces, for WeightPack's diffusers-folder reader:

  Fixtures/tiny-sd1/diffusers-bin/      vae saved with safe_serialization=False:
                                        vae/diffusion_pytorch_model.bin (one torch.save zip)
  Fixtures/tiny-sd1/diffusers-sharded/  unet saved with max_shard_size="2MB" (safetensors shards
                                        + diffusion_pytorch_model.safetensors.index.json) and
                                        vae saved with safe_serialization=False,
                                        max_shard_size="1MB" (.bin shards +
                                        diffusion_pytorch_model.bin.index.json)

Only the components in a new form are written. Every other component folder (and the scheduler
and tokenizer folders) is a relative symbolic link to the one in ../diffusers, so the weights
that do not change are not stored twice; diffusers and WeightPack both follow the links.
model_index.json is copied. Each config.json is the source folder's (save_pretrained would add an
absolute `_name_or_path`; the script checks that this is the only difference).

The models are loaded from ../diffusers with from_pretrained and saved with the component's own
save_pretrained (diffusers ModelMixin). transformers 5 writes safetensors only (its
save_pretrained has no safe_serialization), so no text encoder is written as .bin.

Checks (the script exits non-zero otherwise): each written folder reloads with
StableDiffusionPipeline.from_pretrained (the sharded .bin VAE through
AutoencoderKL.from_pretrained(use_safetensors=False): diffusers' pipeline loader chooses one
serialization for the whole folder and looks for a .bin shard index only when told to), and every tensor of unet, vae and text_encoder equals the
source folder's bit for bit (same names, dtypes, shapes); the sharded components really are in
more than one shard. Two runs give byte-identical files.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys

import common  # sets offline env vars first

import torch

SOURCE = common.TINY_DIFFUSERS
LINKED = ("scheduler", "tokenizer", "text_encoder", "unet", "vae")


def fail(msg):
    raise SystemExit("make_diffusers_variants: VERIFICATION FAILED: " + msg)


def state(model):
    return {k: v.detach() for k, v in model.state_dict().items()}


def compare(label, got, want):
    if set(got) != set(want):
        fail(f"{label}: names differ: {sorted(set(got) ^ set(want))[:5]}")
    for k in want:
        a, b = got[k], want[k]
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
            fail(f"{label}: tensor {k} differs ({a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)})")


def save_component(model, folder, **options):
    """save_pretrained into `folder`, then put the source's config.json back."""
    name = os.path.basename(folder)
    model.save_pretrained(folder, **options)
    with open(os.path.join(folder, "config.json")) as f:
        written = json.load(f)
    with open(os.path.join(SOURCE, name, "config.json")) as f:
        source = json.load(f)
    written.pop("_name_or_path", None)
    if written != source:
        fail(f"{name}: save_pretrained wrote a config.json that differs from the source's beyond _name_or_path")
    shutil.copyfile(os.path.join(SOURCE, name, "config.json"), os.path.join(folder, "config.json"))


def make_folder(out, written):
    """A pipeline folder: model_index.json, links to ../diffusers for components not in `written`."""
    if os.path.lexists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    shutil.copyfile(os.path.join(SOURCE, "model_index.json"), os.path.join(out, "model_index.json"))
    for name in LINKED:
        if name not in written:
            os.symlink(os.path.join("..", os.path.basename(SOURCE), name), os.path.join(out, name))


def verify(out, reference, expect_files, bin_components=()):
    """Reloads `out` with diffusers and compares every tensor with the source folder's.

    diffusers' pipeline loader picks safetensors or .bin for the whole pipeline, and finds a
    .bin shard index only with use_safetensors=False, which would then refuse the safetensors
    components; components in `bin_components` are therefore loaded by their own
    from_pretrained(use_safetensors=False) and handed to the pipeline loader.
    """
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel

    for component, predicate in expect_files.items():
        files = sorted(os.listdir(os.path.join(out, component)))
        if not predicate(files):
            fail(f"{out}/{component} holds {files}")
    classes = {"unet": UNet2DConditionModel, "vae": AutoencoderKL}
    overrides = {name: classes[name].from_pretrained(out, subfolder=name, use_safetensors=False) for name in bin_components}
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False, **overrides)
    for name in ("unet", "vae", "text_encoder"):
        compare(f"{os.path.basename(out)}/{name}", state(getattr(pipe, name)), reference[name])
    print(f"verified {os.path.relpath(out, common.FIXTURES)}: reloads with diffusers, every tensor bit-identical")


def summary(out):
    sizes = {}
    for root, dirs, files in os.walk(out):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                with open(p, "rb") as fh:
                    sizes[os.path.relpath(p, out)] = (os.path.getsize(p), hashlib.sha256(fh.read()).hexdigest()[:16])
    total = sum(s for s, _ in sizes.values())
    print(f"{os.path.relpath(out, common.FIXTURES)}: {total:,} bytes in {len(sizes)} files (links not counted)")
    for k in sorted(sizes):
        print(f"  {k}: {sizes[k][0]:,} sha256 {sizes[k][1]}…")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=common.TINY_DIR, help="folder that holds diffusers/ (default: Fixtures/tiny-sd1)")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    if os.path.abspath(os.path.join(out, "diffusers")) != os.path.abspath(SOURCE):
        fail("--out must be the folder of the source diffusers/ folder, so the links resolve")

    torch.use_deterministic_algorithms(True)
    from diffusers import StableDiffusionPipeline

    source = StableDiffusionPipeline.from_pretrained(SOURCE, safety_checker=None, requires_safety_checker=False)
    reference = {name: state(getattr(source, name)) for name in ("unet", "vae", "text_encoder")}

    # (a) a single .bin component, as save_pretrained(safe_serialization=False) writes it.
    bin_dir = os.path.join(out, "diffusers-bin")
    make_folder(bin_dir, written={"vae"})
    save_component(source.vae, os.path.join(bin_dir, "vae"), safe_serialization=False)
    verify(bin_dir, reference, {
        "vae": lambda fs: fs == ["config.json", "diffusion_pytorch_model.bin"],
    })

    # (b) sharded components: safetensors shards with an index, and .bin shards with an index.
    sharded_dir = os.path.join(out, "diffusers-sharded")
    make_folder(sharded_dir, written={"unet", "vae"})
    save_component(source.unet, os.path.join(sharded_dir, "unet"), safe_serialization=True, max_shard_size="2MB")
    save_component(source.vae, os.path.join(sharded_dir, "vae"), safe_serialization=False, max_shard_size="1MB")
    verify(sharded_dir, reference, {
        "unet": lambda fs: "diffusion_pytorch_model.safetensors.index.json" in fs
        and sum(f.endswith(".safetensors") for f in fs) > 1,
        "vae": lambda fs: "diffusion_pytorch_model.bin.index.json" in fs and sum(f.endswith(".bin") for f in fs) > 1,
    }, bin_components=("vae",))

    for d in (bin_dir, sharded_dir):
        summary(d)


if __name__ == "__main__":
    sys.exit(main())
