// The quantization part of a model spec: diffusers' PipelineQuantizationConfig as JSON.
//
// Field names are diffusers' (src/diffusers/quantizers/pipe_quant_config.py,
// quantization_config.py), so that this object can become the protobuf-JSON form of ModelSpec.
// Two forms, exactly one of which must be used:
//
//  1. global: one backend, its constructor kwargs, and optionally the components it applies to
//       {"quant_backend": "bitsandbytes_4bit",
//        "quant_kwargs": {"load_in_4bit": true, "bnb_4bit_quant_type": "nf4",
//                         "bnb_4bit_compute_dtype": "bfloat16"},
//        "components_to_quantize": ["transformer", "text_encoder_2"]}   // or one string; optional
//     Without components_to_quantize every module component (transformer, text_encoder,
//     text_encoder_2, vae) is quantized, as in diffusers.
//
//  2. granular: one config per component; each entry is the config object's constructor kwargs
//     flattened, plus "quant_backend" naming the config class
//       {"quant_mapping": {
//          "transformer":    {"quant_backend": "torchao", "quant_type": "int4wo", "group_size": 64},
//          "text_encoder_2": {"quant_backend": "bitsandbytes_8bit", "load_in_8bit": true},
//          "vae":            {"quant_backend": "gguf", "compute_dtype": "bfloat16"}}}
//
// Backends and their kwargs (diffusers' defaults):
//   bitsandbytes_4bit / bitsandbytes_8bit (BitsAndBytesConfig): load_in_8bit=false,
//     load_in_4bit=false, llm_int8_threshold=6.0, llm_int8_skip_modules=null,
//     llm_int8_enable_fp32_cpu_offload=false, llm_int8_has_fp16_weight=false,
//     bnb_4bit_compute_dtype="float32", bnb_4bit_quant_type="fp4" (fp4|nf4),
//     bnb_4bit_use_double_quant=false, bnb_4bit_quant_storage="uint8".
//     The backend name must agree with the flag: bitsandbytes_4bit needs load_in_4bit=true,
//     bitsandbytes_8bit needs load_in_8bit=true (diffusers picks the mode from the flags only).
//   torchao (TorchAoConfig): quant_type (a shorthand or full torchao function name, see
//     quant_config.cc), its kwargs flattened next to it (group_size for the int4/int8 weight-only
//     types), modules_to_not_convert=null. Also accepted, with the kwargs torchao <= 0.14 gave
//     them: int4dq / int8_dynamic_activation_int4_weight (group_size=32, act_mapping_type=
//     "asymmetric"|"symmetric"), fpX / fpX_eAmB for X = 3..7 (fpx_weight_only, no kwargs) and
//     uint1wo..uint7wo / uintx_weight_only (dtype "uint1".."uint7", required for the long name;
//     group_size=64; pack_dim=-1; use_hqq=false). torchao 0.15 removed their config classes, so
//     diffusers 0.42 itself cannot build these: fluxserve follows torchao's quantization
//     primitives for them (engine/quant/torchao_formats.h), and to_json() names the old class.
//   gguf (GGUFQuantizationConfig): compute_dtype="float32". diffusers models only.
//
// Validation follows PipelineQuantizationConfig._validate_init_args and the config classes'
// constructors; every error is InvalidArgument naming the field and the allowed values. Component
// names that are not quantizable parts of a FluxPipeline are ignored with a warning (as diffusers
// does); see warnings().
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace fluxserve {

enum class QuantBackend { kBitsAndBytes4bit, kBitsAndBytes8bit, kTorchAo, kGguf };

// "bitsandbytes_4bit", "bitsandbytes_8bit", "torchao", "gguf".
const char* quant_backend_name(QuantBackend b);

// What torchao config class a quant_type stands for (torchao >= 0.15 names; the last three only
// exist in torchao <= 0.14).
enum class TorchAoKind {
  kInt4WeightOnly,                       // Int4WeightOnlyConfig
  kInt8WeightOnly,                       // Int8WeightOnlyConfig
  kInt8DynamicActivationInt8Weight,      // Int8DynamicActivationInt8WeightConfig
  kFloat8WeightOnly,                     // Float8WeightOnlyConfig
  kFloat8DynamicActivationFloat8Weight,  // Float8DynamicActivationFloat8WeightConfig
  kInt8DynamicActivationInt4Weight,      // Int8DynamicActivationInt4WeightConfig (<= 0.14)
  kFpxWeightOnly,                        // FPXWeightOnlyConfig (<= 0.14)
  kUintxWeightOnly,                      // UIntXWeightOnlyConfig (<= 0.14)
};
const char* torchao_config_class(TorchAoKind k);

// One component's resolved config, normalized, with diffusers' defaults filled in. Only the
// fields of `backend` are meaningful.
struct ComponentQuantConfig {
  QuantBackend backend = QuantBackend::kBitsAndBytes4bit;

  // bitsandbytes (BitsAndBytesConfig)
  bool load_in_8bit = false;
  bool load_in_4bit = false;
  double llm_int8_threshold = 6.0;
  std::optional<std::vector<std::string>> llm_int8_skip_modules;
  bool llm_int8_enable_fp32_cpu_offload = false;
  bool llm_int8_has_fp16_weight = false;
  std::string bnb_4bit_compute_dtype = "float32";  // torch dtype name, aliases resolved
  std::string bnb_4bit_quant_type = "fp4";         // "fp4" | "nf4"
  bool bnb_4bit_use_double_quant = false;
  std::string bnb_4bit_quant_storage = "uint8";

  // torchao (TorchAoConfig)
  std::string quant_type;  // as written (shorthand or full name)
  TorchAoKind torchao_kind = TorchAoKind::kInt8WeightOnly;
  std::optional<int64_t> group_size;  // int4wo 128, int8wo none, int4dq 32, uintX 64 (defaults)
  std::string weight_dtype;                   // float8 types: "float8_e4m3fn" | "float8_e5m2"
  std::string granularity;                    // float8dq: "tensor" | "row"; float8wo: "row"
  int fpx_ebits = 0, fpx_mbits = 0;           // fpX_eAmB: A, B
  int uintx_bits = 0;                         // uintXwo: X
  bool act_symmetric = false;                 // int4dq: act_mapping_type "symmetric"
  nlohmann::json quant_type_kwargs = nlohmann::json::object();  // the kwargs as given
  std::optional<std::vector<std::string>> modules_to_not_convert;

  // gguf (GGUFQuantizationConfig)
  std::string compute_dtype = "float32";

  // Like diffusers' config.to_dict(): {"quant_method": "bitsandbytes"|"torchao"|"gguf", ...}.
  // torchao: quant_type, quant_type_kwargs, modules_to_not_convert, and "torchao_config" =
  // {"_type": class, "_data": {the fields above that apply}}.
  nlohmann::json to_json() const;
};

// The FluxPipeline components a config can name. Module components are quantizable;
// `is_diffusers_model` says which library's config class applies (diffusers: transformer, vae;
// transformers: text_encoder, text_encoder_2).
struct PipelineComponent {
  const char* name;
  bool is_module;
  bool is_diffusers_model;
};
const std::vector<PipelineComponent>& flux_pipeline_components();

class PipelineQuantConfig {
 public:
  // Parses the quantization fields of `j` (quant_backend, quant_kwargs, components_to_quantize,
  // quant_mapping); other keys of `j` are left to the caller. `what` prefixes every message.
  static absl::StatusOr<PipelineQuantConfig> from_json(const nlohmann::json& j,
                                                       const std::string& what = "quantization");

  // PipelineQuantizationConfig._resolve_quant_config: the config for `component`, or nullopt
  // when it is not quantized. Validation already happened in from_json, so this cannot fail.
  std::optional<ComponentQuantConfig> resolve(const std::string& component,
                                               bool is_diffusers_model) const;
  // Same, with is_diffusers_model taken from flux_pipeline_components(); nullopt for
  // non-module components (tokenizers, scheduler) and unknown names.
  std::optional<ComponentQuantConfig> resolve(const std::string& component) const;

  bool is_granular() const { return granular_; }
  // Messages for names that diffusers ignores ("... will be ignored ...").
  const std::vector<std::string>& warnings() const { return warnings_; }

  // The input form, normalized (components_to_quantize always a list; every kwarg with its
  // default filled in).
  nlohmann::json to_json() const;

 private:
  bool granular_ = false;
  std::optional<QuantBackend> backend_;                        // global form
  std::optional<ComponentQuantConfig> global_;                 // global form, built once
  std::optional<std::vector<std::string>> components_to_quantize_;
  std::vector<std::pair<std::string, ComponentQuantConfig>> mapping_;  // granular form
  std::vector<std::string> warnings_;
};

}  // namespace fluxserve
