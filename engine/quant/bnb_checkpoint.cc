#include "engine/quant/bnb_checkpoint.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/core/status.h"
#include "engine/io/json_util.h"
#include "engine/quant/bnb_formats.h"
#include "engine/quant/bnb_linear.h"

namespace fluxserve {
namespace {

using json = nlohmann::json;

// Names the file; a key missing from a quantized layer's state is inconsistent state, not a
// lookup miss.
absl::Status in_file(const absl::Status& s, const std::string& file) {
  if (s.ok()) return s;
  const absl::StatusCode code =
      s.code() == absl::StatusCode::kNotFound ? absl::StatusCode::kInvalidArgument : s.code();
  const std::string msg(s.message());
  if (file.empty() || msg.find(file) != std::string::npos) return absl::Status(code, msg);
  return absl::Status(code, absl::StrCat(file, ": ", msg));
}

const char* const k4bitSuffixes[] = {".weight.quant_state.bitsandbytes__nf4",
                                     ".weight.quant_state.bitsandbytes__fp4", ".weight.absmax",
                                     ".weight.quant_map", ".weight.nested_absmax",
                                     ".weight.nested_quant_map"};

}  // namespace

absl::StatusOr<std::optional<ComponentQuantConfig>> checkpoint_quant_config(
    const json& config, const std::string& config_path) {
  if (!config.is_object() || !config.contains("quantization_config") ||
      config["quantization_config"].is_null()) {
    return std::nullopt;
  }
  const json& q = config["quantization_config"];
  const std::string what = absl::StrCat(config_path, ": quantization_config");
  if (!q.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is a JSON ", json_type_name(q), ", expected an object"));
  }
  if (!q.contains("quant_method") || !q["quant_method"].is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": missing string field 'quant_method'"));
  }
  const std::string method = q["quant_method"].get<std::string>();
  if (method == "torchao") {
    return absl::UnimplementedError(absl::StrCat(
        what, ": torchao checkpoints are not supported: diffusers saves torchao weights as pickled "
              "tensor subclasses in .bin files (safe_serialization=False), which fluxserve does not "
              "read; load the unquantized checkpoint with a torchao quantization config instead"));
  }
  if (method != "bitsandbytes") {
    return absl::UnimplementedError(absl::StrCat(
        what, ": quant_method '", method,
        "' is not supported for pre-quantized checkpoints (bitsandbytes only; GGUF files load "
        "through the gguf backend)"));
  }
  // BitsAndBytesConfig.to_dict() adds quant_method and the private _load_in_* mirrors to the
  // constructor kwargs; the rest is validated exactly like a user-given config.
  json kwargs = json::object();
  for (auto it = q.begin(); it != q.end(); ++it) {
    if (it.key() == "quant_method" || it.key() == "_load_in_4bit" || it.key() == "_load_in_8bit") {
      continue;
    }
    kwargs[it.key()] = it.value();
  }
  const bool in4 = kwargs.contains("load_in_4bit") && kwargs["load_in_4bit"] == true;
  const bool in8 = kwargs.contains("load_in_8bit") && kwargs["load_in_8bit"] == true;
  if (in4 == in8) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": exactly one of load_in_4bit and load_in_8bit must be true, found ",
        in4 ? "both" : "neither"));
  }
  kwargs["quant_backend"] = in4 ? "bitsandbytes_4bit" : "bitsandbytes_8bit";
  json pipeline = {{"quant_mapping", {{"component", kwargs}}}};
  FLUX_ASSIGN_OR_RETURN(PipelineQuantConfig pq, PipelineQuantConfig::from_json(pipeline, what));
  std::optional<ComponentQuantConfig> c = pq.resolve("component", /*is_diffusers_model=*/true);
  if (!c) return absl::InternalError(absl::StrCat(what, ": did not resolve"));
  return c;
}

absl::StatusOr<std::optional<ComponentQuantConfig>> read_checkpoint_quant_config(
    const std::string& component_dir) {
  const std::string path = component_dir + "/config.json";
  FLUX_ASSIGN_OR_RETURN(json j, read_json_file(path));
  return checkpoint_quant_config(j, path);
}

