#include "engine/pipeline/latents.h"

#include "engine/core/check.h"

namespace fluxserve {

Tensor pack_latents(const Tensor& latents) {
  FLUX_CHECK(latents.dim() == 4 && latents.size(2) % 2 == 0 && latents.size(3) % 2 == 0 &&
             latents.dtype() == DType::kF32)
      << "pack_latents: " << latents.shape_str();
  const int64_t b = latents.size(0), c = latents.size(1), h = latents.size(2), w = latents.size(3);
  const int64_t h2 = h / 2, w2 = w / 2;
  Tensor out = Tensor::empty({b, h2 * w2, c * 4});
  const float* src = latents.data<float>();
  float* dst = out.data<float>();
  for (int64_t n = 0; n < b; ++n)
    for (int64_t i = 0; i < h2; ++i)
      for (int64_t j = 0; j < w2; ++j)
        for (int64_t ch = 0; ch < c; ++ch)
          for (int64_t dy = 0; dy < 2; ++dy)
            for (int64_t dx = 0; dx < 2; ++dx)
              dst[((n * h2 + i) * w2 + j) * c * 4 + ch * 4 + dy * 2 + dx] =
                  src[((n * c + ch) * h + 2 * i + dy) * w + 2 * j + dx];
  return out;
}

Tensor unpack_latents(const Tensor& packed, int64_t h, int64_t w) {
  const int64_t h2 = h / 2, w2 = w / 2;
  FLUX_CHECK(packed.dim() == 3 && h % 2 == 0 && w % 2 == 0 && packed.size(1) == h2 * w2 &&
             packed.size(2) % 4 == 0 && packed.dtype() == DType::kF32)
      << "unpack_latents: " << packed.shape_str() << " to " << h << "x" << w;
  const int64_t b = packed.size(0), c = packed.size(2) / 4;
  Tensor out = Tensor::empty({b, c, h, w});
  const float* src = packed.data<float>();
  float* dst = out.data<float>();
  for (int64_t n = 0; n < b; ++n)
    for (int64_t i = 0; i < h2; ++i)
      for (int64_t j = 0; j < w2; ++j)
        for (int64_t ch = 0; ch < c; ++ch)
          for (int64_t dy = 0; dy < 2; ++dy)
            for (int64_t dx = 0; dx < 2; ++dx)
              dst[((n * c + ch) * h + 2 * i + dy) * w + 2 * j + dx] =
                  src[((n * h2 + i) * w2 + j) * c * 4 + ch * 4 + dy * 2 + dx];
  return out;
}

Tensor latent_image_ids(int64_t h2, int64_t w2) {
  Tensor ids = Tensor::zeros({h2 * w2, 3});
  float* p = ids.data<float>();
  for (int64_t i = 0; i < h2; ++i) {
    for (int64_t j = 0; j < w2; ++j) {
      p[(i * w2 + j) * 3 + 1] = static_cast<float>(i);
      p[(i * w2 + j) * 3 + 2] = static_cast<float>(j);
    }
  }
  return ids;
}

}  // namespace fluxserve
