#include "engine/models/weights.h"

#include "absl/strings/str_cat.h"
#include "engine/core/status.h"
#include "kernels/ops.h"

namespace fluxserve {

Tensor Linear::operator()(const Tensor& x) const {
  return ops::linear(x, weight, has_bias ? &bias : nullptr);
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
