"""bitsandbytes golden fixtures: 4-bit NF4/FP4 (with and without double quant) and LLM.int8.

Writes FIXTURES_ROOT/bnb/: bnb_golden.safetensors (originals, packed bytes, quant states,
dequantized weights, linear outputs, int8 CB/SCB and MatMul8bitLt outputs, torch float32 means),
tiny_flux_nf4/ (a tiny FluxTransformer2DModel quantized by diffusers' BitsAndBytesConfig and
saved with save_pretrained) and versions.json. Everything runs on the CPU: bitsandbytes 0.50.2
quantizes 4-bit with its PyTorch default kernel and 8-bit blockwise (double quant) with its native
CPU library; 4-bit linears go through bnb.matmul_4bit (dequantize + F.linear).

    python tools/golden/generate_bnb.py --out tests/golden/fixtures
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import bitsandbytes as bnb
import bitsandbytes.functional as F
import torch
from bitsandbytes.autograd._functions import MatmulLtState
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
from safetensors.torch import save_file

from common import versions, write_json

# name, shape [N, K], original dtype, quant type, double quant, blocksize
CASES_4BIT = [
    ("a", (33, 128), torch.float32, "nf4", True, 64),
    ("b", (17, 100), torch.bfloat16, "fp4", False, 64),
    ("c", (7, 45), torch.float32, "nf4", False, 128),
    ("d", (65, 192), torch.bfloat16, "nf4", True, 128),
    ("e", (31, 96), torch.float32, "fp4", True, 64),
    ("f", (301, 160), torch.bfloat16, "nf4", True, 64),
    ("g", (9, 70), torch.float32, "fp4", False, 128),
]
NATIVE_AGREES: dict[str, bool] = {}
_dequant_ref = getattr(_dequantize_4bit_compute, "__wrapped__", _dequantize_4bit_compute)
MEAN_LENGTHS = [1, 3, 15, 16, 17, 63, 64, 65, 100, 255, 256, 257, 1000, 4097, 20000]


def planted_weight(shape, dtype, gen):
    w = torch.randn(shape, generator=gen) * 0.05
    n, k = shape
    w[1, :] = 0.0  # an all-zero block (absmax 0)
    # Exact midpoints between NF4 codes and FP4 codes (in a row whose absmax is 1).
    nf4 = F.get_4bit_type("nf4", device="cpu")
    fp4 = torch.sort(F.get_4bit_type("fp4", device="cpu")).values
    mids = torch.cat([(nf4[:-1] + nf4[1:]) / 2, (fp4[:-1] + fp4[1:]) / 2, torch.tensor([1e-9, -1e-9])])
    row = torch.zeros(k)
    m = min(k - 1, mids.numel())
    row[:m] = mids[:m]
    row[m] = 1.0
    w[2, :] = row
    w[3, :] *= 40.0  # a wide range of block scales for the nested quantization
    return w.to(dtype)


def quant_case(name, shape, dtype, qt, dq, bs, gen, out):
    w = planted_weight(shape, dtype, gen)
    if dtype != torch.float32:
        # Make the first rows exactly representable (midpoints may not be in bf16).
        pass
    packed, st = F.quantize_4bit(w, blocksize=bs, compress_statistics=dq, quant_type=qt)
    out[f"{name}.orig"] = w
    for key, t in st.as_dict(packed=True).items():
        out[f"{name}.weight.{key}"] = t.contiguous()
    out[f"{name}.weight"] = packed
    # bnb's reference dequantization (backends/default, same block indexing as the CUDA kernel).
    # The native CPU kernel of 0.50.2 indexes absmax per row when K % blocksize != 0 and gives
    # other values there; that is recorded, not used.
    absmax = st.absmax
    if st.nested:
        absmax = F.dequantize_blockwise(st.absmax, st.state2) + st.offset
    code = F.get_4bit_type(qt, device="cpu")
    deq32 = _dequant_ref(packed.reshape(-1), absmax, code, bs, st.shape, torch.float32)
    deq = _dequant_ref(packed.reshape(-1), absmax, code, bs, st.shape, dtype)
    out[f"{name}.dequant"] = deq.contiguous()
    out[f"{name}.dequant_f32"] = deq32.contiguous()
    NATIVE_AGREES[name] = bool(torch.equal(F.dequantize_4bit(packed, st), deq))
    x = torch.randn(5, shape[1], generator=gen)
    bias = torch.randn(shape[0], generator=gen)
    out[f"{name}.x"] = x
    out[f"{name}.bias"] = bias
    # gemm_4bit's default implementation: dequantize to the activation dtype, then F.linear.
    out[f"{name}.y"] = torch.nn.functional.linear(x, deq32, bias).contiguous()
    out[f"{name}.y_nobias"] = torch.nn.functional.linear(x, deq32).contiguous()
    if NATIVE_AGREES[name]:
        # Where the native kernel is right, bnb.matmul_4bit itself must give the same output.
        assert torch.allclose(bnb.matmul_4bit(x, packed, quant_state=st, bias=bias), out[f"{name}.y"], rtol=0, atol=0)


def int8_case(name, n, k, gen, out):
    w = torch.randn(n, k, generator=gen) * 0.1
    cb, scb, _ = F.int8_vectorwise_quant(w.half())
    out[f"{name}.orig"] = w
    out[f"{name}.CB"] = cb
    out[f"{name}.SCB"] = scb
    x = torch.randn(6, k, generator=gen)
    x[:, 5] *= 20.0  # an outlier column
    x[2, k - 1] = -7.5  # an outlier in one row only
    x[4, 7] = 6.0  # exactly on the threshold (>= counts)
    bias = torch.randn(n, generator=gen)
    out[f"{name}.x"] = x
    out[f"{name}.bias"] = bias
    for thr in (0.0, 6.0):
        state = MatmulLtState()
        state.CB, state.SCB, state.threshold = cb, scb, thr
        state.has_fp16_weights = False
        state.is_training = False  # eval: MatMul8bitLt (training on the CPU takes MatMul8bitFp)
        y = bnb.matmul(x, cb, bias=bias, state=state)
        out[f"{name}.y_t{int(thr)}"] = y.contiguous()
        ca, sca, cols = F.int8_vectorwise_quant(x.half(), threshold=thr)
        out[f"{name}.CA_t{int(thr)}"] = ca
        out[f"{name}.SCA_t{int(thr)}"] = sca
        out[f"{name}.cols_t{int(thr)}"] = (cols if cols is not None else torch.empty(0, dtype=torch.int64)).contiguous()


def tiny_flux(root: Path, gen) -> str:
    from diffusers import BitsAndBytesConfig, FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        guidance_embeds=True, axes_dims_rope=[4, 6, 6],
    )
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                 bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)
        try:
            q = FluxTransformer2DModel.from_pretrained(tmp, quantization_config=cfg, device_map="cpu")
        except Exception as e:  # noqa: BLE001 - reported in versions.json
            return f"skipped: {type(e).__name__}: {e}"
        dest = root / "tiny_flux_nf4"
        shutil.rmtree(dest, ignore_errors=True)
        q.save_pretrained(dest)
    return "ok"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    root = args.out / "bnb"
    root.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(1234)
    out: dict[str, torch.Tensor] = {}
    for case in CASES_4BIT:
        quant_case(*case, gen, out)
    int8_case("i8a", 19, 96, gen, out)
    int8_case("i8b", 8, 50, gen, out)
    for n in MEAN_LENGTHS:
        v = torch.rand(n, generator=gen) * 3.0
        out[f"mean.in.{n}"] = v
        out[f"mean.out.{n}"] = v.mean().reshape(1)
    save_file({k: v.contiguous() for k, v in out.items()}, str(root / "bnb_golden.safetensors"))
    flux = tiny_flux(root, gen)
    info = versions()
    info["bitsandbytes"] = bnb.__version__
    info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    info["tiny_flux_nf4"] = flux
    info["cpu_native_dequantize_4bit_agrees"] = NATIVE_AGREES
    info["cases_4bit"] = [[c[0], list(c[1]), str(c[2]).removeprefix("torch."), c[3], c[4], c[5]] for c in CASES_4BIT]
    write_json(root / "versions.json", info)
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
