#include "engine/pipeline/flux_pipeline.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/core/status.h"
#include "engine/models/clip_text.h"
#include "engine/models/flux_transformer.h"
#include "engine/models/t5_encoder.h"
#include "engine/models/vae_decoder.h"
#include "engine/pipeline/latents.h"
#include "engine/pipeline/model_dir.h"
#include "engine/pipeline/scheduler.h"
#include "engine/pipeline/torch_rng.h"
#include "engine/quant/bnb_checkpoint.h"
#include "engine/text/clip_tokenizer.h"
#include "engine/text/t5_tokenizer.h"
#include "kernels/ops.h"

namespace fluxserve {

struct FluxPipeline::Components {
  std::unique_ptr<ClipTokenizer> tokenizer;
  std::unique_ptr<T5Tokenizer> tokenizer_2;
  std::unique_ptr<CLIPTextModel> text_encoder;
  std::unique_ptr<T5EncoderModel> text_encoder_2;
  std::unique_ptr<FluxTransformer2DModel> transformer;
  std::unique_ptr<AutoencoderKL> vae;
  FlowMatchEulerConfig scheduler;
};

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// [1, ...] -> [n, ...] by repetition (num_images_per_prompt).
Tensor repeat_batch(const Tensor& t, int64_t n) {
  Shape shape = t.shape();
  shape[0] = n;
  Tensor out = Tensor::empty(shape, t.dtype());
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(static_cast<char*>(out.raw()) + static_cast<size_t>(i) * t.nbytes(), t.raw(),
                t.nbytes());
  }
  return out;
}

Tensor ids_tensor(const std::vector<int64_t>& ids) {
  Tensor t = Tensor::empty({1, static_cast<int64_t>(ids.size())}, DType::kI64);
  std::memcpy(t.raw(), ids.data(), ids.size() * sizeof(int64_t));
  return t;
}

struct PromptEmbeds {
  Tensor prompt_embeds;  // [N, Lt, joint_attention_dim]
  Tensor pooled;         // [N, pooled_projection_dim]
};

absl::Status check_request(const GenerateRequest& r) {
  auto bad = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (r.height < 16 || r.width < 16) {
    return bad("width and height must be at least 16, got ", r.width, "x", r.height);
  }
  if (r.height > 16384 || r.width > 16384) {
    return bad("width and height must be at most 16384, got ", r.width, "x", r.height);
  }
  if (r.num_inference_steps < 1 || r.num_inference_steps > 1000) {
    return bad("num_inference_steps must be between 1 and 1000, got ", r.num_inference_steps);
  }
  if (!std::isfinite(r.guidance_scale) || r.guidance_scale < 0) {
    return bad("guidance_scale must be a finite number >= 0, got ", r.guidance_scale);
  }
  if (!std::isfinite(r.true_cfg_scale) || r.true_cfg_scale < 0) {
    return bad("true_cfg_scale must be a finite number >= 0, got ", r.true_cfg_scale);
  }
  if (r.max_sequence_length < 1 || r.max_sequence_length > 512) {
    return bad("max_sequence_length must be between 1 and 512, got ", r.max_sequence_length);
  }
  if (r.num_images_per_prompt < 1 || r.num_images_per_prompt > 16) {
    return bad("num_images_per_prompt must be between 1 and 16, got ", r.num_images_per_prompt);
  }
  return absl::OkStatus();
}

// Bytes of host memory available to this process now (MemAvailable), or -1 when unknown.
int64_t available_memory_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (f >> key >> kb >> unit) {
    if (key == "MemAvailable:") return kb * 1024;
  }
  return -1;
}

}  // namespace

FluxPipeline::~FluxPipeline() = default;

bool FluxPipeline::has_guidance_embeds() const { return c_->transformer->config().guidance_embeds; }

int64_t FluxPipeline::transformer_linear_bytes() const { return c_->transformer->weight_bytes(); }

std::vector<ComponentMemory> FluxPipeline::memory() const {
  std::vector<ComponentMemory> out;
  auto add = [&](const char* name, const ModelMemory& m) {
    ComponentMemory e;
    e.component = name;
    e.format = m.format;
    e.bytes = m.bytes;
    e.quantized_layers = m.quantized_layers;
    e.total_layers = m.total_layers;
    out.push_back(std::move(e));
  };
  add("text_encoder", c_->text_encoder->memory());
  add("text_encoder_2", c_->text_encoder_2->memory());
  add("transformer", c_->transformer->memory());
  add("vae", c_->vae->memory());
  return out;
}

