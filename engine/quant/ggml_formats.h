// ggml tensor formats on the CPU: whole-tensor dequantization to f32 (the per-block math lives in
// kernels/common/ggml_decode.h, shared with CUDA) and the reference quantizers of the simple
// formats (ggml-quants.c quantize_row_{q8_0,q4_0,q4_1,q5_0,q5_1}_ref, bit-exact), so weights can be
// quantized on load to GGUF types. K-quant quantizers are not implemented (dequantization is).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/core/tensor.h"
#include "engine/io/gguf.h"
#include "kernels/common/ggml_decode.h"

namespace fluxserve {

// Bytes of `n` elements of `type`; InvalidArgument when the type is unknown or `n` is not a whole
// number of blocks, or the size overflows.
absl::StatusOr<uint64_t> ggml_nbytes(GgmlType type, int64_t n);

// Dequantizes `n` elements (a whole number of blocks) from `src` (`src_bytes` bytes, which must be
// exactly ggml_nbytes(type, n)) into `dst`. Blocks run in parallel (OpenMP).
absl::Status ggml_dequantize(GgmlType type, const uint8_t* src, size_t src_bytes, int64_t n,
                             float* dst);

// A GGUF tensor dequantized to an f32 tensor of its torch shape.
absl::StatusOr<Tensor> ggml_dequantize(const GgufTensorView& t);

// True for the types ggml_quantize supports: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1.
bool ggml_can_quantize(GgmlType type);

// Quantizes `n` f32 values (a whole number of blocks) to `type` into `dst` (`dst_bytes` must be
// ggml_nbytes(type, n)), as ggml's reference quantize_row_*_ref / fp32-to-fp16/bf16 conversions.
absl::Status ggml_quantize(GgmlType type, const float* src, int64_t n, uint8_t* dst,
                           size_t dst_bytes);
// Convenience: the packed bytes in a new vector.
absl::StatusOr<std::vector<uint8_t>> ggml_quantize(GgmlType type, const float* src, int64_t n);

// Per-block reference quantizers (32 values in, one block out).
void quantize_block_q8_0(const float* x, uint8_t* out);
void quantize_block_q4_0(const float* x, uint8_t* out);
void quantize_block_q4_1(const float* x, uint8_t* out);
void quantize_block_q5_0(const float* x, uint8_t* out);
void quantize_block_q5_1(const float* x, uint8_t* out);

}  // namespace fluxserve
