// Fast CPU forwards for bitsandbytes Linear weights, called by bnb4_linear / bnb8_linear
// (bnb_formats.cc) with the same results: 4-bit weights are decoded panel by panel (16-entry code
// table times the block absmax, the exact f32 products of bnb's dequantize) into per-thread
// buffers and multiplied with sgemm; LLM.int8's int32 product runs as exact chunked sgemm.
#pragma once

#include "engine/core/tensor.h"
#include "engine/quant/bnb_formats.h"

namespace fluxserve {

// bnb4_linear for a weight with an even in_features (rows start on a byte): x [M, K] f32,
// y [M, N] = bias + x · dequantize(w)ᵀ (f32 dequantized values, no rounding to w.dtype).
Tensor bnb4_linear_panels(const Tensor& x, const Bnb4Weight& w, const Tensor* bias);

// bnb8_linear's MatMul8bitLt for larger M: the same int32 accumulator (exact), scaling, bias and
// outlier columns.
Tensor bnb8_linear_int_gemm(const Tensor& x, const Bnb8Weight& w, const Tensor* bias,
                            float threshold);

// int8_vectorwise_quant's exact result, computed in parallel over rows with vector float16
// rounding (the serial original stays the reference it is tested against).
Int8RowQuant int8_vectorwise_quant_parallel(const Tensor& x, float threshold);

}  // namespace fluxserve
