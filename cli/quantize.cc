// `fluxserve quantize`: writes a diffusers pipeline folder whose components the quantization
// config assigns to bitsandbytes are stored in the bitsandbytes serialization (what
// save_pretrained writes after from_pretrained(..., quantization_config=...)); everything else
// (other components, tokenizers, scheduler, model_index.json) is copied. The result loads as a
// pre-quantized checkpoint in fluxserve and in diffusers.
#include <chrono>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "engine/core/status.h"
#include "engine/io/checkpoint.h"
#include "engine/quant/bnb_checkpoint_writer.h"
#include "engine/quant/quant_config.h"

namespace fluxserve::cli {
namespace {

namespace fs = std::filesystem;

constexpr const char* kQuantizeUsage =
    R"(usage: fluxserve quantize --model DIR --config spec.json --output DIR2 [--threads N]

Writes DIR2, a copy of the diffusers pipeline folder DIR in which every component the config
quantizes with a bitsandbytes backend is stored pre-quantized, exactly as diffusers'
save_pretrained writes a model loaded with that BitsAndBytesConfig (4-bit nf4/fp4 with or without
double quant, or LLM.int8; llm_int8_skip_modules honoured; other tensors keep their stored dtype).
The other components, tokenizers and the scheduler are copied. `fluxserve generate --model DIR2`
and diffusers' FluxPipeline.from_pretrained(DIR2) load it without a quantization config.

spec.json is diffusers' PipelineQuantizationConfig as JSON (README: Quantization). Supported
today: the transformer with bitsandbytes_4bit / bitsandbytes_8bit. torchao cannot be written:
diffusers serializes torchao weights as pickled tensor subclasses in .bin files, not safetensors.
gguf is a file format of its own (convert with llama.cpp/city96 tools), not a save_pretrained form.
DIR2 must not exist or be empty.
)";

absl::Status copy_tree(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  fs::copy(from, to, fs::copy_options::recursive, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("copying ", from.string(), " to ",
                                                     to.string(), ": ", ec.message()));
  return absl::OkStatus();
}

absl::Status quantize(const Args& a) {
  FLUX_ASSIGN_OR_RETURN(std::string model, a.str("model"));
  FLUX_ASSIGN_OR_RETURN(std::string config_path, a.str("config"));
  FLUX_ASSIGN_OR_RETURN(std::string output, a.str("output"));
  FLUX_ASSIGN_OR_RETURN(int64_t threads, a.int_or("threads", 0));
  set_threads(threads);
  FLUX_ASSIGN_OR_RETURN(nlohmann::json spec, read_json_file(config_path));
  FLUX_ASSIGN_OR_RETURN(PipelineQuantConfig quant, PipelineQuantConfig::from_json(spec, config_path));
  for (const std::string& w : quant.warnings()) std::cerr << "warning: " << w << "\n";
  FLUX_ASSIGN_OR_RETURN(ModelIndex index, read_model_index(model));

  // Everything is checked before anything is written.
  std::vector<std::pair<std::string, ComponentQuantConfig>> plan;
  for (const auto& [name, lib_class] : index.components) {
    std::optional<ComponentQuantConfig> c = quant.resolve(name);
    if (!c) continue;
    if (c->backend == QuantBackend::kTorchAo) {
      return absl::UnimplementedError(absl::StrCat(
          config_path, ": ", name, ": torchao checkpoints cannot be written: diffusers serializes "
          "torchao weights as pickled tensor subclasses (.bin, safe_serialization=False), not "
          "safetensors; quantize on load instead (fluxserve generate --quant-config)"));
    }
    if (c->backend == QuantBackend::kGguf) {
      return absl::UnimplementedError(absl::StrCat(
          config_path, ": ", name, ": gguf is a file format of its own, not something "
          "save_pretrained writes; convert with the GGUF tools and load the .gguf file"));
    }
    if (name != "transformer") {
      return absl::UnimplementedError(absl::StrCat(
          config_path, ": ", name, " (", lib_class.second, "): writing pre-quantized ", name,
          " is not implemented yet; only the transformer (set \"components_to_quantize\": "
          "[\"transformer\"] or use quant_mapping)"));
    }
    plan.emplace_back(name, *c);
  }
  if (plan.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(config_path, ": the config quantizes none of ", model, "'s components"));
  }
  std::error_code ec;
  if (fs::exists(output) && !fs::is_empty(output, ec)) {
    return absl::AlreadyExistsError(absl::StrCat(output, ": exists and is not empty"));
  }
  fs::create_directories(output, ec);
  if (ec) return absl::UnavailableError(absl::StrCat(output, ": cannot create: ", ec.message()));

  for (const fs::directory_entry& e : fs::directory_iterator(model)) {
    const std::string name = e.path().filename().string();
    bool quantized = false;
    for (const auto& [pname, cfg] : plan) quantized = quantized || pname == name;
    if (quantized) continue;
    FLUX_RETURN_IF_ERROR(copy_tree(e.path(), fs::path(output) / name));
  }
  for (const auto& [name, cfg] : plan) {
    const auto t0 = std::chrono::steady_clock::now();
    FLUX_ASSIGN_OR_RETURN(BnbWriteStats s, write_bnb_transformer(model + "/" + name,
                                                                 output + "/" + name, cfg));
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::cout << absl::StrFormat(
        "%s: %s, %d linear layers quantized, %.1f MB -> %.1f MB in %.2f s\n", name,
        cfg.to_json().dump(), s.quantized_layers, static_cast<double>(s.source_bytes) / 1e6,
        static_cast<double>(s.output_bytes) / 1e6, secs);
  }
  std::cout << "wrote " << output << "\n";
  return absl::OkStatus();
}

}  // namespace

int quantize_main(const std::vector<std::string>& args) {
  if (!args.empty() && (args[0] == "--help" || args[0] == "help")) {
    std::cout << kQuantizeUsage;
    return 0;
  }
  auto a = Args::parse(args, {"model", "config", "output", "threads"});
  absl::Status st = a.ok() ? quantize(*a) : a.status();
  if (!st.ok()) {
    std::cerr << "fluxserve quantize: " << st.message() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace fluxserve::cli
