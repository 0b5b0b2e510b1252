// CLIPTextModel (transformers models/clip/modeling_clip.py), FLUX's `text_encoder`: token and
// position embeddings, pre-LN causal transformer layers, final LayerNorm, and the pooled output
// taken at the end-of-text token. Members mirror the state-dict keys
// (`text_model.encoder.layers[i].self_attn.q_proj`); computes in f32 on kernels/ops.h.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/core/tensor.h"
#include "engine/io/checkpoint.h"
#include "engine/models/component_quant.h"
#include "engine/models/model_memory.h"
#include "engine/models/text_configs.h"
#include "engine/models/weights.h"

namespace fluxserve {

struct ClipLayerNorm {
  Tensor weight, bias;  // [hidden] f32
  Tensor operator()(const Tensor& x, float eps) const;
};

struct ClipTextEmbeddings {
  Tensor token_embedding;     // .weight [vocab, hidden], stored dtype (f32/bf16/f16)
  Tensor position_embedding;  // .weight [max_position_embeddings, hidden], stored dtype
};

// CLIPAttention; q_proj|k_proj|v_proj are stacked at load into `qkv_proj` (one GEMM).
struct ClipAttention {
  Linear qkv_proj, out_proj;
};

struct ClipMlp {
  Linear fc1, fc2;
};

struct ClipEncoderLayer {
  ClipLayerNorm layer_norm1;
  ClipAttention self_attn;
  ClipLayerNorm layer_norm2;
  ClipMlp mlp;
};

struct CLIPTextOutput {
  Tensor last_hidden_state;  // [B, L, hidden] f32, after final_layer_norm
  Tensor pooler_output;      // [B, hidden] f32 (no projection)
};

class CLIPTextModel {
 public:
  // Loads from a component folder (config.json + model.safetensors or shards), e.g.
  // <pipeline>/text_encoder. Keys may carry the `text_model.` prefix (checkpoints written by
  // transformers < 5, e.g. FLUX.1-dev) or not (transformers 5 save_pretrained).
  static absl::StatusOr<std::unique_ptr<CLIPTextModel>> load(const std::string& dir);
  static absl::StatusOr<std::unique_ptr<CLIPTextModel>> from_store(const CLIPTextConfig& config,
                                                                   const WeightStore& store);

  // input_ids: [B, L] int64 or int32, 1 <= L <= max_position_embeddings, ids in [0, vocab_size).
  // Causal self-attention, no padding mask (as FluxPipeline calls it).
  absl::StatusOr<CLIPTextOutput> forward(const Tensor& input_ids) const;

  const CLIPTextConfig& config() const { return config_; }

  // Quantize-on-load with transformers' rules (component_quant.h): every nn.Linear of the
  // encoder layers unless the config's skip list exempts it; embeddings and norms stay as they
  // are. Returns the modules converted (upstream names, e.g. "encoder.layers.0.self_attn.q_proj").
  absl::StatusOr<std::vector<std::string>> quantize(const ComponentQuantConfig& cfg);
  // CLIPTextModel's contribution to transformers' skip list (get_keys_to_not_convert: the last
  // parameter, final_layer_norm.bias; no tied weights, no output embeddings, no fp32 modules).
  static UpstreamQuantTraits quant_traits();
  // Bytes held by every tensor, with the Linear layer counts.
  ModelMemory memory() const;

  // Keys in the checkpoint the model did not use (the `position_ids` buffer is expected there
  // and not reported).
  const std::vector<std::string>& unused_keys() const { return unused_keys_; }

 private:
  CLIPTextConfig config_;
  ClipTextEmbeddings embeddings;
  std::vector<ClipEncoderLayer> encoder_layers;  // text_model.encoder.layers
  ClipLayerNorm final_layer_norm;
  std::vector<std::string> unused_keys_;

  // f(linear, parts) for every Linear with the upstream modules it stands for.
  template <class Self, class F>
  static void for_each_linear(Self& self, F&& f);
};

// The sequence position pooled for one row of ids, exactly as transformers 5 picks it:
// eos_token_id == 2 (legacy configs): the first position of the largest id; otherwise the first
// position equal to eos_token_id, or 0 when there is none. ids: `len` int64 values.
int64_t clip_pooled_position(const int64_t* ids, int64_t len, int64_t eos_token_id);

}  // namespace fluxserve
