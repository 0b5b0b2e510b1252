"""GGUF transformer golden fixture (tests/golden/fixtures/gguf_transformer/): the embedded tiny
FLUX transformer (models/tiny-flux/transformer) written as a city96-style GGUF file under the
original BFL tensor names, and diffusers' own output of

    FluxTransformer2DModel.from_single_file(path, config=<dir>, subfolder="transformer",
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32))

on fixed inputs, on the CPU.

  transformer/config.json       the tiny-flux transformer config (D = 64, 2 + 3 blocks)
  transformer/flux-tiny-mixed.gguf
                                BFL names; every type diffusers and fluxserve decode, one per
                                layer: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 (gguf-py's reference quantizers
                                applied to the tiny-flux weights), Q2_K..Q6_K (gguf-py 0.19 cannot
                                quantize K-quants: random blocks with fp16 scales chosen so the
                                layer keeps the original weight's spread), F16, BF16, F32 weights,
                                F32 / F16 1-D tensors
  io.safetensors                inputs, `sample` (diffusers' output) and `deq.<module>`: the first
                                4 rows of every GGUFLinear weight as diffusers dequantizes it
                                (dequantize_gguf_tensor, fp16 block math, then float32)
  meta.json                     versions, the ggml type of each BFL tensor, and how far gguf-py's
                                f32 dequantization is from diffusers' fp16 one

diffusers' BFL converter hard-codes FLUX.1's inner_dim (3072) for the qkv / linear1 splits; for
the tiny model from_single_file is given the same converter with inner_dim = 64 (nothing else
changes). Fixture size ~350 KB.

Usage: python tools/golden/generate_gguf_transformer.py --out tests/golden/fixtures
"""

from __future__ import annotations

import argparse
import inspect
import shutil
import sys
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as T
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import versions, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "models" / "tiny-flux" / "transformer"
GGUF_NAME = "flux-tiny-mixed.gguf"

# f16 scale fields of each K-quant block: (d offset, dmin offset or None).
K_FIELDS = {T.Q2_K: (80, 82), T.Q3_K: (108, None), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208, None)}

# BFL tensor -> ggml type (2-D weights; 1-D tensors are F32 except one F16 bias).
TYPES = {
    "img_in.weight": T.F16,
    "txt_in.weight": T.BF16,                      # K = 48: no block type fits
    "time_in.in_layer.weight": T.Q3_K,           # K = 256
    "time_in.out_layer.weight": T.Q8_0,
    "vector_in.in_layer.weight": T.Q4_0,
    "vector_in.out_layer.weight": T.Q5_1,
    "guidance_in.in_layer.weight": T.Q2_K,       # K = 256
    "guidance_in.out_layer.weight": T.Q8_0,
    "double_blocks.0.txt_mod.lin.weight": T.Q4_1,
    "double_blocks.0.txt_attn.qkv.weight": T.Q5_0,
    "double_blocks.0.img_mlp.2.weight": T.Q4_K,  # K = 4D = 256
    "double_blocks.0.txt_mlp.2.weight": T.Q6_K,
    "double_blocks.1.img_mlp.2.weight": T.Q5_K,
    "double_blocks.1.img_attn.qkv.weight": T.Q4_0,
    "single_blocks.0.linear1.weight": T.Q5_1,
    "single_blocks.2.linear1.weight": T.Q4_1,
    "single_blocks.1.linear2.weight": T.Q5_0,
    "final_layer.linear.weight": T.F32,
    "final_layer.adaLN_modulation.1.weight": T.Q8_0,  # quantized halves swapped on load
    "final_layer.linear.bias": T.F16,
}


def bfl_type(name: str, shape) -> T:
    if name in TYPES:
        return TYPES[name]
    return T.F32 if len(shape) == 1 else T.Q8_0


