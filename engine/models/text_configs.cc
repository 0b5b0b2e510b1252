#include "engine/models/text_configs.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/core/status.h"
#include "engine/io/json_util.h"
#include "kernels/ops.h"

namespace fluxserve {
namespace {

// "architectures" (transformers) must list one of `accepted`; "model_type" must equal `type`.
absl::Status check_class(const nlohmann::json& j, const ConfigReader& r,
                         const std::vector<std::string>& accepted, const std::string& type) {
  const std::string& what = r.what();
  if (j.contains("architectures") && !j["architectures"].is_null()) {
    const nlohmann::json& a = j["architectures"];
    if (!a.is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": field 'architectures' must be an array, got ", json_type_name(a)));
    }
    std::vector<std::string> names;
    bool found = false;
    for (const nlohmann::json& e : a) {
      if (!e.is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, ": field 'architectures' must hold strings"));
      }
      const std::string name = e.get<std::string>();
      for (const std::string& ok : accepted) found = found || name == ok;
      names.push_back(name);
    }
    if (!found && !names.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": architectures is [",
                                                     absl::StrJoin(names, ", "), "], expected ",
                                                     absl::StrJoin(accepted, " or ")));
    }
  }
  if (r.has("model_type")) {
    FLUX_ASSIGN_OR_RETURN(std::string mt, r.get_string("model_type"));
    if (mt != type) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": model_type is '", mt, "', expected '", type, "'"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<TextActivation> parse_activation(const std::string& name, const std::string& what,
                                                const std::string& field) {
  if (name == "quick_gelu") return TextActivation::kQuickGelu;
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") {
    return TextActivation::kGeluTanh;
  }
  if (name == "silu" || name == "swish") return TextActivation::kSilu;
  return absl::UnimplementedError(absl::StrCat(
      what, ": ", field, " '", name,
      "' is not supported (supported: quick_gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, silu)"));
}

absl::Status check_positive(const std::string& what,
                            std::initializer_list<std::pair<const char*, int64_t>> fields) {
  for (const auto& [name, v] : fields) {
    if (v <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": ", name, " must be > 0, got ", v));
    }
  }
  return absl::OkStatus();
}

// Token ids may be null in a config (transformers allows it); keep the default then.
absl::StatusOr<int64_t> token_id(const ConfigReader& r, const std::string& key, int64_t def) {
  return r.get_int(key, def);
}

}  // namespace

void apply_activation_(Tensor& x, TextActivation act) {
  switch (act) {
    case TextActivation::kQuickGelu:
      ops::quick_gelu_(x);
      return;
    case TextActivation::kGeluTanh:
      ops::gelu_tanh_(x);
      return;
    case TextActivation::kSilu:
      ops::silu_(x);
      return;
  }
}

absl::StatusOr<Tensor> validate_input_ids(const Tensor& ids, int64_t vocab_size, int64_t max_len,
                                          const std::string& model) {
  if (ids.dtype() != DType::kI64 && ids.dtype() != DType::kI32) {
    return absl::InvalidArgumentError(
        absl::StrCat(model, ": 'input_ids' must be int64 or int32, got ", dtype_name(ids.dtype())));
  }
  if (ids.dim() != 2 || ids.size(0) < 1 || ids.size(1) < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(model, ": 'input_ids' must have shape [batch, seq_len] with both >= 1, got ",
                     ids.shape_str()));
  }
  if (ids.device().type != DeviceType::kCPU) {
    return absl::InvalidArgumentError(absl::StrCat(model, ": 'input_ids' must be on the CPU"));
  }
  const int64_t batch = ids.size(0), len = ids.size(1);
  if (max_len > 0 && len > max_len) {
    return absl::InvalidArgumentError(absl::StrCat(model, ": sequence length ", len,
                                                   " exceeds max_position_embeddings ", max_len));
  }
  Tensor out = Tensor::empty({batch, len}, DType::kI64);
  int64_t* o = out.data<int64_t>();
  for (int64_t i = 0; i < batch * len; ++i) {
    const int64_t id = ids.dtype() == DType::kI64 ? ids.data<int64_t>()[i]
                                                  : static_cast<int64_t>(ids.data<int32_t>()[i]);
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(model, ": input_ids[", i / len, ", ", i % len,
                                                     "] = ", id, " is outside the vocabulary [0, ",
                                                     vocab_size, ")"));
    }
    o[i] = id;
  }
  return out;
}

