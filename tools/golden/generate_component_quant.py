#!/usr/bin/env python3
"""Golden fixtures for quantize-on-load of FluxPipeline's other components: text_encoder
(CLIPTextModel), text_encoder_2 (T5EncoderModel) and vae (AutoencoderKL), as diffusers'
PipelineQuantizationConfig hands them to transformers' and diffusers' quantizers.

Reads the embedded tiny pipeline (models/tiny-flux) and writes, under
FIXTURES_ROOT/component_quant/:

  cases.json             per case: component, fluxserve's quant_mapping entry (`spec`), the
                         upstream config, `converted` (module names upstream replaced or
                         quantized, sorted), `kept` (the nn.Linear modules left as they were, with
                         their dtype after a float16 load: `_keep_in_fp32_modules` shows there),
                         and `output` (how the reference output was made, or why there is none)
  inputs.safetensors     clip_input_ids / t5_input_ids [1, L] int64, vae_latents [1, 16, 4, 4]
                         (already scaled, what vae.decode receives)
  outputs.safetensors    <case>.last_hidden_state (+ <case>.pooler_output for CLIP) or
                         <case>.sample: the quantized upstream model's output, float32
  versions.json          library versions

Upstream rules exercised: transformers' get_modules_to_not_convert (llm_int8_skip_modules or
modules_to_not_convert, else get_keys_to_not_convert's tied/last/output-embedding keys, plus
`_keep_in_fp32_modules` such as T5's "wo") matched by should_convert_module (regex prefix at a
module boundary, or a plain suffix) against the module name (bitsandbytes) or the parameter name
(torchao: a suffix pattern such as "wo" never matches "...wo.weight"); diffusers' replace_with_bnb_linear
and TorchAoHfQuantizer.check_if_quantized_param ("key." substring or equality; the bnb path also
matches the child's own name). Only nn.Linear layers are converted; embeddings, norms and convs
are not.

Where things run (CPU): transformers loads bitsandbytes 4/8-bit and torchao int8wo models on the
CPU (bitsandbytes 0.50's CPU backend), so those outputs are the real thing with
from_pretrained(dtype=float32, device_map="cpu"), except that 4-bit layers compute with
bitsandbytes' reference dequantization (see reference_4bit_forward: two CPU-only kernels of 0.50.2
disagree with it on these shapes). diffusers' bitsandbytes quantizer refuses to
start without a GPU (validate_environment), so for the VAE the quantizer is built anyway and its
own preprocess_model replaces the modules (the module list is upstream's), then each Linear4bit /
Linear8bitLt is given its float32 weight and moved to the CPU, where bitsandbytes quantizes it
(output_source says so). diffusers' torchao int8wo loads on the CPU as is.

    python tools/golden/generate_component_quant.py --out tests/golden/fixtures
"""

from __future__ import annotations

import argparse
import os
import sys
import types
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import versions, write_json  # noqa: E402

warnings.filterwarnings("ignore")

import bitsandbytes as bnb  # noqa: E402
import diffusers  # noqa: E402
import torchao  # noqa: E402
import transformers  # noqa: E402
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402
from diffusers.quantizers import DiffusersAutoQuantizer  # noqa: E402
from torchao.quantization import Int8WeightOnlyConfig  # noqa: E402
from transformers import CLIPTextModel, T5EncoderModel  # noqa: E402

_dequant_ref = getattr(_dequantize_4bit_compute, "__wrapped__", _dequantize_4bit_compute)
REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "models" / "tiny-flux"

COMPONENTS = {
    "text_encoder": dict(cls=CLIPTextModel, library="transformers"),
    "text_encoder_2": dict(cls=T5EncoderModel, library="transformers"),
    "vae": dict(cls=AutoencoderKL, library="diffusers"),
}

NF4_DQ = {"quant_backend": "bitsandbytes_4bit", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
          "bnb_4bit_use_double_quant": True}
FP4 = {"quant_backend": "bitsandbytes_4bit", "load_in_4bit": True, "bnb_4bit_quant_type": "fp4"}
INT8 = {"quant_backend": "bitsandbytes_8bit", "load_in_8bit": True}
INT8WO = {"quant_backend": "torchao", "quant_type": "int8wo"}

# (case, component, fluxserve spec). Skip lists show each library's matching rule.
CASES = []
for comp in COMPONENTS:
    for tag, spec in [("nf4_dq", NF4_DQ), ("fp4", FP4), ("int8", INT8), ("int8wo", INT8WO)]:
        CASES.append((f"{comp}.{tag}", comp, spec))
