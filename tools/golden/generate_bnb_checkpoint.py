"""Pre-quantized bitsandbytes checkpoints, made and run by diffusers + bitsandbytes themselves.

Writes FIXTURES_ROOT/bnb_checkpoint/:
  source/          a tiny FluxTransformer2DModel (bfloat16, as FLUX checkpoints ship; save_pretrained):
                   what gets quantized
  nf4_dq/, fp4/, int8_skip/
                   FluxTransformer2DModel.from_pretrained(source, quantization_config=
                   BitsAndBytesConfig(...), torch_dtype=bfloat16, device_map="cpu") saved back
                   with save_pretrained: the bitsandbytes serialization diffusers writes
  inputs.safetensors   fixed forward inputs (hidden_states, encoder_hidden_states, ...)
  outputs.safetensors  `sample` of each saved quantized checkpoint loaded back by diffusers with
                   torch_dtype=float32 (pre-quantized loading; the float32 reference the C++ forward
                   is held to) on those inputs (sample_<case>), and of the unquantized source in
                   float32 (sample_source)
  cases.json       per case the BitsAndBytesConfig kwargs (as fluxserve's quant_mapping entry)
  versions.json

diffusers' bitsandbytes quantizers refuse to start without a GPU: their validate_environment
checks torch.cuda.is_available() first. The one workaround here makes that check (and only that
check, for the duration of the call) see a GPU; everything else runs unchanged on the CPU with
device_map="cpu", so the packed bytes, absmax, quant maps and int8 codes are computed by
bitsandbytes 0.50's own CPU backend and serialized by bitsandbytes/diffusers' own code.
transformers' quantizers need no such patch on the CPU.

The reference forwards take bitsandbytes' device-independent 4-bit path (matmul_4bit -> gemm_4bit:
dequantize to the activation dtype, then F.linear, as on CUDA): on CPUs with AVX512-BF16,
Linear4bit.forward otherwise repacks the weight and runs a fused kernel that casts activations and
scales to bfloat16 (~3e-3 relative error per layer against the float32 product), which depends on
the machine. `support_avx512bf16_for_cpu = False` on each Linear4bit selects the common path.

Every Linear of the tiny model has in_features a multiple of 64 (as every FLUX.1 layer does): the
native CPU dequantize_4bit kernel of bitsandbytes 0.50.2 indexes blocks per row when
in_features % blocksize != 0 (see generate_bnb.py), which would make the reference forward use
other scales than the stored ones. To stay under 1 MB of fixtures the model has no double-stream
block: the single-stream block already holds the stacked case that matters for quantized weights
(to_q|to_k|to_v|proj_mlp loaded as one layer), and the double block's layers load through the same
code.

    python tools/golden/generate_bnb_checkpoint.py --out tests/golden/fixtures
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import bitsandbytes as bnb
import torch
from diffusers import BitsAndBytesConfig, FluxTransformer2DModel
from diffusers.quantizers.bitsandbytes import bnb_quantizer
from safetensors.torch import save_file

from common import versions, write_json

CONFIG = dict(patch_size=1, in_channels=64, num_layers=0, num_single_layers=1, attention_head_dim=32,
              num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=64,
              guidance_embeds=False, axes_dims_rope=[8, 12, 12])

# name -> BitsAndBytesConfig kwargs (JSON-able; compute dtype float32 as the CPU path computes)
CASES = {
    "nf4_dq": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                   bnb_4bit_compute_dtype="float32"),
    "fp4": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_compute_dtype="float32"),
    "int8_skip": dict(load_in_8bit=True, llm_int8_skip_modules=["proj_out"]),
}


def allow_cpu_bitsandbytes() -> None:
    """Lets diffusers' bnb quantizers pass their GPU check; nothing else is changed."""
    for cls in (bnb_quantizer.BnB4BitDiffusersQuantizer, bnb_quantizer.BnB8BitDiffusersQuantizer):
        original = cls.validate_environment

        def validate_environment(self, *args, _original=original, **kwargs):
            real = torch.cuda.is_available
            torch.cuda.is_available = lambda: True
            try:
                return _original(self, *args, **kwargs)
            finally:
                torch.cuda.is_available = real

        cls.validate_environment = validate_environment


def make_inputs(gen: torch.Generator) -> dict[str, torch.Tensor]:
    li, lt = 16, 7
    img_ids = torch.zeros(4, 4, 3)
    img_ids[..., 1] = torch.arange(4)[:, None]
    img_ids[..., 2] = torch.arange(4)[None, :]
    return dict(
        hidden_states=torch.randn(1, li, CONFIG["in_channels"], generator=gen),
        encoder_hidden_states=torch.randn(1, lt, CONFIG["joint_attention_dim"], generator=gen),
        pooled_projections=torch.randn(1, CONFIG["pooled_projection_dim"], generator=gen),
        timestep=torch.tensor([0.625]),
        img_ids=img_ids.reshape(li, 3),
        txt_ids=torch.zeros(lt, 3),
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    root = args.out / "bnb_checkpoint"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    allow_cpu_bitsandbytes()

    torch.manual_seed(0)
    model = FluxTransformer2DModel(**CONFIG)
    with torch.no_grad():  # spread the weights so blocks get distinct scales
        for p in model.parameters():
            p.mul_(1.0 + torch.rand(p.shape) * 2.0)
    model.to(torch.bfloat16).save_pretrained(root / "source")
    model = FluxTransformer2DModel.from_pretrained(root / "source", torch_dtype=torch.float32)

    inputs = make_inputs(torch.Generator().manual_seed(4242))
    outputs = {}
    with torch.no_grad():
        outputs["sample_source"] = model(**inputs).sample.contiguous()
    for name, kwargs in CASES.items():
        cfg = dict(kwargs)
        if "bnb_4bit_compute_dtype" in cfg:
            cfg["bnb_4bit_compute_dtype"] = getattr(torch, cfg["bnb_4bit_compute_dtype"])
        q = FluxTransformer2DModel.from_pretrained(
            root / "source", quantization_config=BitsAndBytesConfig(**cfg),
            torch_dtype=torch.bfloat16, device_map="cpu")
        q.save_pretrained(root / name)
        del q
        q = FluxTransformer2DModel.from_pretrained(root / name, torch_dtype=torch.float32,
                                                   device_map="cpu")
        for m in q.modules():
            if isinstance(m, bnb.nn.Linear4bit):
                m.support_avx512bf16_for_cpu = False
        with torch.no_grad():
            outputs[f"sample_{name}"] = q(**inputs).sample.contiguous()

    save_file({k: v.contiguous() for k, v in inputs.items()}, str(root / "inputs.safetensors"))
    save_file(outputs, str(root / "outputs.safetensors"))
    write_json(root / "cases.json",
               {name: {"quant_backend": "bitsandbytes_4bit" if k.get("load_in_4bit") else
                       "bitsandbytes_8bit", **k} for name, k in CASES.items()})
    info = versions()
    info["bitsandbytes"] = bnb.__version__
    info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    write_json(root / "versions.json", info)


if __name__ == "__main__":
    main()
