#include "engine/models/flux_config.h"

#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/core/status.h"
#include "engine/io/json_util.h"

namespace fluxserve {

absl::StatusOr<FluxTransformerConfig> FluxTransformerConfig::from_json(const nlohmann::json& j,
                                                                       const std::string& what) {
  if (!j.is_object()) return absl::InvalidArgumentError(what + ": config is not a JSON object");
  ConfigReader r(j, what);
  FluxTransformerConfig c;
  if (r.has("_class_name")) {
    FLUX_ASSIGN_OR_RETURN(std::string cls, r.get_string("_class_name"));
    if (cls != "FluxTransformer2DModel") {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": _class_name is '", cls, "', expected 'FluxTransformer2DModel'"));
    }
  }
  FLUX_ASSIGN_OR_RETURN(c.patch_size, r.get_int("patch_size", c.patch_size));
  FLUX_ASSIGN_OR_RETURN(c.in_channels, r.get_int("in_channels", c.in_channels));
  FLUX_ASSIGN_OR_RETURN(c.out_channels, r.get_int("out_channels", c.in_channels));
  FLUX_ASSIGN_OR_RETURN(c.num_layers, r.get_int("num_layers", c.num_layers));
  FLUX_ASSIGN_OR_RETURN(c.num_single_layers, r.get_int("num_single_layers", c.num_single_layers));
  FLUX_ASSIGN_OR_RETURN(c.attention_head_dim,
                        r.get_int("attention_head_dim", c.attention_head_dim));
  FLUX_ASSIGN_OR_RETURN(c.num_attention_heads,
                        r.get_int("num_attention_heads", c.num_attention_heads));
  FLUX_ASSIGN_OR_RETURN(c.joint_attention_dim,
                        r.get_int("joint_attention_dim", c.joint_attention_dim));
  FLUX_ASSIGN_OR_RETURN(c.pooled_projection_dim,
                        r.get_int("pooled_projection_dim", c.pooled_projection_dim));
  FLUX_ASSIGN_OR_RETURN(c.guidance_embeds, r.get_bool("guidance_embeds", c.guidance_embeds));
  FLUX_ASSIGN_OR_RETURN(c.axes_dims_rope, r.get_int_list("axes_dims_rope", c.axes_dims_rope));

  const std::pair<const char*, int64_t> positive[] = {
      {"patch_size", c.patch_size},
      {"in_channels", c.in_channels},
      {"out_channels", c.out_channels},
      {"attention_head_dim", c.attention_head_dim},
      {"num_attention_heads", c.num_attention_heads},
      {"joint_attention_dim", c.joint_attention_dim},
      {"pooled_projection_dim", c.pooled_projection_dim}};
  for (const auto& [name, v] : positive) {
    if (v <= 0) return absl::InvalidArgumentError(absl::StrCat(what, ": ", name, " must be > 0, got ", v));
  }
  if (c.num_layers < 0 || c.num_single_layers < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": num_layers and num_single_layers must be >= 0"));
  }
  if (c.axes_dims_rope.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": axes_dims_rope is empty"));
  }
  for (int64_t d : c.axes_dims_rope) {
    if (d <= 0 || d % 2 != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": axes_dims_rope entries must be positive and even, got [",
          absl::StrJoin(c.axes_dims_rope, ", "), "]"));
    }
  }
  const int64_t rope_sum = std::accumulate(c.axes_dims_rope.begin(), c.axes_dims_rope.end(), 0LL);
  if (rope_sum != c.attention_head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": sum of axes_dims_rope [", absl::StrJoin(c.axes_dims_rope, ", "), "] = ", rope_sum,
        " must equal attention_head_dim ", c.attention_head_dim));
  }
  return c;
}

nlohmann::json FluxTransformerConfig::to_json() const {
  return {{"_class_name", "FluxTransformer2DModel"},
          {"patch_size", patch_size},
          {"in_channels", in_channels},
          {"out_channels", out_channels},
          {"num_layers", num_layers},
          {"num_single_layers", num_single_layers},
          {"attention_head_dim", attention_head_dim},
          {"num_attention_heads", num_attention_heads},
          {"joint_attention_dim", joint_attention_dim},
          {"pooled_projection_dim", pooled_projection_dim},
          {"guidance_embeds", guidance_embeds},
          {"axes_dims_rope", axes_dims_rope}};
}

}  // namespace fluxserve