CASES += [
    # transformers bnb: "fc1" matches as a suffix; "layers.1.self_attn" is neither a prefix of
    # "encoder.layers.1..." nor a suffix, so it skips nothing.
    ("text_encoder.nf4_skip", "text_encoder", {**NF4_DQ, "llm_int8_skip_modules": ["fc1", "layers.1.self_attn"]}),
    # transformers torchao matches parameter names: "fc2" (a suffix of the module, not of
    # "...fc2.weight") skips nothing; the prefix "encoder.layers.0" skips layer 0.
    ("text_encoder.int8wo_skip", "text_encoder",
     {**INT8WO, "modules_to_not_convert": ["encoder.layers.0", "fc2"]}),
    # "encoder.block.1" (prefix) and "SelfAttention.o" (suffix); "wo" stays out as well.
    ("text_encoder_2.int8_skip", "text_encoder_2",
     {**INT8, "llm_int8_skip_modules": ["encoder.block.1", "SelfAttention.o"]}),
    # A regex prefix ending at a module boundary; "wo" (keep_in_fp32) no longer skips anything.
    ("text_encoder_2.int8wo_skip", "text_encoder_2",
     {**INT8WO, "modules_to_not_convert": ["encoder.block.[0-9].layer.1"]}),
    # diffusers bnb: "to_k" matches the child's own name, "attentions.0.to_out" as "key." substring.
    ("vae.nf4_skip", "vae", {**NF4_DQ, "llm_int8_skip_modules": ["to_k", "attentions.0.to_out"]}),
    # diffusers torchao: "to_v" as "to_v." in the parameter name; "mid_block.attentions.0.to_q".
    ("vae.int8wo_skip", "vae", {**INT8WO, "modules_to_not_convert": ["to_v", "decoder.mid_block.attentions.0.to_q"]}),
]


def upstream_config(spec: dict, library: str):
    kw = {k: v for k, v in spec.items() if k != "quant_backend"}
    if spec["quant_backend"].startswith("bitsandbytes"):
        cls = transformers.BitsAndBytesConfig if library == "transformers" else diffusers.BitsAndBytesConfig
        return cls(**kw)
    skip = kw.get("modules_to_not_convert")
    # Both libraries take only torchao config objects now (string quant types were removed).
    cls = transformers.TorchAoConfig if library == "transformers" else diffusers.TorchAoConfig
    return cls(Int8WeightOnlyConfig(), modules_to_not_convert=skip)


def is_converted(module) -> bool:
    if isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
        return True
    w = getattr(module, "weight", None)
    return isinstance(module, torch.nn.Linear) and w is not None and type(w).__module__.startswith("torchao")


def linears(model):
    """(converted, kept) module names among the Linear layers (bnb modules subclass nn.Linear)."""
    conv, kept = [], []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            (conv if is_converted(m) else kept).append(name)
    return sorted(conv), sorted(kept)


def kept_dtypes(comp: str, spec: dict, kept: list[str]) -> dict:
    """Dtype of each kept Linear after a float16 load: `_keep_in_fp32_modules` upcast there."""
    info = COMPONENTS[comp]
    if info["library"] != "transformers" or not kept:
        return {}
    cfg = upstream_config(spec, "transformers")
    m = info["cls"].from_pretrained(TINY / comp, quantization_config=cfg, dtype=torch.float16, device_map="cpu")
    mods = dict(m.named_modules())
    return {n: str(mods[n].weight.dtype).removeprefix("torch.") for n in kept}


def load_quantized(comp: str, spec: dict):
    """The quantized model and how it was made."""
    info = COMPONENTS[comp]
    cfg = upstream_config(spec, info["library"])
    if info["library"] == "transformers" or spec["quant_backend"] == "torchao":
        m = info["cls"].from_pretrained(TINY / comp, quantization_config=cfg, dtype=torch.float32,
                                        device_map="cpu")
        return m, f"{info['library']} from_pretrained(quantization_config, dtype=float32, device_map='cpu')"
    # diffusers + bitsandbytes: validate_environment wants a GPU. The replacement itself is the
    # quantizer's own; bitsandbytes then quantizes each weight on the CPU as it does on .to(device).
    m = AutoencoderKL.from_pretrained(TINY / comp, torch_dtype=torch.float32)
    dense = {n: (mod.weight.detach().clone(), None if mod.bias is None else mod.bias.detach().clone())
             for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)}
    q = DiffusersAutoQuantizer.from_config(cfg, pre_quantized=False)
    q.preprocess_model(model=m, device_map=None, keep_in_fp32_modules=[])
    for name, mod in m.named_modules():
        if not isinstance(mod, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
            continue
        w, b = dense[name]
        if isinstance(mod, bnb.nn.Linear4bit):
            mod.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type=mod.weight.quant_type,
                                           compress_statistics=mod.weight.compress_statistics,
                                           blocksize=mod.weight.blocksize, quant_storage=torch.uint8)
        else:
            mod.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
        if b is not None:
            mod.bias = torch.nn.Parameter(b, requires_grad=False)
        mod.to("cpu")  # bitsandbytes quantizes here (Params4bit/Int8Params._quantize)
    return m, ("diffusers BitsAndBytesQuantizer.preprocess_model (validate_environment needs a GPU), "
               "weights quantized by bitsandbytes Params4bit/Int8Params on the CPU")