def to_bfl(sd: dict, num_layers: int, num_single: int) -> dict:
    """Inverse of diffusers' convert_flux_transformer_checkpoint_to_diffusers."""
    out = {}
    cat = lambda *ks: torch.cat([sd[k] for k in ks], dim=0)  # noqa: E731

    def lin(bfl, dif):
        out[f"{bfl}.weight"] = sd[f"{dif}.weight"]
        out[f"{bfl}.bias"] = sd[f"{dif}.bias"]

    for bfl, dif in [("time_in", "timestep_embedder"), ("vector_in", "text_embedder"),
                     ("guidance_in", "guidance_embedder")]:
        lin(f"{bfl}.in_layer", f"time_text_embed.{dif}.linear_1")
        lin(f"{bfl}.out_layer", f"time_text_embed.{dif}.linear_2")
    lin("txt_in", "context_embedder")
    lin("img_in", "x_embedder")
    for i in range(num_layers):
        b, p = f"double_blocks.{i}", f"transformer_blocks.{i}"
        lin(f"{b}.img_mod.lin", f"{p}.norm1.linear")
        lin(f"{b}.txt_mod.lin", f"{p}.norm1_context.linear")
        for st, q, k, v in [("img", "to_q", "to_k", "to_v"),
                            ("txt", "add_q_proj", "add_k_proj", "add_v_proj")]:
            for s in ("weight", "bias"):
                out[f"{b}.{st}_attn.qkv.{s}"] = cat(*(f"{p}.attn.{x}.{s}" for x in (q, k, v)))
        out[f"{b}.img_attn.norm.query_norm.scale"] = sd[f"{p}.attn.norm_q.weight"]
        out[f"{b}.img_attn.norm.key_norm.scale"] = sd[f"{p}.attn.norm_k.weight"]
        out[f"{b}.txt_attn.norm.query_norm.scale"] = sd[f"{p}.attn.norm_added_q.weight"]
        out[f"{b}.txt_attn.norm.key_norm.scale"] = sd[f"{p}.attn.norm_added_k.weight"]
        lin(f"{b}.img_mlp.0", f"{p}.ff.net.0.proj")
        lin(f"{b}.img_mlp.2", f"{p}.ff.net.2")
        lin(f"{b}.txt_mlp.0", f"{p}.ff_context.net.0.proj")
        lin(f"{b}.txt_mlp.2", f"{p}.ff_context.net.2")
        lin(f"{b}.img_attn.proj", f"{p}.attn.to_out.0")
        lin(f"{b}.txt_attn.proj", f"{p}.attn.to_add_out")
    for i in range(num_single):
        b, p = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        lin(f"{b}.modulation.lin", f"{p}.norm.linear")
        for s in ("weight", "bias"):
            out[f"{b}.linear1.{s}"] = cat(*(f"{p}.attn.{x}.{s}" for x in ("to_q", "to_k", "to_v")),
                                          f"{p}.proj_mlp.{s}")
        out[f"{b}.norm.query_norm.scale"] = sd[f"{p}.attn.norm_q.weight"]
        out[f"{b}.norm.key_norm.scale"] = sd[f"{p}.attn.norm_k.weight"]
        lin(f"{b}.linear2", f"{p}.proj_out")
    lin("final_layer.linear", "proj_out")
    for s in ("weight", "bias"):  # diffusers (scale, shift) -> BFL (shift, scale)
        scale, shift = sd[f"norm_out.linear.{s}"].chunk(2, dim=0)
        out[f"final_layer.adaLN_modulation.1.{s}"] = torch.cat([shift, scale], dim=0)
    assert len(out) == len(sd) - 0 - (num_layers * 12 + num_single * 8) + \
        (num_layers * 4 + num_single * 2), "tensor count"
    return out


