// `fluxserve run`: the offline job on a model (the embedded default unless --model is given):
// seeded latent noise, FluxPipeline's schedule and denoising loop, final latents written to a
// safetensors file. Text encoders and the VAE are not wired in yet, so the text conditioning is
// zeros unless --conditioning supplies encoder_hidden_states / pooled_projections.
#include <chrono>
#include <filesystem>
#include <iostream>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "engine/core/status.h"
#include "engine/io/safetensors.h"
#include "engine/models/flux_transformer.h"
#include "engine/pipeline/latents.h"
#include "engine/pipeline/model_dir.h"
#include "engine/pipeline/scheduler.h"

#ifndef FLUXSERVE_SOURCE_DIR
#define FLUXSERVE_SOURCE_DIR "."
#endif

namespace fluxserve::cli {
namespace {

constexpr const char* kRunUsage = R"(usage: fluxserve run [--model DIR] [--width W] [--height H]
    [--steps N] [--guidance G] [--seed S] [--text-tokens N] [--conditioning FILE]
    [--output FILE] [--threads N]
Denoises seeded latent noise with the model's transformer and flow-match scheduler, exactly as
FluxPipeline's loop does, and writes `latents` [1, C, h, w] and `packed_latents` to FILE
(default out/run-latents.safetensors). Defaults: embedded tiny model, 256x256, 8 steps,
guidance 3.5, seed 0, 16 text tokens of zero conditioning.
FILE given to --conditioning holds encoder_hidden_states [1, Lt, D] and pooled_projections [1, P].
)";

absl::Status run(const Args& a) {
  const std::string model = a.str_or("model", default_model_dir());
  FLUX_ASSIGN_OR_RETURN(int64_t width, a.int_or("width", 256));
  FLUX_ASSIGN_OR_RETURN(int64_t height, a.int_or("height", 256));
  FLUX_ASSIGN_OR_RETURN(int64_t steps, a.int_or("steps", 8));
  FLUX_ASSIGN_OR_RETURN(double guidance, a.double_or("guidance", 3.5));
  FLUX_ASSIGN_OR_RETURN(int64_t seed, a.int_or("seed", 0));
  FLUX_ASSIGN_OR_RETURN(int64_t text_tokens, a.int_or("text-tokens", 16));
  FLUX_ASSIGN_OR_RETURN(int64_t threads, a.int_or("threads", 0));
  const std::string output = a.str_or("output", "out/run-latents.safetensors");
  if (width < 16 || height < 16 || width > 16384 || height > 16384) {
    return absl::InvalidArgumentError(
        absl::StrCat("--width/--height must be within [16, 16384], got ", width, "x", height));
  }
  if (text_tokens <= 0 || text_tokens > 4096) {
    return absl::InvalidArgumentError("--text-tokens must be within [1, 4096]");
  }
  const int nthreads = set_threads(threads);

  FLUX_ASSIGN_OR_RETURN(std::string tdir, find_component_dir(model, "transformer", "config.json",
                                                             "FluxTransformer2DModel"));
  FLUX_ASSIGN_OR_RETURN(std::string sdir,
                        find_component_dir(model, "scheduler", "scheduler_config.json",
                                           "FlowMatchEulerDiscreteScheduler"));
  FLUX_ASSIGN_OR_RETURN(auto transformer, FluxTransformer2DModel::load(tdir));
  FLUX_ASSIGN_OR_RETURN(auto scheduler, FlowMatchEulerDiscreteScheduler::load(sdir));
  const FluxTransformerConfig& c = transformer->config();
  if (c.in_channels % 4 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(tdir, ": in_channels ", c.in_channels, " is not 4 x latent channels"));
  }

  // Latent grid as FluxPipeline.prepare_latents: h = 2 * (H // 16), w = 2 * (W // 16).
  const int64_t lh = 2 * (height / 16), lw = 2 * (width / 16), ch = c.in_channels / 4;
  std::mt19937_64 rng(static_cast<uint64_t>(seed));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Tensor noise = Tensor::empty({1, ch, lh, lw});
  for (int64_t i = 0; i < noise.numel(); ++i) noise.data<float>()[i] = normal(rng);
  Tensor latents = pack_latents(noise);
  const int64_t image_tokens = latents.size(1);

