#!/usr/bin/env python3
"""Golden fixtures for the AutoencoderKL decoder (fluxserve engine/models/vae_decoder).

Writes, under FIXTURES_ROOT/vae/<case>/:

  model/vae/...            tiny FLUX-like AutoencoderKL via save_pretrained (encoder included)
  model/model_index.json   a pipeline root naming the vae component (for `--model <case>/model`)
  inputs.safetensors       `latents` [B, latent_channels, h, w] exactly as vae.decode receives them
  outputs.safetensors      `sample` = vae.decode(latents).sample (float32)
  pipeline.safetensors     (cases with `pipeline=True`) what FluxPipeline does around decode:
                           `unscaled` latents, `scaled` = unscaled / scaling_factor + shift_factor
                           (== inputs `latents`), `image` = VaeImageProcessor.postprocess(sample,
                           "pil") as uint8 [B, H, W, 3]
  meta.json                config, shapes, output statistics, float64 gap of the reference

Every parameter (norm weights included) is re-drawn, so a decoder that forgot one would not match.
Deterministic: each case seeds its own generator. Runs on CPU in float32; the bf16 case stores
bf16 weights and computes the reference in float32 from those rounded weights.
"""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

import numpy as np
import torch

import diffusers
from diffusers import AutoencoderKL
from diffusers.image_processor import VaeImageProcessor
from safetensors.torch import save_file

import sys  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402

CASES = [
    dict(
        # FLUX.1 layout scaled down: 4 blocks (8x upscale), one attention in the middle,
        # conv_shortcut where the channels drop, FLUX's scaling/shift and no post_quant_conv.
        name="flux_vae_tiny",
        seed=2001,
        config=dict(
            in_channels=3,
            out_channels=3,
            latent_channels=16,
            block_out_channels=[8, 8, 16, 16],
            down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4,
            layers_per_block=1,
            norm_num_groups=4,
            act_fn="silu",
            scaling_factor=0.3611,
            shift_factor=0.1159,
            use_quant_conv=False,
            use_post_quant_conv=False,
            mid_block_add_attention=True,
            force_upcast=True,
        ),
        batch=2,
        latent_hw=(6, 10),
        storage_dtype=torch.float32,
        pipeline=True,
    ),
    dict(
        # bf16 storage, layers_per_block 2, 3 blocks (4x upscale), SD-style post_quant_conv.
        name="vae_bf16_postquant",
        seed=2002,
        config=dict(
            in_channels=3,
            out_channels=3,
            latent_channels=16,
            block_out_channels=[8, 16, 24],
            down_block_types=["DownEncoderBlock2D"] * 3,
            up_block_types=["UpDecoderBlock2D"] * 3,
            layers_per_block=2,
            norm_num_groups=4,
            act_fn="silu",
            scaling_factor=0.3611,
            shift_factor=0.1159,
            use_quant_conv=True,
            use_post_quant_conv=True,
            mid_block_add_attention=True,
        ),
        batch=1,
        latent_hw=(9, 7),
        storage_dtype=torch.bfloat16,
        pipeline=False,
    ),
]



