// bitsandbytes weight formats: 4-bit NF4/FP4 (Linear4bit / Params4bit, optional double quant) and
// 8-bit LLM.int8 (Linear8bitLt / Int8Params). Quantizers that reproduce bitsandbytes 0.50.2's CPU
// path bit for bit, the state-dict layout diffusers/transformers save (and its validation), the
// dequantizers, and the CPU reference linears (4-bit: dequantize a tile, then sgemm; 8-bit: bnb's
// mixed int8 matmul with outlier columns). Decode math lives in kernels/common/bnb_decode.h.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/core/tensor.h"
#include "kernels/common/bnb_decode.h"

namespace fluxserve {

using bnb::Quant4;

const char* quant4_name(Quant4 t);  // "nf4" / "fp4"

// One 4-bit weight with its QuantState (bitsandbytes.functional.QuantState).
struct Bnb4Weight {
  Quant4 quant_type = Quant4::kNF4;
  int64_t blocksize = 64;
  DType dtype = DType::kF32;  // dtype of the original weight = dequantized output dtype
  Shape shape;                // logical shape, [N, K] for a Linear
  Tensor packed;              // U8 [(numel+1)/2, 1]; earlier element in the high nibble
  Tensor absmax;              // F32 [nblocks], or U8 [nblocks] (8-bit codes) when nested
  Tensor quant_map;           // F32 [16] (informational; decode uses bnb_decode.h tables)
  bool nested = false;
  Tensor nested_absmax;     // F32 [ceil(nblocks / nested_blocksize)]
  Tensor nested_quant_map;  // F32 [256], the dynamic map
  int64_t nested_blocksize = 256;
  float nested_offset = 0.0f;  // mean of the first-level absmax
  DType nested_dtype = DType::kF32;