absl::StatusOr<std::unique_ptr<FluxPipeline>> FluxPipeline::load(const std::string& dir,
                                                                const PipelineQuantConfig* quant) {
  auto p = std::unique_ptr<FluxPipeline>(new FluxPipeline());
  p->dir_ = dir;
  p->c_ = std::make_unique<Components>();
  Components& c = *p->c_;
  FLUX_ASSIGN_OR_RETURN(std::string tok_dir,
                        find_component_dir(dir, "tokenizer", "tokenizer_config.json",
                                           "CLIPTokenizer|CLIPTokenizerFast"));
  FLUX_ASSIGN_OR_RETURN(c.tokenizer, ClipTokenizer::load(tok_dir));
  FLUX_ASSIGN_OR_RETURN(std::string tok2_dir,
                        find_component_dir(dir, "tokenizer_2", "spiece.model",
                                           "T5TokenizerFast|T5Tokenizer"));
  FLUX_ASSIGN_OR_RETURN(c.tokenizer_2, T5Tokenizer::load(tok2_dir));
  FLUX_ASSIGN_OR_RETURN(std::string te_dir,
                        find_component_dir(dir, "text_encoder", "config.json", "CLIPTextModel"));
  FLUX_ASSIGN_OR_RETURN(c.text_encoder, CLIPTextModel::load(te_dir));
  FLUX_ASSIGN_OR_RETURN(std::string te2_dir, find_component_dir(dir, "text_encoder_2",
                                                                "config.json", "T5EncoderModel"));
  FLUX_ASSIGN_OR_RETURN(c.text_encoder_2, T5EncoderModel::load(te2_dir));
  FLUX_ASSIGN_OR_RETURN(std::string tr_dir, find_component_dir(dir, "transformer", "config.json",
                                                               "FluxTransformer2DModel"));
  // quant_backend 'gguf': the weights come from the one .gguf file in the transformer folder.
  const std::optional<ComponentQuantConfig> tr_quant =
      quant != nullptr ? quant->resolve("transformer") : std::nullopt;
  FLUX_ASSIGN_OR_RETURN(c.transformer, tr_quant && tr_quant->backend == QuantBackend::kGguf
                                           ? FluxTransformer2DModel::load_gguf(tr_dir)
                                           : FluxTransformer2DModel::load(tr_dir));
  FLUX_ASSIGN_OR_RETURN(std::string vae_dir,
                        find_component_dir(dir, "vae", "config.json", "AutoencoderKL"));
  FLUX_ASSIGN_OR_RETURN(c.vae, AutoencoderKL::load(vae_dir));
  FLUX_ASSIGN_OR_RETURN(std::string s_dir,
                        find_component_dir(dir, "scheduler", "scheduler_config.json",
                                           "FlowMatchEulerDiscreteScheduler"));
  FLUX_ASSIGN_OR_RETURN(auto sched, FlowMatchEulerDiscreteScheduler::load(s_dir));
  c.scheduler = sched.config();

  // Components that disagree would fail deep inside a matrix product: name them here.
  const FluxTransformerConfig& tc = c.transformer->config();
  auto mismatch = [&](const std::string& a, int64_t va, const std::string& b, int64_t vb) {
    return absl::InvalidArgumentError(absl::StrCat(dir, ": components disagree: ", a, " = ", va,
                                                   " but ", b, " = ", vb));
  };
  if (c.text_encoder_2->config().d_model != tc.joint_attention_dim) {
    return mismatch("text_encoder_2 d_model", c.text_encoder_2->config().d_model,
                    "transformer joint_attention_dim", tc.joint_attention_dim);
  }
  if (c.text_encoder->config().hidden_size != tc.pooled_projection_dim) {
    return mismatch("text_encoder hidden_size", c.text_encoder->config().hidden_size,
                    "transformer pooled_projection_dim", tc.pooled_projection_dim);
  }
  if (c.vae->config().latent_channels * 4 != tc.in_channels) {
    return mismatch("4 x vae latent_channels", c.vae->config().latent_channels * 4,
                    "transformer in_channels", tc.in_channels);
  }
  if (tc.out_features() != tc.in_channels) {
    return mismatch("transformer out_channels", tc.out_features(), "in_channels", tc.in_channels);
  }
  if (c.tokenizer->vocab_size() > c.text_encoder->config().vocab_size) {
    return mismatch("tokenizer vocabulary", c.tokenizer->vocab_size(), "text_encoder vocab_size",
                    c.text_encoder->config().vocab_size);
  }
  if (c.tokenizer_2->vocab_size() > c.text_encoder_2->config().vocab_size) {
    return mismatch("tokenizer_2 vocabulary", c.tokenizer_2->vocab_size(),
                    "text_encoder_2 vocab_size", c.text_encoder_2->config().vocab_size);
  }

  // Pre-quantized (bitsandbytes) checkpoints were loaded as stored; a config naming one of them is
  // ignored with diffusers' warning (engine/quant/bnb_checkpoint.h).
  std::map<std::string, ComponentQuantPlan> plans;
  std::vector<std::string> summary;
  for (const auto& [name, cdir] : std::vector<std::pair<std::string, std::string>>{
           {"text_encoder", te_dir}, {"text_encoder_2", te2_dir}, {"transformer", tr_dir},
           {"vae", vae_dir}}) {
    FLUX_ASSIGN_OR_RETURN(ComponentQuantPlan plan, plan_component_quant(cdir, name, quant));
    if (!plan.warning.empty()) std::cerr << "warning: " << plan.warning << "\n";
    if (plan.prequantized) {
      summary.push_back(absl::StrCat(name, ": ", plan.prequantized->to_json().dump(),
                                     " (pre-quantized checkpoint)"));
    }
    plans[name] = std::move(plan);
  }
  if (quant != nullptr) {
    // Each model applies its library's skip rules; the summary names what each one converted.
    auto report = [&](const char* name, const ComponentQuantConfig& cfg, size_t n) {
      summary.push_back(absl::StrCat(name, ": ", cfg.to_json().dump(), " (", n, " linear layers)"));
    };
    auto failed = [](const std::string& where, const absl::Status& s) {
      return absl::Status(s.code(), absl::StrCat(where, ": quantizing: ", s.message()));
    };
    if (const std::optional<ComponentQuantConfig>& q = plans["text_encoder"].quantize_on_load) {
      absl::StatusOr<std::vector<std::string>> n = c.text_encoder->quantize(*q);
      if (!n.ok()) return failed(te_dir, n.status());
      report("text_encoder", *q, n->size());
    }
    if (const std::optional<ComponentQuantConfig>& q = plans["text_encoder_2"].quantize_on_load) {
      absl::StatusOr<std::vector<std::string>> n = c.text_encoder_2->quantize(*q);
      if (!n.ok()) return failed(te2_dir, n.status());
      report("text_encoder_2", *q, n->size());
    }
    if (const std::optional<ComponentQuantConfig>& tq = plans["transformer"].quantize_on_load) {
      absl::StatusOr<int> n = c.transformer->quantize(*tq);
      if (!n.ok()) return failed(tr_dir, n.status());
      report("transformer", *tq, static_cast<size_t>(*n));
    }
    if (const std::optional<ComponentQuantConfig>& q = plans["vae"].quantize_on_load) {
      absl::StatusOr<std::vector<std::string>> n = c.vae->quantize(*q);
      if (!n.ok()) return failed(vae_dir, n.status());
      report("vae", *q, n->size());
    }
  }
  if (!summary.empty()) p->quantization_ = absl::StrJoin(summary, "; ");
  return p;
}