absl::StatusOr<CLIPTextConfig> CLIPTextConfig::from_json(const nlohmann::json& j,
                                                         const std::string& what) {
  if (!j.is_object()) return absl::InvalidArgumentError(what + ": config is not a JSON object");
  ConfigReader r(j, what);
  FLUX_RETURN_IF_ERROR(
      check_class(j, r, {"CLIPTextModel", "CLIPTextModelWithProjection"}, "clip_text_model"));
  CLIPTextConfig c;
  FLUX_ASSIGN_OR_RETURN(c.vocab_size, r.get_int("vocab_size", c.vocab_size));
  FLUX_ASSIGN_OR_RETURN(c.hidden_size, r.get_int("hidden_size", c.hidden_size));
  FLUX_ASSIGN_OR_RETURN(c.intermediate_size, r.get_int("intermediate_size", c.intermediate_size));
  FLUX_ASSIGN_OR_RETURN(c.num_hidden_layers, r.get_int("num_hidden_layers", c.num_hidden_layers));
  FLUX_ASSIGN_OR_RETURN(c.num_attention_heads,
                        r.get_int("num_attention_heads", c.num_attention_heads));
  FLUX_ASSIGN_OR_RETURN(c.max_position_embeddings,
                        r.get_int("max_position_embeddings", c.max_position_embeddings));
  FLUX_ASSIGN_OR_RETURN(c.hidden_act, r.get_string("hidden_act", c.hidden_act));
  FLUX_ASSIGN_OR_RETURN(c.act, parse_activation(c.hidden_act, what, "hidden_act"));
  FLUX_ASSIGN_OR_RETURN(c.layer_norm_eps, r.get_double("layer_norm_eps", c.layer_norm_eps));
  FLUX_ASSIGN_OR_RETURN(c.pad_token_id, token_id(r, "pad_token_id", c.pad_token_id));
  FLUX_ASSIGN_OR_RETURN(c.bos_token_id, token_id(r, "bos_token_id", c.bos_token_id));
  FLUX_ASSIGN_OR_RETURN(c.eos_token_id, token_id(r, "eos_token_id", c.eos_token_id));
  FLUX_RETURN_IF_ERROR(
      check_positive(what, {{"vocab_size", c.vocab_size},
                            {"hidden_size", c.hidden_size},
                            {"intermediate_size", c.intermediate_size},
                            {"num_attention_heads", c.num_attention_heads},
                            {"max_position_embeddings", c.max_position_embeddings}}));
  if (c.num_hidden_layers < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": num_hidden_layers must be >= 0, got ", c.num_hidden_layers));
  }
  if (c.hidden_size % c.num_attention_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": hidden_size ", c.hidden_size,
                                                   " is not divisible by num_attention_heads ",
                                                   c.num_attention_heads));
  }
  if (!(c.layer_norm_eps >= 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": layer_norm_eps must be >= 0, got ", c.layer_norm_eps));
  }
  return c;
}

absl::StatusOr<T5Config> T5Config::from_json(const nlohmann::json& j, const std::string& what) {
  if (!j.is_object()) return absl::InvalidArgumentError(what + ": config is not a JSON object");
  ConfigReader r(j, what);
  FLUX_RETURN_IF_ERROR(
      check_class(j, r, {"T5EncoderModel", "T5Model", "T5ForConditionalGeneration"}, "t5"));
  T5Config c;
  FLUX_ASSIGN_OR_RETURN(c.vocab_size, r.get_int("vocab_size", c.vocab_size));
  FLUX_ASSIGN_OR_RETURN(c.d_model, r.get_int("d_model", c.d_model));
  FLUX_ASSIGN_OR_RETURN(c.d_kv, r.get_int("d_kv", c.d_kv));
  FLUX_ASSIGN_OR_RETURN(c.d_ff, r.get_int("d_ff", c.d_ff));
  FLUX_ASSIGN_OR_RETURN(c.num_layers, r.get_int("num_layers", c.num_layers));
  FLUX_ASSIGN_OR_RETURN(c.num_heads, r.get_int("num_heads", c.num_heads));
  FLUX_ASSIGN_OR_RETURN(
      c.relative_attention_num_buckets,
      r.get_int("relative_attention_num_buckets", c.relative_attention_num_buckets));
  FLUX_ASSIGN_OR_RETURN(
      c.relative_attention_max_distance,
      r.get_int("relative_attention_max_distance", c.relative_attention_max_distance));
  FLUX_ASSIGN_OR_RETURN(c.layer_norm_epsilon,
                        r.get_double("layer_norm_epsilon", c.layer_norm_epsilon));
  FLUX_ASSIGN_OR_RETURN(c.feed_forward_proj,
                        r.get_string("feed_forward_proj", c.feed_forward_proj));
  // As T5Config.__post_init__: "gated-<act>" or "<act>"; "gated-gelu" means gelu_new (the saved
  // dense_act_fn / is_gated_act fields are derived from feed_forward_proj and not read).
  const std::string& ff = c.feed_forward_proj;
  std::string act = ff;
  if (ff.rfind("gated-", 0) == 0) {
    c.is_gated_act = true;
    act = ff.substr(6);
  }
  if (act.empty() || act.find('-') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": feed_forward_proj '", ff, "' must be 'gated-<activation>' or '<activation>'"));
  }
  if (ff == "gated-gelu") act = "gelu_new";
  FLUX_ASSIGN_OR_RETURN(c.act, parse_activation(act, what, "feed_forward_proj activation"));
  FLUX_RETURN_IF_ERROR(check_positive(what, {{"vocab_size", c.vocab_size},
                                             {"d_model", c.d_model},
                                             {"d_kv", c.d_kv},
                                             {"d_ff", c.d_ff},
                                             {"num_heads", c.num_heads}}));
  if (c.num_layers < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": num_layers must be >= 0, got ", c.num_layers));
  }
  // The bucket formula needs a non-empty exact range (num_buckets / 4 >= 1) and a log range
  // beyond it; smaller values make transformers index out of the bias table.
  if (c.relative_attention_num_buckets < 4) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": relative_attention_num_buckets must be >= 4, got ",
                     c.relative_attention_num_buckets));
  }
  if (c.relative_attention_max_distance <= c.relative_attention_num_buckets / 4) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": relative_attention_max_distance ", c.relative_attention_max_distance,
                     " must exceed relative_attention_num_buckets / 4 = ",
                     c.relative_attention_num_buckets / 4));
  }
  if (!(c.layer_norm_epsilon >= 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": layer_norm_epsilon must be >= 0, got ", c.layer_norm_epsilon));
  }
  return c;
}

}  // namespace fluxserve
