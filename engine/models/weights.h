// Building blocks shared by the models: a Linear layer and a loader that takes tensors out of a
// WeightStore by their state-dict key, checking each shape against the config and remembering
// which keys were used (so unexpected keys can be reported as diffusers does).
// Linear weights stay in their stored dtype (mmapped, zero-copy); small vectors (biases, norm
// weights) are converted to f32 at load.
#pragma once

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/core/tensor.h"
#include "engine/io/checkpoint.h"
#include "engine/quant/quantized_linear.h"

namespace fluxserve {

struct Linear {
  Tensor weight;  // [out, in], stored dtype; released once the layer is quantized
  Tensor bias;    // [out] f32, or undefined
  bool has_bias = false;
  std::shared_ptr<const QuantizedLinearWeight> quantized;  // set by quantize()
  // x: [..., in] -> [..., out]
  Tensor operator()(const Tensor& x) const;
  // Replaces the weight by its quantized form as `cfg` says, unless `module` (the diffusers
  // module name, for error messages and skip lists) is exempt. Returns whether it was quantized.
  absl::StatusOr<bool> quantize(const ComponentQuantConfig& cfg, const std::string& module);
  // Bytes held by the weight (quantized form when quantized) and the bias.
  int64_t nbytes() const;
  int64_t out_features() const { return weight.size(0); }
  int64_t in_features() const { return weight.size(1); }
};

// Several linears over the same input stacked row-wise into one [sum(out), in] layer, so one GEMM
// computes them all (q, k, v and the single blocks' MLP input). A copy, in the parts' common
// dtype (f32 when they differ). Biases must be all present or all absent.
Linear stack_linears(const std::vector<const Linear*>& parts);

// Model::load(dir) for every component: <dir>/config.json parsed by Config::from_json(json, path),
// the weights found by WeightStore::open_dir, then Model::from_store(config, store).
template <class Model, class Config>
absl::StatusOr<std::unique_ptr<Model>> load_component(const std::string& dir) {
  const std::string config_path = dir + "/config.json";
  absl::StatusOr<nlohmann::json> j = read_json_file(config_path);
  if (!j.ok()) return j.status();
  absl::StatusOr<Config> config = Config::from_json(*j, config_path);
  if (!config.ok()) return config.status();
  absl::StatusOr<WeightStore> store = WeightStore::open_dir(dir);
  if (!store.ok()) return store.status();
  return Model::from_store(*config, *store);
}

class WeightLoader {
 public:
  explicit WeightLoader(const WeightStore& store) : store_(store) {}

  // The tensor under `key` with exactly `shape`, as stored (a view).
  absl::StatusOr<Tensor> take(const std::string& key, const Shape& shape);
  // The same, converted to f32.
  absl::StatusOr<Tensor> take_f32(const std::string& key, const Shape& shape);
  // `<prefix>.weight` [out, in] and, when `bias`, `<prefix>.bias` [out].
  absl::StatusOr<Linear> linear(const std::string& prefix, int64_t in, int64_t out,
                                bool bias = true);
  // Keys in the store that no take() asked for.
  std::vector<std::string> unused_keys() const;

 private:
  const WeightStore& store_;
  std::set<std::string, std::less<>> used_;
};

}  // namespace fluxserve
