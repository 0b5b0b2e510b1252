#!/usr/bin/env python3
"""Generate golden fixtures for fluxserve from the real diffusers classes.

Writes, under the fixtures directory (default: tests/golden/fixtures):

  versions.json                         library versions used
  <transformer case>/model/...          tiny FluxPipeline-layout checkpoint (transformer + scheduler)
  <transformer case>/inputs.safetensors forward() arguments, named like the arguments
  <transformer case>/outputs.safetensors `sample` = transformer(...).sample (float32)
  <transformer case>/meta.json          shapes, norms and the float32-vs-float64 reference gap
  scheduler/cases.json                  index of the scheduler tables
  scheduler/<config>/scheduler_config.json
  scheduler/<config>/tables.safetensors sigmas/timesteps as FluxPipeline.__call__ makes them,
                                        plus FlowMatchEulerDiscreteScheduler.step fixtures

Everything runs on CPU in float32 (plus a float64 re-run of each transformer case that is only
used to report how far the float32 reference itself is from the exact answer).
Deterministic: every case seeds torch.manual_seed itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

import diffusers
import safetensors
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps
from safetensors.torch import load_file, save_file

import sys  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import versions, write_json  # noqa: E402

# --------------------------------------------------------------------------------------------
# Scheduler configurations
# --------------------------------------------------------------------------------------------

# flux-spec §2.3: FLUX.1-dev / FLUX.1-schnell scheduler_config.json values.
DEV_SCHEDULER = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)
SCHNELL_SCHEDULER = dict(DEV_SCHEDULER, shift=1.0, use_dynamic_shifting=False)

SCHEDULER_CONFIG_CASES: dict[str, dict] = {
    "flux_dev": DEV_SCHEDULER,
    "flux_schnell": SCHNELL_SCHEDULER,
    "static_shift3": dict(DEV_SCHEDULER, shift=3.0, use_dynamic_shifting=False),
    "dev_linear_terminal": dict(DEV_SCHEDULER, time_shift_type="linear", shift_terminal=0.02),
    "custom_dyn": dict(
        DEV_SCHEDULER,
        base_image_seq_len=128,
        max_image_seq_len=2048,
        base_shift=0.3,
        max_shift=1.4,
    ),
}

# (num_inference_steps, image_seq_len)
SCHEDULER_NL_CASES = [(1, 256), (4, 1024), (7, 77), (28, 4096), (50, 4096), (20, 6000)]

STEP_N, STEP_L = 4, 1024
STEP_SHAPE = (2, 15, 16)

# --------------------------------------------------------------------------------------------
# Transformer cases
# --------------------------------------------------------------------------------------------

TRANSFORMER_CASES = [
    dict(
        name="flux_dev_tiny",
        seed=1001,
        config=dict(
            patch_size=1,
            in_channels=16,
            num_layers=2,
            num_single_layers=3,
            attention_head_dim=16,
            num_attention_heads=3,
            joint_attention_dim=40,
            pooled_projection_dim=24,
            guidance_embeds=True,
            axes_dims_rope=[4, 6, 6],
        ),
        batch=2,
        grid=(6, 10),  # (rows, cols) of 2x2 latent patches -> Li = 60
        text_len=7,
        timestep=[0.75, 0.2],  # t/1000 as the pipeline passes it
        guidance=[3.5, 5.0],
        storage_dtype=torch.float32,
        max_shard_size=None,
        scheduler=DEV_SCHEDULER,
    ),
    dict(
        name="flux_schnell_tiny",
        seed=1002,
        config=dict(
            patch_size=1,
            in_channels=64,
            num_layers=1,
            num_single_layers=2,
            attention_head_dim=24,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=20,
            guidance_embeds=False,
            axes_dims_rope=[8, 8, 8],
        ),
        batch=1,
        grid=(5, 3),
        text_len=12,
        timestep=[1.0],
        guidance=None,
        storage_dtype=torch.bfloat16,
        max_shard_size="150KB",
        scheduler=SCHNELL_SCHEDULER,
    ),
    dict(
        name="flux_dev_wide",
        seed=1003,
        config=dict(
            patch_size=1,
            in_channels=8,
            out_channels=12,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=16,
            pooled_projection_dim=8,
            guidance_embeds=True,
            axes_dims_rope=[2, 2, 4],
        ),
        batch=1,
        grid=(9, 4),
        text_len=5,
        timestep=[0.4375],
        guidance=[4.0],
        storage_dtype=torch.float16,
        max_shard_size=None,
        scheduler=DEV_SCHEDULER,
    ),
]




def rms(t: torch.Tensor) -> float:
    return float(t.double().pow(2).mean().sqrt())


# --------------------------------------------------------------------------------------------
# Transformer fixtures
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def rerandomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Overwrite every parameter with non-trivial random values.

    diffusers' default init leaves RMSNorm weights at exactly 1 (so a reimplementation that forgot
    them would still match). Re-draw everything so every code path matters:
      * Linear weights:  N(0, (0.8/sqrt(fan_in))^2)  - keeps activations O(1) through the blocks
      * Linear biases:   N(0, 0.1^2)
      * RMSNorm weights: 1 + N(0, 0.2^2)
    """
    for name, p in model.named_parameters():
        if p.ndim == 2:
            fan_in = p.shape[1]
            p.copy_(torch.randn(p.shape, generator=gen) * (0.8 / math.sqrt(fan_in)))
        elif name.endswith(".bias"):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        elif p.ndim == 1:
            p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.2)
        else:
            raise RuntimeError(f"unexpected parameter {name} {tuple(p.shape)}")


