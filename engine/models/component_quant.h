// Quantize-on-load of one component's Linear layers exactly as upstream picks them.
// PipelineQuantizationConfig hands transformers models (CLIP, T5) to transformers' quantizers and
// diffusers models (the VAE) to diffusers', and the two libraries decide differently which
// nn.Linear modules to leave alone:
//  - transformers (quantizers/base.py get_modules_to_not_convert): the user's skip list, or when
//    there is none get_keys_to_not_convert(model) (tied weights, the last parameter's module,
//    output embeddings), plus the model's `_keep_in_fp32_modules` (T5: "wo"). An entry matches
//    (should_convert_module) as a regex from the start ending at a module boundary, or as a plain
//    suffix — against the module name for bitsandbytes (replace_with_bnb_linear) but against the
//    parameter name "<module>.weight" for torchao (param_needs_quantization), where suffix entries
//    such as "wo" therefore never match.
//  - diffusers: the user's skip list plus `_keep_in_fp32_modules` (none for AutoencoderKL);
//    bitsandbytes skips a Linear whose own child name is listed, or whose dotted name contains
//    "entry." or equals an entry; torchao tests "entry." in / equality with "<module>.weight".
// tools/golden/generate_component_quant.py records what upstream converted; the golden test
// compares the sets.
#pragma once

#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/models/weights.h"
#include "engine/quant/quant_config.h"

namespace fluxserve {

enum class QuantLibrary { kTransformers, kDiffusers };

// What an upstream model class contributes to the skip list.
struct UpstreamQuantTraits {
  QuantLibrary library = QuantLibrary::kDiffusers;
  std::vector<std::string> keys_to_not_convert;   // get_keys_to_not_convert(model), transformers
  std::vector<std::string> keep_in_fp32_modules;  // the class's _keep_in_fp32_modules
};

// One upstream module a Linear stands for: its dotted name and its rows of the (stacked) weight.
struct LinearPart {
  std::string name;
  int64_t rows = 0;
};

class ComponentQuantizer {
 public:
  // `component` names errors. gguf is refused: it loads pre-quantized .gguf files only
  // (InvalidArgument for transformers models, which take no GGUFQuantizationConfig;
  // Unimplemented for diffusers models, whose GGUF config is pre-quantized only upstream too).
  // A transformers skip entry that is not a valid regex is InvalidArgument.
  static absl::StatusOr<ComponentQuantizer> create(const ComponentQuantConfig& cfg,
                                                   const UpstreamQuantTraits& traits,
                                                   const std::string& component);

  // Whether upstream converts the nn.Linear `module`.
  bool converts(const std::string& module) const;

  // Quantizes the parts of `l` upstream converts, each on its own (from the float32 upcast of the
  // stored weight: from_pretrained(dtype=float32), the reference of the CPU path). A stacked
  // Linear becomes a PartwiseLinearWeight; parts left dense get their own copy. Converted names are
  // appended to converted().
  absl::Status quantize(Linear& l, const std::vector<LinearPart>& parts);

  const std::vector<std::string>& converted() const { return converted_; }

 private:
  ComponentQuantizer() = default;
  ComponentQuantConfig cfg_;
  QuantLibrary library_ = QuantLibrary::kDiffusers;
  std::vector<std::string> patterns_;
  std::vector<std::regex> regexes_;  // transformers: patterns_ compiled
  std::string component_;
  std::vector<std::string> converted_;
};

}  // namespace fluxserve
