#!/usr/bin/env python3
"""The whole FLUX text-to-image pipeline on the CPU: fluxserve vs diffusers + PyTorch.

Builds a mid-size FluxPipeline from the real diffusers/transformers classes (CLIP-L-sized text
tower, a mid-size T5 encoder, a FLUX-architecture transformer, a narrowed FLUX VAE; random weights
from a fixed seed, the tokenizers of models/tiny-flux), saves it in the diffusers layout, then times
one text-to-image call end to end (text encoders, denoising loop, VAE decode, PIL/PNG image) in
diffusers + PyTorch and in `fluxserve generate`, on the same checkpoint with the same thread count,
and compares the two images pixel by pixel (same seed, both computing in float32).

Run with the golden-fixture venv (the same interpreter tools/golden/generate.sh uses):

  .venv-golden/bin/python bench/pipeline_vs_torch.py                  # default config, all cores
  $GOLDEN_PYTHON bench/pipeline_vs_torch.py --threads 2 --size 128 --steps 1 \
      --layers 1 --single-layers 1 --t5-layers 2 --t5-dmodel 256 --clip-layers 2 \
      --vae-channels 32,32,64,64 --max-sequence-length 64                # quick smoke run

See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
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
import warnings
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_util import cpu_model, git_rev, parse_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

try:
    import numpy as np
    import torch
    from PIL import Image

    import diffusers
    import transformers
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

    sys.path.insert(0, str(REPO / "tools" / "golden"))
    from tiny_pipeline import DEV_SCHEDULER, TOKENIZERS, randomise, save_pipeline  # noqa: E402
except ImportError as e:  # pragma: no cover - environment message only
    sys.exit(
        f"pipeline_vs_torch.py: {e}\n"
        "Run it with the golden-fixture venv: $GOLDEN_PYTHON if set, else <repo>/.venv-golden/bin/python\n"
        "(create it with ./tools/golden/generate.sh, or: python3 -m venv .venv-golden && "
        ".venv-golden/bin/pip install -r tools/golden/requirements.txt)."
    )

diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.disable_progress_bar()
# diffusers 0.42 deprecates from_pretrained(torch_dtype=) in favour of dtype=; both load float32 here.
warnings.filterwarnings("ignore", message=".*torch_dtype.*")

PROMPT = "a photo of a red fox in the snow, golden hour"
GUIDANCE = 3.5
SEED = 0


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def rope_axes(head_dim: int) -> list[int]:
    """FLUX.1's [16, 56, 56] at head_dim 128, else the same proportions with even parts."""
    if head_dim == 128:
        return [16, 56, 56]
    a0 = 2 * max(1, round(head_dim / 8 / 2))
    rest = head_dim - a0
    a1 = 2 * (rest // 4)
    axes = [a0, a1, rest - a1]
    if min(axes) < 2 or any(a % 2 for a in axes):
        raise ValueError(f"head dim {head_dim}: no even 3-axis RoPE split")
    return axes


def build_pipeline(args) -> tuple[FluxPipeline, dict]:
    """A dev-like (guidance embedding, dynamic shift) FluxPipeline of the requested size, float32."""
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZERS / "tokenizer")
    tokenizer_2 = T5TokenizerFast.from_pretrained(TOKENIZERS / "tokenizer_2")
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=args.clip_hidden, intermediate_size=4 * args.clip_hidden,
        num_attention_heads=args.clip_hidden // 64, num_hidden_layers=args.clip_layers,
        max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        projection_dim=args.clip_hidden, bos_token_id=0, eos_token_id=2, pad_token_id=1))  # FLUX's legacy ids
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=args.t5_dmodel, d_kv=64, num_heads=args.t5_dmodel // 64,
        d_ff=args.t5_dff, num_layers=args.t5_layers, feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
        dropout_rate=0.0, tie_word_embeddings=False, is_encoder_decoder=False, use_cache=False,
        pad_token_id=0, eos_token_id=1))
    n = len(args.vae_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=tuple(args.vae_channels),
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        layers_per_block=2, norm_num_groups=32, act_fn="silu", sample_size=1024, scaling_factor=0.3611,
        shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, out_channels=None, num_layers=args.layers,
        num_single_layers=args.single_layers, attention_head_dim=args.head_dim,
        num_attention_heads=args.heads, joint_attention_dim=args.t5_dmodel,
        pooled_projection_dim=args.clip_hidden, guidance_embeds=True, axes_dims_rope=rope_axes(args.head_dim))
    params = {}
    for name, m in (("clip", clip), ("t5", t5), ("vae", vae), ("transformer", transformer)):
        randomise(m, gen)
        m.eval()
        params[name] = sum(p.numel() for p in m.parameters())
    params["vae_decoder"] = sum(p.numel() for p in vae.decoder.parameters())
    scheduler = FlowMatchEulerDiscreteScheduler(**DEV_SCHEDULER)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=tokenizer,
                        text_encoder_2=t5, tokenizer_2=tokenizer_2, transformer=transformer)
    return pipe, params


