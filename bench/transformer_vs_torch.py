#!/usr/bin/env python3
"""One FLUX transformer step on the CPU: fluxserve vs diffusers + PyTorch.

Builds a FLUX-architecture FluxTransformer2DModel with diffusers (random weights, fixed seed),
saves it in the diffusers layout to a temp dir, times one forward pass (= one denoising step at
batch 1) in PyTorch and in `fluxserve bench transformer`, and prints both with GFLOP/s computed
by the same formula (flux_step_flops below).

Run with the golden-fixture venv (the same interpreter tools/golden/generate.sh uses):

  ./x bench [flags]                                           # builds build/fluxserve, then runs this
  .venv-golden/bin/python bench/transformer_vs_torch.py       # <repo>/.venv-golden
  $GOLDEN_PYTHON bench/transformer_vs_torch.py --threads 8    # an existing interpreter

See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_util import cpu_model, git_rev, parse_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

try:
    import torch

    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
except ImportError as e:  # pragma: no cover - environment message only
    sys.exit(
        f"transformer_vs_torch.py: {e}\n"
        "Run it with the golden-fixture venv: $GOLDEN_PYTHON if set, else <repo>/.venv-golden/bin/python\n"
        "(create it with ./tools/golden/generate.sh, or: python3 -m venv .venv-golden && "
        ".venv-golden/bin/pip install -r tools/golden/requirements.txt)."
    )


# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------


def flux_step_flops(
    *,
    layers: int,
    single_layers: int,
    hidden: int,
    in_channels: int,
    out_channels: int,
    joint_dim: int,
    pooled_dim: int,
    image_tokens: int,
    text_tokens: int,
    guidance: bool,
    batch: int = 1,
) -> dict:
    """FLOPs of one FluxTransformer2DModel forward, counted the same way for every implementation.

    Counted: every Linear as 2*M*N*K with M = the number of tokens it is applied to, plus
    attention as 2*2*S^2*D per block (Q@K^T and P@V over all heads, S = joint sequence length,
    D = heads * head_dim). Not counted: norms, RoPE, softmax, GELU, modulation, residuals (all
    O(S*D)). The timestep/guidance/pooled embedders and AdaLN linears run on one token per batch
    item, so they are counted with M = batch and are negligible.

    With D = hidden, Li/Lt = image/text tokens, S = Li + Lt, per batch item:
      double block (transformer_blocks[i]):
        norm1, norm1_context   2 * (2*1*D*6D)                          AdaLayerNormZero
        to_q/k/v               3 * 2*Li*D*D     add_q/k/v_proj  3 * 2*Lt*D*D
        attention              2*2*S^2*D
        to_out.0               2*Li*D*D         to_add_out      2*Lt*D*D
        ff (D->4D->D)          2 * 2*Li*D*4D    ff_context      2 * 2*Lt*D*4D
        = 24*S*D^2 + 4*S^2*D + 24*D^2
      single block (single_transformer_blocks[i]), on all S tokens:
        norm.linear            2*1*D*3D
        to_q/k/v               3 * 2*S*D*D
        proj_mlp               2*S*D*4D
        attention              2*2*S^2*D
        proj_out (5D->D)       2*S*5D*D
        = 24*S*D^2 + 4*S^2*D + 6*D^2
      outside the blocks:
        x_embedder 2*Li*Cin*D, context_embedder 2*Lt*J*D, proj_out 2*Li*D*Cout,
        norm_out.linear 2*D*2D, time_text_embed: timestep 2*(256*D + D*D),
        guidance 2*(256*D + D*D) when guidance_embeds, text 2*(P*D + D*D)
    """
    D, Li, Lt = hidden, image_tokens, text_tokens
    S = Li + Lt

    def lin(m: int, k: int, n: int) -> int:
        return 2 * m * k * n

    double_lin = (
        2 * lin(1, D, 6 * D)
        + 3 * lin(Li, D, D) + 3 * lin(Lt, D, D)
        + lin(Li, D, D) + lin(Lt, D, D)
        + lin(Li, D, 4 * D) + lin(Li, 4 * D, D)
        + lin(Lt, D, 4 * D) + lin(Lt, 4 * D, D)
    )
    single_lin = lin(1, D, 3 * D) + 3 * lin(S, D, D) + lin(S, D, 4 * D) + lin(S, 5 * D, D)
    attn = 2 * 2 * S * S * D
    embed_lin = (
        lin(Li, in_channels, D)
        + lin(Lt, joint_dim, D)
        + lin(Li, D, out_channels)
        + lin(1, D, 2 * D)
        + lin(1, 256, D) + lin(1, D, D)
        + (lin(1, 256, D) + lin(1, D, D) if guidance else 0)
        + lin(1, pooled_dim, D) + lin(1, D, D)
    )
    linear = layers * double_lin + single_layers * single_lin + embed_lin
    attention = (layers + single_layers) * attn
    return dict(linear=batch * linear, attention=batch * attention, total=batch * (linear + attention))


def count_linear_flops_with_hooks(model: torch.nn.Module) -> tuple[list, dict]:
    """Hooks that add 2*M*N*K for every nn.Linear call: a check on flux_step_flops' linear part."""
    acc = {"flops": 0}

    def hook(mod, inputs, output):
        x = inputs[0]
        m = x.numel() // x.shape[-1]
        acc["flops"] += 2 * m * mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return handles, acc


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Same recipe as tools/golden: activations stay O(1) (no denormals skewing either side)."""
    for name, p in model.named_parameters():
        if p.ndim == 2:
            p.copy_(torch.randn(p.shape, generator=gen) * (0.8 / math.sqrt(p.shape[1])))
        elif name.endswith(".bias"):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        else:
            p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.2)


def make_model(cfg: dict, dtype: torch.dtype, root: Path, seed: int) -> int:
    """Writes <root>/model_index.json, transformer/, scheduler/; returns the parameter count."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = FluxTransformer2DModel(**cfg)
    randomise(model, gen)
    n_params = sum(p.numel() for p in model.parameters())
    # nn.Module.to, not diffusers' override, which warns about an empty list of fp32 modules.
    torch.nn.Module.to(model, dtype).save_pretrained(root / "transformer", safe_serialization=True)
    del model
    # FLUX.1-dev scheduler, so the folder is a loadable transformer + scheduler pipeline.
    FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
    ).save_config(root / "scheduler")
    with open(root / "model_index.json", "w") as f:
        json.dump(
            {
                "_class_name": "FluxPipeline",
                "_diffusers_version": diffusers.__version__,
                "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
                "transformer": ["diffusers", "FluxTransformer2DModel"],
            },
            f,
            indent=2,
        )
        f.write("\n")
    return n_params


