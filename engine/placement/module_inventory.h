// What a device-map planner places: each pipeline component as an ordered list of placement units
// (whole no-split blocks, or leaf modules outside blocks) named as upstream names the modules, with
// their bytes in the form the component will be stored in. Built from the components' config.json
// alone (no weights), so a FLUX.1-dev-sized plan needs only the configs. Sizes are those
// accelerate's compute_module_sizes gives on a meta-device model for dense forms (checked by
// tests/golden/device_map_golden_test.cc) and those our quantized formats hold otherwise (checked
// against FluxPipeline::memory() of a loaded model).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/core/dtype.h"
#include "engine/models/flux_config.h"
#include "engine/models/text_configs.h"
#include "engine/models/vae_decoder.h"
#include "engine/quant/quant_config.h"

namespace fluxserve {

// How a component's tensors are stored.
struct StorageForm {
  DType weight = DType::kBF16;  // dense Linear weights, embedding tables, conv kernels
  DType small = DType::kBF16;   // biases and norm vectors (the CPU engine keeps these in f32)
  // Linear layers upstream's quantizer converts (its skip rules: engine/models/component_quant.h)
  // take this format; bitsandbytes 4/8-bit only (torchao and GGUF sizes come from a loaded model).
  std::optional<ComponentQuantConfig> quant;
};

// One placement unit. `name` is the module's dotted name inside its component
// ("transformer_blocks.3", "time_text_embed.timestep_embedder.linear_1", "pos_embed").
struct ModuleUnit {
  std::string name;
  int64_t bytes = 0;        // as stored (quantized where quantized)
  int64_t dense_bytes = 0;  // the same module left unconverted (llm_int8_enable_fp32_cpu_offload)
  int64_t largest_leaf =
      0;  // the largest leaf module inside (what leaf-level offload moves at once)
  // Leaf modules holding tensors inside the unit and their bytes (get_balanced_memory's mean).
  int64_t leaf_modules = 0, leaf_bytes = 0;
  bool block = false;  // an instance of one of the component's no-split classes
  // The unit whose parameter this one shares (T5's encoder.embed_tokens -> shared): it holds no
  // bytes of its own and accelerate places it with the other.
  std::string tied_to;
};

struct ComponentInventory {
  std::string component;                      // "transformer", "text_encoder", ...
  std::string model_class;                    // "FluxTransformer2DModel", ...
  std::vector<std::string> no_split_classes;  // the class's _no_split_modules
  std::vector<ModuleUnit> units;              // in upstream registration (named_children) order
  std::string format;                         // "bf16", "bitsandbytes nf4 (double quant) + bf16"
  bool quantized = false;
  bool bnb_fp32_cpu_offload = false;  // llm_int8_enable_fp32_cpu_offload was set

  int64_t bytes() const;
  // Bytes of the units under `prefix` ("" = all; "transformer_blocks" = every double block).
  int64_t bytes_under(const std::string& prefix) const;
  const ModuleUnit* find(const std::string& name) const;
};

absl::StatusOr<ComponentInventory> flux_transformer_inventory(const FluxTransformerConfig& c,
                                                              const StorageForm& form);
absl::StatusOr<ComponentInventory> t5_encoder_inventory(const T5Config& c, const StorageForm& form);
absl::StatusOr<ComponentInventory> clip_text_inventory(const CLIPTextConfig& c,
                                                       const StorageForm& form);
// The decoder FluxPipeline runs (the encoder is never loaded for text-to-image), kept whole.
absl::StatusOr<ComponentInventory> vae_decoder_inventory(const AutoencoderKLConfig& c,
                                                         const StorageForm& form);

// Every module component of a FluxPipeline folder from its <component>/config.json files, in
// diffusers' model_cpu_offload_seq order (text_encoder, text_encoder_2, transformer, vae).
// `quant` (optional) resolves per component as PipelineQuantizationConfig does.
absl::StatusOr<std::vector<ComponentInventory>> pipeline_inventory(const std::string& dir,
                                                                   const PipelineQuantConfig* quant,
                                                                   DType weight, DType small);

// "cuda:0" style names and byte counts for messages: 12.00 GiB.
std::string format_bytes(int64_t b);

}  // namespace fluxserve
