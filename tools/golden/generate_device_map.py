#!/usr/bin/env python3
"""Golden cases for engine/placement: the device maps diffusers and accelerate compute for
FLUX.1-dev-sized components, without any weights (models built on the meta device).

Writes FIXTURES_ROOT/device_map/cases.json:
  {"versions": {...},
   "components": {name: {"config": config dict, "dtype": "bfloat16",
                         "module_sizes": {module: bytes}}},   # accelerate compute_module_sizes,
                                                              # pruned below no-split blocks
   "model_cases": [{"name", "component", "device_map", "max_memory" (as given),
                    "balanced_max_memory" (after get_balanced_memory / get_max_memory),
                    "result": [[module, device], ...]}],     # infer_auto_device_map, cleaned
   "pipeline_cases": [{"name", "max_memory", "component_sizes", "result": {component: device}}]}

Model cases go through diffusers' own model-level path (models/model_loading_utils.py
_determine_device_map: get_balanced_memory for "auto"/"balanced"/"balanced_low_0",
get_max_memory for "sequential", then infer_auto_device_map with the model's _no_split_modules).
Pipeline cases call pipeline_loading_utils._assign_components_to_devices with the component sizes
and GPU budgets sorted as _get_final_device_map sorts them. GPU keys are integers as accelerate
wants them; the fixture writes them as "cuda:N". Needs torch, diffusers, transformers,
accelerate. CPU only, runs in seconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import accelerate
from accelerate import init_empty_weights
from accelerate.utils import compute_module_sizes
from diffusers import AutoencoderKL, FluxTransformer2DModel
from diffusers.models.model_loading_utils import _determine_device_map
from diffusers.pipelines.pipeline_loading_utils import _assign_components_to_devices
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import versions, write_json  # noqa: E402

GiB = 1 << 30
DIFFUSERS_MODELS = ("transformer", "vae")

# black-forest-labs/FLUX.1-dev: transformer/, text_encoder_2/ (google/t5-v1_1-xxl encoder),
# text_encoder/ (openai/clip-vit-large-patch14 text tower) config.json values.
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=[16, 56, 56])
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, relative_attention_max_distance=128,
              feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
              projection_dim=768)
VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=[128, 256, 512, 512],
           layers_per_block=2, norm_num_groups=32, sample_size=1024, scaling_factor=0.3611,
           shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
           down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)


def build(component: str) -> torch.nn.Module:
    with init_empty_weights():
        if component == "transformer":
            m = FluxTransformer2DModel(**FLUX_DEV)
        elif component == "vae":
            m = AutoencoderKL(**VAE)
        elif component == "text_encoder_2":
            m = T5EncoderModel(T5Config(**T5_XXL))
        else:
            m = CLIPTextModel(CLIPTextConfig(**CLIP_L))
    if hasattr(m, "tie_weights"):
        m.tie_weights()  # as from_pretrained leaves it: T5's shared / encoder.embed_tokens tied
    return m.to(torch.bfloat16)


def pruned_sizes(model: torch.nn.Module) -> dict:
    """compute_module_sizes for every module not strictly inside a no-split block."""
    sizes = compute_module_sizes(model, dtype=torch.bfloat16)
    no_split = set(model._no_split_modules or [])
    blocks = [n for n, m in model.named_modules() if type(m).__name__ in no_split]
    keep = {}
    for name, m in model.named_modules():
        if any(name.startswith(b + ".") for b in blocks):
            continue
        keep[name] = int(sizes[name])
    return keep


def device_name(d) -> str:
    return f"cuda:{d}" if isinstance(d, int) else str(d)


def model_case(models, name, component, device_map, max_memory):
    model = models[component]
    given = {device_name(k): v for k, v in max_memory.items()}
    mm = dict(max_memory)
    if component in DIFFUSERS_MODELS:
        # What _determine_device_map computes before infer_auto_device_map, recorded for the test.
        from accelerate.utils import get_balanced_memory, get_max_memory
        no_split = model._get_no_split_modules(device_map)
        if device_map == "sequential":
            balanced = get_max_memory(dict(mm))
        else:
            balanced = get_balanced_memory(model, dtype=torch.bfloat16, max_memory=dict(mm),
                                           low_zero=device_map == "balanced_low_0",
                                           no_split_module_classes=no_split)
        result = _determine_device_map(model, device_map, dict(mm), torch.bfloat16)
    else:
        # transformers' own from_pretrained path (integrations/accelerate.py), which has its
        # own get_balanced_memory / infer_auto_device_map.
        from transformers.integrations.accelerate import (_get_device_map, get_balanced_memory)
        balanced = get_balanced_memory(model, max_memory=dict(mm), low_zero=device_map == "balanced_low_0",
                                       no_split_module_classes=model._no_split_modules, hf_quantizer=None)
        result = _get_device_map(model, device_map, dict(mm), None)
    return {"name": name, "component": component, "device_map": device_map, "max_memory": given,
            "balanced_max_memory": {device_name(k): int(v) for k, v in balanced.items()},
            "result": [[k, device_name(v)] for k, v in result.items()]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    out = Path(ap.parse_args().out) / "device_map"
    torch.manual_seed(0)
    models = {c: build(c) for c in ("transformer", "text_encoder_2", "text_encoder", "vae")}
    configs = {"transformer": FLUX_DEV, "text_encoder_2": T5_XXL, "text_encoder": CLIP_L, "vae": VAE}
    components = {c: {"config": configs[c], "dtype": "bfloat16", "class": type(m).__name__,
                      "no_split_modules": sorted(m._no_split_modules or []),
                      "module_sizes": pruned_sizes(m)} for c, m in models.items()}

    cases = [
        model_case(models, "dev_auto_16gib", "transformer", "auto", {0: 16 * GiB, "cpu": 64 * GiB}),
        model_case(models, "dev_auto_8gib_cpu_8gib_disk", "transformer", "auto",
                   {0: 8 * GiB, "cpu": 8 * GiB}),
        model_case(models, "dev_auto_fits_but_reserve", "transformer", "auto",
                   {0: 24 * GiB, "cpu": 64 * GiB}),
        # 23.80 GB in 24 GB: the reservation is for the largest layer still to place, small by
        # the time the last block lists go in, so it all fits. At 23.7 GB the single blocks go
        # one by one, each keeping room for the next one.
        model_case(models, "dev_auto_24gb", "transformer", "auto", {0: 24 * 10**9, "cpu": 64 * GiB}),
        model_case(models, "dev_auto_23_7gb", "transformer", "auto",
                   {0: 23_700_000_000, "cpu": 64 * GiB}),
        model_case(models, "dev_balanced_2x16gib", "transformer", "balanced",
                   {0: 16 * GiB, 1: 16 * GiB, "cpu": 64 * GiB}),
        model_case(models, "dev_balanced_low_0_3x12gib", "transformer", "balanced_low_0",
                   {0: 12 * GiB, 1: 12 * GiB, 2: 12 * GiB, "cpu": 64 * GiB}),
        model_case(models, "dev_sequential_2x10gib", "transformer", "sequential",
                   {0: 10 * GiB, 1: 10 * GiB, "cpu": 64 * GiB}),
        model_case(models, "t5_auto_4gib", "text_encoder_2", "auto", {0: 4 * GiB, "cpu": 64 * GiB}),
        model_case(models, "clip_auto_100mb", "text_encoder", "auto", {0: 100 * 10**6, "cpu": 64 * GiB}),
    ]

    # Pipeline-level "balanced": whole components, largest first, GPUs largest budget first.
    sizes = {c: int(compute_module_sizes(m, dtype=torch.bfloat16)[""]) for c, m in models.items()}
    pipeline_cases = []
    for name, mm in [("pipe_2x24gib", {0: 24 * GiB, 1: 24 * GiB}),
                     ("pipe_1x40gib", {0: 40 * GiB}),
                     ("pipe_16_and_12gib", {0: 12 * GiB, 1: 16 * GiB})]:
        ordered = dict(sorted(sizes.items(), key=lambda kv: kv[1], reverse=True))
        budgets = dict(sorted(mm.items(), key=lambda kv: kv[1], reverse=True))
        mapping = _assign_components_to_devices(ordered, budgets, device_mapping_strategy="balanced")
        result = {c: device_name(d) for d, cs in mapping.items() for c in cs}
        pipeline_cases.append({"name": name, "max_memory": {device_name(k): v for k, v in mm.items()},
                               "component_sizes": sizes, "result": result})

    v = versions()
    v["accelerate"] = accelerate.__version__
    write_json(out / "cases.json", {"versions": v, "components": components,
                                    "model_cases": cases, "pipeline_cases": pipeline_cases})
    print(f"wrote {out / 'cases.json'}")


if __name__ == "__main__":
    main()
