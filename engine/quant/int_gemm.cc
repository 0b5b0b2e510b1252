#include "engine/quant/int_gemm.h"

#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define FLUXSERVE_INT8_VNNI 1
#endif

#include "engine/quant/panel_gemm.h"

namespace fluxserve {
namespace {

#if defined(FLUXSERVE_INT8_VNNI)
// Weight rows per packed strip: four zmm registers of 16 int32 lanes.
constexpr int64_t kStrip = 64;
// Activation rows per micro-kernel call: 6 x 4 accumulators + 4 weight vectors + 1 broadcast
// stay within the 32 zmm registers.
constexpr int kRows = 6;

// out[r][c] = Σ_q au[r][4q..4q+3] · bp[q][c][0..3] for R activation rows (u8, row stride lda)
// and one packed strip bp [kq][64][4] (s8), kq quads of K.
template <int R>
void vnni_block(const uint8_t* au, int64_t lda, const int8_t* bp, int64_t kq, int32_t* out) {
  __m512i c[R][4];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) c[r][j] = _mm512_setzero_si512();
  for (int64_t q = 0; q < kq; ++q) {
    const int8_t* bq = bp + q * 4 * kStrip;
    const __m512i b0 = _mm512_loadu_si512(bq);
    const __m512i b1 = _mm512_loadu_si512(bq + 64);
    const __m512i b2 = _mm512_loadu_si512(bq + 128);
    const __m512i b3 = _mm512_loadu_si512(bq + 192);
    for (int r = 0; r < R; ++r) {
      int32_t quad;
      std::memcpy(&quad, au + r * lda + 4 * q, sizeof(quad));
      const __m512i av = _mm512_set1_epi32(quad);
      c[r][0] = _mm512_dpbusd_epi32(c[r][0], av, b0);
      c[r][1] = _mm512_dpbusd_epi32(c[r][1], av, b1);
      c[r][2] = _mm512_dpbusd_epi32(c[r][2], av, b2);
      c[r][3] = _mm512_dpbusd_epi32(c[r][3], av, b3);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) _mm512_storeu_si512(out + r * kStrip + j * 16, c[r][j]);
}

void vnni_rows(int rows, const uint8_t* au, int64_t lda, const int8_t* bp, int64_t kq,
               int32_t* out) {
  switch (rows) {
    case 1:
      return vnni_block<1>(au, lda, bp, kq, out);
    case 2:
      return vnni_block<2>(au, lda, bp, kq, out);
    case 3:
      return vnni_block<3>(au, lda, bp, kq, out);
    case 4:
      return vnni_block<4>(au, lda, bp, kq, out);
    case 5:
      return vnni_block<5>(au, lda, bp, kq, out);
    default:
      return vnni_block<kRows>(au, lda, bp, kq, out);
  }
}
#endif

}  // namespace

int64_t exact_sgemm_chunk(int64_t max_a, int64_t max_b) {
  const int64_t per = std::max<int64_t>(1, max_a * max_b);
  return std::max<int64_t>(1, (int64_t{1} << 24) / per);
}

void int8_gemm_exact(const int8_t* a, int64_t m, int64_t k, const int8_t* b, int64_t n,
                     int32_t* acc) {
  if (!int8_gemm_vnni(a, m, k, b, n, acc)) int8_gemm_sgemm(a, m, k, b, n, acc);
}

bool int8_gemm_vnni(const int8_t* a, int64_t m, int64_t k, const int8_t* b, int64_t n,
                    int32_t* acc) {
#if defined(FLUXSERVE_INT8_VNNI)
  if (k > 65536) return false;
  if (m <= 0 || n <= 0) return true;
  const int64_t kq = (k + 3) / 4, lda = 4 * kq;
  // a + 128 as u8; K padded to whole quads (the padding meets zero weights).
  std::vector<uint8_t> au(static_cast<size_t>(m * lda), 128);
#pragma omp parallel for schedule(static) if (m * k > (1 << 16))
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < k; ++j) au[i * lda + j] = static_cast<uint8_t>(a[i * k + j] + 128);
  const int64_t strips = (n + kStrip - 1) / kStrip;
#pragma omp parallel if (strips > 1 && m * n * k >= kParallelWork)
  {
    std::vector<int8_t> bp(static_cast<size_t>(kq * 4 * kStrip));
    int32_t colsum[kStrip];
    int32_t out[kRows * kStrip];
#pragma omp for schedule(dynamic)
    for (int64_t s = 0; s < strips; ++s) {
      const int64_t r0 = s * kStrip, rows = std::min(kStrip, n - r0);
      // bp[q][c][t] = b[r0 + c][4q + t], zero past the weight's rows and K.
      std::fill(bp.begin(), bp.end(), int8_t{0});
      for (int64_t c = 0; c < rows; ++c) {
        const int8_t* src = b + (r0 + c) * k;
        int8_t* dst = bp.data() + c * 4;
        for (int64_t q = 0; q < k / 4; ++q) std::memcpy(dst + q * 4 * kStrip, src + 4 * q, 4);
        for (int64_t j = k / 4 * 4; j < k; ++j) dst[(j / 4) * 4 * kStrip + j % 4] = src[j];
        int32_t sum = 0;
        for (int64_t j = 0; j < k; ++j) sum += src[j];
        colsum[c] = sum;
      }
      for (int64_t i0 = 0; i0 < m; i0 += kRows) {
        const int r = static_cast<int>(std::min<int64_t>(kRows, m - i0));
        vnni_rows(r, au.data() + i0 * lda, lda, bp.data(), kq, out);
        // Σ (a+128)·b - 128·Σ b = Σ a·b, exact in int32.
        for (int ri = 0; ri < r; ++ri) {
          int32_t* dst = acc + (i0 + ri) * n + r0;
          for (int64_t c = 0; c < rows; ++c) dst[c] = out[ri * kStrip + c] - 128 * colsum[c];
        }
      }
    }
  }
  return true;
#else
  (void)a, (void)m, (void)k, (void)b, (void)n, (void)acc;
  return false;
#endif
}

void int8_gemm_sgemm(const int8_t* a, int64_t m, int64_t k, const int8_t* b, int64_t n,
                     int32_t* acc) {
  if (m <= 0 || n <= 0) return;
  std::vector<float> af(static_cast<size_t>(m * k));
#pragma omp parallel for schedule(static) if (m * k > (1 << 16))
  for (int64_t i = 0; i < m * k; ++i) af[static_cast<size_t>(i)] = a[i];
  const int64_t chunk = exact_sgemm_chunk(128, 128);  // int8 codes include -128
  // Panels of weight rows as the dequantizing linears use them (panel_gemm.h): sgemm packs all
  // of `a` again for every panel and chunk.
  const int64_t tile = panel_rows(m, n);
  const int64_t tiles = (n + tile - 1) / tile;
#pragma omp parallel if (tiles > 1 && m * n * k >= kParallelWork)
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
                    static_cast<int>(rows), static_cast<int>(kc), 1.0f, af.data() + c0,
                    static_cast<int>(k), panel.data() + c0, static_cast<int>(k), 0.0f, part.data(),
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
