// `fluxserve bench transformer`: the time of one transformer forward (one denoising step) on
// random inputs at a chosen token count. Prints a summary and one machine-readable RESULT line.
#include <algorithm>
#include <chrono>
#include <iostream>
#include <random>

#include "absl/strings/str_format.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "engine/core/status.h"
#include "engine/models/flux_transformer.h"
#include "engine/pipeline/latents.h"
#include "engine/pipeline/model_dir.h"

namespace fluxserve::cli {
namespace {

constexpr const char* kBenchUsage = R"(usage:
  fluxserve bench transformer --model DIR [--image-tokens N | --height H --width W]
      [--text-tokens N] [--batch B] [--warmup W] [--iters I] [--threads N]
  Defaults: 1024x1024 image (4096 image tokens), 512 text tokens, batch 1, 1 warmup, 3 iterations,
  all cores. Reports the median and minimum step time and GFLOP/s (2 flops per multiply-add).
  fluxserve bench quant-linear [--m 512,1] [--k K] [--n N] [--threads T] [--formats ...]
  One quantized Linear forward per format vs the f32 GEMM (see `bench quant-linear --help`).
)";

Tensor randn(Shape shape, std::mt19937& rng, float scale = 1.0f) {
  Tensor t = Tensor::empty(std::move(shape));
  std::normal_distribution<float> nd(0.0f, scale);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = nd(rng);
  return t;
}

absl::Status bench_transformer(const Args& a) {
  FLUX_ASSIGN_OR_RETURN(std::string model, a.str("model"));
  FLUX_ASSIGN_OR_RETURN(int64_t height, a.int_or("height", 1024));
  FLUX_ASSIGN_OR_RETURN(int64_t width, a.int_or("width", 1024));
  if (height < 16 || width < 16) return absl::InvalidArgumentError("--height/--width must be >= 16");
  // Patch grid as FluxPipeline makes it: latent h = 2 * (H // 16), packed 2x2.
  int64_t h2 = height / 16, w2 = width / 16;
  FLUX_ASSIGN_OR_RETURN(int64_t image_tokens, a.int_or("image-tokens", h2 * w2));
  if (a.has("image-tokens")) {  // a square-ish grid with that many tokens
    h2 = 1;
    for (int64_t r = 1; r * r <= image_tokens; ++r) {
      if (image_tokens % r == 0) h2 = r;
    }
    w2 = image_tokens / h2;
  }
  FLUX_ASSIGN_OR_RETURN(int64_t text_tokens, a.int_or("text-tokens", 512));
  FLUX_ASSIGN_OR_RETURN(int64_t batch, a.int_or("batch", 1));
  FLUX_ASSIGN_OR_RETURN(int64_t warmup, a.int_or("warmup", 1));
  FLUX_ASSIGN_OR_RETURN(int64_t iters, a.int_or("iters", 3));
  FLUX_ASSIGN_OR_RETURN(int64_t threads, a.int_or("threads", 0));
  if (image_tokens <= 0 || text_tokens <= 0 || batch <= 0 || iters <= 0 || warmup < 0) {
    return absl::InvalidArgumentError("token counts, --batch and --iters must be positive");
  }
  const int nthreads = set_threads(threads);
  FLUX_ASSIGN_OR_RETURN(std::string dir, find_component_dir(model, "transformer", "config.json",
                                                            "FluxTransformer2DModel"));
  const auto t_load = std::chrono::steady_clock::now();
  FLUX_ASSIGN_OR_RETURN(auto transformer, FluxTransformer2DModel::load(dir));
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
  const FluxTransformerConfig& c = transformer->config();

  std::mt19937 rng(0);
  FluxTransformerInputs in;
  in.hidden_states = randn({batch, image_tokens, c.in_channels}, rng);
  in.encoder_hidden_states = randn({batch, text_tokens, c.joint_attention_dim}, rng);
  in.pooled_projections = randn({batch, c.pooled_projection_dim}, rng);
  in.timestep = Tensor::from_vector(std::vector<float>(static_cast<size_t>(batch), 0.75f), {batch});
  if (c.guidance_embeds) {
    in.guidance = Tensor::from_vector(std::vector<float>(static_cast<size_t>(batch), 3.5f), {batch});
  }
  in.img_ids = latent_image_ids(h2, w2);
  in.txt_ids = Tensor::zeros({text_tokens, 3});

  std::cout << absl::StrFormat(
      "model: %s\n  %d double + %d single blocks, hidden %d (%d heads x %d), guidance_embeds %s\n"
      "  loaded in %.2f s\ninput: batch %d, %d image tokens (%dx%d patches) + %d text tokens, "
      "%d threads\n",
      dir, c.num_layers, c.num_single_layers, c.inner_dim(), c.num_attention_heads,
      c.attention_head_dim, c.guidance_embeds ? "true" : "false", load_s, batch, image_tokens, h2,
      w2, text_tokens, nthreads);
  std::vector<double> ms;
  for (int64_t i = 0; i < warmup + iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    FLUX_ASSIGN_OR_RETURN(Tensor out, transformer->forward(in));
    const double dt =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (i >= warmup) ms.push_back(dt);
    std::cerr << absl::StrFormat("  %s %d: %.1f ms\n", i < warmup ? "warmup" : "iter",
                                 i < warmup ? i + 1 : i - warmup + 1, dt);
  }
  std::sort(ms.begin(), ms.end());
  const double median = ms[ms.size() / 2], best = ms.front();
  const double gflop = transformer->flops(image_tokens, text_tokens) * static_cast<double>(batch) / 1e9;
  std::cout << absl::StrFormat(
      "step time: median %.1f ms, min %.1f ms over %d iterations\n"
      "work: %.2f GFLOP per step -> %.1f GFLOP/s (median)\n",
      median, best, iters, gflop, gflop / (median / 1e3));
  std::cout << absl::StrFormat("RESULT step_ms=%.3f min_ms=%.3f gflops=%.2f threads=%d\n", median,
                               best, gflop / (median / 1e3), nthreads);
  return absl::OkStatus();
}

}  // namespace

int bench_main(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "help") {
    std::cout << kBenchUsage;
    return args.empty() ? 2 : 0;
  }
  if (args[0] == "quant-linear") return bench_quant_linear_main({args.begin() + 1, args.end()});
  if (args[0] != "transformer") {
    std::cerr << "fluxserve bench: unknown target '" << args[0] << "'\n" << kBenchUsage;
    return 2;
  }
  auto a = Args::parse({args.begin() + 1, args.end()},
                       {"model", "image-tokens", "height", "width", "text-tokens", "batch",
                        "warmup", "iters", "threads"});
  absl::Status st = a.ok() ? bench_transformer(*a) : a.status();
  if (!st.ok()) {
    std::cerr << "fluxserve bench transformer: " << st.message() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace fluxserve::cli