def model_index() -> dict:
    return {
        "_class_name": "FluxPipeline",
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "transformer": ["diffusers", "FluxTransformer2DModel"],
    }


def make_transformer_case(case: dict, out_root: Path) -> dict:
    name = case["name"]
    case_dir = out_root / name
    if case_dir.exists():
        shutil.rmtree(case_dir)
    model_dir = case_dir / "model"
    model_dir.mkdir(parents=True)

    torch.manual_seed(case["seed"])
    gen = torch.Generator().manual_seed(case["seed"])

    cfg = case["config"]
    head_dim = cfg["attention_head_dim"]
    assert sum(cfg["axes_dims_rope"]) == head_dim, name
    assert all(d % 2 == 0 for d in cfg["axes_dims_rope"]), name

    # ---- model: build, re-randomise, save in the storage dtype -------------------------------
    model = FluxTransformer2DModel(**cfg)
    rerandomise(model, gen)
    model = model.to(case["storage_dtype"])
    save_kwargs = dict(safe_serialization=True)
    if case["max_shard_size"] is not None:
        save_kwargs["max_shard_size"] = case["max_shard_size"]
    model.save_pretrained(model_dir / "transformer", **save_kwargs)

    scheduler = FlowMatchEulerDiscreteScheduler(**case["scheduler"])
    scheduler.save_config(model_dir / "scheduler")
    write_json(model_dir / "model_index.json", model_index())
    del model

    # ---- reload from disk in float32: weights are exactly the (rounded) stored ones ----------
    model = FluxTransformer2DModel.from_pretrained(model_dir / "transformer", torch_dtype=torch.float32)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    shards = sorted(p.name for p in (model_dir / "transformer").glob("*.safetensors"))
    if case["max_shard_size"] is not None:
        assert len(shards) >= 2, f"{name}: expected >=2 shards, got {shards}"
        assert (model_dir / "transformer" / "diffusion_pytorch_model.safetensors.index.json").exists()
    else:
        assert shards == ["diffusion_pytorch_model.safetensors"], shards

    # ---- inputs --------------------------------------------------------------------------------
    B = case["batch"]
    rows, cols = case["grid"]
    Li = rows * cols
    Lt = case["text_len"]
    hidden_states = torch.randn(B, Li, cfg["in_channels"], generator=gen)
    encoder_hidden_states = torch.randn(B, Lt, cfg["joint_attention_dim"], generator=gen)
    pooled_projections = torch.randn(B, cfg["pooled_projection_dim"], generator=gen)
    timestep = torch.tensor(case["timestep"], dtype=torch.float32)
    assert timestep.shape == (B,) and bool(((timestep > 0) & (timestep <= 1)).all())
    # exactly as FluxPipeline.prepare_latents does (height//2, width//2 = patch grid)
    img_ids = FluxPipeline._prepare_latent_image_ids(B, rows, cols, "cpu", torch.float32)
    txt_ids = torch.zeros(Lt, 3, dtype=torch.float32)
    inputs = dict(
        hidden_states=hidden_states,
        encoder_hidden_states=encoder_hidden_states,
        pooled_projections=pooled_projections,
        timestep=timestep,
        img_ids=img_ids,
        txt_ids=txt_ids,
    )
    if cfg["guidance_embeds"]:
        inputs["guidance"] = torch.tensor(case["guidance"], dtype=torch.float32)
        assert inputs["guidance"].shape == (B,)
    else:
        assert case["guidance"] is None
    for k, v in inputs.items():
        assert v.dtype == torch.float32, k
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(case_dir / "inputs.safetensors"))

    # ---- reference output ----------------------------------------------------------------------
    with torch.no_grad():
        out = model(**inputs, return_dict=True).sample
        assert out.dtype == torch.float32
        out_channels = cfg.get("out_channels") or cfg["in_channels"]
        assert out.shape == (B, Li, out_channels), out.shape
        assert torch.isfinite(out).all()
        # float64 re-run: how far the float32 reference is from the exact result
        model64 = FluxTransformer2DModel.from_pretrained(model_dir / "transformer", torch_dtype=torch.float64)
        model64.eval()
        out64 = model64(**{k: v.double() for k, v in inputs.items()}, return_dict=True).sample
    save_file({"sample": out.contiguous()}, str(case_dir / "outputs.safetensors"))

    out_rms = rms(out)
    if not (0.05 < out_rms < 100.0):
        raise RuntimeError(f"{name}: output rms {out_rms} is trivial or exploding")
    # a different timestep must change the output (i.e. conditioning is not negligible)
    with torch.no_grad():
        alt = dict(inputs, timestep=inputs["timestep"] * 0.5)
        sens = rms(model(**alt).sample - out) / out_rms

    diff64 = (out.double() - out64).abs()
    meta = dict(
        case=name,
        seed=case["seed"],
        storage_dtype=str(case["storage_dtype"]).replace("torch.", ""),
        shards=shards,
        num_parameters=n_params,
        config=cfg,
        batch=B,
        latent_grid_rows_cols=[rows, cols],
        image_seq_len=Li,
        text_seq_len=Lt,
        timestep=case["timestep"],
        guidance=case["guidance"],
        output_shape=list(out.shape),
        output_rms=out_rms,
        output_norm=float(out.double().norm()),
        output_absmax=float(out.abs().max()),
        rel_change_when_timestep_halved=sens,
        float32_vs_float64_max_abs=float(diff64.max()),
        float32_vs_float64_rel_l2=float(diff64.norm() / out64.norm()),
        note="sample computed on CPU in float32 from the stored (dtype-rounded) weights",
    )
    write_json(case_dir / "meta.json", meta)
    return meta