# --------------------------------------------------------------------------------------------
# diffusers + torch
# --------------------------------------------------------------------------------------------


class StageTimer:
    """Times pipe.encode_prompt, the transformer forwards and vae.decode inside one pipe() call.

    text = encode_prompt; decode = vae.decode; denoise = from the end of encode_prompt to the start
    of vae.decode (latent preparation, every transformer forward, every scheduler step), the same
    span as fluxserve's denoise_s; transformer = the sum of the transformer forwards alone."""

    def __init__(self, pipe: FluxPipeline):
        self.reset()
        enc, dec = pipe.encode_prompt, pipe.vae.decode

        def encode_prompt(*a, **k):
            t0 = time.perf_counter()
            r = enc(*a, **k)
            self.enc_end = time.perf_counter()
            self.text += self.enc_end - t0
            return r

        def decode(*a, **k):
            t0 = time.perf_counter()
            self.dec_start = t0
            r = dec(*a, **k)
            self.decode += time.perf_counter() - t0
            return r

        def pre(mod, inputs):
            self._t = time.perf_counter()

        def post(mod, inputs, output):
            self.transformer += time.perf_counter() - self._t

        # Instance attributes shadow the bound methods FluxPipeline.__call__ looks up.
        pipe.encode_prompt = encode_prompt
        pipe.vae.decode = decode
        pipe.transformer.register_forward_pre_hook(pre)
        pipe.transformer.register_forward_hook(post)

    def reset(self):
        self.text = self.decode = self.transformer = 0.0
        self.enc_end = self.dec_start = None

    def split(self) -> dict:
        return dict(encode_s=self.text, denoise_s=self.dec_start - self.enc_end, decode_s=self.decode,
                    transformer_s=self.transformer)


