#include "engine/models/partwise_linear.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/core/check.h"
#include "kernels/ops.h"

namespace fluxserve {

PartwiseLinearWeight::PartwiseLinearWeight(std::vector<Part> parts, int64_t in_features)
    : parts_(std::move(parts)), in_(in_features) {
  for (const Part& p : parts_) out_ += p.rows;
}

absl::StatusOr<Tensor> PartwiseLinearWeight::forward(const Tensor& x, const Tensor* bias) const {
  if (x.dtype() != DType::kF32 || x.dim() < 1 || x.size(-1) != in_) {
    return absl::InvalidArgumentError(absl::StrCat("stacked linear: expected f32 [..., ", in_,
                                                   "], got ", dtype_name(x.dtype()), " ",
                                                   x.shape_str()));
  }
  const int64_t rows = x.numel() / std::max<int64_t>(in_, 1);
  const Tensor x2 = x.reshape({rows, in_});
  Tensor y = Tensor::empty({rows, out_});
  int64_t off = 0;
  for (const Part& p : parts_) {
    Tensor b;
    if (bias != nullptr) b = bias->slice0(off, p.rows);
    Tensor yp;
    if (p.quantized) {
      absl::StatusOr<Tensor> r = p.quantized->forward(x2, bias != nullptr ? &b : nullptr);
      if (!r.ok()) return r.status();
      yp = *std::move(r);
    } else {
      yp = ops::linear(x2, p.dense, bias != nullptr ? &b : nullptr);
    }
    const float* src = yp.data<float>();
    float* dst = y.data<float>() + off;
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(dst + r * out_, src + r * p.rows, static_cast<size_t>(p.rows) * sizeof(float));
    }
    off += p.rows;
  }
  Shape shape = x.shape();
  shape.back() = out_;
  return y.reshape(shape);
}

Tensor PartwiseLinearWeight::dequantize() const {
  Tensor w = Tensor::empty({out_, in_});
  char* dst = static_cast<char*>(w.raw());
  for (const Part& p : parts_) {
    Tensor part = p.quantized ? p.quantized->dequantize() : *p.dense.as_f32();
    FLUX_CHECK(part.numel() == p.rows * in_);
    std::memcpy(dst, part.raw(), part.nbytes());
    dst += part.nbytes();
  }
  return w;
}

int64_t PartwiseLinearWeight::nbytes() const {
  int64_t n = 0;
  for (const Part& p : parts_) {
    n += p.quantized ? p.quantized->nbytes() : static_cast<int64_t>(p.dense.nbytes());
  }
  return n;
}

std::string PartwiseLinearWeight::format() const {
  for (const Part& p : parts_) {
    if (p.quantized) return p.quantized->format();
  }
  return dtype_name(parts_.empty() ? DType::kF32 : parts_[0].dense.dtype());
}

}  // namespace fluxserve
