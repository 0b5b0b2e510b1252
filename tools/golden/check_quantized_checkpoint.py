#!/usr/bin/env python3
"""Checks `fluxserve quantize` against diffusers itself on a whole pipeline folder.

For each bitsandbytes config (nf4 + double quant, fp4, LLM.int8):
  1. runs `fluxserve quantize --model MODEL --config spec.json --output OUT`;
  2. has diffusers quantize the same transformer (from_pretrained(quantization_config=...,
     torch_dtype=<stored dtype>)) and save_pretrained it: the tensors fluxserve wrote must have the
     same keys, dtypes, shapes and bytes, and config.json the same quantization_config;
  3. loads OUT with diffusers (FluxTransformer2DModel.from_pretrained(OUT/transformer,
     device_map="cpu"), no quantization config: the pre-quantized path, then FluxPipeline around
     it with OUT's other components) and runs the pipeline; the image must equal the one the pipeline built
     around diffusers' own quantized transformer makes (same weights, same code: identical).

diffusers' bnb quantizers insist on a GPU in validate_environment even on the CPU path; as in
generate_bnb_checkpoint.py, only that check is made to see one.

    .venv-golden/bin/python tools/golden/check_quantized_checkpoint.py \
        [--fluxserve build/fluxserve] [--model models/tiny-flux]
Exit status 0 when every check passes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from diffusers import BitsAndBytesConfig, FluxPipeline, FluxTransformer2DModel
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_bnb_checkpoint import allow_cpu_bitsandbytes  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CASES = {
    "nf4_dq": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                   bnb_4bit_compute_dtype="float32"),
    "fp4": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_compute_dtype="float32"),
    "int8": dict(load_in_8bit=True),
}


def tensors(path: Path) -> dict:
    out = {}
    with safe_open(str(path), "pt") as f:
        for k in f.keys():
            out[k] = f.get_tensor(k)
    return out


def stored_dtype(component: Path) -> torch.dtype:
    with safe_open(str(component / "diffusion_pytorch_model.safetensors"), "pt") as f:
        for k in f.keys():
            if k.endswith(".weight"):
                return f.get_tensor(k).dtype
    return torch.float32


def common_4bit_path(model) -> None:
    """bitsandbytes' device-independent 4-bit forward (see generate_bnb_checkpoint.py); its
    AVX512-BF16 repacking also fails outright for in_features < blocksize (tiny models)."""
    import bitsandbytes as bnb
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False


def run_pipe(pipe) -> np.ndarray:
    return pipe("a red fox in the snow", height=64, width=64, num_inference_steps=2,
                guidance_scale=3.5, max_sequence_length=32, output_type="np",
                generator=torch.Generator("cpu").manual_seed(0)).images


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fluxserve", default=str(REPO / "build" / "fluxserve"))
    ap.add_argument("--model", default=str(REPO / "models" / "tiny-flux"))
    args = ap.parse_args()
    allow_cpu_bitsandbytes()
    model = Path(args.model)
    dtype = stored_dtype(model / "transformer")
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, kwargs in CASES.items():
            spec = {"quant_mapping": {"transformer": {
                "quant_backend": "bitsandbytes_4bit" if kwargs.get("load_in_4bit") else "bitsandbytes_8bit",
                **kwargs}}}
            (tmp / f"{name}.json").write_text(json.dumps(spec))
            out = tmp / f"out_{name}"
            subprocess.run([args.fluxserve, "quantize", "--model", str(model), "--config",
                            str(tmp / f"{name}.json"), "--output", str(out)], check=True)

            cfg = dict(kwargs)
            if "bnb_4bit_compute_dtype" in cfg:
                cfg["bnb_4bit_compute_dtype"] = getattr(torch, cfg["bnb_4bit_compute_dtype"])
            ref_model = FluxTransformer2DModel.from_pretrained(
                model / "transformer", quantization_config=BitsAndBytesConfig(**cfg),
                torch_dtype=dtype, device_map="cpu")
            ref_dir = tmp / f"ref_{name}"
            ref_model.save_pretrained(ref_dir)
            ours = tensors(out / "transformer" / "diffusion_pytorch_model.safetensors")
            ref = tensors(ref_dir / "diffusion_pytorch_model.safetensors")
            same_keys = sorted(ours) == sorted(ref)
            diff = [k for k in ref if k in ours and (ours[k].dtype != ref[k].dtype or
                    ours[k].shape != ref[k].shape or
                    ours[k].contiguous().view(torch.uint8).flatten().tolist() !=
                    ref[k].contiguous().view(torch.uint8).flatten().tolist())]
            qc_ours = json.loads((out / "transformer" / "config.json").read_text())["quantization_config"]
            qc_ref = json.loads((ref_dir / "config.json").read_text())["quantization_config"]

            # The whole pipeline from fluxserve's folder, loaded by diffusers as pre-quantized.
            # device_map="cpu" on the transformer: without it the bnb quantizer picks cuda:0.
            ours_tr = FluxTransformer2DModel.from_pretrained(out / "transformer",
                                                             torch_dtype=torch.float32,
                                                             device_map="cpu")
            common_4bit_path(ours_tr)
            common_4bit_path(ref_model)
            pipe_ours = FluxPipeline.from_pretrained(out, transformer=ours_tr,
                                                     torch_dtype=torch.float32)
            img_ours = run_pipe(pipe_ours)
            pipe_ref = FluxPipeline.from_pretrained(model, transformer=ref_model,
                                                    torch_dtype=torch.float32)
            img_ref = run_pipe(pipe_ref)
            img_equal = bool(np.array_equal(img_ours, img_ref))
            quantized = type(pipe_ours.transformer.transformer_blocks[0].attn.to_q).__name__
            ok = same_keys and not diff and qc_ours == qc_ref and img_equal
            failures += not ok
            print(f"{name}: {len(ref)} tensors, keys equal {same_keys}, tensors differing "
                  f"{len(diff)}{' ' + str(diff[:3]) if diff else ''}, quantization_config equal "
                  f"{qc_ours == qc_ref}, diffusers loads it ({quantized}), pipeline image equal "
                  f"to diffusers' own quantization {img_equal} -> {'OK' if ok else 'FAIL'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
