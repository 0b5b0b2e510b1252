// The diffusers on-disk layout: model_index.json at the root, one folder per component with its
// config.json and weights, found as a single safetensors file or as shards through
// `*.safetensors.index.json` (weight_map). Both diffusers names (diffusion_pytorch_model*) and
// transformers names (model*) are recognised.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/core/tensor.h"
#include "engine/io/safetensors.h"
#include "nlohmann/json.hpp"

namespace fluxserve {

// Parses a JSON file; errors name the file and the parse position.
absl::StatusOr<nlohmann::json> read_json_file(const std::string& path);

struct ModelIndex {
  std::string class_name;  // "_class_name", e.g. FluxPipeline
  // component name -> [library, class]; components given as [null, null] are omitted.
  std::map<std::string, std::pair<std::string, std::string>> components;
};
absl::StatusOr<ModelIndex> read_model_index(const std::string& root_dir);

// The tensors of one model component, possibly spread over several shard files.
class WeightStore {
 public:
  // Finds the weights inside a component folder (e.g. <root>/transformer): an index file
  // (diffusion_pytorch_model.safetensors.index.json or model.safetensors.index.json) whose
  // weight_map names the shards (all must exist and hold the keys the map assigns them), else a
  // single diffusion_pytorch_model.safetensors or model.safetensors.
  static absl::StatusOr<WeightStore> open_dir(const std::string& dir);
  // One or more explicit files; a key present in two files is an error.
  static absl::StatusOr<WeightStore> open_files(const std::vector<std::string>& files);

  bool contains(std::string_view key) const;
  // View of a tensor; NotFound naming the key and where it was looked for.
  absl::StatusOr<Tensor> get(std::string_view key) const;
  // Like get(), but also checks the shape; InvalidArgument naming key, file, expected and actual.
  absl::StatusOr<Tensor> get(std::string_view key, const Shape& expected_shape) const;
  std::vector<std::string> keys() const;  // sorted
  // The file that holds `key` ("" when absent).
  std::string file_of(std::string_view key) const;
  // What was opened (directory or file), for messages.
  const std::string& source() const { return source_; }

  // The component's config.json "quantization_config" (null when it has none), set by whoever
  // read that config, so that a loader can take pre-quantized layers out of this store.
  const nlohmann::json& quantization_config() const { return quantization_config_; }
  const std::string& config_path() const { return config_path_; }
  void set_quantization_config(nlohmann::json j, std::string config_path) {
    quantization_config_ = std::move(j);
    config_path_ = std::move(config_path);
  }

 private:
  std::string source_;
  nlohmann::json quantization_config_;
  std::string config_path_;
  std::vector<std::shared_ptr<const SafetensorsFile>> files_;
  std::map<std::string, size_t, std::less<>> key_to_file_;
};

}  // namespace fluxserve
