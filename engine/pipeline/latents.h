// FluxPipeline's latent bookkeeping: the 2x2 patch packing of [B, C, h, w] latents into
// [B, (h/2)(w/2), 4C] tokens (feature index c*4 + dy*2 + dx, tokens row-major over patches),
// its inverse, and the (0, row, col) image position ids.
#pragma once

#include "engine/core/tensor.h"

namespace fluxserve {

// [B, C, h, w] -> [B, (h/2)*(w/2), C*4]; h and w must be even.
Tensor pack_latents(const Tensor& latents);
// [B, (h/2)*(w/2), C*4] -> [B, C, h, w].
Tensor unpack_latents(const Tensor& packed, int64_t h, int64_t w);
// [(h/2)*(w/2), 3] rows (0, i, j) for patch row i, column j (h2 = h/2, w2 = w/2).
Tensor latent_image_ids(int64_t h2, int64_t w2);

}  // namespace fluxserve