def make_inputs(cfg: dict, latent_grid: int, text_tokens: int, seed: int) -> dict:
    """forward() arguments as FluxPipeline passes them (batch 1, t/1000, guidance 3.5).

    A latent_grid x latent_grid VAE latent is packed into (latent_grid/2)^2 tokens of 2x2 patches;
    img_ids are (0, row, col) of the patch grid, as FluxPipeline._prepare_latent_image_ids makes them.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    grid = latent_grid // 2
    li = grid * grid
    # == FluxPipeline._prepare_latent_image_ids(1, grid, grid, ...); importing FluxPipeline would pull
    # in transformers' image processors just for this.
    img_ids = torch.zeros(grid, grid, 3)
    img_ids[..., 1] = torch.arange(grid)[:, None]
    img_ids[..., 2] = torch.arange(grid)[None, :]
    img_ids = img_ids.reshape(li, 3)
    inputs = dict(
        hidden_states=torch.randn(1, li, cfg["in_channels"], generator=gen),
        encoder_hidden_states=torch.randn(1, text_tokens, cfg["joint_attention_dim"], generator=gen),
        pooled_projections=torch.randn(1, cfg["pooled_projection_dim"], generator=gen),
        timestep=torch.tensor([0.75]),
        img_ids=img_ids,
        txt_ids=torch.zeros(text_tokens, 3),
    )
    if cfg["guidance_embeds"]:
        inputs["guidance"] = torch.tensor([3.5])
    return inputs


# --------------------------------------------------------------------------------------------
# The two sides
# --------------------------------------------------------------------------------------------


def bench_torch(root: Path, cfg: dict, args, expect_linear_flops: int) -> dict:
    torch.set_num_threads(args.threads)
    model = FluxTransformer2DModel.from_pretrained(root / "transformer", torch_dtype=torch.float32).eval()
    inputs = make_inputs(cfg, args.latent_grid, args.text_tokens, args.seed)
    times = []
    with torch.no_grad():
        # The first call counts Linear FLOPs with hooks (a check of flux_step_flops); it is a
        # warmup call and is never timed.
        handles, acc = count_linear_flops_with_hooks(model)
        out = model(**inputs).sample
        for h in handles:
            h.remove()
        if acc["flops"] != expect_linear_flops:
            raise RuntimeError(
                f"flux_step_flops linear part {expect_linear_flops} != {acc['flops']} counted by hooks: "
                "the formula no longer matches diffusers' FluxTransformer2DModel"
            )
        if not torch.isfinite(out).all():
            raise RuntimeError("torch output is not finite")
        for _ in range(max(args.warmup - 1, 0)):
            model(**inputs)
        for i in range(args.iters):
            t0 = time.perf_counter()
            model(**inputs)
            times.append((time.perf_counter() - t0) * 1e3)
            print(f"  torch iter {i}: {times[-1]:.1f} ms", flush=True)
    del model, inputs, out
    gc.collect()
    return dict(step_ms=statistics.median(times), times_ms=times)




def fluxserve_cmd(args, root: Path) -> list[str]:
    return [
        str(args.fluxserve), "bench", "transformer",
        "--model", str(root),
        "--image-tokens", str((args.latent_grid // 2) ** 2),
        "--text-tokens", str(args.text_tokens),
        "--threads", str(args.threads),
        "--warmup", str(args.warmup),
        "--iters", str(args.iters),
    ]


def bench_fluxserve(args, root: Path) -> dict:
    cmd = fluxserve_cmd(args, root)
    print("  $ " + shlex.join(cmd), flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout.splitlines():
        print("  | " + line)
    if proc.returncode != 0:
        raise RuntimeError(f"fluxserve exited with status {proc.returncode}")
    return parse_result(proc.stdout, "step_ms")


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both sides (default: all cores)")
    ap.add_argument("--layers", type=int, default=4, help="double-stream blocks (num_layers); FLUX.1: 19")
    ap.add_argument("--single-layers", type=int, default=8, help="single-stream blocks; FLUX.1: 38")
    ap.add_argument("--heads", type=int, default=4, help="attention heads; FLUX.1: 24")
    ap.add_argument("--head-dim", type=int, default=128, help="attention head dim; FLUX.1: 128")
    ap.add_argument("--latent-grid", type=int, default=64,
                    help="side of the square VAE latent (even); the transformer sees (grid/2)^2 image tokens "
                         "of 2x2 patches: 64 -> 1024 tokens, a 512x512 px image (128 -> 4096, 1024x1024 px)")
    ap.add_argument("--text-tokens", type=int, default=512, help="T5 tokens (FLUX max_sequence_length); default 512")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32",
                    help="dtype the weights are stored in (both sides compute in float32)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="write the model under DIR/model and keep it (default: a temp dir, deleted)")
    ap.add_argument("--fluxserve", type=Path, default=REPO / "build" / "fluxserve", help="fluxserve binary")
    ap.add_argument("--torch-only", action="store_true", help="skip the fluxserve run")
    args = ap.parse_args()
    if args.threads < 1 or args.iters < 1 or args.warmup < 1 or args.text_tokens < 1:
        ap.error("--threads, --iters, --warmup and --text-tokens must be >= 1 "
                 "(the first torch call is the warmup that checks the FLOP formula)")
    if args.latent_grid < 2 or args.latent_grid % 2:
        ap.error("--latent-grid must be even and >= 2 (FLUX packs 2x2 latent patches into one token)")

    head_dim = args.head_dim
    # axes_dims_rope must sum to head_dim with even parts: FLUX.1's [16, 56, 56] at 128, else scaled.
    if head_dim == 128:
        axes = [16, 56, 56]
    else:
        a0 = 2 * max(1, round(head_dim / 8 / 2))
        rest = head_dim - a0
        a1 = 2 * (rest // 4)
        axes = [a0, a1, rest - a1]
        if min(axes) < 2 or any(a % 2 for a in axes):
            ap.error(f"--head-dim {head_dim}: no even 3-axis RoPE split")
    cfg = dict(
        patch_size=1,
        in_channels=64,
        out_channels=None,
        num_layers=args.layers,
        num_single_layers=args.single_layers,
        attention_head_dim=head_dim,
        num_attention_heads=args.heads,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=axes,
    )
    hidden = args.heads * head_dim
    image_tokens = (args.latent_grid // 2) ** 2
    flops = flux_step_flops(
        layers=args.layers, single_layers=args.single_layers, hidden=hidden,
        in_channels=cfg["in_channels"], out_channels=cfg["in_channels"],
        joint_dim=cfg["joint_attention_dim"], pooled_dim=cfg["pooled_projection_dim"],
        image_tokens=image_tokens, text_tokens=args.text_tokens, guidance=cfg["guidance_embeds"],
    )

    if not args.torch_only and not args.fluxserve.exists():
        sys.exit(f"transformer_vs_torch.py: {args.fluxserve} not found: build it (./x build) or pass "
                 "--fluxserve PATH, or --torch-only")

    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, python {platform.python_version()}")
    print(f"cpu: {cpu_model()} ({os.cpu_count()} logical cores), threads: {args.threads}")
    print(
        f"model: {args.layers} double + {args.single_layers} single blocks, {args.heads} heads x {head_dim} "
        f"(hidden {hidden}), rope {axes}, joint 4096, pooled 768, guidance; weights stored {args.dtype}"
    )
    print(
        f"input: batch 1, {args.latent_grid}x{args.latent_grid} latent = {image_tokens} image tokens "
        f"+ {args.text_tokens} text tokens; warmup {args.warmup}, iters {args.iters}"
    )
    print(
        f"flops/step: {flops['total'] / 1e9:.2f} GFLOP "
        f"(linear {flops['linear'] / 1e9:.2f} + attention {flops['attention'] / 1e9:.2f})",
        flush=True,
    )

    if args.keep:
        base = args.keep
        base.mkdir(parents=True, exist_ok=True)
        root = base / "model"
        if root.exists():
            shutil.rmtree(root)
    else:
        base = Path(tempfile.mkdtemp(prefix="fluxserve-bench-"))
        root = base / "model"
    try:
        root.mkdir(parents=True)
        dtype = torch.float32 if args.dtype == "f32" else torch.bfloat16
        n_params = make_model(cfg, dtype, root, args.seed)
        print(f"wrote {root} ({n_params / 1e6:.1f} M parameters)", flush=True)

        print("diffusers + torch (float32, eval, no_grad):", flush=True)
        t = bench_torch(root, cfg, args, flops["linear"])
        f = None
        if not args.torch_only:
            print("fluxserve:", flush=True)
            f = bench_fluxserve(args, root)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(base, ignore_errors=True)

    def gflops(ms: float) -> float:
        return flops["total"] / (ms * 1e-3) / 1e9

    rows = [("diffusers+torch " + torch.__version__.split("+")[0], t["step_ms"])]
    if f is not None:
        rows.append(("fluxserve", f["step_ms"]))
    print()
    tt = t["times_ms"]
    if max(tt) > 1.3 * min(tt):
        print(f"warning: torch step times range {min(tt):.1f}..{max(tt):.1f} ms: is something else using the CPU?")
    print(f"{'implementation':<24} {'step ms':>10} {'GFLOP/s':>9}")
    for name, ms in rows:
        print(f"{name:<24} {ms:>10.1f} {gflops(ms):>9.1f}")
    ratio = None
    if f is not None:
        ratio = t["step_ms"] / f["step_ms"]
        print(f"torch_ms / fluxserve_ms = {ratio:.2f}  (>1: fluxserve faster)")
        if "gflops" in f and isinstance(f["gflops"], float):
            own = gflops(f["step_ms"])
            if abs(f["gflops"] - own) > 0.01 * own:
                print(f"note: fluxserve reports {f['gflops']:.1f} GFLOP/s, this script's formula gives {own:.1f}: "
                      "the two FLOP counts differ")

    # Ready-to-paste row for bench/RESULTS.md (columns listed in bench/README.md).
    cmd = "bench/transformer_vs_torch.py " + " ".join(
        [f"--threads {args.threads}", f"--layers {args.layers}", f"--single-layers {args.single_layers}",
         f"--heads {args.heads}", f"--head-dim {head_dim}", f"--latent-grid {args.latent_grid}",
         f"--text-tokens {args.text_tokens}", f"--warmup {args.warmup}", f"--iters {args.iters}",
         f"--dtype {args.dtype}"]
    )
    config = (f"{args.layers}+{args.single_layers} blocks, {args.heads}x{head_dim}, "
              f"{image_tokens}+{args.text_tokens} tok, {args.dtype}")
    fs_ms = f"{f['step_ms']:.1f}" if f is not None else "-"
    fs_gf = f"{gflops(f['step_ms']):.1f}" if f is not None else "-"
    ratio_s = f"{ratio:.2f}" if ratio is not None else "-"
    print()
    print("bench/RESULTS.md row:")
    print(
        f"| {dt.date.today().isoformat()} | {git_rev()} | transformer step, CPU | {cpu_model()} | {args.threads} "
        f"| {config} | torch {torch.__version__.split('+')[0]} | {t['step_ms']:.1f} ({gflops(t['step_ms']):.1f} GFLOP/s) "
        f"| {fs_ms} ({fs_gf} GFLOP/s) | {ratio_s} | `{cmd}` |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
