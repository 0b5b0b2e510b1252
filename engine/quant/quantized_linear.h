// A Linear layer's weight held in one of the quantized formats (bitsandbytes 4-bit / LLM.int8,
// torchao-style), with its CPU forward. Models swap a Linear's weight for one of these after
// loading when the component's quantization config asks for it (quantize-on-load).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/core/tensor.h"
#include "engine/quant/quant_config.h"

namespace fluxserve {

class QuantizedLinearWeight {
 public:
  virtual ~QuantizedLinearWeight() = default;
  // x: [..., K] f32 -> [..., N] f32, plus `bias` [N] when given.
  virtual absl::StatusOr<Tensor> forward(const Tensor& x, const Tensor* bias) const = 0;
  virtual Tensor dequantize() const = 0;  // [N, K] f32
  virtual int64_t nbytes() const = 0;     // bytes held (codes + scales + states)
  virtual std::string format() const = 0; // e.g. "bitsandbytes nf4 (double quant)"
};

// Quantizes `w` [N, K] (any float dtype) as `cfg` says. Null (layer stays unquantized) where
// upstream skips the layer: torchao group formats whose group size does not divide K. gguf
// weights come from .gguf files, not from quantize-on-load: Unimplemented. Errors name `module`.
absl::StatusOr<std::shared_ptr<const QuantizedLinearWeight>> quantize_linear_weight(
    const Tensor& w, const ComponentQuantConfig& cfg, const std::string& module);


}  // namespace fluxserve
