// Building blocks shared by the models: a Linear layer and a loader that takes tensors out of a
// WeightStore by their state-dict key, checking each shape against the config and remembering
// which keys were used (so unexpected keys can be reported as diffusers does).
// Linear weights stay in their stored dtype (mmapped, zero-copy); small vectors (biases, norm
// weights) are converted to f32 at load. A Linear stored by bitsandbytes (a pre-quantized
// checkpoint, see engine/quant/bnb_checkpoint.h) is loaded as a quantized Linear from its bytes.
#pragma once

#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/core/tensor.h"
#include "engine/io/checkpoint.h"
#include "engine/quant/quantized_linear.h"

namespace fluxserve {

struct Linear {
  Tensor weight;  // [out, in], stored dtype; undefined once the layer is quantized
  Tensor bias;    // [out] f32, or undefined
  bool has_bias = false;
  // Set by quantize() or, for a pre-quantized checkpoint, by WeightLoader::linear.
  std::shared_ptr<const QuantizedLinearWeight> quantized;
  int64_t quantized_out = 0, quantized_in = 0;  // the weight's shape while `weight` is undefined
  // x: [..., in] -> [..., out]
  Tensor operator()(const Tensor& x) const;
  // Bytes held by the weight (quantized form when quantized) and the bias.
  int64_t nbytes() const;
  int64_t out_features() const { return weight.defined() ? weight.size(0) : quantized_out; }
  int64_t in_features() const { return weight.defined() ? weight.size(1) : quantized_in; }
};

// Several linears over the same input stacked row-wise into one [sum(out), in] layer, so one GEMM
// computes them all (q, k, v and the single blocks' MLP input). A copy, in the parts' common
// dtype (f32 when they differ). Biases must be all present or all absent. When any part is
// quantized (pre-quantized checkpoints) the weights are not copied: the stack is a
// PartwiseLinearWeight over the parts (one product per part into its output columns), with the
// parts' biases stacked.
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
  if (j->is_object() && j->contains("quantization_config")) {
    store->set_quantization_config((*j)["quantization_config"], config_path);
  }
  return Model::from_store(*config, *store);
}

class WeightLoader {
 public:
  explicit WeightLoader(const WeightStore& store) : store_(store) {}

  // The tensor under `key` with exactly `shape`, as stored (a view).
  absl::StatusOr<Tensor> take(const std::string& key, const Shape& shape);
  // The same, converted to f32.
  absl::StatusOr<Tensor> take_f32(const std::string& key, const Shape& shape);
  // `<prefix>.weight` [out, in] and, when `bias`, `<prefix>.bias` [out]. A weight stored in the
  // bitsandbytes serialization gives a quantized Linear (the checkpoint's config.json must carry
  // its quantization_config); a plain float weight in a pre-quantized checkpoint (a module the
  // quantizer skipped) stays as stored.
  absl::StatusOr<Linear> linear(const std::string& prefix, int64_t in, int64_t out,
                                bool bias = true);
  // Keys in the store that no take() asked for.
  std::vector<std::string> unused_keys() const;
  // Linears loaded from a bitsandbytes serialization so far.
  int prequantized_linears() const { return prequantized_; }

 private:
  // The checkpoint's quantization (store.quantization_config()), parsed on first use.
  absl::StatusOr<const ComponentQuantConfig*> checkpoint_quant();
  const WeightStore& store_;
  std::optional<ComponentQuantConfig> checkpoint_quant_;
  int prequantized_ = 0;
  std::set<std::string, std::less<>> used_;
};

}  // namespace fluxserve
