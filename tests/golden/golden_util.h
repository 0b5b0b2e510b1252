// Helpers for comparing our tensors with the fixtures written by tools/golden (diffusers).
#pragma once

#include <cmath>
#include <string>

#include "engine/core/tensor.h"
#include "engine/io/safetensors.h"
#include "engine/models/flux_transformer.h"

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

// The FluxTransformer2DModel forward inputs a golden generator saved (guidance when present).
inline FluxTransformerInputs transformer_inputs(const SafetensorsFile& f) {
  FluxTransformerInputs in;
  in.hidden_states = *f.get("hidden_states");
  in.encoder_hidden_states = *f.get("encoder_hidden_states");
  in.pooled_projections = *f.get("pooled_projections");
  in.timestep = *f.get("timestep");
  in.img_ids = *f.get("img_ids");
  in.txt_ids = *f.get("txt_ids");
  if (f.find("guidance")) in.guidance = *f.get("guidance");
  return in;
}

}  // namespace fluxserve::testing
