// AutoencoderKL (diffusers models/autoencoders/autoencoder_kl.py), decoder half only, on
// kernels/ops.h: what FluxPipeline needs to turn latents into pixels. Members are named after the
// state-dict keys (`decoder.up_blocks[i].resnets[j].conv1`); encoder.* and quant_conv.* keys
// are left unread. Also the pipeline's latent pre-scaling and VaeImageProcessor's uint8
// postprocess, so the whole path from denoised latents to an image lives here.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/core/tensor.h"
#include "engine/io/checkpoint.h"
#include "engine/models/component_quant.h"
#include "engine/models/model_memory.h"
#include "engine/models/weights.h"
#include "nlohmann/json.hpp"

namespace fluxserve {

// vae/config.json, with AutoencoderKL's defaults for absent fields. Fields the decoder does not
// use (down_block_types, sample_size, force_upcast, use_quant_conv, latents_mean/std, ...) are
// tolerated and ignored.
struct AutoencoderKLConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  int64_t latent_channels = 4;
  std::vector<int64_t> block_out_channels = {64};
  std::vector<std::string> up_block_types = {"UpDecoderBlock2D"};
  int64_t layers_per_block = 1;
  int64_t norm_num_groups = 32;
  std::string act_fn = "silu";
  bool mid_block_add_attention = true;
  bool use_post_quant_conv = true;
  double scaling_factor = 0.18215;
  double shift_factor = 0.0;  // null in config.json -> 0 (what the pipeline's arithmetic does)

  // Pixels per latent along each axis: one 2x upsampler per up block but the last.
  int64_t upscale_factor() const {
    return int64_t{1} << (static_cast<int>(block_out_channels.size()) - 1);
  }

  // `what` names the file in errors. _class_name, when present, must be AutoencoderKL.
  static absl::StatusOr<AutoencoderKLConfig> from_json(const nlohmann::json& j,
                                                       const std::string& what);
};

struct Conv2d {
  Tensor weight;  // [out, in, k, k], stored dtype (converted per call like Linear)
  Tensor bias;    // [out] f32
  int padding = 0;
  // x: [B, in, H, W] -> [B, out, H', W'] (stride 1)
  Tensor operator()(const Tensor& x) const;
};

struct GroupNorm {
  Tensor weight, bias;  // [C] f32
  int num_groups = 32;
  float eps = 1e-6f;
  Tensor operator()(const Tensor& x) const;  // x: [B, C, H, W]
};

// ResnetBlock2D without time embedding: shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x)))))).
struct ResnetBlock2D {
  GroupNorm norm1, norm2;
  Conv2d conv1, conv2;
  std::optional<Conv2d> conv_shortcut;  // 1x1, only when in_channels != out_channels
  Tensor operator()(const Tensor& x) const;
};

// Attention(C, heads=1, dim_head=C, residual_connection=True) over the h*w positions.
// to_q|to_k|to_v are stacked into one Linear at load (one GEMM).
struct VaeAttention {
  GroupNorm group_norm;
  Linear to_qkv;
  Linear to_out_0;
  Tensor operator()(const Tensor& x) const;  // x: [B, C, h, w]
};

struct UNetMidBlock2D {
  std::vector<ResnetBlock2D> resnets;    // 2
  std::vector<VaeAttention> attentions;  // 1, or 0 when mid_block_add_attention is false
};

// Upsample2D(use_conv=True): nearest 2x, then a 3x3 conv.
struct Upsample2D {
  Conv2d conv;
};

struct UpDecoderBlock2D {
  std::vector<ResnetBlock2D> resnets;  // layers_per_block + 1
  std::vector<Upsample2D> upsamplers;  // 1, or 0 for the last block
};

struct VaeDecoder {
  Conv2d conv_in;
  UNetMidBlock2D mid_block;
  std::vector<UpDecoderBlock2D> up_blocks;
  GroupNorm conv_norm_out;
  Conv2d conv_out;
};

class AutoencoderKL {
 public:
  // Loads from a component folder (config.json + weights), e.g. <pipeline>/vae.
  static absl::StatusOr<std::unique_ptr<AutoencoderKL>> load(const std::string& dir);
  static absl::StatusOr<std::unique_ptr<AutoencoderKL>> from_store(
      const AutoencoderKLConfig& config, const WeightStore& store);

  // FluxPipeline's step before decoding: z = latents / scaling_factor + shift_factor, in f32
  // (elementwise as torch does it). latents: [B, latent_channels, h, w], any float dtype.
  absl::StatusOr<Tensor> scale_latents(const Tensor& latents) const;

  // `vae.decode(z).sample`: z [B, latent_channels, h, w] (already scaled) ->
  // [B, out_channels, f*h, f*w] f32 with f = config().upscale_factor() (8 for FLUX).
  absl::StatusOr<Tensor> decode(const Tensor& z) const;

  const AutoencoderKLConfig& config() const { return config_; }

  // Quantize-on-load with diffusers' rules (component_quant.h): only nn.Linear layers are
  // replaced, which in AutoencoderKL are the mid-block attention projections; convolutions and
  // norms stay as stored. Upstream also converts the encoder's, which is not loaded here.
  // Returns the modules converted (e.g. "decoder.mid_block.attentions.0.to_q").
  absl::StatusOr<std::vector<std::string>> quantize(const ComponentQuantConfig& cfg);
  static UpstreamQuantTraits quant_traits();  // diffusers; no _keep_in_fp32_modules
  // Bytes held by every tensor of the decoder, with the Linear layer counts.
  ModelMemory memory() const;
  // Multiply-adds x2 of one decode of a 1 x h x w latent, for GFLOP/s reporting.
  double flops(int64_t h, int64_t w) const;
  // Keys in the checkpoint the decoder did not use, not counting encoder.* and quant_conv.*
  // (the encoder half, present in every AutoencoderKL checkpoint).
  const std::vector<std::string>& unused_keys() const { return unused_keys_; }

 private:
  AutoencoderKLConfig config_;
  std::optional<Conv2d> post_quant_conv;
  VaeDecoder decoder;
  std::vector<std::string> unused_keys_;

  // f(linear, parts) for every Linear with the upstream modules it stands for.
  template <class Self, class F>
  static void for_each_linear(Self& self, F&& f);
};

// VaeImageProcessor.postprocess(output_type="pil"/"np") to bytes: (x / 2 + 0.5).clamp(0, 1) in
// f32, then numpy's round(x * 255) (half to even) as uint8, NCHW -> NHWC.
// sample: [B, C, H, W] float -> [B, H, W, C] uint8. NaN maps to 0.
absl::StatusOr<Tensor> postprocess_to_uint8(const Tensor& sample);

}  // namespace fluxserve