# --------------------------------------------------------------------------------------------
# Scheduler fixtures
# --------------------------------------------------------------------------------------------


def pipeline_timesteps(scheduler: FlowMatchEulerDiscreteScheduler, N: int, L: int):
    """Exactly FluxPipeline.__call__ step 5 ("Prepare timesteps")."""
    sigmas = np.linspace(1.0, 1 / N, N)
    if hasattr(scheduler.config, "use_flow_sigmas") and scheduler.config.use_flow_sigmas:
        sigmas = None
    mu = calculate_shift(
        L,
        scheduler.config.get("base_image_seq_len", 256),
        scheduler.config.get("max_image_seq_len", 4096),
        scheduler.config.get("base_shift", 0.5),
        scheduler.config.get("max_shift", 1.15),
    )
    timesteps, n = retrieve_timesteps(scheduler, N, "cpu", sigmas=sigmas, mu=mu)
    assert n == N
    return timesteps, mu


def make_scheduler_cases(out_root: Path) -> dict:
    sched_root = out_root / "scheduler"
    if sched_root.exists():
        shutil.rmtree(sched_root)
    sched_root.mkdir(parents=True)

    index = dict(
        description=(
            "FlowMatchEulerDiscreteScheduler tables computed exactly as FluxPipeline.__call__ does: "
            "sigmas=np.linspace(1,1/N,N), mu=calculate_shift(L, config...), "
            "retrieve_timesteps(scheduler, N, 'cpu', sigmas=sigmas, mu=mu). "
            "sigmas_N{N}_L{L}: scheduler.sigmas (N+1, float32, last is 0). "
            "timesteps_N{N}_L{L}: scheduler.timesteps (N, float32). "
            "step_prev_N{N}_L{L}_i{k}: scheduler.step(step_model_output, timesteps[k], step_sample).prev_sample "
            "with step index k (set_begin_index(k)), each from the same step_sample, all float32. "
            "step_bf16_*: same with sample and model_output in bfloat16 (stored as bfloat16; computed by CPU torch)."
        ),
        config_cases=list(SCHEDULER_CONFIG_CASES.keys()),
        steps_seq_len=[[n, l] for n, l in SCHEDULER_NL_CASES],
        table_names=[
            {"N": n, "L": l, "sigmas": f"sigmas_N{n}_L{l}", "timesteps": f"timesteps_N{n}_L{l}"}
            for n, l in SCHEDULER_NL_CASES
        ],
        step=dict(
            N=STEP_N,
            L=STEP_L,
            shape=list(STEP_SHAPE),
            sample="step_sample",
            model_output="step_model_output",
            prev=[f"step_prev_N{STEP_N}_L{STEP_L}_i{k}" for k in range(STEP_N)],
            sample_bf16="step_bf16_sample",
            model_output_bf16="step_bf16_model_output",
            prev_bf16=[f"step_bf16_prev_N{STEP_N}_L{STEP_L}_i{k}" for k in range(STEP_N)],
        ),
        mu={},
        nonfinite={},
        nonfinite_note=(
            "Tables diffusers itself fills with NaN: with shift_terminal set and N=1 the only sigma is 1.0, so "
            "stretch_shift_to_terminal divides 0 by 0 (scale_factor = (1 - sigmas[-1]) / (1 - shift_terminal) = 0)."
        ),
    )

    for ci, (cname, ccfg) in enumerate(SCHEDULER_CONFIG_CASES.items()):
        cdir = sched_root / cname
        cdir.mkdir()
        FlowMatchEulerDiscreteScheduler(**ccfg).save_config(cdir)
        # Reload from the saved config, as the pipeline would.
        cfg_loaded = FlowMatchEulerDiscreteScheduler.load_config(cdir)
        tensors: dict[str, torch.Tensor] = {}
        index["mu"][cname] = {}
        for N, L in SCHEDULER_NL_CASES:
            sch = FlowMatchEulerDiscreteScheduler.from_config(cfg_loaded)
            timesteps, mu = pipeline_timesteps(sch, N, L)
            assert sch.sigmas.dtype == torch.float32 and timesteps.dtype == torch.float32
            assert sch.sigmas.shape == (N + 1,) and timesteps.shape == (N,)
            tensors[f"sigmas_N{N}_L{L}"] = sch.sigmas.clone()
            tensors[f"timesteps_N{N}_L{L}"] = timesteps.clone()
            index["mu"][cname][f"N{N}_L{L}"] = mu
            for key in (f"sigmas_N{N}_L{L}", f"timesteps_N{N}_L{L}"):
                if not bool(torch.isfinite(tensors[key]).all()):
                    index["nonfinite"].setdefault(cname, []).append(key)

        # ---- step fixtures ----------------------------------------------------------------------
        gen = torch.Generator().manual_seed(2000 + ci)
        torch.manual_seed(2000 + ci)
        sample = torch.randn(STEP_SHAPE, generator=gen)
        model_output = torch.randn(STEP_SHAPE, generator=gen)
        tensors["step_sample"] = sample
        tensors["step_model_output"] = model_output
        sample_bf = sample.to(torch.bfloat16)
        mo_bf = model_output.to(torch.bfloat16)
        tensors["step_bf16_sample"] = sample_bf
        tensors["step_bf16_model_output"] = mo_bf

        sch = FlowMatchEulerDiscreteScheduler.from_config(cfg_loaded)
        timesteps, _ = pipeline_timesteps(sch, STEP_N, STEP_L)
        for k in range(STEP_N):
            for tag, s, mo in (("", sample, model_output), ("bf16_", sample_bf, mo_bf)):
                # set_timesteps leaves _step_index=_begin_index=None; step() then calls
                # _init_step_index, which takes _begin_index when it is set.
                sch._step_index = None
                sch.set_begin_index(k)
                prev = sch.step(mo, timesteps[k], s, return_dict=True).prev_sample
                assert sch.step_index == k + 1
                assert prev.dtype == mo.dtype
                if tag == "":
                    # cross-check against the Euler update written out
                    dt = sch.sigmas[k + 1] - sch.sigmas[k]
                    ref = s.to(torch.float32) + dt * mo
                    assert torch.equal(prev, ref), (cname, k)
                tensors[f"step_{tag}prev_N{STEP_N}_L{STEP_L}_i{k}"] = prev.clone()

        save_file({k: v.contiguous() for k, v in tensors.items()}, str(cdir / "tables.safetensors"))

    write_json(sched_root / "cases.json", index)
    return index


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------