absl::StatusOr<ComponentQuantPlan> plan_component_quant(const std::string& component_dir,
                                                        const std::string& component,
                                                        const PipelineQuantConfig* quant) {
  ComponentQuantPlan plan;
  FLUX_ASSIGN_OR_RETURN(plan.prequantized, read_checkpoint_quant_config(component_dir));
  std::optional<ComponentQuantConfig> given =
      quant != nullptr ? quant->resolve(component) : std::nullopt;
  if (!plan.prequantized) {
    plan.quantize_on_load = std::move(given);
  } else if (given) {
    plan.warning = absl::StrCat(
        component, ": a quantization config was given but ", component_dir,
        " already has a quantization_config; the checkpoint's is used (as diffusers does)");
  }
  return plan;
}

json bnb_quantization_config_dict(const ComponentQuantConfig& cfg) {
  json j = cfg.to_json();
  j["_load_in_4bit"] = cfg.load_in_4bit;
  j["_load_in_8bit"] = cfg.load_in_8bit;
  return j;
}

BnbLinearKind bnb_linear_kind(const WeightStore& store, const std::string& prefix) {
  for (const char* s : k4bitSuffixes) {
    if (store.contains(prefix + s)) return BnbLinearKind::k4bit;
  }
  if (store.contains(prefix + ".SCB")) return BnbLinearKind::k8bit;
  absl::StatusOr<Tensor> w = store.get(prefix + ".weight");
  if (w.ok() && w->dtype() == DType::kI8) return BnbLinearKind::k8bit;
  return BnbLinearKind::kNone;
}

absl::StatusOr<std::shared_ptr<const QuantizedLinearWeight>> load_bnb_linear(
    const WeightStore& store, const std::string& prefix, int64_t in, int64_t out,
    const ComponentQuantConfig& cfg, std::vector<std::string>* used) {
  const std::string wkey = prefix + ".weight";
  const std::string file = store.file_of(wkey);
  auto has = [&](const std::string& k) { return store.contains(k); };
  auto get = [&](const std::string& k) -> absl::StatusOr<Tensor> {
    absl::StatusOr<Tensor> t = store.get(k);
    if (t.ok()) used->push_back(k);
    return t;
  };
  const BnbLinearKind kind = bnb_linear_kind(store, prefix);
  const bool cfg4 = cfg.backend == QuantBackend::kBitsAndBytes4bit;
  if (kind == BnbLinearKind::kNone) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": '", wkey, "' is not a bitsandbytes-quantized weight"));
  }
  if ((kind == BnbLinearKind::k4bit) != cfg4) {
    return absl::InvalidArgumentError(absl::StrCat(
        file, ": '", wkey, "' is stored ", kind == BnbLinearKind::k4bit ? "4-bit" : "8-bit",
        " but config.json's quantization_config has ",
        cfg4 ? "load_in_4bit" : "load_in_8bit"));
  }
  if (kind == BnbLinearKind::k4bit) {
    absl::StatusOr<Bnb4Weight> w = bnb4_load(prefix, has, get);
    if (!w.ok()) return in_file(w.status(), file);
    if (w->shape != Shape{out, in}) {
      const std::string state_key = absl::StrCat(
          wkey, ".quant_state.bitsandbytes__", quant4_name(w->quant_type));
      return absl::InvalidArgumentError(absl::StrCat(
          file, ": '", state_key, "' has shape ", shape_str(w->shape), ", the model config needs [",
          out, ", ", in, "]"));
    }
    return make_bnb4_linear(*std::move(w));
  }
  absl::StatusOr<Bnb8Weight> w = bnb8_load(prefix, has, get);
  if (!w.ok()) return in_file(w.status(), file);
  if (w->cb.shape() != Shape{out, in}) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": '", wkey, "' has shape ",
                                                   w->cb.shape_str(), ", the model config needs [",
                                                   out, ", ", in, "]"));
  }
  return make_bnb8_linear(*std::move(w), static_cast<float>(cfg.llm_int8_threshold));
}

}  // namespace fluxserve
