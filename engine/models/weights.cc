#include "engine/models/weights.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/core/check.h"
#include "engine/core/status.h"
#include "engine/quant/bnb_checkpoint.h"
#include "kernels/ops.h"

namespace fluxserve {
namespace {

// Linears over the same input, at least one of them quantized, acting as one [sum(out), in] layer:
// one product per part (each with its own bias slice, so every part computes exactly what it
// would alone), written into its columns of the stacked output.
class StackedLinearWeight final : public QuantizedLinearWeight {
 public:
  explicit StackedLinearWeight(std::vector<Linear> parts) : parts_(std::move(parts)) {
    for (const Linear& p : parts_) out_ += p.out_features();
  }
  absl::StatusOr<Tensor> forward(const Tensor& x, const Tensor* /*bias: per part*/) const override {
    const int64_t k = x.size(-1);
    const int64_t rows = x.numel() / std::max<int64_t>(k, 1);
    Shape shape = x.shape();
    shape.back() = out_;
    Tensor y = Tensor::empty(shape);
    float* dst = y.data<float>();
    int64_t col = 0;
    for (const Linear& p : parts_) {
      Tensor yp;
      if (p.quantized) {
        FLUX_ASSIGN_OR_RETURN(yp, p.quantized->forward(x, p.has_bias ? &p.bias : nullptr));
      } else {
        yp = ops::linear(x, p.weight, p.has_bias ? &p.bias : nullptr);
      }
      const int64_t n = p.out_features();
      const float* src = yp.data<float>();
      for (int64_t r = 0; r < rows; ++r) {
        std::memcpy(dst + r * out_ + col, src + r * n, static_cast<size_t>(n) * sizeof(float));
      }
      col += n;
    }
    return y;
  }
  Tensor dequantize() const override {
    const int64_t k = parts_[0].in_features();
    Tensor w = Tensor::empty({out_, k});
    char* dst = static_cast<char*>(w.raw());
    for (const Linear& p : parts_) {
      Tensor wp = p.quantized ? p.quantized->dequantize() : *p.weight.as_f32();
      std::memcpy(dst, wp.raw(), wp.nbytes());
      dst += wp.nbytes();
    }
    return w;
  }
  int64_t nbytes() const override {
    int64_t b = 0;
    for (const Linear& p : parts_) {
      b += p.quantized ? p.quantized->nbytes() : static_cast<int64_t>(p.weight.nbytes());
    }
    return b;
  }
  std::string format() const override {
    for (const Linear& p : parts_) {
      if (p.quantized) return absl::StrCat(p.quantized->format(), " x", parts_.size(), " stacked");
    }
    return "stacked";
  }

 private:
  std::vector<Linear> parts_;
  int64_t out_ = 0;
};

}  // namespace

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
  quantized_out = weight.size(0);
  quantized_in = weight.size(1);
  weight = Tensor();  // the quantized form replaces it (a stacked copy is freed here)
  return true;
}

int64_t Linear::nbytes() const {
  const int64_t b = has_bias ? static_cast<int64_t>(bias.nbytes()) : 0;
  return b + (quantized ? quantized->nbytes() : static_cast<int64_t>(weight.nbytes()));
}

Linear stack_linears(const std::vector<const Linear*>& parts) {
  FLUX_CHECK(!parts.empty());
  bool any_quantized = false;
  for (const Linear* p : parts) any_quantized = any_quantized || p->quantized != nullptr;
  if (any_quantized) {
    Linear l;
    std::vector<Linear> copies;
    for (const Linear* p : parts) {
      FLUX_CHECK(p->in_features() == parts[0]->in_features() && p->has_bias == parts[0]->has_bias)
          << "stack_linears: incompatible parts";
      copies.push_back(*p);  // shares the parts' (mapped) weights
      l.quantized_out += p->out_features();
    }
    l.quantized_in = parts[0]->in_features();
    l.quantized = std::make_shared<StackedLinearWeight>(std::move(copies));
    return l;  // biases live in the parts
  }
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