def kquant_blocks(rng, qtype, w: np.ndarray) -> np.ndarray:
    """Random K-quant blocks for a [n, k] weight whose values have w's spread, about zero mean."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n, k = w.shape
    nb = n * k // block
    raw = rng.integers(0, 256, size=(nb, size), dtype=np.uint8)
    d_off, m_off = K_FIELDS[qtype]

    def deq(d, dmin):
        r = raw.copy()
        r[:, d_off:d_off + 2] = np.full(nb, d, np.float16).view(np.uint8).reshape(nb, 2)
        if m_off is not None:
            r[:, m_off:m_off + 2] = np.full(nb, dmin, np.float16).view(np.uint8).reshape(nb, 2)
        return gguf.quants.dequantize(r.reshape(n, -1), qtype).astype(np.float64), r

    a, _ = deq(1.0, 0.0)
    ratio = 0.0
    if m_off is not None:
        b, _ = deq(0.0, 1.0)
        ratio = -a.mean() / b.mean()  # a + ratio * b has mean ~0
        a = a + ratio * b
    c = w.std() / a.std()
    _, r = deq(c, c * ratio)
    return r.reshape(n, -1)


def diffusers_converter(inner_dim: int):
    from diffusers.loaders import single_file_utils as sfu

    src = inspect.getsource(sfu.convert_flux_transformer_checkpoint_to_diffusers)
    assert "inner_dim = 3072" in src
    ns = dict(vars(sfu))
    exec(src.replace("inner_dim = 3072", f"inner_dim = {inner_dim}"), ns)
    return ns["convert_flux_transformer_checkpoint_to_diffusers"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    out = args.out / "gguf_transformer"
    if out.exists():
        shutil.rmtree(out)
    (out / "transformer").mkdir(parents=True)
    shutil.copy(TINY / "config.json", out / "transformer" / "config.json")

    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig
    from diffusers.loaders import single_file_model
    from diffusers.quantizers.gguf.utils import GGUFLinear, dequantize_gguf_tensor

    ref = FluxTransformer2DModel.from_pretrained(str(TINY), torch_dtype=torch.float32)
    cfg = ref.config
    D = cfg.num_attention_heads * cfg.attention_head_dim
    bfl = to_bfl(ref.state_dict(), cfg.num_layers, cfg.num_single_layers)

    rng = np.random.default_rng(20250101)
    path = out / "transformer" / GGUF_NAME
    w = gguf.GGUFWriter(str(path), "flux")
    w.add_uint32("general.quantization_version", 2)
    types, gguf_py_vs_diffusers = {}, {}
    for name, t in bfl.items():
        x = t.detach().float().numpy().astype(np.float32)
        qt = bfl_type(name, x.shape)
        types[name] = qt.name
        if qt == T.F32:
            w.add_tensor(name, x)
        elif qt == T.F16:
            w.add_tensor(name, x.astype(np.float16))
        elif qt in K_FIELDS:
            w.add_tensor(name, kquant_blocks(rng, qt, x), raw_dtype=qt)
        else:
            w.add_tensor(name, gguf.quants.quantize(x, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # from_single_file with the tiny inner_dim in diffusers' converter (see the docstring).
    single_file_model.SINGLE_FILE_LOADABLE_CLASSES["FluxTransformer2DModel"]["checkpoint_mapping_fn"] = \
        diffusers_converter(D)
    model = FluxTransformer2DModel.from_single_file(
        str(path), config=str(out), subfolder="transformer",
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32))
    model.eval()

    g = torch.Generator().manual_seed(7)
    h2, w2, lt = 4, 6, 10
    tensors = {
        "hidden_states": torch.randn(1, h2 * w2, cfg.in_channels, generator=g),
        "encoder_hidden_states": torch.randn(1, lt, cfg.joint_attention_dim, generator=g),
        "pooled_projections": torch.randn(1, cfg.pooled_projection_dim, generator=g),
        "timestep": torch.tensor([0.75]),
        "guidance": torch.tensor([3.5]),
        "txt_ids": torch.zeros(lt, 3),
    }
    ids = torch.zeros(h2, w2, 3)
    ids[..., 1] = torch.arange(h2)[:, None]
    ids[..., 2] = torch.arange(w2)[None, :]
    tensors["img_ids"] = ids.reshape(-1, 3)
    with torch.no_grad():
        sample = model(**{k: v for k, v in tensors.items()}, return_dict=False)[0]
    tensors["sample"] = sample
    n_gguf_linear = 0
    for mname, mod in model.named_modules():
        if isinstance(mod, GGUFLinear):
            n_gguf_linear += 1
            deq = dequantize_gguf_tensor(mod.weight).to(torch.float32)
            tensors[f"deq.{mname}"] = deq[:4].contiguous()
            qt = T(mod.weight.quant_type)
            if qt not in (T.BF16,):
                raw = mod.weight.as_tensor().view(torch.uint8).numpy()
                ref_f32 = torch.from_numpy(gguf.quants.dequantize(raw, qt).astype(np.float32))
                diff = (ref_f32 - deq).abs().max().item() / max(deq.abs().max().item(), 1e-30)
                gguf_py_vs_diffusers[qt.name] = max(gguf_py_vs_diffusers.get(qt.name, 0.0), diff)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "io.safetensors"))
    meta = {"versions": {**versions(), "gguf": "0.19.0"}, "gguf_file": f"transformer/{GGUF_NAME}",
            "types": types, "gguf_linear_layers": n_gguf_linear,
            "max_rel_diff_gguf_py_f32_vs_diffusers_f16_dequant": gguf_py_vs_diffusers,
            "sample_abs_mean": sample.abs().mean().item()}
    write_json(out / "meta.json", meta)
    print(f"{path}: {path.stat().st_size} bytes, {n_gguf_linear} GGUFLinear layers")


if __name__ == "__main__":
    main()
