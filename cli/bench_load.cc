// `fluxserve bench load`: how long loading a transformer takes, quantizing on load (an unquantized
// checkpoint plus a quantization config) or loading a pre-quantized checkpoint as stored; median
// of several runs with a warm page cache, so the numbers compare the work, not the disk.
#include <algorithm>
#include <chrono>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "engine/core/status.h"
#include "engine/io/checkpoint.h"
#include "engine/models/flux_transformer.h"
#include "engine/pipeline/model_dir.h"
#include "engine/quant/quant_config.h"

namespace fluxserve::cli {
namespace {

constexpr const char* kUsage =
    R"(usage: fluxserve bench load --model DIR [--quant-config spec.json] [--iters N] [--threads N]

Times FluxTransformer2DModel loading from DIR (a pipeline folder or the transformer folder):
with --quant-config, load then quantize on load (the config's transformer entry); without, load
as stored (a pre-quantized checkpoint loads its quantized layers from their bytes). One untimed
warmup run fills the page cache, then the median of --iters runs (default 5). Prints a RESULT line.
)";

absl::Status bench_load(const Args& a) {
  FLUX_ASSIGN_OR_RETURN(std::string model, a.str("model"));
  FLUX_ASSIGN_OR_RETURN(int64_t iters, a.int_or("iters", 5));
  FLUX_ASSIGN_OR_RETURN(int64_t threads, a.int_or("threads", 0));
  const int used_threads = set_threads(threads);
  if (iters < 1) return absl::InvalidArgumentError("--iters must be at least 1");
  FLUX_ASSIGN_OR_RETURN(std::string dir, find_component_dir(model, "transformer", "config.json",
                                                            "FluxTransformer2DModel"));
  std::optional<ComponentQuantConfig> cfg;
  if (a.has("quant-config")) {
    FLUX_ASSIGN_OR_RETURN(std::string path, a.str("quant-config"));
    FLUX_ASSIGN_OR_RETURN(nlohmann::json j, read_json_file(path));
    FLUX_ASSIGN_OR_RETURN(PipelineQuantConfig pq, PipelineQuantConfig::from_json(j, path));
    cfg = pq.resolve("transformer");
    if (!cfg) return absl::InvalidArgumentError(path + ": does not quantize the transformer");
  }
  std::vector<double> ms;
  int64_t bytes = 0;
  for (int64_t i = 0; i <= iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    FLUX_ASSIGN_OR_RETURN(std::unique_ptr<FluxTransformer2DModel> m,
                          FluxTransformer2DModel::load(dir));
    if (cfg) FLUX_RETURN_IF_ERROR(m->quantize(*cfg).status());
    const double t =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    bytes = m->weight_bytes();
    if (i > 0) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  const double median = ms[ms.size() / 2];
  std::cout << absl::StrFormat("%s: %s, linear bytes %.1f MB, median load %.1f ms over %d runs\n",
                               dir, cfg ? "quantize on load" : "as stored",
                               static_cast<double>(bytes) / 1e6, median, ms.size());
  std::cout << absl::StrFormat("RESULT load_ms=%.2f mode=%s linear_bytes=%d threads=%d\n", median,
                               cfg ? "quantize_on_load" : "as_stored", bytes, used_threads);
  return absl::OkStatus();
}

}  // namespace

int bench_load_main(const std::vector<std::string>& args) {
  if (!args.empty() && (args[0] == "--help" || args[0] == "help")) {
    std::cout << kUsage;
    return 0;
  }
  auto a = Args::parse(args, {"model", "quant-config", "iters", "threads"});
  absl::Status st = a.ok() ? bench_load(*a) : a.status();
  if (!st.ok()) {
    std::cerr << "fluxserve bench load: " << st.message() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace fluxserve::cli
