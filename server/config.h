// Model specs and the server config file: the protobuf-JSON form of ServerConfig parsed with
// unknown fields rejected, model names validated, checkpoint paths resolved under --model-root
// (realpath: no `..` traversal, no symlink escape), and a spec turned into what the engine takes
// (a folder and an optional PipelineQuantConfig). Every error names the field at fault.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/quant/quant_config.h"
#include "fluxserve/v1/model_spec.pb.h"

namespace fluxserve::server {

// A ServerConfig from its protobuf-JSON text; `what` (the file name) prefixes every message.
// Checks every model (name, unique names, default_model among them) but not the paths, which
// resolve_spec checks when a model loads.
absl::StatusOr<v1::ServerConfig> parse_server_config(const std::string& json,
                                                     const std::string& what);
absl::StatusOr<v1::ServerConfig> read_server_config(const std::string& path);

// [A-Za-z0-9._-], 1-64 characters; `field` names the field in the message.
absl::Status validate_model_name(const std::string& name, const std::string& field);

// `path` (relative to `model_root`, or absolute) resolved with realpath; it must exist, be a
// directory and lie inside realpath(model_root). InvalidArgument / NotFound naming `field`.
absl::StatusOr<std::string> resolve_model_path(const std::string& path,
                                               const std::string& model_root,
                                               const std::string& field);

// The Quantization message as diffusers' PipelineQuantizationConfig; nullopt when empty.
absl::StatusOr<std::optional<PipelineQuantConfig>> quant_config_from_spec(
    const v1::Quantization& q, const std::string& field);

// Placement: checked by the planner's parser (PlacementSpec::from_json: InvalidArgument naming
// the field), then refused with Unimplemented unless everything stays on the CPU (the engine
// executes device maps and offloading with issues #6/#7).
absl::Status check_placement(const v1::Placement& p, const std::string& field);

// GenerationDefaults within the ranges a request may use.
absl::Status check_defaults(const v1::GenerationDefaults& d, const std::string& field);

// A spec checked and turned into what FluxPipeline::load takes.
struct ResolvedSpec {
  v1::ModelSpec spec;  // as given
  std::string dir;     // the resolved checkpoint folder
  std::optional<PipelineQuantConfig> quant;
  std::vector<std::string> warnings;  // from the quantization config
};
// `field` prefixes messages ("spec", "models[2]").
absl::StatusOr<ResolvedSpec> resolve_spec(const v1::ModelSpec& spec, const std::string& model_root,
                                          const std::string& field);

// Field-level request limits shared by the config checks and the request validation.
inline constexpr int kMaxImageSide = 4096;
inline constexpr int kMaxSteps = 1000;
inline constexpr int kMaxSequenceLength = 512;
inline constexpr int kMaxImagesPerRequest = 16;

}  // namespace fluxserve::server
