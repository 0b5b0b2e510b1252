#!/usr/bin/env python3
"""Golden cases for engine/quant/quant_config: what diffusers' PipelineQuantizationConfig does with
each JSON quantization config.

Writes FIXTURES_ROOT/quant_config/cases.json: a list of
  {"name", "config" (our JSON form), "diffusers": {"error": {"stage", "type", "message"}} or
   {"resolved": {component: to_dict() or null}, "warning": text or null},
   "expect_ours": "accept"|"reject" (only where fluxserve deliberately differs), "note"}.

The JSON config is turned into the equivalent Python objects: the global form becomes
PipelineQuantizationConfig(quant_backend, quant_kwargs, components_to_quantize); each
quant_mapping entry becomes the config class named by its quant_backend, from diffusers for
diffusers models (transformer, vae) and from transformers for the text encoders, with the other
keys as constructor arguments. A torchao quant_type shorthand becomes the torchao (>= 0.15)
AOBaseConfig it stands for (older diffusers' string table); names torchao no longer has are passed
as the plain string, which is what current diffusers then rejects. Resolution calls
_resolve_quant_config(is_diffusers, name) for every module component of a FluxPipeline, as
pipeline_loading_utils.load_sub_model does.

Needs: diffusers, transformers, torch, bitsandbytes (BitsAndBytesConfig checks its version for
4-bit), torchao (TorchAoConfig needs it). CPU only.
"""

from __future__ import annotations

import argparse
import enum
import json
import logging
import sys
from pathlib import Path

import torch

import diffusers
import transformers
from diffusers import PipelineQuantizationConfig
from diffusers.pipelines.pipeline_loading_utils import _maybe_warn_for_wrong_component_in_quant_config
from diffusers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING as DIFFUSERS_MAP
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING as TRANSFORMERS_MAP

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402

# FluxPipeline components: name -> is_diffusers_model (module components only).
MODULES = {"transformer": True, "text_encoder": False, "text_encoder_2": False, "vae": True}
PIPE_INIT_KEYS = ["scheduler", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
                  "transformer", "vae"]


def torchao_object(quant_type, kwargs):
    """Older diffusers' string quant_type -> the torchao >= 0.15 config object, else the string."""
    from torchao.quantization import (Float8DynamicActivationFloat8WeightConfig,
                                      Float8WeightOnlyConfig, Int4WeightOnlyConfig,
                                      Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig)
    from torchao.quantization.granularity import PerRow, PerTensor

    e4, e5 = torch.float8_e4m3fn, torch.float8_e5m2
    table = {
        "int4wo": lambda **k: Int4WeightOnlyConfig(**k),
        "int4_weight_only": lambda **k: Int4WeightOnlyConfig(**k),
        "int8wo": lambda **k: Int8WeightOnlyConfig(**k),
        "int8_weight_only": lambda **k: Int8WeightOnlyConfig(**k),
        "int8dq": lambda **k: Int8DynamicActivationInt8WeightConfig(**k),
        "int8_dynamic_activation_int8_weight": lambda **k: Int8DynamicActivationInt8WeightConfig(**k),
        "float8wo": lambda **k: Float8WeightOnlyConfig(weight_dtype=e5, **k),
        "float8wo_e5m2": lambda **k: Float8WeightOnlyConfig(weight_dtype=e5, **k),
        "float8wo_e4m3": lambda **k: Float8WeightOnlyConfig(weight_dtype=e4, **k),
        "float8_weight_only": lambda **k: Float8WeightOnlyConfig(**k),
        "float8dq": lambda **k: Float8DynamicActivationFloat8WeightConfig(**k),
        "float8_dynamic_activation_float8_weight":
            lambda **k: Float8DynamicActivationFloat8WeightConfig(**k),
        "float8dq_e4m3": lambda **k: Float8DynamicActivationFloat8WeightConfig(
            activation_dtype=e4, weight_dtype=e4, **k),
        "float8dq_e4m3_tensor": lambda **k: Float8DynamicActivationFloat8WeightConfig(
            activation_dtype=e4, weight_dtype=e4, granularity=PerTensor(), **k),
        "float8dq_e4m3_row": lambda **k: Float8DynamicActivationFloat8WeightConfig(
            activation_dtype=e4, weight_dtype=e4, granularity=PerRow(), **k),
    }
    if isinstance(quant_type, str) and quant_type in table:
        return table[quant_type](**kwargs)
    return quant_type


