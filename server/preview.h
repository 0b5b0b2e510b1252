// Step previews without the VAE: FLUX's 16 latent channels projected to RGB with the linear
// factors ComfyUI fits for previews (comfy/latent_formats.py, class Flux: latent_rgb_factors and
// latent_rgb_factors_bias), one pixel per latent pixel (1/8 of the image side), as a PNG.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "engine/core/tensor.h"
#include "engine/pipeline/png.h"

namespace fluxserve::server {

// `packed`: [N, (h/2)(w/2), 16*4] f32, the pipeline's packed latents; `h`, `w`: the latent grid
// (image side / 8). Image `index` of the batch as RGB, values mapped as ComfyUI's Latent2RGB
// previewer does ((x + 1) / 2, clamped, to 0..255).
absl::StatusOr<Image> latent_preview(const Tensor& packed, int64_t h, int64_t w, int64_t index = 0);

}  // namespace fluxserve::server