  FluxTransformerInputs in;
  if (a.has("conditioning")) {
    FLUX_ASSIGN_OR_RETURN(auto cond, SafetensorsFile::open(*a.str("conditioning")));
    FLUX_ASSIGN_OR_RETURN(in.encoder_hidden_states, cond->get("encoder_hidden_states"));
    FLUX_ASSIGN_OR_RETURN(in.pooled_projections, cond->get("pooled_projections"));
    if (in.encoder_hidden_states.dim() != 3) {
      return absl::InvalidArgumentError("conditioning: encoder_hidden_states must be [1, Lt, D]");
    }
    text_tokens = in.encoder_hidden_states.size(1);
  } else {
    in.encoder_hidden_states = Tensor::zeros({1, text_tokens, c.joint_attention_dim});
    in.pooled_projections = Tensor::zeros({1, c.pooled_projection_dim});
  }
  in.img_ids = latent_image_ids(lh / 2, lw / 2);
  in.txt_ids = Tensor::zeros({text_tokens, 3});
  if (c.guidance_embeds) in.guidance = Tensor::from_vector({static_cast<float>(guidance)}, {1});

  FLUX_RETURN_IF_ERROR(scheduler.set_timesteps(steps, image_tokens));
  std::cerr << absl::StrFormat(
      "fluxserve run: %s\n  %dx%d -> %d image tokens, %d text tokens, %d steps, seed %d, "
      "%d threads\n",
      model, width, height, image_tokens, text_tokens, steps, seed, nthreads);
  const auto t_start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    in.hidden_states = latents;
    in.timestep = Tensor::from_vector({scheduler.timesteps()[i] / 1000.0f}, {1});
    FLUX_ASSIGN_OR_RETURN(Tensor v, transformer->forward(in));
    FLUX_RETURN_IF_ERROR(scheduler.step(i, v, latents));
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::cerr << absl::StrFormat("  step %d/%d  t=%.1f  %.1f ms\n", i + 1, steps,
                                 scheduler.timesteps()[i], ms);
  }
  const double total =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  const std::filesystem::path out_path(output);
  if (out_path.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(out_path.parent_path(), ec);
  }
  FLUX_RETURN_IF_ERROR(write_safetensors(
      output, {{"latents", unpack_latents(latents, lh, lw)}, {"packed_latents", latents}},
      {{"producer", "fluxserve run"},
       {"model", model},
       {"seed", absl::StrCat(seed)},
       {"steps", absl::StrCat(steps)},
       {"size", absl::StrCat(width, "x", height)}}));
  std::cout << absl::StrFormat("denoised %d steps in %.2f s; latents [1, %d, %d, %d] written to %s\n",
                               steps, total, ch, lh, lw, output);
  return absl::OkStatus();
}

}  // namespace

std::string default_model_dir() {
  namespace fs = std::filesystem;
  std::error_code ec;
  // Next to the binary (installed layouts, the container image), then the source tree.
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    for (const fs::path& p : {exe.parent_path() / "models/tiny-flux",
                              exe.parent_path().parent_path() / "share/fluxserve/models/tiny-flux"}) {
      if (fs::exists(p / "model_index.json", ec)) return p.string();
    }
  }
  return std::string(FLUXSERVE_SOURCE_DIR) + "/models/tiny-flux";
}

int run_main(const std::vector<std::string>& args) {
  if (!args.empty() && (args[0] == "--help" || args[0] == "help")) {
    std::cout << kRunUsage;
    return 0;
  }
  auto a = Args::parse(args, {"model", "width", "height", "steps", "guidance", "seed",
                              "text-tokens", "conditioning", "output", "threads"});
  absl::Status st = a.ok() ? run(*a) : a.status();
  if (!st.ok()) {
    std::cerr << "fluxserve run: " << st.message() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace fluxserve::cli
