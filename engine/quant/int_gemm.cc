#include "engine/quant/int_gemm.h"

#include <cblas.h>

#include <algorithm>
#include <vector>

#include "engine/quant/panel_gemm.h"

namespace fluxserve {

int64_t exact_sgemm_chunk(int64_t max_a, int64_t max_b) {
  const int64_t per = std::max<int64_t>(1, max_a * max_b);
  return std::max<int64_t>(1, (int64_t{1} << 24) / per);
}

void int8_gemm_exact(const float* a, int64_t m, int64_t k, const int8_t* b, int64_t n,
                     int32_t* acc) {
  if (m <= 0 || n <= 0) return;
  const int64_t chunk = exact_sgemm_chunk(128, 128);  // int8 codes include -128
  // Panels of weight rows as the dequantizing linears use them (panel_gemm.h): sgemm packs all
  // of `a` again for every panel and chunk.
  const int64_t tile = panel_rows(m, n);
  const int64_t tiles = (n + tile - 1) / tile;
#pragma omp parallel
  {
    std::vector<float> panel(static_cast<size_t>(tile * k));
    std::vector<float> part(static_cast<size_t>(m * tile));
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t r0 = t * tile, rows = std::min(tile, n - r0);
      const int8_t* src = b + r0 * k;
      for (int64_t i = 0; i < rows * k; ++i) panel[static_cast<size_t>(i)] = src[i];
      for (int64_t c0 = 0; c0 < k; c0 += chunk) {
        const int64_t kc = std::min(chunk, k - c0);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m),
                    static_cast<int>(rows), static_cast<int>(kc), 1.0f, a + c0, static_cast<int>(k),
                    panel.data() + c0, static_cast<int>(k), 0.0f, part.data(),
                    static_cast<int>(rows));
        // Each chunk sum is an exact integer in f32; the chunks add up in int32 as the
        // reference's accumulator does.
        for (int64_t i = 0; i < m; ++i) {
          int32_t* out = acc + i * n + r0;
          const float* p = part.data() + i * rows;
          if (c0 == 0) {
            for (int64_t j = 0; j < rows; ++j) out[j] = static_cast<int32_t>(p[j]);
          } else {
            for (int64_t j = 0; j < rows; ++j) out[j] += static_cast<int32_t>(p[j]);
          }
        }
      }
      if (k == 0) {
        for (int64_t i = 0; i < m; ++i) std::fill_n(acc + i * n + r0, rows, 0);
      }
    }
  }
}

}  // namespace fluxserve