def run_torch(root: Path, args) -> tuple[dict, Image.Image]:
    torch.set_num_threads(args.threads)
    pipe = FluxPipeline.from_pretrained(root, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    timer = StageTimer(pipe)
    kwargs = dict(prompt=PROMPT, height=args.size, width=args.size, guidance_scale=GUIDANCE,
                  max_sequence_length=args.max_sequence_length, output_type="pil")
    gen = lambda: torch.Generator("cpu").manual_seed(SEED)  # noqa: E731
    runs = []
    image = None
    with torch.no_grad():
        for i in range(args.warmup):
            t0 = time.perf_counter()
            pipe(**kwargs, num_inference_steps=1, generator=gen())
            print(f"  torch warmup {i} (1 step): {time.perf_counter() - t0:.2f} s", flush=True)
        for i in range(args.iters):
            timer.reset()
            t0 = time.perf_counter()
            image = pipe(**kwargs, num_inference_steps=args.steps, generator=gen()).images[0]
            r = dict(total_s=time.perf_counter() - t0, **timer.split())
            runs.append(r)
            print(f"  torch iter {i}: " + " ".join(f"{k}={v:.3f}" for k, v in r.items()), flush=True)
    del pipe
    gc.collect()
    return median_run(runs), image


def median_run(runs: list[dict]) -> dict:
    """The run with the median total (its own stage split, so the parts add up)."""
    runs = sorted(runs, key=lambda r: r["total_s"])
    return dict(runs[(len(runs) - 1) // 2], runs_total_s=[r["total_s"] for r in runs])


# --------------------------------------------------------------------------------------------
# fluxserve
# --------------------------------------------------------------------------------------------



def fluxserve_cmd(args, root: Path, steps: int, output: Path) -> list[str]:
    return [
        str(args.fluxserve), "generate", "--model", str(root), "--prompt", PROMPT,
        "--width", str(args.size), "--height", str(args.size), "--steps", str(steps),
        "--guidance", str(GUIDANCE), "--seed", str(SEED),
        "--max-sequence-length", str(args.max_sequence_length), "--threads", str(args.threads),
        "--output", str(output),
    ]


def run_fluxserve_once(cmd: list[str], verbose: bool) -> dict:
    if verbose:
        print("  $ " + shlex.join(cmd), flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if verbose or proc.returncode != 0:
        for line in proc.stdout.splitlines():
            print("  | " + line)
    if proc.returncode != 0:
        raise RuntimeError(f"fluxserve exited with status {proc.returncode}")
    return parse_result(proc.stdout, "total_s")


def run_fluxserve(args, root: Path, work: Path) -> tuple[dict, Image.Image]:
    out = work / "fluxserve.png"
    for i in range(args.warmup):
        r = run_fluxserve_once(fluxserve_cmd(args, root, 1, work / "warmup.png"), verbose=(i == 0))
        print(f"  fluxserve warmup {i} (1 step): {r['total_s']:.2f} s", flush=True)
    runs = []
    for i in range(args.iters):
        r = run_fluxserve_once(fluxserve_cmd(args, root, args.steps, out), verbose=(i == 0))
        runs.append({k: v for k, v in r.items() if isinstance(v, float)})
        print(f"  fluxserve iter {i}: " + " ".join(f"{k}={v:.3f}" for k, v in runs[-1].items()), flush=True)
    with Image.open(out) as im:
        image = im.convert("RGB")
    return median_run(runs), image


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def compare_images(a: Image.Image, b: Image.Image) -> dict:
    x = np.asarray(a.convert("RGB"), dtype=np.int16)
    y = np.asarray(b.convert("RGB"), dtype=np.int16)
    if x.shape != y.shape:
        raise RuntimeError(f"image sizes differ: diffusers {x.shape}, fluxserve {y.shape}")
    d = np.abs(x - y)
    per_px = d.max(axis=-1)
    return dict(within1=float((per_px <= 1).mean()), exact=float((per_px == 0).mean()),
                max_diff=int(d.max()), mean_diff=float(d.mean()), shape=x.shape)


def loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def int_list(s: str) -> list[int]:
    try:
        v = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {s!r}")
    if len(v) < 2:
        raise argparse.ArgumentTypeError("--vae-channels needs at least 2 entries")
    return v


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fluxserve", type=Path, default=REPO / "build" / "fluxserve", help="fluxserve binary")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both sides (default: all cores)")
    ap.add_argument("--size", type=int, default=512, help="image width = height in pixels (default 512: 1024 image tokens)")
    ap.add_argument("--steps", type=int, default=4, help="denoising steps of the timed calls (default 4)")
    ap.add_argument("--max-sequence-length", type=int, default=512, help="T5 tokens (default 512)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed 1-step calls on each side first (default 1)")
    ap.add_argument("--iters", type=int, default=1, help="timed calls on each side; the median total is reported")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32",
                    help="dtype the weights are stored in (both sides compute in float32)")
    ap.add_argument("--seed", type=int, default=1234, help="weights seed (the image seed is always 0)")
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="write the pipeline to DIR/model (and the images to DIR) and keep them")
    ap.add_argument("--torch-only", action="store_true", help="skip the fluxserve run")
    g = ap.add_argument_group("model size")
    g.add_argument("--layers", type=int, default=4, help="transformer double-stream blocks (FLUX.1: 19)")
    g.add_argument("--single-layers", type=int, default=8, help="transformer single-stream blocks (FLUX.1: 38)")
    g.add_argument("--heads", type=int, default=4, help="transformer heads (FLUX.1: 24)")
    g.add_argument("--head-dim", type=int, default=128, help="transformer head dim (FLUX.1: 128)")
    g.add_argument("--clip-layers", type=int, default=12, help="CLIP text layers (CLIP-L: 12)")
    g.add_argument("--clip-hidden", type=int, default=768,
                   help="CLIP hidden size, heads = hidden/64, MLP 4x (CLIP-L: 768)")
    g.add_argument("--t5-layers", type=int, default=8, help="T5 encoder layers (XXL: 24)")
    g.add_argument("--t5-dmodel", type=int, default=1024, help="T5 d_model, heads = d_model/64 (XXL: 4096)")
    g.add_argument("--t5-dff", type=int, default=None, help="T5 gated-GELU d_ff (default 2.75 x d_model: 2816 at 1024)")
    g.add_argument("--vae-channels", type=int_list, default=[64, 128, 256, 256],
                   help="VAE block_out_channels, comma list (FLUX.1: 128,256,512,512); default 64,128,256,256")
    args = ap.parse_args()
    if args.t5_dff is None:
        args.t5_dff = int(round(args.t5_dmodel * 2.75 / 64)) * 64
    if min(args.threads, args.iters, args.steps, args.max_sequence_length) < 1 or args.warmup < 0:
        ap.error("--threads, --iters, --steps and --max-sequence-length must be >= 1, --warmup >= 0")
    scale = 2 ** (len(args.vae_channels) - 1)
    if args.size % (2 * scale):
        ap.error(f"--size must be a multiple of {2 * scale} (VAE factor {scale} x 2x2 patches)")
    if args.t5_dmodel % 64 or args.clip_hidden % 64:
        ap.error("--t5-dmodel and --clip-hidden must be multiples of 64 (head dim 64)")
    if any(c % 32 for c in args.vae_channels):
        ap.error("--vae-channels must be multiples of 32 (GroupNorm groups)")
    try:
        rope_axes(args.head_dim)
    except ValueError as e:
        ap.error(str(e))
    if not args.torch_only and not args.fluxserve.exists():
        sys.exit(f"pipeline_vs_torch.py: {args.fluxserve} not found: build it (./x build) or pass "
                 "--fluxserve PATH, or --torch-only")

    hidden = args.heads * args.head_dim
    image_tokens = (args.size // scale // 2) ** 2
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}, "
          f"python {platform.python_version()}")
    print(f"cpu: {cpu_model()} ({os.cpu_count()} logical cores), threads: {args.threads}, "
          f"load average {loadavg()}")
    print(f"transformer: {args.layers} double + {args.single_layers} single blocks, {args.heads} heads x "
          f"{args.head_dim} (hidden {hidden}), rope {rope_axes(args.head_dim)}, joint {args.t5_dmodel}, "
          f"pooled {args.clip_hidden}, guidance")
    print(f"CLIP: hidden {args.clip_hidden}, {args.clip_layers} layers, {args.clip_hidden // 64} heads; "
          f"T5: d_model {args.t5_dmodel}, {args.t5_layers} layers, {args.t5_dmodel // 64} heads x 64, "
          f"d_ff {args.t5_dff}; VAE: channels {args.vae_channels}, 2 layers/block, 32 groups")
    print(f"call: {args.size}x{args.size} ({image_tokens} image tokens + {args.max_sequence_length} text tokens), "
          f"{args.steps} steps, guidance {GUIDANCE}, seed {SEED}, warmup {args.warmup} x 1 step, "
          f"iters {args.iters}; weights stored {args.dtype}; prompt {PROMPT!r}", flush=True)

    if args.keep:
        work = args.keep
        work.mkdir(parents=True, exist_ok=True)
        root = work / "model"
        if root.exists():
            shutil.rmtree(root)
    else:
        work = Path(tempfile.mkdtemp(prefix="fluxserve-pipeline-bench-"))
        root = work / "model"
    try:
        t0 = time.perf_counter()
        pipe, params = build_pipeline(args)
        save_pipeline(pipe, root, torch.float32 if args.dtype == "f32" else torch.bfloat16)
        del pipe
        gc.collect()
        print("wrote {} in {:.1f} s: parameters (M) clip {:.1f}, t5 {:.1f}, transformer {:.1f}, vae {:.1f} "
              "(decoder {:.1f})".format(root, time.perf_counter() - t0,
                                        *(params[k] / 1e6 for k in ("clip", "t5", "transformer", "vae",
                                                                    "vae_decoder"))), flush=True)

        print("diffusers + torch (FluxPipeline, float32):", flush=True)
        t, t_img = run_torch(root, args)
        if args.keep:
            t_img.save(work / "diffusers.png")
        f = f_img = None
        if not args.torch_only:
            print("fluxserve:", flush=True)
            f, f_img = run_fluxserve(args, root, work)
    finally:
        if args.keep:
            print(f"kept {work} (model/, diffusers.png, fluxserve.png)")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"load average at the end: {loadavg()} (1/5/15 min; well above 0 means another job shared the cores)")
    cmp = None
    if f_img is not None:
        cmp = compare_images(t_img, f_img)
        print(f"images ({cmp['shape'][1]}x{cmp['shape'][0]}): {100 * cmp['within1']:.2f}% of pixels within 1 level "
              f"(all channels), {100 * cmp['exact']:.2f}% identical, max diff {cmp['max_diff']}, "
              f"mean |diff| {cmp['mean_diff']:.4f}")
        if cmp["within1"] < 0.99:
            print("warning: fewer than 99% of pixels agree within 1 level")
    for name, r in (("torch", t), ("fluxserve", f)):
        if r is not None and len(r["runs_total_s"]) > 1 and max(r["runs_total_s"]) > 1.3 * min(r["runs_total_s"]):
            print(f"warning: {name} totals range {min(r['runs_total_s']):.2f}..{max(r['runs_total_s']):.2f} s: "
                  "is something else using the CPU?")

    def fmt(r, k):
        v = r.get(k) if r is not None else None
        return f"{v:.2f}" if isinstance(v, float) else "-"

    rows = [("diffusers+torch " + torch.__version__.split("+")[0], t)]
    if f is not None:
        rows.append(("fluxserve", f))
    print(f"{'implementation':<24} {'total s':>8} {'text s':>8} {'denoise s':>10} {'decode s':>9}")
    for name, r in rows:
        print(f"{name:<24} {fmt(r, 'total_s'):>8} {fmt(r, 'encode_s'):>8} {fmt(r, 'denoise_s'):>10} "
              f"{fmt(r, 'decode_s'):>9}")
    print(f"(torch: transformer forwards alone {t['transformer_s']:.2f} s of the denoise span; totals exclude "
          "model loading on both sides)")
    ratio = None
    if f is not None:
        ratio = t["total_s"] / f["total_s"]
        print(f"torch_total / fluxserve_total = {ratio:.2f}  (>1: fluxserve faster)")
        parts = []
        for k, label in (("encode_s", "text"), ("denoise_s", "denoise"), ("decode_s", "decode")):
            if isinstance(f.get(k), float) and f[k] > 0:
                parts.append(f"{label} {t[k] / f[k]:.2f}")
        if parts:
            print("per stage torch / fluxserve: " + ", ".join(parts))

    # Ready-to-paste row for bench/RESULTS.md.
    cmd = "bench/pipeline_vs_torch.py " + " ".join(
        [f"--threads {args.threads}", f"--size {args.size}", f"--steps {args.steps}",
         f"--max-sequence-length {args.max_sequence_length}", f"--warmup {args.warmup}",
         f"--iters {args.iters}", f"--dtype {args.dtype}", f"--layers {args.layers}",
         f"--single-layers {args.single_layers}", f"--heads {args.heads}", f"--head-dim {args.head_dim}",
         f"--clip-layers {args.clip_layers}", f"--clip-hidden {args.clip_hidden}",
         f"--t5-layers {args.t5_layers}", f"--t5-dmodel {args.t5_dmodel}", f"--t5-dff {args.t5_dff}",
         "--vae-channels " + ",".join(map(str, args.vae_channels))]
    )
    config = (f"{args.size}² px, {args.steps} steps, {args.max_sequence_length} tok; DiT {args.layers}+"
              f"{args.single_layers}×{hidden}, CLIP {args.clip_layers}×{args.clip_hidden}, T5 "
              f"{args.t5_layers}×{args.t5_dmodel}, VAE {'/'.join(map(str, args.vae_channels))}; {args.dtype}")

    def split(r):
        return f"{fmt(r, 'total_s')} ({fmt(r, 'encode_s')} / {fmt(r, 'denoise_s')} / {fmt(r, 'decode_s')})"

    agree = f"{100 * cmp['within1']:.2f}%" if cmp is not None else "-"
    ratio_s = f"{ratio:.2f}" if ratio is not None else "-"
    print()
    print("bench/RESULTS.md row (total s (text / denoise / decode)):")
    print(
        f"| {dt.date.today().isoformat()} | {git_rev()} | pipeline, CPU | {cpu_model()} | {args.threads} | {config} "
        f"| torch {torch.__version__.split('+')[0]} | {split(t)} | {split(f) if f is not None else '-'} "
        f"| {ratio_s} | {agree} | `{cmd}` |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
