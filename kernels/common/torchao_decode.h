// Element math of torchao's quantization formats, shared by the CPU quantizer
// (engine/quant/torchao_formats) and future CUDA kernels: affine int codes and the sub-byte
// floats of fpX_eAwB. Ported from torchao 0.18 (quant_primitives.py, prototype/custom_fp_utils.py)
// operation by operation, so codes and dequantized values match torchao bit for bit.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/common/dtype_math.h"

namespace fluxserve::taomath {

// Rounds an f32 result to bf16 and back when the reference computes in bf16 (torch rounds every
// elementwise op's f32 result to the tensor dtype).
FLUX_HD float round_to(float v, bool bf16) {
  return bf16 ? dmath::bf16_to_f32(dmath::f32_to_bf16(v)) : v;
}

// torch.round: half to even.
FLUX_HD float round_half_even(float v) { return rintf(v); }

// Integer-domain affine code: clamp(round(x * (1/scale)) + zero_point, qmin, qmax), the multiply
// by the reciprocal exactly as torchao's _quantize_affine_no_dtype_cast does (in f32).
FLUX_HD int32_t affine_code(float x, float inv_scale, int32_t zero_point, int32_t qmin, int32_t qmax) {
  float q = round_half_even(x * inv_scale) + static_cast<float>(zero_point);
  q = q < static_cast<float>(qmin) ? static_cast<float>(qmin) : q;
  q = q > static_cast<float>(qmax) ? static_cast<float>(qmax) : q;
  return static_cast<int32_t>(q);
}

// fpX_eAwB (1 sign, A exponent, B mantissa bits; no inf/NaN, saturating), code in the low
// 1+A+B bits. Bias 2^(A-1)-1; max normal 2^(2^A-1-bias) * (2^(B+1)-1)/2^B.
FLUX_HD float fpx_max_normal(int ebits, int mbits) {
  const int bias = (1 << (ebits - 1)) - 1;
  return ldexpf(static_cast<float>((1 << (mbits + 1)) - 1) / static_cast<float>(1 << mbits),
                ((1 << ebits) - 1) - bias);
}

// Round-to-nearest-even f32 -> fpX (torchao _f32_to_floatx_unpacked, bit manipulations kept).
FLUX_HD uint8_t f32_to_fpx(float f, int ebits, int mbits) {
  const int bias = (1 << (ebits - 1)) - 1;
  const uint32_t max_int = (1u << (ebits + mbits)) - 1u;
  const float max_normal = fpx_max_normal(ebits, mbits);
  const float min_normal = ldexpf(1.0f, 1 - bias);
  const uint32_t u = dmath::f32_bits(f);
  const uint32_t sign = u & 0x80000000u;
  const float x = dmath::bits_f32(u ^ sign);
  uint32_t code;
  if (x >= max_normal) {
    code = max_int;
  } else if (x < min_normal) {
    // Adding 2^(denorm_exp - 127) aligns the subnormal grid with the f32 mantissa lsb; the f32
    // add rounds half to even.
    const uint32_t denorm_exp = static_cast<uint32_t>((127 - bias) + (23 - mbits) + 1);
    const uint32_t mask_int = denorm_exp << 23;
    code = (dmath::f32_bits(x + dmath::bits_f32(mask_int)) - mask_int) & 0xffu;
  } else {
    uint32_t n = dmath::f32_bits(x);
    const uint32_t mant_odd = (n >> (23 - mbits)) & 1u;
    n += static_cast<uint32_t>(static_cast<int32_t>(bias - 127) * (1 << 23)) +
         ((1u << (23 - mbits - 1)) - 1u);
    n += mant_odd;
    code = (n >> (23 - mbits)) & 0xffu;
  }
  const uint32_t sign_lp = (sign >> (31 - ebits - mbits)) & (1u << (ebits + mbits));
  return static_cast<uint8_t>(code | sign_lp);
}

FLUX_HD float fpx_to_f32(uint8_t code, int ebits, int mbits) {
  const int bias = (1 << (ebits - 1)) - 1;
  const uint32_t sign_mask = 1u << (ebits + mbits);
  const uint32_t pos = code & (sign_mask - 1u);
  const uint32_t exp = pos >> mbits;
  const uint32_t man = pos & ((1u << mbits) - 1u);
  float v;
  if (pos == 0) {
    v = 0.0f;
  } else if (exp == 0) {
    v = ldexpf(static_cast<float>(man), 1 - bias - mbits);  // subnormal: man * 2^(1-bias-B)
  } else {
    v = dmath::bits_f32((exp - bias + 127u) << 23 | man << (23 - mbits));
  }
  return (code & sign_mask) ? -v : v;
}

}  // namespace fluxserve::taomath