def verify(out_root: Path, metas: list[dict], sched_index: dict) -> None:
    for meta in metas:
        cdir = out_root / meta["case"]
        inputs = load_file(str(cdir / "inputs.safetensors"))
        outputs = load_file(str(cdir / "outputs.safetensors"))
        assert set(outputs) == {"sample"}
        assert list(outputs["sample"].shape) == meta["output_shape"]
        model = FluxTransformer2DModel.from_pretrained(cdir / "model" / "transformer", torch_dtype=torch.float32)
        model.eval()
        with torch.no_grad():
            again = model(**inputs).sample
        # same process, same machine: must be bit-identical
        assert torch.equal(again, outputs["sample"]), meta["case"]
        sch = FlowMatchEulerDiscreteScheduler.from_pretrained(cdir / "model" / "scheduler")
        assert isinstance(sch, FlowMatchEulerDiscreteScheduler)
        mi = json.loads((cdir / "model" / "model_index.json").read_text())
        assert mi["_class_name"] == "FluxPipeline"
    for cname in sched_index["config_cases"]:
        t = load_file(str(out_root / "scheduler" / cname / "tables.safetensors"))
        for e in sched_index["table_names"]:
            assert t[e["sigmas"]].shape == (e["N"] + 1,)
            assert t[e["timesteps"]].shape == (e["N"],)
            assert float(t[e["sigmas"]][-1]) == 0.0
        for key in sched_index["step"]["prev"] + sched_index["step"]["prev_bf16"]:
            assert t[key].shape == STEP_SHAPE


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "tests" / "golden" / "fixtures"))
    args = ap.parse_args()
    out_root = Path(args.out).resolve()
    out_root.mkdir(parents=True, exist_ok=True)

    # Reproducibility: CPU only, one thread, deterministic kernels.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)

    write_json(out_root / "versions.json", versions())

    metas = []
    for case in TRANSFORMER_CASES:
        meta = make_transformer_case(case, out_root)
        metas.append(meta)
        print(
            f"[transformer] {meta['case']:18s} params={meta['num_parameters']:7d} "
            f"shards={len(meta['shards'])} out={tuple(meta['output_shape'])} "
            f"rms={meta['output_rms']:.4f} norm={meta['output_norm']:.4f} "
            f"t-sens={meta['rel_change_when_timestep_halved']:.3f} "
            f"f32-vs-f64 max|d|={meta['float32_vs_float64_max_abs']:.2e}"
        )

    sched_index = make_scheduler_cases(out_root)
    print(f"[scheduler] configs={sched_index['config_cases']} (N,L)={sched_index['steps_seq_len']}")

    verify(out_root, metas, sched_index)
    # safetensors writes 0600 files; make the tree readable like the rest of the checkout
    for p in out_root.rglob("*"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    print(f"[verify] fixtures under {out_root} load back and reproduce")
    return 0


if __name__ == "__main__":
    sys.exit(main())
