#include "engine/quant/bnb_linear.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace fluxserve {
namespace {

int64_t bytes_of(const Tensor& t) { return t.defined() ? static_cast<int64_t>(t.nbytes()) : 0; }

// x [..., K] viewed as [rows, K] for the 2-D kernels; leading dimensions restored on the way out.
Tensor rows_view(const Tensor& x) {
  const int64_t k = x.size(-1);
  return x.reshape({x.numel() / std::max<int64_t>(k, 1), k});
}
Tensor restore(const Tensor& y2, const Tensor& x, int64_t n) {
  Shape shape = x.shape();
  shape.back() = n;
  return y2.reshape(shape);
}

class Bnb4CheckpointLinear final : public QuantizedLinearWeight {
 public:
  explicit Bnb4CheckpointLinear(Bnb4Weight w) : w_(std::move(w)) {}
  absl::StatusOr<Tensor> forward(const Tensor& x, const Tensor* bias) const override {
    if (x.dtype() != DType::kF32 || x.dim() < 1 || x.size(-1) != w_.shape[1]) {
      return absl::InvalidArgumentError(absl::StrCat("bitsandbytes 4-bit linear: input ",
                                                     x.shape_str(), " ", dtype_name(x.dtype()),
                                                     ", expected f32 [..., ", w_.shape[1], "]"));
    }
    return restore(bnb4_linear(rows_view(x), w_, bias), x, w_.shape[0]);
  }
  Tensor dequantize() const override { return bnb4_dequantize(w_); }
  int64_t nbytes() const override {
    return bytes_of(w_.packed) + bytes_of(w_.absmax) + bytes_of(w_.quant_map) +
           bytes_of(w_.nested_absmax) + bytes_of(w_.nested_quant_map);
  }
  std::string format() const override {
    return absl::StrCat("bitsandbytes ", quant4_name(w_.quant_type),
                        w_.nested ? " (double quant)" : "");
  }

 private:
  Bnb4Weight w_;
};

class Bnb8CheckpointLinear final : public QuantizedLinearWeight {
 public:
  Bnb8CheckpointLinear(Bnb8Weight w, float threshold) : w_(std::move(w)), threshold_(threshold) {}
  absl::StatusOr<Tensor> forward(const Tensor& x, const Tensor* bias) const override {
    if (x.dtype() != DType::kF32 || x.dim() < 1 || x.size(-1) != w_.in_features()) {
      return absl::InvalidArgumentError(absl::StrCat("bitsandbytes 8-bit linear: input ",
                                                     x.shape_str(), " ", dtype_name(x.dtype()),
                                                     ", expected f32 [..., ", w_.in_features(), "]"));
    }
    return restore(bnb8_linear(rows_view(x), w_, bias, threshold_), x, w_.out_features());
  }
  Tensor dequantize() const override { return bnb8_dequantize(w_); }
  int64_t nbytes() const override { return bytes_of(w_.cb) + bytes_of(w_.scb); }
  std::string format() const override {
    return absl::StrCat("bitsandbytes LLM.int8 (threshold ", threshold_, ")");
  }

 private:
  Bnb8Weight w_;
  float threshold_;
};

}  // namespace

std::shared_ptr<const QuantizedLinearWeight> make_bnb4_linear(Bnb4Weight w) {
  return std::make_shared<Bnb4CheckpointLinear>(std::move(w));
}

std::shared_ptr<const QuantizedLinearWeight> make_bnb8_linear(Bnb8Weight w, float threshold) {
  return std::make_shared<Bnb8CheckpointLinear>(std::move(w), threshold);
}

}  // namespace fluxserve
