// A Linear weight kept in its ggml blocks (as loaded from a GGUF file), with diffusers' GGUFLinear
// numerics: forward = dequantize, then an f32 GEMM (GGUFLinear.forward_native dequantizes the whole
// weight and calls F.linear). The CPU forward never materializes the whole f32 weight: it decodes
// panels of rows into a per-thread buffer reused across all M rows of the input and multiplies
// each panel with sgemm (OpenMP over panels).
//
// Dequantization follows diffusers' torch port (quantizers/gguf/utils.py dequantize_blocks_*),
// not ggml's: diffusers computes the block math in float16 (the fp16 scale times the integer codes,
// each torch op rounded to fp16) and only then casts to the compute dtype. That differs from
// ggml/gguf-py (f32 math, see ggml_formats.h) by up to half an fp16 ulp per weight, which is above
// the 1e-4 parity budget, so the model path reproduces diffusers' rounding op by op.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/io/gguf.h"
#include "engine/quant/quantized_linear.h"

namespace fluxserve {

// The types a GGUF Linear weight may have (diffusers' SUPPORTED_GGUF_QUANT_TYPES that fluxserve
// decodes): F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.
bool ggml_linear_supports(GgmlType type);

// Dequantizes `n` elements (whole blocks) of `type` from `src` exactly as diffusers'
// dequantize_gguf_tensor(...).to(torch.float32) does. InvalidArgument for an unsupported type or a
// partial block.
absl::Status ggml_dequantize_diffusers(GgmlType type, const uint8_t* src, int64_t n, float* dst);

// A weight [n, k] of `type` whose rows are `data` (n × row bytes, ggml layout). `owner` keeps the
// bytes alive (the mmapped GgufFile, or a buffer). InvalidArgument when k is not a whole number of
// blocks or `nbytes` does not match.
absl::StatusOr<std::shared_ptr<const QuantizedLinearWeight>> make_ggml_linear(
    GgmlType type, int64_t n, int64_t k, const uint8_t* data, uint64_t nbytes,
    std::shared_ptr<const void> owner);

}  // namespace fluxserve