  int64_t numel() const { return shape_numel(shape); }
  int64_t num_blocks() const { return (numel() + blocksize - 1) / blocksize; }
};

struct Bnb4Options {
  Quant4 quant_type = Quant4::kNF4;
  int64_t blocksize = 64;     // 32 ... 4096, a power of two
  bool double_quant = false;  // bnb_4bit_use_double_quant / compress_statistics
};

// bitsandbytes.functional.quantize_4bit on the CPU: `w` is f32, bf16 or f16 of any shape (the
// dtype is recorded for dequantization). Blockwise absmax over the row-major flattening;
// elements map to codes by bnb's midpoint buckets (a value exactly on a midpoint takes the lower
// code); with double_quant the absmax are quantized as bnb does (offset = torch's float32 mean,
// then 8-bit blockwise with blocksize 256 and the dynamic map).
absl::StatusOr<Bnb4Weight> bnb4_quantize(const Tensor& w, const Bnb4Options& opt = {});

// First-level per-block scales as f32 (de-nested when needed): [num_blocks].
Tensor bnb4_block_scales(const Bnb4Weight& w);
// Dequantized weight as float32 values (bnb's f32 products, before any cast), shape w.shape.
Tensor bnb4_dequantize(const Bnb4Weight& w);
// The same rounded to the weight's recorded dtype, as bnb's dequantize_4bit returns it.
Tensor bnb4_dequantize_as_dtype(const Bnb4Weight& w);

// Checks internal consistency (tensor dtypes and sizes against shape/blocksize); `what` names the
// weight in messages. Loaders call it; quantize() output always passes.
absl::Status bnb4_validate(const Bnb4Weight& w, std::string_view what);

// ---- serialization (Linear4bit._save_to_state_dict + QuantState.as_dict(packed=True)) ------

// The JSON held by `<prefix>.weight.quant_state.bitsandbytes__<type>`, byte for byte as Python's
// json.dumps writes it: quant_type, blocksize, dtype, shape[, nested_blocksize, nested_dtype,
// nested_offset].
std::string bnb4_state_json(const Bnb4Weight& w);
// Parses that JSON into the non-tensor fields of `w` (tensors untouched). `what` names the key.
absl::Status bnb4_parse_state_json(std::string_view json, Bnb4Weight* w, std::string_view what);

// Tensors under `prefix` ("transformer_blocks.0.attn.to_q"): prefix.weight, .weight.absmax,
// .weight.quant_map[, .weight.nested_absmax, .weight.nested_quant_map],
// .weight.quant_state.bitsandbytes__nf4|fp4 (U8 JSON bytes). No bias.
std::vector<std::pair<std::string, Tensor>> bnb4_state_dict(const std::string& prefix,
                                                            const Bnb4Weight& w);

// Looks a key up; NotFound when absent (WeightStore::get and SafetensorsFile::get fit).
using TensorGetter = std::function<absl::StatusOr<Tensor>(const std::string& key)>;
using KeyChecker = std::function<bool(const std::string& key)>;

// Reads a 4-bit weight saved under `prefix` (diffusers' create_quantized_param rules): exactly
// one quant_state blob, the keys it implies present, dtypes and sizes consistent with its shape.
absl::StatusOr<Bnb4Weight> bnb4_load(const std::string& prefix, const KeyChecker& has,
                                     const TensorGetter& get);

// ---- LLM.int8 ---------------------------------------------------------------------------

struct Bnb8Weight {
  Tensor cb;   // I8 [N, K] row-major
  Tensor scb;  // F32 [N], row absmax (not divided by 127)
  int64_t out_features() const { return cb.size(0); }
  int64_t in_features() const { return cb.size(1); }
};

// Int8Params._quantize: cast to float16, then per-row absmax and round(w * (127 / absmax)).
absl::StatusOr<Bnb8Weight> bnb8_quantize(const Tensor& w);
// CB * SCB / 127 as bnb's int8_vectorwise_dequant computes it, f32 [N, K].
Tensor bnb8_dequantize(const Bnb8Weight& w);

// prefix.weight (I8), prefix.SCB (F32), prefix.weight_format (U8 scalar, 0 = row).
std::vector<std::pair<std::string, Tensor>> bnb8_state_dict(const std::string& prefix,
                                                            const Bnb8Weight& w);
absl::StatusOr<Bnb8Weight> bnb8_load(const std::string& prefix, const KeyChecker& has,
                                     const TensorGetter& get);

// bnb's int8_vectorwise_quant on x [M, K] (f32, cast to float16 first as MatMul8bitLt does).
// threshold > 0: elements with |x| >= threshold are held out of the row absmax and quantized as
// 0, and their columns are listed (and zeroed in every row when M > 1).
struct Int8RowQuant {
  std::vector<int8_t> q;              // [M, K]
  std::vector<float> row_absmax;      // [M]
  std::vector<int64_t> outlier_cols;  // ascending
};
Int8RowQuant int8_vectorwise_quant(const Tensor& x, float threshold);

// ---- CPU linears (x: [..., K] f32 -> [..., N] f32), in bnb_gemm.cc ---------------------------

// Dequantizes panels of weight rows to f32 and multiplies with sgemm (bnb's gemm_4bit default
// path: dequantize_4bit to the activation dtype, then F.linear); OpenMP over panels.
Tensor bnb4_linear(const Tensor& x, const Bnb4Weight& w, const Tensor* bias);
// MatMul8bitLt forward: int8 x int8 -> int32 for the inlier columns, scaled by
// row_absmax * SCB * 6.200124e-05 (bnb's constant), plus bias, plus the outlier columns in f32
// against dequantized weight columns. threshold 0 = pure int8. The int32 accumulator is exact
// on both internal paths (chunked sgemm from 16 rows on, int8 dot products below).
Tensor bnb8_linear(const Tensor& x, const Bnb8Weight& w, const Tensor* bias,
                   float threshold = 6.0f);

// torch.mean of a contiguous float32 vector as ATen's CPU cascade sum computes it single-threaded
// with `lanes`-wide vectors (8: torch 2.15 reduces float32 with 256-bit vectors even on AVX-512
// CPUs), then one f32 division. Exposed for
// tests; bnb4_quantize uses it for the double-quant offset.
float torch_mean_f32(const float* x, int64_t n, int lanes = 8);

}  // namespace fluxserve
