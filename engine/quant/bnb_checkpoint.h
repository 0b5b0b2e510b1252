// Pre-quantized bitsandbytes checkpoints as diffusers (ModelMixin.save_pretrained) and
// transformers write them: config.json carries "quantization_config" (BitsAndBytesConfig.to_dict()),
// and each quantized Linear `<m>` is stored as
//   4-bit:  <m>.weight (packed uint8 [(n+1)/2, 1]), <m>.weight.absmax, <m>.weight.quant_map,
//           [<m>.weight.nested_absmax, <m>.weight.nested_quant_map,]
//           <m>.weight.quant_state.bitsandbytes__nf4|fp4 (uint8 JSON bytes)
//   8-bit:  <m>.weight (int8 [out, in]), <m>.SCB (float32 [out]), <m>.weight_format (uint8 [])
// (bitsandbytes Linear4bit/Linear8bitLt._save_to_state_dict). Other tensors keep their dtype.
// This unit reads that config and those layers; writing is in bnb_checkpoint_writer.h.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/io/checkpoint.h"
#include "engine/quant/quant_config.h"
#include "engine/quant/quantized_linear.h"
#include "nlohmann/json.hpp"

namespace fluxserve {

// The checkpoint's quantization from a config.json object: nullopt when there is no
// "quantization_config" (or it is null); a bitsandbytes config resolved with diffusers' defaults
// and validation; Unimplemented naming `config_path` for other quant_methods (torchao checkpoints
// are pickled .bin files, gguf ones are .gguf files), InvalidArgument for a malformed one.
absl::StatusOr<std::optional<ComponentQuantConfig>> checkpoint_quant_config(
    const nlohmann::json& config, const std::string& config_path);
// The same for <component_dir>/config.json.
absl::StatusOr<std::optional<ComponentQuantConfig>> read_checkpoint_quant_config(
    const std::string& component_dir);

// BitsAndBytesConfig.to_dict() as save_pretrained writes it into config.json (13 keys, including
// the private _load_in_4bit/_load_in_8bit).
nlohmann::json bnb_quantization_config_dict(const ComponentQuantConfig& cfg);

// How a pipeline treats one component's quantization, as diffusers' from_pretrained does: a
// checkpoint that is already quantized is used with its own config, and a config given for it as
// well is ignored with diffusers' warning ("... already has a `quantization_config` attribute. The
// `quantization_config` from the model will be used."); otherwise `quant` applies on load.
struct ComponentQuantPlan {
  std::optional<ComponentQuantConfig> quantize_on_load;  // to apply after loading
  std::optional<ComponentQuantConfig> prequantized;      // the checkpoint's own config
  std::string warning;                                   // set when a given config is ignored
};
absl::StatusOr<ComponentQuantPlan> plan_component_quant(const std::string& component_dir,
                                                        const std::string& component,
                                                        const PipelineQuantConfig* quant);

enum class BnbLinearKind { kNone, k4bit, k8bit };
// How Linear `prefix` is stored: 4-bit when any of its 4-bit state keys is present, 8-bit when
// `<prefix>.SCB` is present or `<prefix>.weight` is int8, else kNone (a plain float weight).
BnbLinearKind bnb_linear_kind(const WeightStore& store, const std::string& prefix);

// Loads Linear `prefix` of shape [out, in] from its stored bitsandbytes state, zero-copy (views of
// the mapped file). `cfg` is the checkpoint's config (the 8-bit threshold; its mode must match the
// layer's). Keys read are appended to `used`. Inconsistent state (missing key, sizes that do not
// match the packed size or the shape, shape in the JSON not [out, in], unknown quant_type,
// unsupported blocksize) is InvalidArgument naming the file and the key.
absl::StatusOr<std::shared_ptr<const QuantizedLinearWeight>> load_bnb_linear(
    const WeightStore& store, const std::string& prefix, int64_t in, int64_t out,
    const ComponentQuantConfig& cfg, std::vector<std::string>* used);

}  // namespace fluxserve
