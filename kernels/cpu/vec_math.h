// Branch-free exp and tanh that compilers vectorize inside `#pragma omp simd` loops (libm's expf
// does not vectorize without -ffast-math). Cephes-style range reduction and polynomial: relative
// error about 2 ulp over the float range; inputs below -87.3 give 0.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace fluxserve::cpu {

#pragma omp declare simd
inline float vexp(float x) {
  // Plain compares, not std::fmin/fmax: those are libm calls (NaN rules) that block vectorizing.
  float xc = x < -87.3f ? -87.3f : x;
  xc = xc > 88.3f ? 88.3f : xc;
  // n = round(x / ln 2) by the 1.5 * 2^23 trick: std::floor would be a scalar libm call.
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &e, sizeof(scale));
  return x < -87.3f ? 0.0f : y * scale;
}

#pragma omp declare simd
inline float vtanh(float x) {
  float xc = x < -44.0f ? -44.0f : x;
  xc = xc > 44.0f ? 44.0f : xc;
  const float e = vexp(2.0f * xc);
  return 1.0f - 2.0f / (e + 1.0f);
}

}  // namespace fluxserve::cpu
