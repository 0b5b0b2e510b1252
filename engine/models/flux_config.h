// FluxTransformer2DModel's config.json, with diffusers' defaults for absent fields and the
// consistency checks the model needs (head dim = sum of the RoPE axes, even axes, positive sizes).
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace fluxserve {

struct FluxTransformerConfig {
  int64_t patch_size = 1;
  int64_t in_channels = 64;
  int64_t out_channels = 64;  // config null/absent -> in_channels
  int64_t num_layers = 19;
  int64_t num_single_layers = 38;
  int64_t attention_head_dim = 128;
  int64_t num_attention_heads = 24;
  int64_t joint_attention_dim = 4096;
  int64_t pooled_projection_dim = 768;
  bool guidance_embeds = false;
  std::vector<int64_t> axes_dims_rope = {16, 56, 56};

  int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }
  int64_t out_features() const { return patch_size * patch_size * out_channels; }

  // `what` names the file in errors. _class_name, when present, must be FluxTransformer2DModel.
  static absl::StatusOr<FluxTransformerConfig> from_json(const nlohmann::json& j,
                                                         const std::string& what);
  nlohmann::json to_json() const;
};

}  // namespace fluxserve