namespace {

absl::StatusOr<PromptEmbeds> encode_prompt(const FluxPipeline::Components& c,
                                           const std::string& prompt,
                                           const std::optional<std::string>& prompt_2,
                                           int64_t num_images, int64_t max_sequence_length,
                                           std::vector<std::string>* warnings) {
  FLUX_ASSIGN_OR_RETURN(TokenizedPrompt clip, c.tokenizer->encode(prompt));
  if (clip.truncated()) {
    warnings->push_back(absl::StrCat(
        "prompt has ", clip.untruncated_length, " CLIP tokens; CLIP can only handle sequences up to ",
        clip.ids.size(), " tokens, so this part was truncated: ", clip.truncated_text));
  }
  FLUX_ASSIGN_OR_RETURN(TokenizedPrompt t5,
                        c.tokenizer_2->encode(prompt_2.value_or(prompt), max_sequence_length));
  if (t5.truncated()) {
    warnings->push_back(absl::StrCat(prompt_2 ? "prompt_2" : "prompt", " has ",
                                     t5.untruncated_length, " T5 tokens; max_sequence_length is ",
                                     max_sequence_length, ", so this part was truncated: ",
                                     t5.truncated_text));
  }
  FLUX_ASSIGN_OR_RETURN(CLIPTextOutput clip_out, c.text_encoder->forward(ids_tensor(clip.ids)));
  FLUX_ASSIGN_OR_RETURN(Tensor t5_out, c.text_encoder_2->forward(ids_tensor(t5.ids)));
  return PromptEmbeds{repeat_batch(t5_out, num_images),
                      repeat_batch(clip_out.pooler_output, num_images)};
}

}  // namespace

