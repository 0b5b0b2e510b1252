// A stacked Linear (q|k|v, T5's wi_0|wi_1) quantized part by part, as upstream quantizes the
// separate nn.Linear modules: per-part codes and scales (bitsandbytes double quant and per-tensor
// float8 scales depend on the whole tensor, so quantizing the stack as one would differ), and a
// part a skip list exempts stays dense. Quantize-on-load (ComponentQuantizer) and pre-quantized
// checkpoints (stack_linears over the loaded parts) both build it. The forward runs each part
// and interleaves the columns.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/quant/quantized_linear.h"

namespace fluxserve {

class PartwiseLinearWeight final : public QuantizedLinearWeight {
 public:
  struct Part {
    int64_t rows = 0;                                   // out features of this part
    std::shared_ptr<const QuantizedLinearWeight> quantized;  // or, when null:
    Tensor dense;  // [rows, K], stored dtype: its own copy, or a view of the mapped checkpoint
  };
  PartwiseLinearWeight(std::vector<Part> parts, int64_t in_features);

  absl::StatusOr<Tensor> forward(const Tensor& x, const Tensor* bias) const override;
  Tensor dequantize() const override;
  int64_t nbytes() const override;
  std::string format() const override;  // the quantized parts' format
  const std::vector<Part>& parts() const { return parts_; }

 private:
  std::vector<Part> parts_;
  int64_t in_ = 0, out_ = 0;
};

}  // namespace fluxserve
