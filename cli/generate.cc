// `fluxserve generate`: text to PNG with a FLUX pipeline folder (the embedded default unless
// --model is given), with a progress bar on stderr.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "engine/core/status.h"
#include "engine/io/checkpoint.h"
#include "engine/io/safetensors.h"
#include "engine/pipeline/flux_pipeline.h"

#ifndef FLUXSERVE_SOURCE_DIR
#define FLUXSERVE_SOURCE_DIR "."
#endif

namespace fluxserve::cli {
namespace {

constexpr const char* kGenerateUsage = R"(usage: fluxserve generate [--model DIR] [--prompt TEXT]
    [--prompt-2 TEXT] [--negative-prompt TEXT [--negative-prompt-2 TEXT] --true-cfg S]
    [--width W] [--height H] [--steps N] [--guidance G] [--seed S] [--max-sequence-length L]
    [--num-images N] [--output out.png] [--output-latents latents.safetensors] [--threads N]
    [--quant-config spec.json]
Generates images with a diffusers FluxPipeline folder (default: the embedded tiny model) and
writes PNGs carrying the generation parameters in iTXt chunks. Sizes that are not multiples of 16
are floored to one (with a warning). Without --seed a random seed is drawn and printed; the same
seed reproduces the image, and diffusers' image for generator=torch.Generator("cpu").manual_seed(S).
Defaults: 1024x1024 (256x256 for the embedded model), 28 steps, guidance 3.5, max sequence 512,
output out/fluxserve.png. With --num-images N > 1 the files are named out-1.png ... out-N.png.
--quant-config takes diffusers' PipelineQuantizationConfig as JSON (README: Quantization); the
transformer is quantized on load.
)";

void progress_bar(const GenerateProgress& p) {
  if (p.step == 0) {
    std::fprintf(stderr, "  prompt encoded in %.2f s\n", p.elapsed_s);
    return;
  }
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(kWidth * p.step / std::max<int64_t>(p.total, 1));
  std::string bar(static_cast<size_t>(filled), '#');
  bar.resize(kWidth, '.');
  std::fprintf(stderr, "\r  [%s] %lld/%lld steps  %.1f s", bar.c_str(),
               static_cast<long long>(p.step), static_cast<long long>(p.total), p.elapsed_s);
  if (p.step == p.total) std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

std::string numbered(const std::string& path, int64_t i, int64_t n) {
  if (n == 1) return path;
  const std::filesystem::path p(path);
  return (p.parent_path() / absl::StrCat(p.stem().string(), "-", i + 1, p.extension().string()))
      .string();
}

absl::Status generate(const Args& a) {
  const bool embedded = !a.has("model");
  const std::string model = embedded ? default_model_dir() : *a.str("model");
  GenerateRequest r;
  r.prompt = a.str_or("prompt", "a photo of a red fox in the snow");
  if (a.has("prompt-2")) r.prompt_2 = *a.str("prompt-2");
  if (a.has("negative-prompt")) r.negative_prompt = *a.str("negative-prompt");
  if (a.has("negative-prompt-2")) r.negative_prompt_2 = *a.str("negative-prompt-2");
  const int64_t default_size = embedded ? 256 : 1024;
  FLUX_ASSIGN_OR_RETURN(r.width, a.int_or("width", default_size));
  FLUX_ASSIGN_OR_RETURN(r.height, a.int_or("height", default_size));
  FLUX_ASSIGN_OR_RETURN(r.num_inference_steps, a.int_or("steps", 28));
  FLUX_ASSIGN_OR_RETURN(r.guidance_scale, a.double_or("guidance", 3.5));
  FLUX_ASSIGN_OR_RETURN(r.true_cfg_scale, a.double_or("true-cfg", 1.0));
  FLUX_ASSIGN_OR_RETURN(r.max_sequence_length, a.int_or("max-sequence-length", 512));
  FLUX_ASSIGN_OR_RETURN(r.num_images_per_prompt, a.int_or("num-images", 1));
  FLUX_ASSIGN_OR_RETURN(int64_t threads, a.int_or("threads", 0));
  if (a.has("seed")) {
    FLUX_ASSIGN_OR_RETURN(int64_t seed, a.int_or("seed", 0));
    if (seed < 0) return absl::InvalidArgumentError("--seed must be >= 0");
    r.seed = static_cast<uint64_t>(seed);
  } else {
    r.seed = std::random_device{}() & 0xffffffffu;
  }
  const std::string output = a.str_or("output", "out/fluxserve.png");
  const int nthreads = set_threads(threads);

  const auto t0 = std::chrono::steady_clock::now();
  std::optional<PipelineQuantConfig> quant;
  if (a.has("quant-config")) {
    const std::string path = *a.str("quant-config");
    FLUX_ASSIGN_OR_RETURN(nlohmann::json j, read_json_file(path));
    FLUX_ASSIGN_OR_RETURN(quant, PipelineQuantConfig::from_json(j, path));
    for (const std::string& w : quant->warnings()) std::cerr << "warning: " << w << "\n";
  }
  FLUX_ASSIGN_OR_RETURN(auto pipe, FluxPipeline::load(model, quant ? &*quant : nullptr));
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "fluxserve generate: %s (loaded in %.2f s, %d threads)\n  seed %llu\n",
               model.c_str(), load_s, nthreads, static_cast<unsigned long long>(r.seed));
  FLUX_ASSIGN_OR_RETURN(GenerateResult res, pipe->generate(r, progress_bar));
  for (const std::string& w : res.warnings) std::cerr << "warning: " << w << "\n";

  const std::filesystem::path out_path(output);
  if (out_path.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(out_path.parent_path(), ec);
  }
  PngText text = {{"Software", "fluxserve"},
                  {"prompt", r.prompt},
                  {"seed", absl::StrCat(r.seed)},
                  {"steps", absl::StrCat(r.num_inference_steps)},
                  {"guidance_scale", absl::StrCat(r.guidance_scale)},
                  {"size", absl::StrCat(res.width, "x", res.height)},
                  {"model", model},
                  {"quantization", pipe->quantization()}};
  if (r.prompt_2) text.emplace_back("prompt_2", *r.prompt_2);
  if (r.negative_prompt) {
    text.emplace_back("negative_prompt", *r.negative_prompt);
    text.emplace_back("true_cfg_scale", absl::StrCat(r.true_cfg_scale));
  }
  for (size_t i = 0; i < res.images.size(); ++i) {
    const std::string path = numbered(output, static_cast<int64_t>(i), res.images.size());
    FLUX_RETURN_IF_ERROR(write_png(path, res.images[i], text));
    std::cout << absl::StrFormat("wrote %s (%dx%d, seed %d)\n", path, res.width, res.height,
                                 r.seed);
  }
  if (a.has("output-latents")) {
    FLUX_RETURN_IF_ERROR(write_safetensors(*a.str("output-latents"), {{"latents", res.latents}},
                                           {{"seed", absl::StrCat(r.seed)}, {"model", model}}));
  }
  std::cerr << absl::StrFormat("  text %.2f s, denoise %.2f s, decode %.2f s\n", res.encode_s,
                               res.denoise_s, res.decode_s);
  std::cout << absl::StrFormat("RESULT total_s=%.3f encode_s=%.3f denoise_s=%.3f decode_s=%.3f\n",
                               res.encode_s + res.denoise_s + res.decode_s, res.encode_s,
                               res.denoise_s, res.decode_s);
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

int generate_main(const std::vector<std::string>& args) {
  if (!args.empty() && (args[0] == "--help" || args[0] == "help")) {
    std::cout << kGenerateUsage;
    return 0;
  }
  auto a = Args::parse(args, {"model", "prompt", "prompt-2", "negative-prompt",
                              "negative-prompt-2", "true-cfg", "width", "height", "steps",
                              "guidance", "seed", "max-sequence-length", "num-images", "output",
                              "output-latents", "threads", "quant-config"});
  absl::Status st = a.ok() ? generate(*a) : a.status();
  if (!st.ok()) {
    std::cerr << "fluxserve generate: " << st.message() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace fluxserve::cli
