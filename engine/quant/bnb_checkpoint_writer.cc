#include "engine/quant/bnb_checkpoint_writer.h"

#include <filesystem>
#include <fstream>
#include <memory>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/core/status.h"
#include "engine/io/checkpoint.h"
#include "engine/io/safetensors_writer.h"
#include "engine/models/component_quant.h"
#include "engine/quant/bnb_checkpoint.h"
#include "engine/quant/bnb_formats.h"
#include "engine/quant/quantized_linear.h"

namespace fluxserve {
namespace {

namespace fs = std::filesystem;

absl::Status write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
  f.close();
  if (!f) return absl::UnavailableError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<BnbWriteStats> write_bnb_transformer(const std::string& src_dir,
                                                    const std::string& dst_dir,
                                                    const ComponentQuantConfig& cfg) {
  const bool four = cfg.backend == QuantBackend::kBitsAndBytes4bit;
  if (!four && cfg.backend != QuantBackend::kBitsAndBytes8bit) {
    return absl::InvalidArgumentError(absl::StrCat(
        src_dir, ": quant_backend '", quant_backend_name(cfg.backend),
        "' cannot be written as a checkpoint here (bitsandbytes_4bit / bitsandbytes_8bit only)"));
  }
  if (four && cfg.bnb_4bit_quant_storage != "uint8") {
    return absl::UnimplementedError(absl::StrCat(
        "bnb_4bit_quant_storage '", cfg.bnb_4bit_quant_storage,
        "' is not supported for writing checkpoints (uint8 only)"));
  }
  const std::string config_path = src_dir + "/config.json";
  FLUX_ASSIGN_OR_RETURN(nlohmann::json config, read_json_file(config_path));
  if (!config.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(config_path, ": expected a JSON object"));
  }
  if (config.contains("quantization_config") && !config["quantization_config"].is_null()) {
    return absl::FailedPreconditionError(absl::StrCat(
        config_path, ": the component is already quantized (quantization_config present); "
                     "quantize the unquantized checkpoint"));
  }
  FLUX_ASSIGN_OR_RETURN(WeightStore store, WeightStore::open_dir(src_dir));

  std::error_code ec;
  fs::create_directories(dst_dir, ec);
  if (ec) return absl::UnavailableError(absl::StrCat(dst_dir, ": cannot create: ", ec.message()));
  if (fs::exists(dst_dir + "/config.json")) {
    return absl::AlreadyExistsError(absl::StrCat(dst_dir, ": already holds a config.json"));
  }
  FLUX_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsStreamWriter> out,
                        SafetensorsStreamWriter::create(
                            dst_dir + "/diffusion_pytorch_model.safetensors"));
  // diffusers' bitsandbytes quantizer picks the layers (FluxTransformer2DModel keeps none in fp32).
  FLUX_ASSIGN_OR_RETURN(ComponentQuantizer quantizer,
                        ComponentQuantizer::create(cfg, UpstreamQuantTraits{}, "transformer"));
  BnbWriteStats stats;
  for (const std::string& key : store.keys()) {
    FLUX_ASSIGN_OR_RETURN(Tensor t, store.get(key));
    stats.source_bytes += static_cast<int64_t>(t.nbytes());
    const bool linear_weight =
        absl::EndsWith(key, ".weight") && t.dim() == 2 && dtype_is_float(t.dtype());
    const std::string module = key.substr(0, key.size() - std::string(".weight").size());
    if (!linear_weight || !quantizer.converts(module)) {
      FLUX_RETURN_IF_ERROR(out->add(key, t));
      continue;
    }
    std::vector<std::pair<std::string, Tensor>> parts;
    if (four) {
      Bnb4Options opt;
      opt.quant_type = cfg.bnb_4bit_quant_type == "nf4" ? Quant4::kNF4 : Quant4::kFP4;
      opt.double_quant = cfg.bnb_4bit_use_double_quant;
      absl::StatusOr<Bnb4Weight> q = bnb4_quantize(t, opt);
      if (!q.ok()) {
        return absl::Status(q.status().code(),
                            absl::StrCat(store.file_of(key), ": ", key, ": ", q.status().message()));
      }
      parts = bnb4_state_dict(module, *q);
    } else {
      absl::StatusOr<Tensor> t32 = t.as_f32();  // exact for f16/bf16; bnb casts to f16 next
      absl::StatusOr<Bnb8Weight> q =
          t32.ok() ? bnb8_quantize(*t32) : absl::StatusOr<Bnb8Weight>(t32.status());
      if (!q.ok()) {
        return absl::Status(q.status().code(),
                            absl::StrCat(store.file_of(key), ": ", key, ": ", q.status().message()));
      }
      parts = bnb8_state_dict(module, *q);
    }
    for (const auto& [name, tensor] : parts) FLUX_RETURN_IF_ERROR(out->add(name, tensor));
    ++stats.quantized_layers;
  }
  stats.output_bytes = out->data_bytes();
  FLUX_RETURN_IF_ERROR(out->finish({{"format", "pt"}}));
  // diffusers writes config.json with sorted keys and an indent of 2.
  config["quantization_config"] = bnb_quantization_config_dict(cfg);
  FLUX_RETURN_IF_ERROR(write_text(dst_dir + "/config.json", config.dump(2) + "\n"));
  return stats;
}

}  // namespace fluxserve