def config_object(name, entry):
    entry = dict(entry)
    backend = entry.pop("quant_backend", None)
    is_diffusers = MODULES.get(name, True)
    mapping = DIFFUSERS_MAP if is_diffusers else TRANSFORMERS_MAP
    cls = mapping[backend]  # KeyError for names the library does not know
    if backend == "torchao":
        quant_type = entry.pop("quant_type", None)
        modules = entry.pop("modules_to_not_convert", None)
        return cls(torchao_object(quant_type, entry), modules_to_not_convert=modules)
    if backend == "gguf" and isinstance(entry.get("compute_dtype"), str):
        entry["compute_dtype"] = getattr(torch, entry["compute_dtype"])
    return cls(**entry)


def simplify(value):
    if isinstance(value, torch.dtype):
        return str(value).split(".")[1]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: simplify(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [simplify(v) for v in value]
    return value


def simplify_torchao(ao):
    """config_to_dict(AOBaseConfig) -> {"_type", "_data": {group_size, weight_dtype, granularity}}."""
    data = {}
    src = ao["_data"]
    if "group_size" in src:
        data["group_size"] = src["group_size"]
    if "weight_dtype" in src:
        data["weight_dtype"] = src["weight_dtype"]["_data"]
    if "granularity" in src:
        g = src["granularity"]
        gs = g if isinstance(g, list) else [g]
        names = {x["_type"] for x in gs}
        assert len(names) == 1, names
        data["granularity"] = {"PerTensor": "tensor", "PerRow": "row"}[names.pop()]
    return {"_type": ao["_type"], "_data": data}


def to_dict(cfg):
    d = simplify(cfg.to_dict())
    d.pop("_load_in_4bit", None)
    d.pop("_load_in_8bit", None)
    if d.get("quant_method") == "torchao":
        d["torchao_config"] = simplify_torchao(d.pop("quant_type")["default"])
    return d


def error(stage, exc):
    return {"error": {"stage": stage, "type": type(exc).__name__, "message": str(exc)}}


class Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def run_case(config):
    try:
        kwargs = {}
        for key in ("quant_backend", "quant_kwargs", "components_to_quantize"):
            if key in config:
                kwargs[key] = config[key]
        if config.get("quant_mapping") is not None:
            kwargs["quant_mapping"] = {n: config_object(n, e)
                                       for n, e in config["quant_mapping"].items()}
        elif "quant_mapping" in config:
            kwargs["quant_mapping"] = None
    except Exception as exc:  # noqa: BLE001
        return error("config_object", exc)
    try:
        pqc = PipelineQuantizationConfig(**kwargs)
    except Exception as exc:  # noqa: BLE001
        return error("init", exc)
    capture = Capture()
    logger = logging.getLogger("diffusers.pipelines.pipeline_loading_utils")
    logger.addHandler(capture)
    try:
        _maybe_warn_for_wrong_component_in_quant_config({k: None for k in PIPE_INIT_KEYS}, pqc)
    finally:
        logger.removeHandler(capture)
    resolved = {}
    for name, is_diffusers in MODULES.items():
        try:
            cfg = pqc._resolve_quant_config(is_diffusers=is_diffusers, module_name=name)
        except Exception as exc:  # noqa: BLE001
            return error(f"resolve:{name}", exc)
        resolved[name] = None if cfg is None else to_dict(cfg)
    return {"resolved": resolved, "warning": capture.messages[0] if capture.messages else None}


NF4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16"}


def cases():
    c = []

    def add(name, config, expect_ours=None, note=None):
        case = {"name": name, "config": config}
        if expect_ours:
            case["expect_ours"] = expect_ours
            case["note"] = note
        c.append(case)

    # ---- global form: accepted ----
    add("bnb4_all_components", {"quant_backend": "bitsandbytes_4bit", "quant_kwargs": NF4})
    add("bnb4_components_list", {"quant_backend": "bitsandbytes_4bit", "quant_kwargs": NF4,
                                 "components_to_quantize": ["transformer", "text_encoder_2"]})
    add("bnb4_components_string", {"quant_backend": "bitsandbytes_4bit", "quant_kwargs": NF4,
                                   "components_to_quantize": "transformer"})
    add("bnb4_components_empty_list_means_all",
        {"quant_backend": "bitsandbytes_4bit", "quant_kwargs": NF4, "components_to_quantize": []})
    add("bnb4_fp4_defaults", {"quant_backend": "bitsandbytes_4bit", "quant_kwargs": {"load_in_4bit": True}})
    add("bnb4_all_fields", {"quant_backend": "bitsandbytes_4bit", "quant_kwargs": {
        "load_in_4bit": True, "load_in_8bit": False, "llm_int8_threshold": 5.5,
        "llm_int8_skip_modules": ["proj_out"], "llm_int8_enable_fp32_cpu_offload": True,
        "llm_int8_has_fp16_weight": False, "bnb_4bit_compute_dtype": "float16",
        "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
        "bnb_4bit_quant_storage": "bfloat16"}, "components_to_quantize": ["transformer"]})
    add("bnb4_dtype_alias_half", {"quant_backend": "bitsandbytes_4bit", "quant_kwargs": {
        "load_in_4bit": True, "bnb_4bit_compute_dtype": "half"}})
    add("bnb4_null_dtypes_default", {"quant_backend": "bitsandbytes_4bit", "quant_kwargs": {
        "load_in_4bit": True, "bnb_4bit_compute_dtype": None, "bnb_4bit_quant_storage": None,
        "llm_int8_skip_modules": None}})
    add("bnb8", {"quant_backend": "bitsandbytes_8bit", "quant_kwargs": {"load_in_8bit": True},
                 "components_to_quantize": ["transformer", "text_encoder", "text_encoder_2"]})
    add("bnb8_threshold", {"quant_backend": "bitsandbytes_8bit",
                           "quant_kwargs": {"load_in_8bit": True, "llm_int8_threshold": 4.0}})
    add("unknown_component_warns", {"quant_backend": "bitsandbytes_4bit", "quant_kwargs": NF4,
                                    "components_to_quantize": ["transformer", "unet"]})
    add("tokenizer_component_ignored", {"quant_backend": "bitsandbytes_4bit", "quant_kwargs": NF4,
                                        "components_to_quantize": ["tokenizer", "vae"]})
    add("quant_mapping_null_with_backend", {"quant_backend": "bitsandbytes_8bit",
                                            "quant_kwargs": {"load_in_8bit": True},
                                            "quant_mapping": None})

    # ---- global form: rejected ----
    add("both_backend_and_mapping", {"quant_backend": "bitsandbytes_4bit", "quant_kwargs": NF4,
                                     "quant_mapping": {"transformer": {"quant_backend": "gguf"}}})
    add("neither_backend_nor_mapping", {"quant_kwargs": NF4})
    add("empty_object", {})
    add("empty_quant_kwargs", {"quant_backend": "bitsandbytes_4bit", "quant_kwargs": {}})
    add("missing_quant_kwargs", {"quant_backend": "bitsandbytes_8bit"})
    add("unknown_backend", {"quant_backend": "int3magic", "quant_kwargs": {"x": 1}})
    add("quanto_backend_unsupported", {"quant_backend": "quanto", "quant_kwargs": {"weights_dtype": "int8"}})
    add("torchao_global_form", {"quant_backend": "torchao", "quant_kwargs": {"quant_type": "int8wo"}})
    add("gguf_global_form", {"quant_backend": "gguf", "quant_kwargs": {"compute_dtype": "bfloat16"}})
    add("bnb_both_4bit_and_8bit", {"quant_backend": "bitsandbytes_4bit",
                                   "quant_kwargs": {"load_in_4bit": True, "load_in_8bit": True}})
    add("bnb_load_in_4bit_not_bool", {"quant_backend": "bitsandbytes_4bit", "quant_kwargs": {"load_in_4bit": 1}})
    add("bnb_threshold_string", {"quant_backend": "bitsandbytes_8bit",
                                 "quant_kwargs": {"load_in_8bit": True, "llm_int8_threshold": "6"}})
    add("bnb_skip_modules_string", {"quant_backend": "bitsandbytes_8bit",
                                    "quant_kwargs": {"load_in_8bit": True, "llm_int8_skip_modules": "proj_out"}})
    add("bnb_double_quant_not_bool", {"quant_backend": "bitsandbytes_4bit",
                                      "quant_kwargs": {"load_in_4bit": True, "bnb_4bit_use_double_quant": "yes"}})
    add("bnb_quant_type_not_string", {"quant_backend": "bitsandbytes_4bit",
                                      "quant_kwargs": {"load_in_4bit": True, "bnb_4bit_quant_type": 4}})
    add("bnb_bad_quant_storage", {"quant_backend": "bitsandbytes_4bit",
                                  "quant_kwargs": {"load_in_4bit": True, "bnb_4bit_quant_storage": "int4"}})
    add("bnb_bad_compute_dtype", {"quant_backend": "bitsandbytes_4bit",
                                  "quant_kwargs": {"load_in_4bit": True, "bnb_4bit_compute_dtype": "bf16"}})
    add("bnb_compute_dtype_number", {"quant_backend": "bitsandbytes_4bit",
                                     "quant_kwargs": {"load_in_4bit": True, "bnb_4bit_compute_dtype": 16}})
    add("bnb_fp32_offload_null", {"quant_backend": "bitsandbytes_8bit",
                                  "quant_kwargs": {"load_in_8bit": True, "llm_int8_enable_fp32_cpu_offload": None}})

    # ---- deliberate differences ----
    add("bnb_threshold_integer", {"quant_backend": "bitsandbytes_8bit",
                                  "quant_kwargs": {"load_in_8bit": True, "llm_int8_threshold": 6}},
        "accept", "JSON integers are accepted for float fields (protobuf-JSON semantics); "
        "diffusers wants a Python float")
    add("bnb_unknown_field", {"quant_backend": "bitsandbytes_4bit",
                              "quant_kwargs": {"load_in_4bit": True, "bnb_4bit_blocksize": 64}},
        "reject", "diffusers only warns 'Unused kwargs'; fluxserve rejects fields that do not "
        "belong to the backend")
    add("bnb_quant_type_unknown", {"quant_backend": "bitsandbytes_4bit",
                                   "quant_kwargs": {"load_in_4bit": True, "bnb_4bit_quant_type": "int4"}},
        "reject", "diffusers only checks that bnb_4bit_quant_type is a string")
    add("bnb4_backend_with_load_in_8bit", {"quant_backend": "bitsandbytes_4bit",
                                           "quant_kwargs": {"load_in_8bit": True}},
        "reject", "diffusers picks 8-bit from the flag and ignores the backend name")
    add("bnb4_backend_without_flag", {"quant_backend": "bitsandbytes_4bit",
                                      "quant_kwargs": {"bnb_4bit_quant_type": "nf4"}},
        "reject", "diffusers builds a config that quantizes nothing")
    add("components_with_mapping", {"quant_mapping": {"transformer": {
        "quant_backend": "bitsandbytes_4bit", **NF4}}, "components_to_quantize": ["transformer"]},
        "reject", "diffusers ignores components_to_quantize names that are mapping keys")

    # ---- granular form: accepted ----
    add("mapping_mixed", {"quant_mapping": {
        "transformer": {"quant_backend": "bitsandbytes_4bit", **NF4},
        "text_encoder_2": {"quant_backend": "bitsandbytes_8bit", "load_in_8bit": True}}})
    add("mapping_gguf_transformer", {"quant_mapping": {
        "transformer": {"quant_backend": "gguf", "compute_dtype": "bfloat16"}}})
    add("mapping_gguf_default", {"quant_mapping": {"vae": {"quant_backend": "gguf"}}})
    for qt in ["int4wo", "int4_weight_only", "int8wo", "int8_weight_only", "int8dq",
               "int8_dynamic_activation_int8_weight", "float8wo", "float8wo_e5m2", "float8wo_e4m3",
               "float8_weight_only", "float8dq", "float8_dynamic_activation_float8_weight",
               "float8dq_e4m3", "float8dq_e4m3_tensor", "float8dq_e4m3_row"]:
        add(f"mapping_torchao_{qt}", {"quant_mapping": {
            "transformer": {"quant_backend": "torchao", "quant_type": qt}}})
    add("mapping_torchao_int4wo_group64", {"quant_mapping": {
        "transformer": {"quant_backend": "torchao", "quant_type": "int4wo", "group_size": 64,
                        "modules_to_not_convert": ["proj_out"]}}})
    add("mapping_torchao_text_encoder", {"quant_mapping": {
        "text_encoder_2": {"quant_backend": "torchao", "quant_type": "int8wo"},
        "transformer": {"quant_backend": "torchao", "quant_type": "float8dq_e4m3_row"}}})
    add("mapping_unknown_component_warns", {"quant_mapping": {
        "transformer": {"quant_backend": "bitsandbytes_8bit", "load_in_8bit": True},
        "unet": {"quant_backend": "bitsandbytes_8bit", "load_in_8bit": True}}})
    add("mapping_empty_with_no_backend", {"quant_mapping": {}})

    # ---- granular form: rejected ----
    add("mapping_unknown_backend", {"quant_mapping": {"transformer": {"quant_backend": "int3magic"}}})
    add("mapping_torchao_unknown_type", {"quant_mapping": {
        "transformer": {"quant_backend": "torchao", "quant_type": "int3wo"}}})
    # torchao 0.15 removed these config classes, so diffusers 0.42 rejects the strings; fluxserve
    # accepts them and follows torchao's quantization primitives (engine/quant/torchao_formats.h).
    removed_note = ("torchao <= 0.14 type whose config class torchao 0.15 removed; fluxserve "
                    "implements it from torchao's primitives")
    for qt, kw in [("int4dq", {}), ("fp6_e3m2", {}), ("fp4", {}), ("uint4wo", {}),
                   ("uintx_weight_only", {"dtype": "uint3", "group_size": 32})]:
        add(f"mapping_torchao_removed_{qt}", {"quant_mapping": {
            "transformer": {"quant_backend": "torchao", "quant_type": qt, **kw}}},
            "accept", removed_note)
    add("mapping_torchao_uintx_no_dtype", {"quant_mapping": {
        "transformer": {"quant_backend": "torchao", "quant_type": "uintx_weight_only"}}})
    add("mapping_torchao_fpx_mismatch", {"quant_mapping": {
        "transformer": {"quant_backend": "torchao", "quant_type": "fp6_e3m3"}}})
    add("mapping_torchao_missing_type", {"quant_mapping": {"transformer": {"quant_backend": "torchao"}}})
    add("mapping_torchao_bad_kwarg", {"quant_mapping": {
        "transformer": {"quant_backend": "torchao", "quant_type": "float8wo", "group_size": 64}}})
    add("mapping_bnb_both_flags", {"quant_mapping": {"vae": {
        "quant_backend": "bitsandbytes_8bit", "load_in_8bit": True, "load_in_4bit": True}}})
    add("mapping_gguf_bad_field", {"quant_mapping": {"transformer": {
        "quant_backend": "gguf", "compute_dtype": "bfloat16", "load_in_4bit": True}}})
    return c


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "tests/golden/fixtures"))
    args = ap.parse_args()
    logging.getLogger("diffusers").setLevel(logging.WARNING)
    out = []
    for case in cases():
        case["diffusers"] = run_case(json.loads(json.dumps(case["config"])))
        out.append(case)
        verdict = "error" if "error" in case["diffusers"] else "ok"
        print(f"{case['name']:48s} {verdict}", file=sys.stderr)
    import bitsandbytes
    import torchao
    doc = {"versions": {"diffusers": diffusers.__version__, "transformers": transformers.__version__,
                        "torch": torch.__version__.split("+")[0],
                        "bitsandbytes": bitsandbytes.__version__, "torchao": torchao.__version__},
           "cases": out}
    write_json(Path(args.out) / "quant_config" / "cases.json", doc)


if __name__ == "__main__":
    main()