@torch.no_grad()
def rerandomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Conv/linear weights N(0, (g/sqrt(fan_in))^2), biases N(0, 0.1^2), norm weights 1 + N(0, 0.2^2).

    g = 1.0 keeps the residual stream O(1) through the blocks; conv_out is drawn larger
    so that the sample spreads over [-1, 1] and past it (the uint8 clamp is exercised too).
    """
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            fan_in = p[0].numel()
            gain = 2.5 if name.startswith("decoder.conv_out") else 1.0
            p.copy_(torch.randn(p.shape, generator=gen) * (gain / math.sqrt(fan_in)))
        elif name.endswith(".bias"):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        elif p.ndim == 1:
            p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.2)
        else:
            raise RuntimeError(f"unexpected parameter {name} {tuple(p.shape)}")


def make_case(case: dict, out_root: Path) -> dict:
    name = case["name"]
    case_dir = out_root / "vae" / name
    if case_dir.exists():
        shutil.rmtree(case_dir)
    model_dir = case_dir / "model"
    model_dir.mkdir(parents=True)
    gen = torch.Generator().manual_seed(case["seed"])
    torch.manual_seed(case["seed"])

    cfg = case["config"]
    vae = AutoencoderKL(**cfg)
    rerandomise(vae, gen)
    vae = vae.to(case["storage_dtype"])
    vae.save_pretrained(model_dir / "vae", safe_serialization=True)
    write_json(
        model_dir / "model_index.json",
        {
            "_class_name": "FluxPipeline",
            "_diffusers_version": diffusers.__version__,
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )
    del vae
    # Reload in float32: the weights are exactly the stored (rounded) ones.
    vae = AutoencoderKL.from_pretrained(model_dir / "vae", torch_dtype=torch.float32).eval()

    B = case["batch"]
    h, w = case["latent_hw"]
    unscaled = torch.randn(B, cfg["latent_channels"], h, w, generator=gen)
    # FluxPipeline: latents = (latents / vae.config.scaling_factor) + vae.config.shift_factor
    latents = (unscaled / vae.config.scaling_factor) + vae.config.shift_factor
    save_file({"latents": latents.contiguous()}, str(case_dir / "inputs.safetensors"))

    with torch.no_grad():
        sample = vae.decode(latents, return_dict=False)[0]
        vae64 = AutoencoderKL.from_pretrained(model_dir / "vae", torch_dtype=torch.float64).eval()
        sample64 = vae64.decode(latents.double(), return_dict=False)[0]
    f = 2 ** (len(cfg["block_out_channels"]) - 1)
    assert sample.shape == (B, cfg["out_channels"], f * h, f * w), sample.shape
    assert sample.dtype == torch.float32 and torch.isfinite(sample).all()
    save_file({"sample": sample.contiguous()}, str(case_dir / "outputs.safetensors"))

    in_range = float(((sample >= -1) & (sample <= 1)).double().mean())
    meta = dict(
        case=name,
        seed=case["seed"],
        storage_dtype=str(case["storage_dtype"]).replace("torch.", ""),
        config=cfg,
        latents_shape=list(latents.shape),
        sample_shape=list(sample.shape),
        sample_rms=float(sample.double().pow(2).mean().sqrt()),
        sample_fraction_in_minus1_1=in_range,
        float32_vs_float64_rel_l2=float((sample.double() - sample64).norm() / sample64.norm()),
        versions=dict(torch=torch.__version__, diffusers=diffusers.__version__, numpy=np.__version__),
    )
    if not 0.3 < in_range < 0.98:
        raise RuntimeError(f"{name}: {in_range:.2f} of the sample in [-1, 1]; rescale conv_out")

    if case["pipeline"]:
        proc = VaeImageProcessor(vae_scale_factor=f)
        pil = proc.postprocess(sample, output_type="pil")
        image = torch.from_numpy(np.stack([np.asarray(im) for im in pil]))
        assert image.dtype == torch.uint8 and image.shape == (B, f * h, f * w, 3), image.shape
        save_file(
            {"unscaled": unscaled.contiguous(), "scaled": latents.contiguous(), "image": image},
            str(case_dir / "pipeline.safetensors"),
        )
        meta["image_shape"] = list(image.shape)
        meta["image_fraction_0_or_255"] = float(((image == 0) | (image == 255)).double().mean())
    write_json(case_dir / "meta.json", meta)
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "tests/golden/fixtures")
    args = ap.parse_args()
    torch.set_num_threads(1)  # deterministic reductions
    for case in CASES:
        meta = make_case(case, args.out)
        print(
            f"{meta['case']}: sample {meta['sample_shape']} rms {meta['sample_rms']:.3f}, "
            f"{meta['sample_fraction_in_minus1_1']:.2f} in [-1,1], "
            f"f32 vs f64 {meta['float32_vs_float64_rel_l2']:.2e}"
        )


if __name__ == "__main__":
    main()
