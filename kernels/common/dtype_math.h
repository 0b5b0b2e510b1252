// Scalar conversions between f32 and the storage dtypes (bf16, f16, f8 e4m3fn, f8 e5m2).
// Shared by the CPU ops and (later) the CUDA kernels, so decode math lives in exactly one place.
// Rounding follows torch: round-to-nearest-even; f8 e4m3fn saturates to NaN-free max only when
// the caller clamps first (torch's .to(float8_e4m3fn) maps out-of-range values to NaN).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define FLUX_HD __host__ __device__ __forceinline__
#else
#define FLUX_HD inline
#endif

namespace fluxserve::dmath {

FLUX_HD uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
FLUX_HD float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

FLUX_HD float bf16_to_f32(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }

FLUX_HD uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

FLUX_HD float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  if (exp == 0) {
    if (man == 0) return bits_f32(sign);
    // Subnormal: value = man * 2^-24.
    float v = static_cast<float>(man) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  if (exp == 31) return bits_f32(sign | 0x7f800000u | (man << 13));
  return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

FLUX_HD uint16_t f32_to_f16(float f) {
  uint32_t u = f32_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (u >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (u < 0x38800000u) {
    // Result is subnormal or zero in f16: value / 2^-24 rounded to nearest even.
    if (u < 0x33000000u) return sign;  // < 2^-25 rounds to zero
    const uint32_t exp = u >> 23;
    const uint32_t man = (u & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - exp;  // bits to drop so that the lsb is 2^-24
    uint32_t r = man >> shift;
    const uint32_t rem = man & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return static_cast<uint16_t>(sign | r);
  }
  u += 0x0fffu + ((u >> 13) & 1u);
  return static_cast<uint16_t>(sign | ((u - 0x38000000u) >> 13));
}

// float8 e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa; no inf; S.1111.111 is NaN; max 448.
FLUX_HD float f8e4m3fn_to_f32(uint8_t v) {
  const uint32_t sign = static_cast<uint32_t>(v & 0x80u) << 24;
  const uint32_t exp = (v >> 3) & 0xfu;
  const uint32_t man = v & 0x7u;
  if (exp == 0xfu && man == 0x7u) return bits_f32(sign | 0x7fc00000u);
  if (exp == 0) {
    float r = static_cast<float>(man) * 0.001953125f;  // man * 2^-9
    return sign ? -r : r;
  }
  return bits_f32(sign | ((exp + 120u) << 23) | (man << 20));
}

// float8 e5m2: 1 sign, 5 exponent (bias 15), 2 mantissa; IEEE-like with inf and NaN.
FLUX_HD float f8e5m2_to_f32(uint8_t v) { return f16_to_f32(static_cast<uint16_t>(v) << 8); }

// Round-to-nearest-even f32 -> e4m3fn, as torch's c10::Float8_e4m3fn conversion does: values whose
// magnitude rounds above 448 become NaN (0x7f / 0xff).
FLUX_HD uint8_t f32_to_f8e4m3fn(float f) {
  uint32_t u = f32_bits(f);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  u &= 0x7fffffffu;
  if (u >= 0x43f00000u) return static_cast<uint8_t>(sign | 0x7fu);  // >= 480 (and NaN/inf) -> NaN
  if (u < 0x3c800000u) {
    // Below the smallest normal (2^-6): subnormal grid of 2^-9, via an exact float add.
    const float a = bits_f32(u) * 512.0f;  // in units of 2^-9, < 8
    // Round half to even on the integer grid.
    uint32_t r = static_cast<uint32_t>(a);
    const float rem = a - static_cast<float>(r);
    if (rem > 0.5f || (rem == 0.5f && (r & 1u))) ++r;
    return static_cast<uint8_t>(sign | r);  // r == 8 becomes the smallest normal, still correct
  }
  const uint32_t mant_odd = (u >> 20) & 1u;
  u += ((7u - 127u) << 23) + 0x7ffffu + mant_odd;
  return static_cast<uint8_t>(sign | (u >> 20));
}

FLUX_HD uint8_t f32_to_f8e5m2(float f) {
  // Round f32 -> f16 -> e5m2 directly from f32 bits to avoid double rounding.
  uint32_t u = f32_bits(f);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return static_cast<uint8_t>(sign | 0x7fu);
  if (u >= 0x47700000u) return static_cast<uint8_t>(sign | 0x7cu);  // >= 61440: inf
  if (u < 0x38800000u) {
    // Subnormal in e5m2: grid 2^-16.
    const float a = bits_f32(u) * 65536.0f;
    uint32_t r = static_cast<uint32_t>(a);
    const float rem = a - static_cast<float>(r);
    if (rem > 0.5f || (rem == 0.5f && (r & 1u))) ++r;
    return static_cast<uint8_t>(sign | r);
  }
  const uint32_t mant_odd = (u >> 21) & 1u;
  u += ((15u - 127u) << 23) + 0xfffffu + mant_odd;
  return static_cast<uint8_t>(sign | (u >> 21));
}

}  // namespace fluxserve::dmath
