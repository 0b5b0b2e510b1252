// config.json of the two text encoders FLUX uses: transformers' CLIPTextConfig (text_encoder/)
// and T5Config (text_encoder_2/), with transformers' defaults for absent fields, the checks the
// models need (positive sizes, heads dividing the width, known activations) and errors that name
// the file and field. Unknown fields are ignored, as transformers does.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "engine/core/tensor.h"
#include "nlohmann/json.hpp"

namespace fluxserve {

// The activations the text encoders can run on kernels/ops.h (ACT2FN names in transformers).
enum class TextActivation {
  kQuickGelu,  // "quick_gelu": x * sigmoid(1.702 x)
  kGeluTanh,   // "gelu_new", "gelu_pytorch_tanh", "gelu_fast": tanh approximation
  kSilu,       // "silu", "swish"
};
// In place on an f32 activation tensor.
void apply_activation_(Tensor& x, TextActivation act);

// Checks user-supplied token ids for a text encoder: `ids` must be [B, L] int64 or int32 with
// B, L >= 1, L <= max_len (when max_len > 0) and every id in [0, vocab_size). Returns them as a
// contiguous int64 tensor; errors name `model` and the offending batch row / position / id.
absl::StatusOr<Tensor> validate_input_ids(const Tensor& ids, int64_t vocab_size, int64_t max_len,
                                          const std::string& model);

struct CLIPTextConfig {
  int64_t vocab_size = 49408;
  int64_t hidden_size = 512;
  int64_t intermediate_size = 2048;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 8;
  int64_t max_position_embeddings = 77;
  std::string hidden_act = "quick_gelu";
  TextActivation act = TextActivation::kQuickGelu;
  double layer_norm_eps = 1e-5;
  int64_t pad_token_id = 1;
  int64_t bos_token_id = 49406;
  // 2 in openai/clip-vit-large-patch14 (the pre-#24773 value): pooling then takes the position of
  // the largest id instead of the first eos id (see CLIPTextModel::forward).
  int64_t eos_token_id = 49407;

  int64_t head_dim() const { return hidden_size / num_attention_heads; }

  // `what` names the file in errors. "architectures", when present, must name CLIPTextModel or
  // CLIPTextModelWithProjection; "model_type", when present, must be clip_text_model.
  static absl::StatusOr<CLIPTextConfig> from_json(const nlohmann::json& j, const std::string& what);
};

struct T5Config {
  int64_t vocab_size = 32128;
  int64_t d_model = 512;
  int64_t d_kv = 64;
  int64_t d_ff = 2048;
  int64_t num_layers = 6;
  int64_t num_heads = 8;
  int64_t relative_attention_num_buckets = 32;
  int64_t relative_attention_max_distance = 128;
  double layer_norm_epsilon = 1e-6;
  // "gated-gelu" (T5 v1.1, FLUX) = gated FF with gelu_new; "gated-<act>" or "<act>" otherwise.
  std::string feed_forward_proj = "relu";
  bool is_gated_act = false;
  TextActivation act = TextActivation::kGeluTanh;

  int64_t inner_dim() const { return num_heads * d_kv; }

  // `what` names the file in errors. "architectures", when present, must name T5EncoderModel,
  // T5Model or T5ForConditionalGeneration (only the encoder is used); "model_type" must be t5.
  static absl::StatusOr<T5Config> from_json(const nlohmann::json& j, const std::string& what);
};

}  // namespace fluxserve
