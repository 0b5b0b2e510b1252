// FluxTransformer2DModel (diffusers models/transformers/transformer_flux.py) on kernels/ops.h.
// Members are named after the state-dict keys (`transformer_blocks[i].attn.to_q`), so each
// checkpoint key maps to one place here. Computes in f32 on the CPU.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/core/tensor.h"
#include "engine/io/checkpoint.h"
#include "engine/models/flux_config.h"
#include "engine/models/model_memory.h"
#include "engine/models/weights.h"

namespace fluxserve {

// TimestepEmbedding / PixArtAlphaTextProjection: linear_2(silu(linear_1(x))).
struct MlpEmbedder {
  Linear linear_1, linear_2;
  Tensor operator()(const Tensor& x) const;
};

// FluxAttention. The add_* projections, their norms and the output projections exist only in
// the double-stream blocks (pre_only=False). Projections over the same input are stacked at load
// so one GEMM computes them: `to_qkv` = to_q|to_k|to_v, `add_qkv_proj` = add_q|add_k|add_v_proj.
struct FluxAttention {
  Linear to_qkv;
  Tensor norm_q, norm_k;  // RMSNorm weights [head_dim]
  Linear add_qkv_proj;
  Tensor norm_added_q, norm_added_k;
  Linear to_out_0, to_add_out;
};

struct FeedForward {
  Linear net_0_proj, net_2;  // GELU(tanh) between
  Tensor operator()(const Tensor& x) const;
};

struct FluxTransformerBlock {
  Linear norm1_linear, norm1_context_linear;  // AdaLayerNormZero: 6 chunks
  FluxAttention attn;
  FeedForward ff, ff_context;
};

struct FluxSingleTransformerBlock {
  Linear norm_linear;  // AdaLayerNormZeroSingle: 3 chunks
  FluxAttention attn;  // attn.to_qkv also carries proj_mlp's rows: to_q|to_k|to_v|proj_mlp
  Linear proj_out;
};

struct FluxTransformerInputs {
  Tensor hidden_states;          // [B, Li, in_channels]
  Tensor encoder_hidden_states;  // [B, Lt, joint_attention_dim]
  Tensor pooled_projections;     // [B, pooled_projection_dim]
  Tensor timestep;               // [B] or [1], = t / 1000
  Tensor img_ids;                // [Li, 3] (a leading batch dim of 1 is accepted)
  Tensor txt_ids;                // [Lt, 3]
  std::optional<Tensor> guidance;  // [B] or [1]; required iff config.guidance_embeds
};

class FluxTransformer2DModel {
 public:
  // Loads from a component folder (config.json + weights), e.g. <pipeline>/transformer.
  static absl::StatusOr<std::unique_ptr<FluxTransformer2DModel>> load(const std::string& dir);
  static absl::StatusOr<std::unique_ptr<FluxTransformer2DModel>> from_store(
      const FluxTransformerConfig& config, const WeightStore& store);
  // A GGUF transformer in BFL naming (city96-style FLUX.1 files), as diffusers'
  // FluxTransformer2DModel.from_single_file(path, quantization_config=GGUFQuantizationConfig(...),
  // config=...) loads it: quantized weights stay in their ggml blocks, F32/F16/BF16 weights stay
  // as stored, 1-D tensors become f32. Shapes are checked against `config`
  // (flux_transformer_gguf.cc). `config_path` only names the config in messages.
  static absl::StatusOr<std::unique_ptr<FluxTransformer2DModel>> from_gguf(
      const FluxTransformerConfig& config, const std::string& gguf_path,
      const std::string& config_path = "config.json");
  // <dir>/config.json plus the one *.gguf file in <dir> (an error when there is none or several).
  static absl::StatusOr<std::unique_ptr<FluxTransformer2DModel>> load_gguf(const std::string& dir);

  // Validates the inputs against the config and returns `sample` [B, Li, out_features].
  absl::StatusOr<Tensor> forward(const FluxTransformerInputs& in) const;

  const FluxTransformerConfig& config() const { return config_; }

  // The GGUF file the weights came from; empty when loaded from safetensors.
  const std::string& gguf_file() const { return gguf_file_; }

  // Quantize-on-load as diffusers does it: every nn.Linear its quantizer's skip rules do not
  // exempt (engine/models/component_quant.h, diffusers' rules; FluxTransformer2DModel keeps no
  // modules in fp32). Stacked projections are quantized part by part (PartwiseLinearWeight), so
  // double quant and per-tensor float8 scales are those of the separate modules, and a skipped
  // part stays dense. Returns the number of upstream layers quantized. With the gguf backend
  // nothing is quantized here: a model from_gguf reports its layers already in ggml blocks, any
  // other fails.
  absl::StatusOr<int> quantize(const ComponentQuantConfig& cfg);
  // Bytes held by the Linear layers' weights and biases (quantized forms where quantized).
  int64_t weight_bytes() const;
  // Bytes held by every tensor (Linear layers, attention norms), with the Linear layer counts
  // (a stacked Linear counts each of its parts).
  ModelMemory memory() const;

  // Multiply-adds of one forward pass for a batch of 1, for GFLOP/s reporting.
  double flops(int64_t image_tokens, int64_t text_tokens) const;
  // Keys in the checkpoint the model did not use (diffusers warns about these).
  const std::vector<std::string>& unused_keys() const { return unused_keys_; }

 private:
  FluxTransformerConfig config_;
  Linear x_embedder, context_embedder;
  MlpEmbedder timestep_embedder, text_embedder;
  std::optional<MlpEmbedder> guidance_embedder;
  std::vector<FluxTransformerBlock> transformer_blocks;
  std::vector<FluxSingleTransformerBlock> single_transformer_blocks;
  Linear norm_out_linear, proj_out;
  std::vector<std::string> unused_keys_;
  std::string gguf_file_;

  // Every Linear with its diffusers module(s) and their rows; stacked layers list all their parts.
  template <class F>
  void for_each_linear(F&& f);
};

// Pieces of the forward pass exposed for tests.
// get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0): [B] -> [B, 256].
Tensor timestep_sinusoid(const Tensor& t, int64_t channels);
// FluxPosEmbed: ids [S, n_axes] -> cos, sin [S, sum(axes_dims)], frequencies in float64.
void flux_rope_tables(const Tensor& ids, const std::vector<int64_t>& axes_dims, double theta,
                      Tensor* cos, Tensor* sin);

}  // namespace fluxserve
