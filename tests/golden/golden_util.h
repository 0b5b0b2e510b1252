// Helpers for comparing our tensors with the fixtures written by tools/golden (diffusers).
#pragma once

#include <cmath>
#include <string>

#include "engine/core/tensor.h"

namespace fluxserve::testing {

inline std::string fixture(const std::string& rel) { return std::string(FLUXSERVE_FIXTURES) + "/" + rel; }

// ||ours - ref|| / ||ref|| over all elements (both converted to f32), in double.
inline double rel_error(const Tensor& ours, const Tensor& ref) {
  Tensor a = *ours.as_f32(), b = *ref.as_f32();
  double num = 0, den = 0;
  for (int64_t i = 0; i < b.numel(); ++i) {
    const double d = static_cast<double>(a.data<float>()[i]) - b.data<float>()[i];
    num += d * d;
    den += static_cast<double>(b.data<float>()[i]) * b.data<float>()[i];
  }
  return std::sqrt(num) / std::sqrt(den);
}

}  // namespace fluxserve::testing
