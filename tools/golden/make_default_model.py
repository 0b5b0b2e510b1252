#!/usr/bin/env python3
"""Build the tiny embedded default model (models/tiny-flux/) with the real diffusers classes.

The model is random-weight: it has FLUX.1-dev's architecture (double + single stream blocks,
guidance embedding, 3-axis RoPE) at a tiny size, so the engine can load and run a real diffusers
checkpoint with no download. It does not draw meaningful images.

Layout written (the real diffusers layout, as FluxPipeline.save_pretrained would write it):

  <out>/model_index.json                 FluxPipeline; lists scheduler + transformer only for now
                                         (text encoders, tokenizers and VAE come later)
  <out>/transformer/config.json          FluxTransformer2DModel.save_pretrained
  <out>/transformer/diffusion_pytorch_model.safetensors   bfloat16, like the real checkpoints
  <out>/scheduler/scheduler_config.json  FlowMatchEulerDiscreteScheduler, FLUX.1-dev values

Run (from the repository root), with the venv tools/golden/generate.sh uses:

  .venv-golden/bin/python tools/golden/make_default_model.py           # writes models/tiny-flux
  $GOLDEN_PYTHON tools/golden/make_default_model.py --out /tmp/tiny    # anywhere else

Deterministic: fixed seed, CPU, one thread. The same library versions give identical bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import torch

import diffusers
from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

SEED = 20240801

# FLUX.1-dev-like (guidance_embeds=True, in_channels=64 = 16 latent channels x 2x2 patch), tiny.
# Hidden size 64 = 2 heads x 32: with diffusers' fixed mlp_ratio 4 the parameter count grows with
# hidden^2 per block, and 4 heads x 32 (hidden 128) would be 2.4 M parameters = 4.7 MB in bf16.
# 2 heads x 32 keeps the 2 + 4 blocks, the [8, 12, 12] RoPE axes, and the file near 1.2 MB.
TRANSFORMER_CONFIG = dict(
    patch_size=1,
    in_channels=64,
    out_channels=None,
    num_layers=2,
    num_single_layers=4,
    attention_head_dim=32,
    num_attention_heads=2,
    joint_attention_dim=64,
    pooled_projection_dim=32,
    guidance_embeds=True,
    axes_dims_rope=[8, 12, 12],
)

# FLUX.1-dev scheduler/scheduler_config.json (reference/flux-spec.md §2.3).
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)

MAX_BYTES = 2 * 1024 * 1024


@torch.no_grad()
def randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Re-draw every parameter so no path is an identity or a zero (same recipe as generate.py).

    diffusers' default init leaves RMSNorm weights at exactly 1, so a loader that dropped them
    would go unnoticed. Linear weights N(0, (0.8/sqrt(fan_in))^2) keep activations O(1) through
    the blocks; biases N(0, 0.1^2); norm weights 1 + N(0, 0.2^2).
    """
    for name, p in model.named_parameters():
        if p.ndim == 2:
            p.copy_(torch.randn(p.shape, generator=gen) * (0.8 / math.sqrt(p.shape[1])))
        elif name.endswith(".bias"):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        elif p.ndim == 1:
            p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.2)
        else:
            raise RuntimeError(f"unexpected parameter {name} {tuple(p.shape)}")


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def build(out: Path) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)

    cfg = TRANSFORMER_CONFIG
    assert sum(cfg["axes_dims_rope"]) == cfg["attention_head_dim"]

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    model = FluxTransformer2DModel(**cfg)
    randomise(model, gen)
    # nn.Module.to, not diffusers' override, which warns about an empty list of fp32 modules.
    model = torch.nn.Module.to(model, torch.bfloat16)
    model.save_pretrained(out / "transformer", safe_serialization=True)
    n_params = sum(p.numel() for p in model.parameters())
    del model

    FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG).save_config(out / "scheduler")

    write_json(
        out / "model_index.json",
        {
            "_class_name": "FluxPipeline",
            "_diffusers_version": diffusers.__version__,
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "transformer": ["diffusers", "FluxTransformer2DModel"],
        },
    )

    # ---- check: reload with diffusers and run one forward on a small latent ---------------------
    model = FluxTransformer2DModel.from_pretrained(out / "transformer", torch_dtype=torch.float32).eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    rows, cols, lt = 4, 6, 5
    li = rows * cols
    with torch.no_grad():
        img_ids = torch.zeros(rows, cols, 3)
        img_ids[..., 1] = torch.arange(rows)[:, None]
        img_ids[..., 2] = torch.arange(cols)[None, :]
        sample = model(
            hidden_states=torch.randn(1, li, cfg["in_channels"], generator=gen),
            encoder_hidden_states=torch.randn(1, lt, cfg["joint_attention_dim"], generator=gen),
            pooled_projections=torch.randn(1, cfg["pooled_projection_dim"], generator=gen),
            timestep=torch.tensor([0.5]),
            guidance=torch.tensor([3.5]),
            img_ids=img_ids.reshape(li, 3),
            txt_ids=torch.zeros(lt, 3),
        ).sample
    assert sample.shape == (1, li, cfg["in_channels"]), sample.shape
    assert torch.isfinite(sample).all()
    FlowMatchEulerDiscreteScheduler.from_pretrained(out / "scheduler")

    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    if total > MAX_BYTES:
        raise RuntimeError(f"{out}: {total} bytes, over the {MAX_BYTES} byte budget")
    print(
        f"make_default_model: wrote {out} ({n_params} parameters, {total} bytes, "
        f"torch {torch.__version__}, diffusers {diffusers.__version__}; "
        f"check forward rms {float(sample.pow(2).mean().sqrt()):.4f})"
    )


def main() -> int:
    repo = Path(__file__).resolve().parents[2]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=repo / "models" / "tiny-flux",
                    help="output directory (default: models/tiny-flux); replaced, README.md kept")
    args = ap.parse_args()

    # models/tiny-flux/README.md is hand-written; keep it across regenerations.
    readme = args.out / "README.md"
    keep = readme.read_text() if readme.exists() else None
    build(args.out)
    if keep is not None:
        readme.write_text(keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
