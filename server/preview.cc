#include "server/preview.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace fluxserve::server {
namespace {

// comfy/latent_formats.py, class Flux (16 channels x RGB), and its bias.
constexpr float kFactors[16][3] = {
    {-0.0346f, 0.0244f, 0.0681f},  {0.0034f, 0.0210f, 0.0687f},   {0.0275f, -0.0668f, -0.0433f},
    {-0.0174f, 0.0160f, 0.0617f},  {0.0859f, 0.0721f, 0.0329f},   {0.0004f, 0.0383f, 0.0115f},
    {0.0405f, 0.0861f, 0.0915f},   {-0.0236f, -0.0185f, -0.0259f}, {-0.0245f, 0.0250f, 0.1180f},
    {0.1008f, 0.0755f, -0.0421f},  {-0.0515f, 0.0201f, 0.0011f},  {0.0428f, -0.0012f, -0.0036f},
    {0.0817f, 0.0765f, 0.0749f},   {-0.1264f, -0.0522f, -0.1103f}, {-0.0280f, -0.0881f, -0.0499f},
    {-0.1262f, -0.0982f, -0.0778f}};
constexpr float kBias[3] = {-0.0329f, -0.0718f, -0.0851f};

}  // namespace

absl::StatusOr<Image> latent_preview(const Tensor& packed, int64_t h, int64_t w, int64_t index) {
  if (packed.dim() != 3 || packed.dtype() != DType::kF32 || h % 2 != 0 || w % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("preview: expected packed f32 latents [N, tokens, 64] on an even grid, got ",
                     packed.shape_str(), " for ", h, "x", w));
  }
  const int64_t h2 = h / 2, w2 = w / 2;
  if (packed.size(1) != h2 * w2 || packed.size(2) != 16 * 4 || index < 0 || index >= packed.size(0)) {
    return absl::InvalidArgumentError(absl::StrCat("preview: latents ", packed.shape_str(),
                                                   " do not match a 16-channel ", h, "x", w,
                                                   " grid (image ", index, ")"));
  }
  Image img;
  img.height = h;
  img.width = w;
  img.rgb.resize(static_cast<size_t>(h * w * 3));
  const float* base = packed.data<float>() + index * packed.size(1) * packed.size(2);
  for (int64_t y = 0; y < h; ++y) {
    for (int64_t x = 0; x < w; ++x) {
      // Packing: token (y/2, x/2), feature c*4 + (y%2)*2 + (x%2).
      const float* tok = base + ((y / 2) * w2 + (x / 2)) * 64 + (y % 2) * 2 + (x % 2);
      float rgb[3] = {kBias[0], kBias[1], kBias[2]};
      for (int c = 0; c < 16; ++c) {
        const float v = tok[c * 4];
        for (int k = 0; k < 3; ++k) rgb[k] += v * kFactors[c][k];
      }
      uint8_t* out = img.rgb.data() + (y * w + x) * 3;
      for (int k = 0; k < 3; ++k) {
        const float u = std::clamp((rgb[k] + 1.0f) / 2.0f, 0.0f, 1.0f);
        out[k] = static_cast<uint8_t>(std::lround(u * 255.0f));
      }
    }
  }
  return img;
}

}  // namespace fluxserve::server
