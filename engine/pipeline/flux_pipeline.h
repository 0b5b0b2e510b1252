// FluxPipeline (diffusers pipelines/flux/pipeline_flux.py) on the CPU: prompt encoding with CLIP
// (pooled) and T5 (sequence), seeded torch-compatible noise, the flow-match denoising loop with
// the distilled guidance embedding and optional true CFG, VAE decoding and uint8 images.
// The engine's public entry point for text-to-image; the CLI and the server call it.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/core/tensor.h"
#include "engine/pipeline/png.h"
#include "engine/quant/quant_config.h"

namespace fluxserve {

struct GenerateRequest {
  std::string prompt;
  std::optional<std::string> prompt_2;  // T5 prompt; defaults to `prompt`
  std::optional<std::string> negative_prompt;
  std::optional<std::string> negative_prompt_2;
  double true_cfg_scale = 1.0;  // true CFG runs when > 1 and a negative prompt is given
  int64_t height = 1024, width = 1024;  // floored to multiples of 16 (with a warning)
  int64_t num_inference_steps = 28;
  double guidance_scale = 3.5;  // distilled guidance (models with guidance_embeds)
  int64_t max_sequence_length = 512;
  int64_t num_images_per_prompt = 1;
  uint64_t seed = 0;
};

struct GenerateProgress {
  int64_t step = 0, total = 0;  // step 0: text encoded; total steps then one per step
  double elapsed_s = 0;
  // After each step: the current packed latents [N, (h/2)(w/2), C*4] on the latent grid h x w
  // (image side / 8), valid during the call only (step previews). Null at step 0.
  const Tensor* latents = nullptr;
  int64_t latent_height = 0, latent_width = 0;
};
using ProgressFn = std::function<void(const GenerateProgress&)>;

struct GenerateResult {
  std::vector<Image> images;           // num_images_per_prompt images
  Tensor latents;                      // final packed latents [N, tokens, C*4] f32
  int64_t height = 0, width = 0;       // the size actually produced
  std::vector<std::string> warnings;   // resized sizes, truncated prompts, ignored settings
  double encode_s = 0, denoise_s = 0, decode_s = 0;
};

// What one component holds in memory (FluxPipeline::memory(), `fluxserve inspect`, later the
// server's ModelService and /metrics). One entry per (component, device): everything is on the
// CPU today; the device map (issue #7) will split a component over "gpu" / "cpu" / "disk".
struct ComponentMemory {
  std::string component;  // "text_encoder", "text_encoder_2", "transformer", "vae"
  std::string device = "cpu";
  // The weights' formats, largest share first: "bf16", "bitsandbytes nf4 (double quant) + bf16".
  std::string format;
  int64_t bytes = 0;          // every tensor buffer held (weights, biases, norms, quant states)
  int quantized_layers = 0;   // upstream nn.Linear modules held quantized
  int total_layers = 0;       // upstream nn.Linear modules (q, k, v count separately)
};

class FluxPipeline {
 public:
  // Loads every component of a diffusers FluxPipeline folder and checks that they fit together
  // (T5 d_model = joint_attention_dim, CLIP hidden = pooled_projection_dim, VAE latent channels
  // x 4 = in_channels, tokenizer vocabularies within the encoders' embedding tables).
  // `quant`, when given, is applied per component as diffusers' PipelineQuantizationConfig
  // resolves it (quantize-on-load): the transformer and the VAE with diffusers' rules, the text
  // encoders with transformers' (engine/models/component_quant.h). gguf applies to the
  // transformer only (a .gguf file); for another component it is an error naming it.
  static absl::StatusOr<std::unique_ptr<FluxPipeline>> load(
      const std::string& dir, const PipelineQuantConfig* quant = nullptr);
  ~FluxPipeline();

  // Validates `req` (InvalidArgument naming the field) and runs it. `cancel`, when set, is polled
  // between denoising steps (Cancelled). `progress` is called after encoding and each step.
  absl::StatusOr<GenerateResult> generate(const GenerateRequest& req,
                                          const ProgressFn& progress = nullptr,
                                          const std::atomic<bool>* cancel = nullptr) const;

  bool has_guidance_embeds() const;
  // "none", or per quantized component its backend and layer count, e.g.
  // "transformer: bitsandbytes_4bit nf4 (42 linear layers)".
  const std::string& quantization() const { return quantization_; }
  // Bytes held by the transformer's Linear layers (quantized forms where quantized).
  int64_t transformer_linear_bytes() const;
  // Per component (text_encoder, text_encoder_2, transformer, vae): bytes held, formats and
  // Linear layer counts, walked from the loaded tensors. Tokenizers and the scheduler hold no
  // tensors and are not listed.
  std::vector<ComponentMemory> memory() const;
  const std::string& dir() const { return dir_; }

  struct Components;  // the loaded models (opaque)

 private:
  FluxPipeline() = default;
  std::string dir_;
  std::string quantization_ = "none";
  std::unique_ptr<Components> c_;
};

}  // namespace fluxserve
