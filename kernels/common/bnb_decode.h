// bitsandbytes 4-bit (NF4 / FP4) decode math, shared by the CPU reference and the CUDA kernels.
// Values are the exact float32 numbers of bitsandbytes.functional.get_4bit_type (0.50.2); the
// packed layout is two codes per byte with the EARLIER element (even flat index) in the HIGH
// nibble (`byte = q[2i] << 4 | q[2i+1]`, backends/default/ops.py and csrc/cpu_ops.cpp agree).
// Dequantization is one f32 product `code[q] * absmax[block]`, as bnb computes it before any
// cast to the output dtype.
#pragma once

#include <cstdint>

#include "kernels/common/dtype_math.h"

namespace fluxserve::bnb {

enum class Quant4 : uint8_t { kNF4 = 0, kFP4 = 1 };

// NF4: index order is value order (create_normal_map(offset=0.9677083, use_extra_value=True)).
FLUX_HD float nf4_value(uint32_t q) {
  const float kNF4[16] = {-1.0f,
                          -0.6961928009986877f,
                          -0.5250730514526367f,
                          -0.39491748809814453f,
                          -0.28444138169288635f,
                          -0.18477343022823334f,
                          -0.09105003625154495f,
                          0.0f,
                          0.07958029955625534f,
                          0.16093020141124725f,
                          0.24611230194568634f,
                          0.33791524171829224f,
                          0.44070982933044434f,
                          0.5626170039176941f,
                          0.7229568362236023f,
                          1.0f};
  return kNF4[q & 15u];
}

// FP4 (e2m1, bias 2, no inf/nan) in bit-pattern order: bit 3 is the sign, bits 2..0 index the
// magnitudes {0, 0.0625, 8, 12, 4, 6, 2, 3}, all divided by 12 in float32. Code 8 is +0.0
// (get_4bit_type builds it from the integer -0), as stored in quant_map.
FLUX_HD float fp4_value(uint32_t q) {
  const float kMag[8] = {0.0f,           0x1.555556p-8f, 0x1.555556p-1f, 1.0f,
                         0x1.555556p-2f, 0.5f,           0x1.555556p-3f, 0.25f};
  const float m = kMag[q & 7u];
  return (q & 8u) != 0 && m != 0.0f ? -m : m;
}

FLUX_HD float code4_value(Quant4 type, uint32_t q) {
  return type == Quant4::kNF4 ? nf4_value(q) : fp4_value(q);
}

// The 4-bit code of flat element i in a packed buffer.
FLUX_HD uint32_t nibble_at(const uint8_t* packed, int64_t i) {
  const uint32_t byte = packed[i >> 1];
  return (i & 1) != 0 ? (byte & 15u) : (byte >> 4);
}

// Flat element i of a 4-bit weight: code value times its block's (already de-nested) absmax.
FLUX_HD float dequant4(Quant4 type, const uint8_t* packed, int64_t i, float block_absmax) {
  return code4_value(type, nibble_at(packed, i)) * block_absmax;
}

// Double quantization: first-level scale of block b from its 8-bit code, the nested absmax of
// its group of `nested_blocksize` scales, and the offset (mean of the original scales).
FLUX_HD float nested_scale(const uint8_t* qabsmax, const float* nested_code,
                           const float* nested_absmax, int64_t b, int64_t nested_blocksize,
                           float offset) {
  return nested_code[qabsmax[b]] * nested_absmax[b / nested_blocksize] + offset;
}

}  // namespace fluxserve::bnb
