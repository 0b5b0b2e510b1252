#include "engine/models/weights.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/core/check.h"
#include "engine/core/status.h"
#include "kernels/ops.h"

namespace fluxserve {

Tensor Linear::operator()(const Tensor& x) const {
  if (quantized) {
    absl::StatusOr<Tensor> y = quantized->forward(x, has_bias ? &bias : nullptr);
    FLUX_CHECK(y.ok()) << y.status();  // shapes were validated when the model was loaded
    return *std::move(y);
  }
  return ops::linear(x, weight, has_bias ? &bias : nullptr);
}

absl::StatusOr<bool> Linear::quantize(const ComponentQuantConfig& cfg, const std::string& module) {
  if (quantized || quant_skips_module(cfg, module)) return false;
  FLUX_ASSIGN_OR_RETURN(quantized, quantize_linear_weight(weight, cfg, module));
  if (!quantized) return false;
  weight = Tensor();  // the quantized form replaces it (a stacked copy is freed here)
  return true;
}

int64_t Linear::nbytes() const {
  const int64_t b = has_bias ? static_cast<int64_t>(bias.nbytes()) : 0;
  return b + (quantized ? quantized->nbytes() : static_cast<int64_t>(weight.nbytes()));
}

Linear stack_linears(const std::vector<const Linear*>& parts) {
  FLUX_CHECK(!parts.empty());
  const int64_t in = parts[0]->in_features();
  int64_t out = 0;
  bool same_dtype = true;
  for (const Linear* p : parts) {
    FLUX_CHECK(p->in_features() == in && p->has_bias == parts[0]->has_bias)
        << "stack_linears: incompatible parts";
    out += p->out_features();
    same_dtype = same_dtype && p->weight.dtype() == parts[0]->weight.dtype();
  }
  const DType dt = same_dtype ? parts[0]->weight.dtype() : DType::kF32;
  Linear l;
  l.weight = Tensor::empty({out, in}, dt);
  l.has_bias = parts[0]->has_bias;
  if (l.has_bias) l.bias = Tensor::empty({out});
  char* w = static_cast<char*>(l.weight.raw());
  float* b = l.has_bias ? l.bias.data<float>() : nullptr;
  for (const Linear* p : parts) {
    const Tensor src = same_dtype ? p->weight : *p->weight.as_f32();
    std::memcpy(w, src.raw(), src.nbytes());
    w += src.nbytes();
    if (b != nullptr) {
      std::memcpy(b, p->bias.raw(), p->bias.nbytes());
      b += p->out_features();
    }
  }
  return l;
}

absl::StatusOr<Tensor> WeightLoader::take(const std::string& key, const Shape& shape) {
  FLUX_ASSIGN_OR_RETURN(Tensor t, store_.get(key, shape));
  if (!dtype_is_float(t.dtype())) {
    return absl::InvalidArgumentError(absl::StrCat(store_.file_of(key), ": tensor '", key,
                                                   "' has dtype ", dtype_name(t.dtype()),
                                                   ", expected a floating-point type"));
  }
  used_.insert(key);
  return t;
}

absl::StatusOr<Tensor> WeightLoader::take_f32(const std::string& key, const Shape& shape) {
  FLUX_ASSIGN_OR_RETURN(Tensor t, take(key, shape));
  return t.as_f32();
}

absl::StatusOr<Linear> WeightLoader::linear(const std::string& prefix, int64_t in, int64_t out,
                                            bool bias) {
  Linear l;
  FLUX_ASSIGN_OR_RETURN(l.weight, take(prefix + ".weight", {out, in}));
  if (l.weight.dtype() != DType::kF32 && l.weight.dtype() != DType::kBF16 &&
      l.weight.dtype() != DType::kF16) {
    // fp8 and other storage types are converted once here; quantized formats get their own layers.
    FLUX_ASSIGN_OR_RETURN(l.weight, l.weight.as_f32());
  }
  if (bias) {
    FLUX_ASSIGN_OR_RETURN(l.bias, take_f32(prefix + ".bias", {out}));
    l.has_bias = true;
  }
  return l;
}

std::vector<std::string> WeightLoader::unused_keys() const {
  std::vector<std::string> out;
  for (const std::string& k : store_.keys()) {
    if (!used_.contains(k)) out.push_back(k);
  }
  return out;
}

}  // namespace fluxserve
