"""GGUF golden fixtures (tests/golden/fixtures/gguf/), made with gguf-py (ggml's own Python package:
GGUFWriter, and gguf.quants, the numpy ports of ggml-quants.c) and diffusers' BFL -> diffusers
FLUX converter.

  types.gguf              one tensor per ggml type fluxserve decodes (odd row counts, rows of whole
                          blocks) and metadata of every GGUF value type
  types_expected.safetensors
                          deq.<type>: gguf.quants.dequantize of the stored bytes (f32)
                          src.<type>: the f32 values quantized, q.<type>: gguf.quants.quantize bytes
                          (the simple types, whose reference quantizer we reproduce)
  aligned64.gguf          general.alignment = 64, two tensors
  flux_tiny_bfl.gguf      a tiny FLUX transformer under the original BFL names (Q8_0 / Q5_0 / Q4_1
                          weights, F16 embedders and final layer, F32 1-D tensors, as city96 does)
  flux_tiny_expected.safetensors
                          diffusers keys: convert_flux_transformer_checkpoint_to_diffusers applied
                          to the dequantized BFL tensors; checked to load strictly into
                          FluxTransformer2DModel.

Usage: python tools/golden/generate_gguf.py --out tests/golden/fixtures
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as T
from safetensors.numpy import save_file

SIMPLE = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]
KQUANTS = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
# Byte offsets of the fp16 scale fields in each K-quant block (overwritten with finite values so
# random blocks decode to finite numbers).
K_F16_FIELDS = {T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}


def random_f16(rng, n):
    return (rng.standard_normal(n) * 0.05).astype(np.float16).view(np.uint8).reshape(n, 2)


def quantized(rng, qtype, shape):
    """(source f32 or None, stored bytes as gguf-py lays them out)."""
    if qtype in SIMPLE:
        src = rng.standard_normal(shape).astype(np.float32)
        src[1, :32] = 0.0  # an all-zero block: the d == 0 path
        src[2, 5] = 7.5    # an outlier
        if qtype == T.F32:
            return src, src
        if qtype == T.F16:
            return src, src.astype(np.float16)
        return src, gguf.quants.quantize(src, qtype)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    nblocks = shape[0] * shape[1] // block
    raw = rng.integers(0, 256, size=(nblocks, size), dtype=np.uint8)
    for off in K_F16_FIELDS[qtype]:
        raw[:, off:off + 2] = random_f16(rng, nblocks)
    return None, raw.reshape(shape[0], shape[1] // block * size)


def add_metadata(w: gguf.GGUFWriter) -> None:
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 1.5)
    w.add_bool("test.bool", True)
    w.add_string("test.string", "héllo gguf")
    w.add_uint64("test.u64", 18000000000000000000)
    w.add_int64("test.i64", -9000000000000000000)
    w.add_float64("test.f64", -2.25)
    w.add_array("test.array_i32", [1, -2, 3])
    w.add_array("test.array_str", ["a", "", "ccc"])
    w.add_array("test.array_f32", [0.5, -1.0])


def write_types(out: Path, rng) -> None:
    w = gguf.GGUFWriter(str(out / "types.gguf"), "fluxtest")
    add_metadata(w)
    expected = {}
    for qtype in SIMPLE + KQUANTS:
        block = gguf.GGML_QUANT_SIZES[qtype][0]
        shape = (3, 512) if block == 256 else (5, 96)
        src, data = quantized(rng, qtype, shape)
        name = f"t.{qtype.name}"
        if qtype in (T.F32, T.F16):
            w.add_tensor(name, data)
            stored = data.view(np.uint8).reshape(shape[0], -1)
        else:
            w.add_tensor(name, data, raw_dtype=qtype)
            stored = data
        expected[f"deq.{qtype.name}"] = gguf.quants.dequantize(stored, qtype).astype(np.float32)
        assert expected[f"deq.{qtype.name}"].shape == shape
        if src is not None:
            expected[f"src.{qtype.name}"] = src
            expected[f"q.{qtype.name}"] = np.ascontiguousarray(stored)
    # A 3-D and a 1-D tensor: ne order and shapes.
    w.add_tensor("t.f32_3d", np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4))
    w.add_tensor("t.f32_1d", np.arange(7, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file(expected, str(out / "types_expected.safetensors"))

    w = gguf.GGUFWriter(str(out / "aligned64.gguf"), "fluxtest")
    w.add_custom_alignment(64)
    w.add_tensor("a", np.arange(3, dtype=np.float32))
    w.add_tensor("b", np.arange(32, dtype=np.float32).reshape(1, 32).astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---- tiny FLUX transformer under BFL names ---------------------------------------------------

D, HEAD, IN_CH, JOINT, POOLED, N_DOUBLE, N_SINGLE = 32, 16, 32, 32, 32, 1, 2
CONFIG = dict(patch_size=1, in_channels=IN_CH, num_layers=N_DOUBLE, num_single_layers=N_SINGLE,
              attention_head_dim=HEAD, num_attention_heads=D // HEAD, joint_attention_dim=JOINT,
              pooled_projection_dim=POOLED, guidance_embeds=True, axes_dims_rope=(4, 6, 6))


def bfl_shapes() -> dict:
    s = {}

    def lin(name, n, k):
        s[f"{name}.weight"] = (n, k)
        s[f"{name}.bias"] = (n,)

    lin("img_in", D, IN_CH)
    lin("txt_in", D, JOINT)
    for emb, k in (("time_in", 256), ("vector_in", POOLED), ("guidance_in", 256)):
        lin(f"{emb}.in_layer", D, k)
        lin(f"{emb}.out_layer", D, D)
    for i in range(N_DOUBLE):
        b = f"double_blocks.{i}"
        for st in ("img", "txt"):
            lin(f"{b}.{st}_mod.lin", 6 * D, D)
            lin(f"{b}.{st}_attn.qkv", 3 * D, D)
            s[f"{b}.{st}_attn.norm.query_norm.scale"] = (HEAD,)
            s[f"{b}.{st}_attn.norm.key_norm.scale"] = (HEAD,)
            lin(f"{b}.{st}_attn.proj", D, D)
            lin(f"{b}.{st}_mlp.0", 4 * D, D)
            lin(f"{b}.{st}_mlp.2", D, 4 * D)
    for i in range(N_SINGLE):
        b = f"single_blocks.{i}"
        lin(f"{b}.linear1", 3 * D + 4 * D, D)
        lin(f"{b}.linear2", D, D + 4 * D)
        s[f"{b}.norm.query_norm.scale"] = (HEAD,)
        s[f"{b}.norm.key_norm.scale"] = (HEAD,)
        lin(f"{b}.modulation.lin", 3 * D, D)
    lin("final_layer.linear", IN_CH, D)
    lin("final_layer.adaLN_modulation.1", 2 * D, D)
    return s


def bfl_type(name: str, shape) -> T:
    if len(shape) == 1:
        return T.F32
    if name.split(".")[0] in ("img_in", "txt_in", "time_in", "vector_in", "guidance_in", "final_layer"):
        return T.F16
    if name == "double_blocks.0.txt_attn.qkv.weight":
        return T.Q5_0
    if name == "single_blocks.1.linear1.weight":
        return T.Q4_1
    return T.Q8_0


def diffusers_converter():
    """diffusers' converter with its hard-coded FLUX.1 inner_dim (3072) set to the tiny model's."""
    from diffusers.loaders import single_file_utils as sfu

    src = inspect.getsource(sfu.convert_flux_transformer_checkpoint_to_diffusers)
    assert "inner_dim = 3072" in src
    src = src.replace("inner_dim = 3072", f"inner_dim = {D}")
    ns = dict(vars(sfu))
    exec(src, ns)
    return ns["convert_flux_transformer_checkpoint_to_diffusers"]


def write_flux(out: Path, rng) -> None:
    w = gguf.GGUFWriter(str(out / "flux_tiny_bfl.gguf"), "flux")
    w.add_uint32("general.quantization_version", 2)
    dequantized = {}
    types = {}
    for name, shape in bfl_shapes().items():
        x = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        qt = bfl_type(name, shape)
        types[name] = qt.name
        if qt == T.F32:
            w.add_tensor(name, x)
            dequantized[name] = x
        elif qt == T.F16:
            h = x.astype(np.float16)
            w.add_tensor(name, h)
            dequantized[name] = h.astype(np.float32)
        else:
            q = gguf.quants.quantize(x, qt)
            w.add_tensor(name, q, raw_dtype=qt)
            dequantized[name] = gguf.quants.dequantize(q, qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    ckpt = {k: torch.from_numpy(v.copy()) for k, v in dequantized.items()}
    converted = diffusers_converter()(ckpt)
    assert not ckpt, f"unconverted BFL keys: {sorted(ckpt)}"
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel(**CONFIG)
    missing, unexpected = model.load_state_dict(converted, strict=True), None
    del missing, unexpected
    save_file({k: v.contiguous().numpy() for k, v in converted.items()},
              str(out / "flux_tiny_expected.safetensors"))
    return types


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True, help="fixtures root (writes <out>/gguf)")
    args = ap.parse_args()
    out = args.out / "gguf"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240617)
    write_types(out, rng)
    types = write_flux(out, rng)
    import diffusers

    meta = {"gguf": gguf.__version__ if hasattr(gguf, "__version__") else "0.19.0",
            "numpy": np.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "flux_tiny_config": CONFIG, "flux_tiny_types": types}
    with open(out / "meta.json", "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
