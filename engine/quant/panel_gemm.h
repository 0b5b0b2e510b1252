// The CPU driver shared by the quantized linears (bnb 4-bit, torchao, GGUF): y = x · Wᵀ with the
// weight decoded to f32 one panel of rows at a time into a per-thread buffer, never as a whole
// per call. OpenMP shares the panels out; OpenBLAS' OpenMP build runs each sgemm single-threaded
// inside the parallel region (it checks omp_in_parallel()).
#pragma once

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace fluxserve {

// Multiply-adds below which a quantized linear runs on the calling thread.
constexpr int64_t kParallelWork = int64_t{1} << 20;

// Rows per panel: sgemm packs all of x [m, k] again for every panel, so token batches take tall
// panels (256 rows: the x packing is ~1/256 of the multiply work), but never so few panels that a
// thread idles; a GEMV reads each decoded value once, so its panels stay small. Always a
// multiple of 16 (bnb's 4-bit decode needs panels that start on an even row).
inline int64_t panel_rows(int64_t m, int64_t n) {
  const int64_t most = m == 1 ? 16 : m < 64 ? 64 : 256;
  const int64_t threads = std::max(1, omp_get_max_threads());
  const int64_t share = (n + 2 * threads - 1) / (2 * threads);  // two panels per thread at least
  return std::clamp<int64_t>((share + 15) / 16 * 16, 16, most);
}

// y [m, n] = x [m, k] · Wᵀ + beta · y (beta 0 or 1), where decode(r0, rows, dst) writes weight
// rows [r0, r0 + rows) as f32 into dst [rows, k].
template <class Decode>
void panel_gemm(int64_t m, int64_t n, int64_t k, const float* x, float beta, float* y,
                Decode&& decode) {
  if (m <= 0 || n <= 0) return;
  if (k == 0) {
    if (beta == 0.0f) std::fill_n(y, m * n, 0.0f);
    return;
  }
  const int64_t tile = panel_rows(m, n);
  const int64_t tiles = (n + tile - 1) / tile;
  // Small products stay on the calling thread: a parallel region costs more than they do.
#pragma omp parallel if (tiles > 1 && m * n * k >= kParallelWork)
  {
    std::vector<float> panel(static_cast<size_t>(std::min(tile, n) * k));
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t r0 = t * tile, rows = std::min(tile, n - r0);
      decode(r0, rows, panel.data());
      if (m == 1) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(rows), static_cast<int>(k), 1.0f,
                    panel.data(), static_cast<int>(k), x, 1, beta, y + r0, 1);
      } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m),
                    static_cast<int>(rows), static_cast<int>(k), 1.0f, x, static_cast<int>(k),
                    panel.data(), static_cast<int>(k), beta, y + r0, static_cast<int>(n));
      }
    }
  }
}

}  // namespace fluxserve
