// T5EncoderModel (transformers models/t5/modeling_t5.py), FLUX's `text_encoder_2`: token
// embedding (no scaling, no absolute positions), pre-RMSNorm blocks whose attention adds a
// bucketed relative position bias computed once from block 0 and shared by every block, no
// 1/sqrt(d) scaling, gated FF, final RMSNorm. Members mirror the state-dict keys
// (`encoder.block[i].layer[0].SelfAttention.q`); computes in f32 on kernels/ops.h.
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

// layer.0: T5LayerSelfAttention. q|k|v are stacked at load into `qkv` (one GEMM).
struct T5LayerSelfAttention {
  Linear qkv;         // SelfAttention.{q,k,v} [3 * inner, d_model], no bias
  Linear o;           // SelfAttention.o [d_model, inner]
  Tensor layer_norm;  // .weight [d_model] f32
};

// layer.1: T5LayerFF. Gated: wi_0|wi_1 stacked into `wi` ([2 * d_ff, d_model]); plain: wi.
struct T5LayerFF {
  Linear wi;          // DenseReluDense.wi_0|wi_1 (gated) or DenseReluDense.wi
  Linear wo;          // DenseReluDense.wo [d_model, d_ff]; f32 when stored f16 (keep_in_fp32)
  Tensor layer_norm;  // .weight [d_model] f32
};

struct T5Block {
  T5LayerSelfAttention layer_0;
  T5LayerFF layer_1;
};

class T5EncoderModel {
 public:
  // Loads from a component folder (config.json + model.safetensors or shards), e.g.
  // <pipeline>/text_encoder_2. The embedding may be stored as `shared.weight`,
  // `encoder.embed_tokens.weight` or both (tied; `shared.weight` wins).
  static absl::StatusOr<std::unique_ptr<T5EncoderModel>> load(const std::string& dir);
  static absl::StatusOr<std::unique_ptr<T5EncoderModel>> from_store(const T5Config& config,
                                                                    const WeightStore& store);

  // input_ids: [B, L] int64 or int32, ids in [0, vocab_size). No attention mask (padding is
  // attended, as FluxPipeline calls it). Returns last_hidden_state [B, L, d_model] f32.
  absl::StatusOr<Tensor> forward(const Tensor& input_ids) const;

  const T5Config& config() const { return config_; }
  const std::vector<std::string>& unused_keys() const { return unused_keys_; }

  // Quantize-on-load with transformers' rules (component_quant.h). `wo` is in T5's
  // _keep_in_fp32_modules: bitsandbytes leaves it unquantized, torchao (which matches parameter
  // names, where the suffix "wo" never matches) quantizes it. Returns the modules converted
  // (upstream names, e.g. "encoder.block.0.layer.0.SelfAttention.q").
  absl::StatusOr<std::vector<std::string>> quantize(const ComponentQuantConfig& cfg);
  // T5EncoderModel's contribution to transformers' skip list: the tied embedding keys, the last
  // parameter's module (encoder.final_layer_norm) and _keep_in_fp32_modules = ["wo"].
  static UpstreamQuantTraits quant_traits();
  // Bytes held by every tensor, with the Linear layer counts.
  ModelMemory memory() const;

 private:
  T5Config config_;
  Tensor shared;  // [vocab, d_model], stored dtype (f32/bf16/f16)
  Tensor
      relative_attention_bias;  // block 0's SelfAttention.relative_attention_bias [buckets, H] f32
  std::vector<T5Block> encoder_block;
  Tensor final_layer_norm;  // encoder.final_layer_norm.weight [d_model] f32
  std::vector<std::string> unused_keys_;

  // f(linear, parts) for every Linear with the upstream modules it stands for.
  template <class Self, class F>
  static void for_each_linear(Self& self, F&& f);
};

// T5Attention._relative_position_bucket for the bidirectional encoder, with transformers'
// float32 log arithmetic and truncation. rel = key_position - query_position.
int64_t t5_relative_position_bucket(int64_t rel, int64_t num_buckets, int64_t max_distance);
// position_bias without the batch dim: [H, L, L], bias[h, i, j] = table[bucket(j - i), h].
// table: [num_buckets, H] f32.
Tensor t5_position_bias(const Tensor& table, int64_t len, int64_t max_distance);

}  // namespace fluxserve