absl::StatusOr<GenerateResult> FluxPipeline::generate(const GenerateRequest& req,
                                                      const ProgressFn& progress,
                                                      const std::atomic<bool>* cancel) const {
  FLUX_RETURN_IF_ERROR(check_request(req));
  const Components& c = *c_;
  const FluxTransformerConfig& tc = c.transformer->config();
  GenerateResult res;
  const auto t_start = Clock::now();

  // Sizes as FluxPipeline: multiples of vae_scale_factor * 2 = 16, floored.
  const int64_t unit = c.vae->config().upscale_factor() * 2;
  res.height = unit * (req.height / unit);
  res.width = unit * (req.width / unit);
  if (res.height != req.height || res.width != req.width) {
    res.warnings.push_back(absl::StrCat("width and height must be multiples of ", unit, ": ",
                                        req.width, "x", req.height, " was resized to ", res.width,
                                        "x", res.height));
  }
  const bool has_negative = req.negative_prompt.has_value();
  const bool do_true_cfg = req.true_cfg_scale > 1.0 && has_negative;
  if (req.true_cfg_scale > 1.0 && !has_negative) {
    res.warnings.push_back("true_cfg_scale > 1 has no effect without a negative_prompt");
  } else if (has_negative && !do_true_cfg) {
    res.warnings.push_back("negative_prompt is ignored: true CFG needs true_cfg_scale > 1");
  }

  // A request the machine cannot hold fails here with the numbers, before anything is allocated.
  // Rough peak: the VAE's widest full-resolution activations (~2.5 live at once: 4.2 GB was
  // measured decoding 1024x1024 with FLUX's VAE) or the transformer's per-token working set,
  // whichever is larger. Weights are already resident and not counted.
  const int64_t n = req.num_images_per_prompt;
  {
    const int64_t tokens = (res.height / unit) * (res.width / unit) + req.max_sequence_length;
    int64_t widest = 0;
    for (int64_t ch : c.vae->config().block_out_channels) widest = std::max(widest, ch);
    const double vae_bytes = 2.5 * static_cast<double>(n) * static_cast<double>(res.height) *
                             static_cast<double>(res.width) * static_cast<double>(widest) * 4.0;
    const double dit_bytes = 3.0 * static_cast<double>(n) * static_cast<double>(tokens) *
                             12.0 * static_cast<double>(tc.inner_dim()) * 4.0;
    const double need = std::max(vae_bytes, dit_bytes);
    const int64_t avail = available_memory_bytes();
    if (avail > 0 && need > static_cast<double>(avail)) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "%dx%d x %d image(s) needs about %.1f GiB of host memory, %.1f GiB is available",
          res.width, res.height, n, need / (1 << 30), static_cast<double>(avail) / (1 << 30)));
    }
  }

  // ---- text ----
  FLUX_ASSIGN_OR_RETURN(PromptEmbeds pos, encode_prompt(c, req.prompt, req.prompt_2, n,
                                                        req.max_sequence_length, &res.warnings));
  std::optional<PromptEmbeds> neg;
  if (do_true_cfg) {
    FLUX_ASSIGN_OR_RETURN(neg, encode_prompt(c, *req.negative_prompt, req.negative_prompt_2, n,
                                             req.max_sequence_length, &res.warnings));
  }
  res.encode_s = seconds_since(t_start);
  if (progress) progress({0, req.num_inference_steps, res.encode_s});

  // ---- latents: torch.randn(shape, generator=manual_seed(seed)) on the CPU, then packed ----
  const int64_t lh = 2 * (res.height / unit), lw = 2 * (res.width / unit);
  const int64_t ch = tc.in_channels / 4;
  TorchGenerator gen(req.seed);
  Tensor latents = pack_latents(gen.randn({n, ch, lh, lw}));
  const int64_t image_tokens = latents.size(1);

  FlowMatchEulerDiscreteScheduler scheduler(c.scheduler);
  FLUX_RETURN_IF_ERROR(scheduler.set_timesteps(req.num_inference_steps, image_tokens));

  FluxTransformerInputs in;
  in.img_ids = latent_image_ids(lh / 2, lw / 2);
  in.txt_ids = Tensor::zeros({req.max_sequence_length, 3});
  in.encoder_hidden_states = pos.prompt_embeds;
  in.pooled_projections = pos.pooled;
  if (tc.guidance_embeds) {
    in.guidance = Tensor::from_vector(
        std::vector<float>(static_cast<size_t>(n), static_cast<float>(req.guidance_scale)), {n});
  }
  FluxTransformerInputs neg_in = in;
  if (neg) {
    neg_in.encoder_hidden_states = neg->prompt_embeds;
    neg_in.pooled_projections = neg->pooled;
  }
  const float cfg = static_cast<float>(req.true_cfg_scale);
  const auto t_denoise = Clock::now();
  for (int64_t i = 0; i < scheduler.num_steps(); ++i) {
    if (cancel != nullptr && cancel->load()) {
      return absl::CancelledError(absl::StrCat("cancelled before step ", i + 1));
    }
    const float t = scheduler.timesteps()[i];
    in.hidden_states = latents;
    in.timestep = Tensor::from_vector(std::vector<float>(static_cast<size_t>(n), t / 1000.0f), {n});
    FLUX_ASSIGN_OR_RETURN(Tensor v, c.transformer->forward(in));
    if (do_true_cfg) {
      neg_in.hidden_states = latents;
      neg_in.timestep = in.timestep;
      FLUX_ASSIGN_OR_RETURN(Tensor vn, c.transformer->forward(neg_in));
      // noise_pred = neg + true_cfg_scale * (pos - neg), in that order of float32 operations
      float* vp = v.data<float>();
      const float* np = vn.data<float>();
      for (int64_t k = 0; k < v.numel(); ++k) {
        const float diff = vp[k] - np[k];
        const float scaled = cfg * diff;
        vp[k] = np[k] + scaled;
      }
    }
    FLUX_RETURN_IF_ERROR(scheduler.step(i, v, latents));
    if (progress) {
      progress({i + 1, req.num_inference_steps, seconds_since(t_start), &latents, lh, lw});
    }
  }
  res.denoise_s = seconds_since(t_denoise);

  // ---- decode ----
  const auto t_decode = Clock::now();
  FLUX_ASSIGN_OR_RETURN(Tensor z, c.vae->scale_latents(unpack_latents(latents, lh, lw)));
  FLUX_ASSIGN_OR_RETURN(Tensor sample, c.vae->decode(z));
  FLUX_ASSIGN_OR_RETURN(Tensor u8, postprocess_to_uint8(sample));  // [N, H, W, C]
  if (u8.size(3) != 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        dir_, ": the VAE produces ", u8.size(3), " channels; PNG output needs 3 (RGB)"));
  }
  const int64_t pixels = u8.size(1) * u8.size(2) * 3;
  for (int64_t i = 0; i < n; ++i) {
    Image img;
    img.height = u8.size(1);
    img.width = u8.size(2);
    img.rgb.assign(u8.data<uint8_t>() + i * pixels, u8.data<uint8_t>() + (i + 1) * pixels);
    res.images.push_back(std::move(img));
  }
  res.latents = std::move(latents);
  res.decode_s = seconds_since(t_decode);
  return res;
}

}  // namespace fluxserve
