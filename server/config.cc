#include "server/config.h"

#include <sys/stat.h>

#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include <google/protobuf/util/json_util.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/core/status.h"
#include "engine/placement/placement_spec.h"

namespace fluxserve::server {
namespace {

absl::Status bad(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

bool is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

// realpath(3) as a string; the errno text on failure.
absl::StatusOr<std::string> real_path(const std::string& p) {
  char buf[PATH_MAX];
  if (::realpath(p.c_str(), buf) == nullptr) {
    const int err = errno;
    return absl::Status(err == ENOENT || err == ENOTDIR ? absl::StatusCode::kNotFound
                                                        : absl::StatusCode::kInvalidArgument,
                        std::strerror(err));
  }
  return std::string(buf);
}

// A message's protobuf-JSON form with its proto field names (which are diffusers'/accelerate's
// keys), as the engine's parsers take it.
absl::StatusOr<nlohmann::json> json_form(const google::protobuf::Message& m,
                                         const std::string& field) {
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  std::string json;
  const auto st = google::protobuf::util::MessageToJsonString(m, &json, opts);
  if (!st.ok()) return absl::InternalError(absl::StrCat(field, ": ", st.ToString()));
  nlohmann::json j = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InternalError(absl::StrCat(field, ": unreadable JSON form"));
  return j;
}

}  // namespace

absl::Status validate_model_name(const std::string& name, const std::string& field) {
  if (name.empty() || name.size() > 64) {
    return bad(field, absl::StrCat("a model name has 1 to 64 characters, got ", name.size()));
  }
  for (char c : name) {
    if (!is_name_char(c)) {
      return bad(field, absl::StrCat("model name '", name,
                                     "' may only contain letters, digits, '.', '_' and '-'"));
    }
  }
  if (name == "." || name == "..") return bad(field, absl::StrCat("'", name, "' is not a name"));
  return absl::OkStatus();
}

absl::StatusOr<std::string> resolve_model_path(const std::string& path,
                                               const std::string& model_root,
                                               const std::string& field) {
  if (path.empty()) return bad(field, "the checkpoint folder is required");
  if (path.find('\0') != std::string::npos) return bad(field, "contains a NUL byte");
  absl::StatusOr<std::string> root = real_path(model_root);
  if (!root.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("--model-root '", model_root, "': ", root.status().message()));
  }
  const std::string joined = path[0] == '/' ? path : absl::StrCat(*root, "/", path);
  absl::StatusOr<std::string> real = real_path(joined);
  if (!real.ok()) {
    return absl::Status(real.status().code(), absl::StrCat(field, ": '", path, "' under '", *root,
                                                           "': ", real.status().message()));
  }
  // realpath has resolved every `..` and symlink, so a prefix test is exact.
  const std::string prefix = *root == "/" ? "/" : *root + "/";
  if (real->compare(0, prefix.size(), prefix) != 0 || real->size() == prefix.size()) {
    return absl::PermissionDeniedError(absl::StrCat(
        field, ": '", path, "' resolves to '", *real, "', outside --model-root '", *root, "'"));
  }
  struct stat st {};
  if (::stat(real->c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return bad(field, absl::StrCat("'", path, "' is not a folder (a diffusers FluxPipeline "
                                   "folder with model_index.json is expected)"));
  }
  return *real;
}

absl::StatusOr<std::optional<PipelineQuantConfig>> quant_config_from_spec(
    const v1::Quantization& q, const std::string& field) {
  if (q.quant_backend().empty() && !q.has_quant_kwargs() && q.components_to_quantize().empty() &&
      q.quant_mapping().empty()) {
    return std::optional<PipelineQuantConfig>();
  }
  // One schema: the proto's field names are diffusers' keys, so its JSON form is exactly what
  // PipelineQuantConfig parses (and validates, naming the field).
  FLUX_ASSIGN_OR_RETURN(nlohmann::json j, json_form(q, field));
  FLUX_ASSIGN_OR_RETURN(PipelineQuantConfig cfg, PipelineQuantConfig::from_json(j, field));
  return std::optional<PipelineQuantConfig>(std::move(cfg));
}

absl::Status check_placement(const v1::Placement& p, const std::string& field) {
  // The planner's parser checks the map itself (devices, sizes, components, policies), so a bad
  // placement gets the same message here as from `fluxserve inspect --placement`.
  FLUX_ASSIGN_OR_RETURN(nlohmann::json j, json_form(p, field));
  FLUX_ASSIGN_OR_RETURN(PlacementSpec spec, PlacementSpec::from_json(j, field));
  if (spec.all_cpu()) return absl::OkStatus();
  // Name the first field that leaves the CPU.
  std::string sub = "device_map";
  if (spec.pipeline == PlacementSpec::kAllCpu) {
    if (!p.component_device_map().empty()) sub = "component_device_map";
    else if (!p.device_map_modules().empty()) sub = "device_map_modules";
    else if (!p.max_memory().empty()) sub = "max_memory";
    for (const auto& [component, o] : spec.offload) {
      if (sub == "device_map" && o.kind != OffloadPolicy::kNone) sub = "offload." + component + ".policy";
    }
  }
  return absl::UnimplementedError(absl::StrCat(
      field, ".", sub, ": a valid placement, but not supported yet: this engine runs every "
      "component on the CPU; executing device maps and offloading arrives with issue #7 (use "
      "device_map \"\" or \"cpu\"; `fluxserve inspect --placement` prints the plan)"));
}

absl::Status check_defaults(const v1::GenerationDefaults& d, const std::string& field) {
  auto range = [&](bool has, int64_t v, int64_t lo, int64_t hi, const char* name) {
    if (has && (v < lo || v > hi)) {
      return bad(absl::StrCat(field, ".", name),
                 absl::StrCat("must be between ", lo, " and ", hi, ", got ", v));
    }
    return absl::OkStatus();
  };
  FLUX_RETURN_IF_ERROR(range(d.has_width(), d.width(), 16, kMaxImageSide, "width"));
  FLUX_RETURN_IF_ERROR(range(d.has_height(), d.height(), 16, kMaxImageSide, "height"));
  FLUX_RETURN_IF_ERROR(
      range(d.has_num_inference_steps(), d.num_inference_steps(), 1, kMaxSteps, "num_inference_steps"));
  FLUX_RETURN_IF_ERROR(range(d.has_max_sequence_length(), d.max_sequence_length(), 1,
                             kMaxSequenceLength, "max_sequence_length"));
  if (d.has_guidance_scale() && (!std::isfinite(d.guidance_scale()) || d.guidance_scale() < 0)) {
    return bad(absl::StrCat(field, ".guidance_scale"),
               absl::StrCat("must be a finite number >= 0, got ", d.guidance_scale()));
  }
  if (d.has_true_cfg_scale() && (!std::isfinite(d.true_cfg_scale()) || d.true_cfg_scale() < 0)) {
    return bad(absl::StrCat(field, ".true_cfg_scale"),
               absl::StrCat("must be a finite number >= 0, got ", d.true_cfg_scale()));
  }
  return absl::OkStatus();
}

absl::StatusOr<ResolvedSpec> resolve_spec(const v1::ModelSpec& spec, const std::string& model_root,
                                          const std::string& field) {
  FLUX_RETURN_IF_ERROR(validate_model_name(spec.name(), absl::StrCat(field, ".name")));
  ResolvedSpec r;
  r.spec = spec;
  FLUX_ASSIGN_OR_RETURN(r.dir,
                        resolve_model_path(spec.path(), model_root, absl::StrCat(field, ".path")));
  FLUX_ASSIGN_OR_RETURN(r.quant,
                        quant_config_from_spec(spec.quantization(), absl::StrCat(field, ".quantization")));
  if (r.quant) r.warnings = r.quant->warnings();
  FLUX_RETURN_IF_ERROR(check_placement(spec.placement(), absl::StrCat(field, ".placement")));
  FLUX_RETURN_IF_ERROR(check_defaults(spec.defaults(), absl::StrCat(field, ".defaults")));
  return r;
}

absl::StatusOr<v1::ServerConfig> parse_server_config(const std::string& json,
                                                     const std::string& what) {
  v1::ServerConfig cfg;
  google::protobuf::util::JsonParseOptions opts;
  opts.ignore_unknown_fields = false;  // a misspelt key must not be silently ignored
  const auto st = google::protobuf::util::JsonStringToMessage(json, &cfg, opts);
  if (!st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": not a ServerConfig: ",
                                                   std::string(st.message())));
  }
  std::set<std::string> names;
  for (int i = 0; i < cfg.models_size(); ++i) {
    const std::string field = absl::StrCat(what, ": models[", i, "]");
    const v1::ModelSpec& m = cfg.models(i);
    FLUX_RETURN_IF_ERROR(validate_model_name(m.name(), absl::StrCat(field, ".name")));
    if (!names.insert(m.name()).second) {
      return bad(absl::StrCat(field, ".name"), absl::StrCat("'", m.name(), "' is used twice"));
    }
    if (m.path().empty()) return bad(absl::StrCat(field, ".path"), "the checkpoint folder is required");
    FLUX_RETURN_IF_ERROR(check_placement(m.placement(), absl::StrCat(field, ".placement")));
    FLUX_RETURN_IF_ERROR(check_defaults(m.defaults(), absl::StrCat(field, ".defaults")));
    FLUX_RETURN_IF_ERROR(
        quant_config_from_spec(m.quantization(), absl::StrCat(field, ".quantization")).status());
  }
  if (cfg.models_size() == 0) return bad(what, "models: at least one model is required");
  if (!cfg.default_model().empty() && !names.contains(cfg.default_model())) {
    return bad(absl::StrCat(what, ": default_model"),
               absl::StrCat("'", cfg.default_model(), "' is not one of the models (",
                            absl::StrJoin(names, ", "), ")"));
  }
  return cfg;
}

absl::StatusOr<v1::ServerConfig> read_server_config(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return absl::NotFoundError(absl::StrCat("--config: cannot read '", path, "'"));
  std::ostringstream ss;
  ss << f.rdbuf();
  return parse_server_config(ss.str(), path);
}

}  // namespace fluxserve::server