def reference_4bit_forward(model) -> None:
    """Linear4bit forward as bitsandbytes defines it: dequantize (backends/default, the block
    indexing of the CUDA kernel) to float32, then F.linear — what bnb.matmul_4bit computes.

    Two CPU-only paths of bitsandbytes 0.50.2 are avoided: Linear4bit.forward on AVX512-BF16 CPUs
    repacks the weight for a kernel that rounds absmax to bfloat16 (and fails when
    in_features < blocksize), and the native CPU dequantize_4bit indexes absmax per row when
    in_features % blocksize != 0 (every layer of these tiny models), giving other values than the
    CUDA and default kernels (tools/golden/generate_bnb.py records the same disagreement)."""

    def forward(self, x):
        st = self.weight.quant_state
        absmax = st.absmax
        if st.nested:
            absmax = bnb.functional.dequantize_blockwise(st.absmax, st.state2) + st.offset
        w = _dequant_ref(self.weight.data.reshape(-1), absmax, st.code, st.blocksize, st.shape, torch.float32)
        return torch.nn.functional.linear(x.float(), w, None if self.bias is None else self.bias.float())

    for mod in model.modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            mod.forward = types.MethodType(forward, mod)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "tests" / "golden" / "fixtures"),
                    help="fixtures root; files go to <out>/component_quant/")
    args = ap.parse_args()
    root = Path(args.out).resolve() / "component_quant"
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(4004)
    inputs = {
        # CLIP-like: BOS, words, EOS (the largest id: pooled there), padding.
        "clip_input_ids": torch.tensor([[0, 17, 905, 233, 1400, 61, 2, 1, 1, 1]], dtype=torch.int64),
        "t5_input_ids": torch.randint(2, 1100, (1, 12), generator=gen, dtype=torch.int64),
        "vae_latents": torch.randn(1, 16, 4, 4, generator=gen),
    }
    inputs["t5_input_ids"][0, -1] = 1  # </s>
    save_file(inputs, str(root / "inputs.safetensors"))

    outputs, cases = {}, []
    for case, comp, spec in CASES:
        library = COMPONENTS[comp]["library"]
        m, source = load_quantized(comp, spec)
        converted, kept = linears(m)
        entry = dict(case=case, component=comp, library=library, spec=spec,
                     upstream_config=upstream_config(spec, library).to_dict(),
                     converted=converted, kept=kept, kept_dtype_float16_load=kept_dtypes(comp, spec, kept),
                     output_source=source + ("; 4-bit forward: bitsandbytes' reference dequantize + F.linear"
                                             if spec["quant_backend"] == "bitsandbytes_4bit" else ""))
        m.eval()  # new bnb modules start in training mode (MatMul8bitFp on the CPU)
        reference_4bit_forward(m)
        with torch.no_grad():
            if comp == "text_encoder":
                o = m(inputs["clip_input_ids"])
                outputs[f"{case}.last_hidden_state"] = o.last_hidden_state.float().contiguous()
                outputs[f"{case}.pooler_output"] = o.pooler_output.float().contiguous()
            elif comp == "text_encoder_2":
                o = m(inputs["t5_input_ids"])
                outputs[f"{case}.last_hidden_state"] = o.last_hidden_state.float().contiguous()
            else:
                outputs[f"{case}.sample"] = m.decode(inputs["vae_latents"]).sample.float().contiguous()
        cases.append(entry)
        print(f"[{case:28s}] converted {len(converted):2d}, kept {kept}")

    save_file(outputs, str(root / "outputs.safetensors"))
    write_json(root / "cases.json", cases)
    vs = versions()
    vs.update(bitsandbytes=bnb.__version__, torchao=torchao.__version__)
    write_json(root / "versions.json", vs)
    for p in root.rglob("*"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    print(f"component_quant fixtures: {total / 1024:.0f} KiB in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
