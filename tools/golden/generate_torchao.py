#!/usr/bin/env python3
"""Golden fixtures for torchao quantization formats (fluxserve engine/quant/torchao_formats).

Writes, under FIXTURES_ROOT/torchao/:

  <case>.safetensors   `w` (the weight, f32 or bf16), `x` [M, K] f32, `bias` [N] f32 and, per
                       format F: `F.qdata` (int codes / fp8 bytes, unpacked [N, K]),
                       `F.scale` (f32 [N, G] or [1, 1]), `F.zero_point` (int4wo: f32 float-domain
                       zero; int4dq/uintX: int32), `F.deq` (torchao's dequantize, f32 [N, K]),
                       `F.y` (f32 cases: the quantized linear's output on x), `F.xq`/`F.xscale`/
                       `F.xzero` (dynamic formats: the quantized activation)
  meta.json            per case and format: quant_type, group_size, how the linear reference
                       was computed (`linear_source`), expected errors, library versions

What runs where (torchao 0.18, CPU): int8wo/int8dq (Int8Tensor), float8wo (Float8Tensor) and
int4wo through the CPU tinygemm layout (PrototypeInt4WeightOnlyConfig / Int4OpaqueTensor: the
default PLAIN Int4WeightOnlyConfig needs mslk/CUDA) run `quantize_(nn.Linear)` + forward here.
float8dq needs CUDA SM89+, int4dq (DA8W4) a torchao C++ kernel the wheel lacks, fpX/uintX
configs were removed after 0.14: for those the weights come from torchao's primitives and the
linear is the primitive-level reference (`linear_source: "primitives"`).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import versions, write_json  # noqa: E402

warnings.filterwarnings("ignore")

import torchao  # noqa: E402
from torchao.prototype.custom_fp_utils import _f32_to_floatx_unpacked  # noqa: E402,F401
from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig  # noqa: E402
from torchao.quantization import (  # noqa: E402
    Float8WeightOnlyConfig,
    Int8DynamicActivationInt8WeightConfig,
    Int8WeightOnlyConfig,
    PerRow,
    PerTensor,
    quantize_,
)
from torchao.quantization.quant_primitives import (  # noqa: E402
    MappingType,
    _choose_qparams_affine_floatx,
    _choose_qparams_affine_tinygemm,
    _dequantize_affine_floatx,
    _dequantize_affine_tinygemm,
    _quantize_affine_floatx,
    _quantize_affine_tinygemm,
    choose_qparams_affine,
    dequantize_affine,
    quantize_affine,
)
from torchao.quantization.quantize_.workflows.float8.float8_tensor import Float8Tensor  # noqa: E402

F32_EPS = torch.finfo(torch.float32).eps


def f32(t):
    return t.detach().to(torch.float32).contiguous()


def module_for(w, bias, config):
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=True, dtype=w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(bias.to(w.dtype))
    quantize_(lin, config)
    return lin


def int8(w, x, bias, dynamic):
    cfg = Int8DynamicActivationInt8WeightConfig() if dynamic else Int8WeightOnlyConfig()
    lin = module_for(w, bias, cfg)
    q = lin.weight
    out = {"qdata": q.qdata, "scale": f32(q.scale).reshape(w.shape[0], 1), "deq": f32(q.dequantize())}
    if dynamic:
        s, z = choose_qparams_affine(x, MappingType.SYMMETRIC, [1, x.shape[1]], torch.int8, -128, 127,
                                     eps=F32_EPS, scale_dtype=torch.float32, zero_point_dtype=torch.int8)
        out["xq"] = quantize_affine(x, [1, x.shape[1]], s, z, torch.int8, -128, 127)
        out["xscale"] = s.reshape(-1, 1)
    if w.dtype == torch.float32:
        out["y"] = f32(lin(x))
    return out, "torchao quantize_ + forward (CPU)"


def int4wo(w, x, bias, gs):
    # The math of Int4OpaqueTensor.from_hp (CPU tinygemm) and of Int4TilePackedTo4dTensor.
    block = [1, gs]
    scale, zero = _choose_qparams_affine_tinygemm(w, MappingType.ASYMMETRIC, block, torch.int32, 0, 15,
                                                  1e-6, None, w.dtype)
    q = _quantize_affine_tinygemm(w, block, scale, zero, torch.int32, 0, 15)
    deq = _dequantize_affine_tinygemm(q, block, scale, zero, torch.int32, 0, 15, output_dtype=w.dtype)
    n = w.shape[0]
    out = {"qdata": q.to(torch.uint8), "scale": f32(scale).reshape(n, -1),
           "zero_point": f32(zero).reshape(n, -1), "deq": f32(deq)}
    if w.dtype == torch.float32:
        # The CPU int4 pack wants N % 16 == 0: pad with zero rows (rows quantize independently).
        pad = (-n) % 16
        wp = torch.cat([w, torch.zeros(pad, w.shape[1], dtype=w.dtype)])
        bp = torch.cat([bias, torch.zeros(pad)])
        lin = module_for(wp, bp, PrototypeInt4WeightOnlyConfig(group_size=gs))
        out["y"] = f32(lin(x))[:, :n].contiguous()
    return out, "torchao quantize_(PrototypeInt4WeightOnlyConfig) + forward (CPU tinygemm, N padded to 16)"


def int4dq(w, x, bias, gs):
    # Int4OpaqueTensor.from_hp_da8w4 weights and _da8w4_linear's asymmetric activations.
    block = [1, gs]
    s, z = choose_qparams_affine(w, MappingType.ASYMMETRIC, block, torch.uint8, 0, 15, eps=1e-6,
                                 scale_dtype=torch.float32, zero_point_dtype=torch.int32)
    q = quantize_affine(w, block, s, z, torch.uint8, 0, 15)
    deq = dequantize_affine(q, block, s, z, torch.uint8, 0, 15, output_dtype=w.dtype)
    n, k = w.shape
    out = {"qdata": q, "scale": f32(s).reshape(n, -1), "zero_point": z.reshape(n, -1).to(torch.int32),
           "deq": f32(deq)}
    if w.dtype == torch.float32:
        xs, xz = choose_qparams_affine(x, MappingType.ASYMMETRIC, [1, k], torch.uint8, 0, 255, eps=F32_EPS,
                                       scale_dtype=torch.float32, zero_point_dtype=torch.int32)
        xq = quantize_affine(x, [1, k], xs, xz, torch.uint8, 0, 255)
        out.update(xq=xq, xscale=xs.reshape(-1, 1), xzero=xz.reshape(-1, 1).to(torch.int32))
        # Exact integer dot per group, groups combined in float64 with both scales.
        xi = (xq.to(torch.int64) - xz.reshape(-1, 1).to(torch.int64)).reshape(x.shape[0], 1, k // gs, gs)
        wi = (q.to(torch.int64).reshape(n, k // gs, gs) - z.reshape(n, -1, 1).to(torch.int64)).reshape(1, n, k // gs, gs)
        acc = (xi * wi).sum(-1).to(torch.float64)  # [M, N, G]
        y = (acc * xs.reshape(-1, 1, 1).double() * s.reshape(1, n, -1).double()).sum(-1)
        out["y"] = (y + bias.double()).to(torch.float32)
    return out, "primitives (DA8W4 kernel not in the CPU wheel): int32 per group, float64 combine"


def float8wo(w, x, bias, dt):
    lin = module_for(w, bias, Float8WeightOnlyConfig(weight_dtype=dt))
    q = lin.weight
    out = {"qdata": q.qdata, "scale": f32(q.scale).reshape(w.shape[0], 1), "deq": f32(q.dequantize())}
    if w.dtype == torch.float32:
        out["y"] = f32(lin(x))
    return out, "torchao quantize_ + forward (CPU)"


def float8dq(w, x, bias, per_row):
    gran = PerRow() if per_row else PerTensor()
    q = Float8Tensor.from_hp(w, float8_dtype=torch.float8_e4m3fn, granularity=gran)
    out = {"qdata": q.qdata, "scale": f32(q.scale).reshape(-1, 1) if per_row else f32(q.scale).reshape(1, 1),
           "deq": f32(q.dequantize())}
    if w.dtype == torch.float32:
        a = Float8Tensor.from_hp(x, float8_dtype=torch.float8_e4m3fn, granularity=gran)
        out.update(xq=a.qdata, xscale=f32(a.scale).reshape(-1, 1) if per_row else f32(a.scale).reshape(1, 1))
        # torch._scaled_mm semantics (exact fp8 products, then scale_a * scale_b).
        acc = a.qdata.to(torch.float64) @ q.qdata.to(torch.float64).t()
        y = acc * a.scale.double().reshape(-1, 1) * q.scale.double().reshape(1, -1)
        out["y"] = (y + bias.double()).to(torch.float32)
    return out, "primitives (Float8DynamicActivationFloat8WeightConfig needs CUDA SM89+)"


def fpx(w, x, bias, e, m):
    scale = _choose_qparams_affine_floatx(w, e, m)
    q = _quantize_affine_floatx(w, scale, e, m)
    deq = _dequantize_affine_floatx(q, scale, e, m, output_dtype=w.dtype)
    out = {"qdata": q, "scale": f32(scale).reshape(-1, 1), "deq": f32(deq)}
    if w.dtype == torch.float32:
        out["y"] = f32(F.linear(x, deq, bias))
    return out, "primitives (FPXWeightOnlyConfig removed after torchao 0.14): F.linear(x, dequantized)"


def uintx(w, x, bias, bits, gs):
    # UIntXWeightOnlyConfig (torchao <= 0.14, PlainLayout math): ASYMMETRIC, int zero point,
    # eps f32 eps, scale in the weight dtype.
    block = [1, gs]
    qmax = (1 << bits) - 1
    s, z = choose_qparams_affine(w, MappingType.ASYMMETRIC, block, torch.uint8, 0, qmax, eps=F32_EPS,
                                 zero_point_dtype=torch.int32)
    q = quantize_affine(w, block, s, z, torch.uint8, 0, qmax)
    deq = dequantize_affine(q, block, s, z, torch.uint8, 0, qmax, output_dtype=w.dtype)
    n = w.shape[0]
    out = {"qdata": q, "scale": f32(s).reshape(n, -1), "zero_point": z.reshape(n, -1).to(torch.int32),
           "deq": f32(deq)}
    if w.dtype == torch.float32:
        out["y"] = f32(F.linear(x, deq, bias))
    return out, "primitives (UIntXWeightOnlyConfig removed after torchao 0.14): F.linear(x, dequantized)"


# (name as fluxserve parses it, group_size passed to parse_quant_type (0 = default), maker)
def formats():
    fs = [
        ("int8wo", 0, lambda w, x, b: int8(w, x, b, False)),
        ("int8dq", 0, lambda w, x, b: int8(w, x, b, True)),
        ("int4wo", 0, lambda w, x, b: int4wo(w, x, b, 128)),
        ("int4wo", 64, lambda w, x, b: int4wo(w, x, b, 64)),
        ("int4wo", 32, lambda w, x, b: int4wo(w, x, b, 32)),
        ("int4dq", 0, lambda w, x, b: int4dq(w, x, b, 32)),
        ("int4dq", 128, lambda w, x, b: int4dq(w, x, b, 128)),
        ("float8wo", 0, lambda w, x, b: float8wo(w, x, b, torch.float8_e5m2)),
        ("float8wo_e4m3", 0, lambda w, x, b: float8wo(w, x, b, torch.float8_e4m3fn)),
        ("float8dq_e4m3_tensor", 0, lambda w, x, b: float8dq(w, x, b, False)),
        ("float8dq_e4m3_row", 0, lambda w, x, b: float8dq(w, x, b, True)),
    ]
    for e, m in [(3, 2), (2, 3), (2, 2), (2, 1), (1, 2), (3, 0), (4, 3), (5, 2)]:
        fs.append((f"fp{1 + e + m}_e{e}m{m}", 0, lambda w, x, b, e=e, m=m: fpx(w, x, b, e, m)))
    for bits in range(1, 8):
        fs.append((f"uint{bits}wo", 0, lambda w, x, b, bits=bits: uintx(w, x, b, bits, 64)))
    fs.append(("uint4wo", 32, lambda w, x, b: uintx(w, x, b, 4, 32)))
    return fs


CASES = [
    dict(name="w_f32", seed=7001, n=17, k=256, m=5, dtype=torch.float32),
    dict(name="w_bf16", seed=7002, n=9, k=128, m=3, dtype=torch.bfloat16),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, type=Path, help="FIXTURES_ROOT")
    args = ap.parse_args()
    root = args.out / "torchao"
    root.mkdir(parents=True, exist_ok=True)
    meta = {"versions": {**versions(), "torchao": torchao.__version__}, "cases": {}}
    for case in CASES:
        g = torch.Generator().manual_seed(case["seed"])
        n, k, m = case["n"], case["k"], case["m"]
        w = torch.randn(n, k, generator=g) * 0.05
        w[1, :] = 0.0          # an all-zero row: eps clamps
        w[2, :40] = torch.randn(40, generator=g) * 3.0  # outliers in one group
        w[3, 64:128] = torch.rand(64, generator=g) + 0.5  # an all-positive group
        w = w.to(case["dtype"])
        x = torch.randn(m, k, generator=g)
        x[0, :] = x[0, :] * 10
        bias = torch.randn(n, generator=g) * 0.1
        tensors = {"w": w.contiguous(), "x": x, "bias": bias}
        entries = []
        for name, gs, make in formats():
            wq = w.clone()
            if name.startswith("float8"):
                wq[1, 0] = 1e-3  # an all-zero row has scale 0 in torchao float8 (0/0 = NaN codes)
            out, src = make(wq, x, bias)
            key = f"{name}_g{gs}" if gs else name
            for field, t in out.items():
                tensors[f"{key}.{field}"] = t.contiguous()
            if not torch.equal(wq, w):
                tensors[f"{key}.w"] = wq.contiguous()
            entries.append({"key": key, "quant_type": name, "group_size": gs, "linear_source": src,
                            "fields": sorted(out)})
        save_file(tensors, str(root / f"{case['name']}.safetensors"))
        meta["cases"][case["name"]] = {"n": n, "k": k, "m": m, "dtype": str(case["dtype"]).replace("torch.", ""),
                                       "formats": entries}
    # group_size not dividing K: torchao skips the layer silently; fluxserve reports an error.
    meta["errors"] = [
        {"quant_type": "int4wo", "group_size": 64, "n": 5, "k": 96},
        {"quant_type": "uint3wo", "group_size": 0, "n": 5, "k": 96},
        {"quant_type": "int4dq", "group_size": 64, "n": 5, "k": 160},
    ]
    write_json(root / "meta.json", meta)


if __name__ == "__main__":
    main()
