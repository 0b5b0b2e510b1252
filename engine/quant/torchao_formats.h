// torchao quantization formats on the CPU: quantize a Linear weight [N, K] exactly as torchao's
// primitives do (diffusers TorchAoConfig quant types), dequantize it, and run the quantized linear
// (weight-only: dequantized GEMM; dynamic: activations quantized per call, integer or fp8 matmul).
// Weights are kept in a simple unpacked layout, not torchao's packed tensor-subclass layouts; see
// QuantizedWeight. Element math lives in kernels/common/torchao_decode.h.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/core/tensor.h"

namespace fluxserve::torchao {

enum class Format : uint8_t {
  kInt8WeightOnly,   // int8wo: Int8WeightOnlyConfig (PerRow, symmetric, scale = amax/127.5)
  kInt8DynAct,       // int8dq: Int8DynamicActivationInt8WeightConfig (per-token symmetric acts)
  kInt4WeightOnly,   // int4wo: Int4WeightOnlyConfig math (tinygemm, float zero point, groups)
  kInt4DynAct,       // int4dq: DA8W4 (asymmetric uint4 weight groups, per-token int8 acts)
  kFloat8WeightOnly, // float8wo[_e5m2|_e4m3]: Float8WeightOnlyConfig (per-row scale)
  kFloat8DynAct,     // float8dq[_e4m3[_tensor|_row]]: Float8DynamicActivationFloat8WeightConfig
  kFpxWeightOnly,    // fpX_eAwB: FP6-LLM style floats, per-row scale
  kUintxWeightOnly,  // uintXwo: asymmetric integer-zero-point groups, X = 1..8
};

struct FormatSpec {
  Format format = Format::kInt8WeightOnly;
  int64_t group_size = 0;       // int4wo (128), int4dq (32), uintXwo (64); 0 elsewhere (per row)
  int bits = 8;                 // uintX: X; fpX: X
  int ebits = 0, mbits = 0;     // fpX_eAwB: A, B
  DType fp8 = DType::kF8E4M3FN; // float8 element type (float8wo: e5m2 when spelled "float8wo")
  bool per_row = false;         // float8dq: PerRow (weight [N,1], activation [M,1]) vs PerTensor
  bool act_symmetric = false;   // int4dq activations: uint8 asymmetric (torchao default) or int8 [-127,127]
  std::string name;             // canonical quant_type string, for messages
};

// Parses a diffusers TorchAoConfig quant_type shorthand ("int8wo", "int4wo", "float8dq_e4m3_row",
// "fp6_e3m2", "uint4wo", ...). `group_size` > 0 overrides the format's default group size
// (int4wo, int4dq, uintXwo; an error elsewhere). InvalidArgument names the value at fault.
absl::StatusOr<FormatSpec> parse_quant_type(std::string_view quant_type, int64_t group_size = 0);

// Unpacked storage (row-major, N rows):
//   qdata       [N, K]: kI8 (int8wo/int8dq: q in [-128,127]), kU8 (int4wo: q_u in [0,15];
//               int4dq: [0,15]; uintX: [0, 2^X-1]; fpX: code in the low X bits),
//               kF8E4M3FN / kF8E5M2 (float8 formats).
//   scale       f32 [N, G] with G = K / group_size (1 when per row), or [1, 1] for float8dq
//               per-tensor. Values are torchao's exactly, including bf16 rounding where torchao
//               keeps scales in the weight dtype (int4wo, uintX, fpX with a bf16 weight).
//   zero_point  int4wo: f32 [N, G] float-domain zero (w = (q_u - 8)·scale + zero);
//               int4dq / uintX: kI32 [N, G] integer zero (w = (q - zp)·scale); else undefined.
struct QuantizedWeight {
  FormatSpec spec;
  DType weight_dtype = DType::kF32;  // dtype of the weight that was quantized (f32 or bf16)
  Tensor qdata;
  Tensor scale;
  Tensor zero_point;
  int64_t out_features() const { return qdata.size(0); }
  int64_t in_features() const { return qdata.size(1); }
};

// Quantizes w [N, K] (f32 or bf16) as torchao does for `spec`. InvalidArgument when K is not a
// multiple of the group size, the dtype is unsupported, or the shape is not 2-D.
absl::StatusOr<QuantizedWeight> quantize_weight(const Tensor& w, const FormatSpec& spec);

// torchao's dequantize(output_dtype = weight dtype), returned as f32 [N, K] (bf16-rounded values
// when the weight was bf16).
Tensor dequantize_weight(const QuantizedWeight& q);
// Rows [r0, r0 + rows) of the same, into dst [rows, K] (the panels of quantized_linear).
void dequantize_rows(const QuantizedWeight& q, int64_t r0, int64_t rows, float* dst);

// A dynamically quantized activation [M, K]: per-token (or per-tensor) scale [M,1] / [1,1] f32,
// qdata kI8 / kU8 / f8, zero_point kI32 [M,1] for asymmetric int4dq activations.
struct QuantizedActivation {
  Tensor qdata;
  Tensor scale;
  Tensor zero_point;
};

// The activation quantization a dynamic format applies to x [M, K] (f32) on every call.
// FailedPrecondition for weight-only formats.
absl::StatusOr<QuantizedActivation> quantize_activation(const Tensor& x, const FormatSpec& spec);

// y = x · Wᵀ + bias for x [..., K] f32 (torchao_linear.cc); weight-only formats dequantize then
// GEMM, panel by panel (scales applied to the GEMM's output where torchao does); dynamic ones
// quantize x per call: int8dq accumulates exactly in int32, int4dq multiplies the integer
// activations with the dequantized weight in f32 (torchao's dequantize-then-matmul), float8dq
// sums products of fp8 values in f32.
absl::StatusOr<Tensor> quantized_linear(const Tensor& x, const QuantizedWeight& w,
                                        const Tensor* bias = nullptr);

}  // namespace fluxserve::torchao
