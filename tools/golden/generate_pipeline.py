#!/usr/bin/env python3
"""End-to-end FluxPipeline fixtures: final latents and decoded uint8 images from diffusers.

Writes <out>/pipeline/:
  schnell/model/          a tiny schnell-like pipeline (FluxPipeline.save_pretrained, bf16)
  cases.json              per case: model ("default" = models/tiny-flux, or "schnell"), the call
                          arguments, output shapes
  <case>.safetensors      latents (packed, float32, as output_type="latent" returns them),
                          image (uint8 [N, H, W, 3], output_type="np" * 255 rounded as "pil" does),
                          prompt_embeds / pooled_prompt_embeds (for debugging)
The dev-like embedded default (models/tiny-flux) is made by make_default_model.py; both models are
loaded back in float32 from their stored weights, so fixtures are the float32 reference.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_pipeline import REPO, build_pipeline, load_pipeline_f32, save_pipeline  # noqa: E402

SCHNELL_SEED = 7070

CASES = [
    dict(name="dev_square", model="default", prompt="a photo of a red fox in the snow, 35mm film",
         height=128, width=128, num_inference_steps=4, guidance_scale=3.5, seed=0,
         max_sequence_length=512),
    dev_cfg := dict(name="dev_cfg_nonsquare", model="default", prompt="Ein Fuchs, 🦊 im Schnee!",
                    negative_prompt="blurry, low quality", true_cfg_scale=2.5, height=96, width=160,
                    num_inference_steps=3, guidance_scale=5.0, seed=42, max_sequence_length=77),
    dict(name="dev_resize_two_images", model="default", prompt="city at night",
         prompt_2="a neon-lit city street at night, rain, reflections", height=100, width=140,
         num_inference_steps=2, guidance_scale=2.0, seed=2**32 + 5, max_sequence_length=64,
         num_images_per_prompt=2),
    dict(name="schnell_square", model="schnell", prompt="a lighthouse on a cliff", height=128,
         width=128, num_inference_steps=4, guidance_scale=0.0, seed=7, max_sequence_length=256),
    dict(name="schnell_cfg", model="schnell", prompt="", negative_prompt="a cat", true_cfg_scale=3.0,
         height=64, width=112, num_inference_steps=2, guidance_scale=0.0, seed=123,
         max_sequence_length=32),
]


def run_case(pipe, case: dict) -> dict:
    kwargs = {k: v for k, v in case.items() if k not in ("name", "model", "seed")}
    gen = lambda: torch.Generator("cpu").manual_seed(case["seed"])  # noqa: E731
    with torch.no_grad():
        latents = pipe(**kwargs, generator=gen(), output_type="latent").images
        image = pipe(**kwargs, generator=gen(), output_type="np").images
        pe, ppe, _ = pipe.encode_prompt(prompt=case["prompt"], prompt_2=case.get("prompt_2"),
                                        max_sequence_length=case["max_sequence_length"])
    u8 = (image * 255).round().astype("uint8")  # VaeImageProcessor.numpy_to_pil
    return dict(latents=latents.float().contiguous(), image=torch.from_numpy(np.ascontiguousarray(u8)),
                prompt_embeds=pe.float().contiguous(), pooled_prompt_embeds=ppe.float().contiguous())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="fixtures root (tests/golden/fixtures)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out = args.out / "pipeline"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    save_pipeline(build_pipeline(dev=False, seed=SCHNELL_SEED, num_layers=1, num_single_layers=1), out / "schnell" / "model", torch.bfloat16)
    models = {"default": REPO / "models" / "tiny-flux", "schnell": out / "schnell" / "model"}
    pipes = {k: load_pipeline_f32(v) for k, v in models.items()}
    for p in pipes.values():
        p.set_progress_bar_config(disable=True)

    index = []
    for case in CASES:
        tensors = run_case(pipes[case["model"]], case)
        save_file(tensors, out / f"{case['name']}.safetensors")
        index.append(dict(case, latents_shape=list(tensors["latents"].shape),
                          image_shape=list(tensors["image"].shape)))
        print(f"generate_pipeline: {case['name']}: latents {tuple(tensors['latents'].shape)} "
              f"image {tuple(tensors['image'].shape)}")
    with open(out / "cases.json", "w") as f:
        json.dump({"cases": index}, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
