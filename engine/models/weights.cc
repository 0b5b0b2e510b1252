#include "engine/models/weights.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/core/check.h"
#include "engine/core/status.h"
#include "engine/models/partwise_linear.h"
#include "engine/quant/bnb_checkpoint.h"
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

int64_t Linear::nbytes() const {
  const int64_t b = has_bias ? static_cast<int64_t>(bias.nbytes()) : 0;
  return b + (quantized ? quantized->nbytes() : static_cast<int64_t>(weight.nbytes()));
}

Linear stack_linears(const std::vector<const Linear*>& parts) {
  FLUX_CHECK(!parts.empty());
  const int64_t in = parts[0]->in_features();
  for (const Linear* p : parts) {
    FLUX_CHECK(p->in_features() == in && p->has_bias == parts[0]->has_bias)
        << "stack_linears: incompatible parts";
  }
  bool any_quantized = false;
  for (const Linear* p : parts) any_quantized = any_quantized || p->quantized != nullptr;
  if (any_quantized) {
    // Pre-quantized parts stay as loaded (views of the mapped file), one product per part.
    Linear l;
    std::vector<PartwiseLinearWeight::Part> pw;
    for (const Linear* p : parts) {
      pw.push_back({.rows = p->out_features(), .quantized = p->quantized, .dense = p->weight});
      l.quantized_out += p->out_features();
    }
    l.quantized_in = in;
    l.quantized = std::make_shared<PartwiseLinearWeight>(std::move(pw), in);
    l.has_bias = parts[0]->has_bias;
    if (l.has_bias) {
      l.bias = Tensor::empty({l.quantized_out});
      float* b = l.bias.data<float>();
      for (const Linear* p : parts) {
        std::memcpy(b, p->bias.raw(), p->bias.nbytes());
        b += p->out_features();
      }
    }
    return l;
  }
  int64_t out = 0;
  bool same_dtype = true;
  for (const Linear* p : parts) {
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

absl::StatusOr<const ComponentQuantConfig*> WeightLoader::checkpoint_quant() {
  if (!checkpoint_quant_) {
    const std::string& path = store_.config_path();
    if (store_.quantization_config().is_null()) {
      return absl::InvalidArgumentError(absl::StrCat(
          store_.source(), ": holds bitsandbytes-quantized weights but ",
          path.empty() ? std::string("its config.json") : path, " has no quantization_config"));
    }
    nlohmann::json config = {{"quantization_config", store_.quantization_config()}};
    FLUX_ASSIGN_OR_RETURN(std::optional<ComponentQuantConfig> c,
                          checkpoint_quant_config(config, path));
    if (!c) return absl::InternalError(absl::StrCat(path, ": quantization_config vanished"));
    checkpoint_quant_ = std::move(c);
  }
  return &*checkpoint_quant_;
}

absl::StatusOr<Linear> WeightLoader::linear(const std::string& prefix, int64_t in, int64_t out,
                                            bool bias) {
  Linear l;
  if (bnb_linear_kind(store_, prefix) != BnbLinearKind::kNone) {
    FLUX_ASSIGN_OR_RETURN(const ComponentQuantConfig* cfg, checkpoint_quant());
    std::vector<std::string> used;
    FLUX_ASSIGN_OR_RETURN(l.quantized, load_bnb_linear(store_, prefix, in, out, *cfg, &used));
    used_.insert(used.begin(), used.end());
    l.quantized_out = out;
    l.quantized_in = in;
    ++prequantized_;
    if (bias) {
      FLUX_ASSIGN_OR_RETURN(l.bias, take_f32(prefix + ".bias", {out}));
      l.has_bias = true;
    }
    return l;
  }
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
