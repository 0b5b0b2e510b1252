#include "engine/quant/bnb_gemm.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif
#if defined(__AVX512F__)
// gcc 12 reports its own AVX-512 intrinsics' _mm512_undefined_* operands as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "engine/core/check.h"
#include "engine/quant/int_gemm.h"
#include "kernels/common/bnb_decode.h"
#include "kernels/common/dtype_math.h"

namespace fluxserve {
namespace {

int64_t rows_of(const Tensor& x) { return x.dim() == 0 ? 1 : x.numel() / x.size(-1); }

std::vector<float> bias_f32(const Tensor* bias, int64_t n, const char* op) {
  if (bias == nullptr) return {};
  FLUX_CHECK(bias->numel() == n) << op << ": bias " << bias->shape_str() << " for " << n;
  absl::StatusOr<Tensor> b = bias->as_f32();
  FLUX_CHECK(b.ok()) << b.status();
  return std::vector<float>(b->data<float>(), b->data<float>() + n);
}

// Flat elements [begin, begin + count) of the weight (begin and count even), each
// code_value[q] * scales[block] as bnb::dequant4 computes it, into out.
void decode4(const float* lut, const uint8_t* packed, const float* scales, int64_t bs,
             int64_t begin, int64_t count, float* out) {
#if defined(__AVX512F__)
  const __m512 table = _mm512_loadu_ps(lut);
  // Interleaves the high nibbles (earlier elements) with the low ones.
  const __m512i lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi_idx =
      _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const __m512i fifteen = _mm512_set1_epi32(15);
#endif
  const int64_t end = begin + count;
  for (int64_t f = begin; f < end;) {
    const int64_t blk = f / bs, stop = std::min((blk + 1) * bs, end);
    const float s = scales[blk];
    int64_t i = f;
#if defined(__AVX512F__)
    const __m512 sv = _mm512_set1_ps(s);
    for (; i + 32 <= stop; i += 32) {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed + (i >> 1)));
      const __m512i v = _mm512_cvtepu8_epi32(bytes);
      const __m512i hi = _mm512_srli_epi32(v, 4), lo = _mm512_and_si512(v, fifteen);
      const __m512i q0 = _mm512_permutex2var_epi32(hi, lo_idx, lo);
      const __m512i q1 = _mm512_permutex2var_epi32(hi, hi_idx, lo);
      _mm512_storeu_ps(out + (i - begin), _mm512_mul_ps(_mm512_permutexvar_ps(q0, table), sv));
      _mm512_storeu_ps(out + (i - begin) + 16,
                       _mm512_mul_ps(_mm512_permutexvar_ps(q1, table), sv));
    }
#endif
    for (; i < stop; i += 2) {
      const uint8_t byte = packed[i >> 1];
      out[i - begin] = lut[byte >> 4] * s;
      out[i - begin + 1] = lut[byte & 15] * s;
    }
    f = stop;
  }
}

// x -> float16 -> f32 in place, round to nearest even (F16C does what round_to_f16 does).
void round_f16(float* v, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(v + i);
    _mm256_storeu_ps(v + i, _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT)));
  }
#endif
  for (; i < n; ++i) v[i] = dmath::f16_to_f32(dmath::f32_to_f16(v[i]));
}

int8_t rne_to_i8(float v) {
  if (std::isnan(v)) return 0;
  const float r = std::nearbyint(v);  // default rounding mode: half to even, as torch.round
  return static_cast<int8_t>(std::clamp(r, -128.0f, 127.0f));
}

}  // namespace

Int8RowQuant int8_vectorwise_quant_parallel(const Tensor& x, float threshold) {
  const float* xp = x.data<float>();
  const int64_t k = x.dim() == 0 ? 1 : x.size(-1);
  const int64_t m = k == 0 ? 0 : x.numel() / k;
  Int8RowQuant r;
  r.q.assign(static_cast<size_t>(m * k), 0);
  r.row_absmax.assign(static_cast<size_t>(m), 0.0f);
  std::vector<float> a(xp, xp + m * k);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < m; ++i) round_f16(a.data() + i * k, k);
  if (threshold > 0.0f) {
    std::vector<char> outlier_col(static_cast<size_t>(k), 0);
    const float t16 = dmath::f16_to_f32(dmath::f32_to_f16(threshold));  // compared in float16
    for (int64_t i = 0; i < m * k; ++i) {
      if (std::fabs(a[i]) >= t16) {
        outlier_col[i % k] = 1;
        a[i] = 0.0f;
      }
    }
    for (int64_t c = 0; c < k; ++c)
      if (outlier_col[c]) r.outlier_cols.push_back(c);
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < m; ++i) {
    float am = 0.0f;
    for (int64_t c = 0; c < k; ++c) am = std::max(am, std::fabs(a[i * k + c]));
    r.row_absmax[i] = am;
    // 127.0 / row_stats is reciprocal() * 127 in torch: two f32 roundings.
    const float s = (1.0f / am) * 127.0f;
    for (int64_t c = 0; c < k; ++c) r.q[i * k + c] = rne_to_i8(a[i * k + c] * s);
  }
  if (m > 1) {
    for (int64_t c : r.outlier_cols)
      for (int64_t i = 0; i < m; ++i) r.q[i * k + c] = 0;
  }
  return r;
}

Tensor bnb4_linear_panels(const Tensor& x, const Bnb4Weight& w, const Tensor* bias) {
  const int64_t m = rows_of(x), n = w.shape[0], k = w.shape[1];
  FLUX_CHECK(k % 2 == 0) << "bnb4_linear_panels: odd in_features " << k;
  Shape s = x.shape();
  s.back() = n;
  Tensor y = Tensor::empty(s);
  float* yp = y.data<float>();
  const std::vector<float> b = bias_f32(bias, n, "bnb4_linear");
  for (int64_t i = 0; i < m; ++i) {
    if (b.empty()) {
      std::memset(yp + i * n, 0, static_cast<size_t>(n) * sizeof(float));
    } else {
      std::memcpy(yp + i * n, b.data(), static_cast<size_t>(n) * sizeof(float));
    }
  }
  if (m == 0 || n == 0 || k == 0) return y;
  const Tensor scales = bnb4_block_scales(w);
  float lut[16];
  for (uint32_t q = 0; q < 16; ++q) lut[q] = bnb::code4_value(w.quant_type, q);
  const uint8_t* packed = w.packed.data<uint8_t>();
  const float* xp = x.data<float>();
  // 64-row panels (768 KiB of f32 at K = 3072) stay in L2 for the sgemm; GEMV panels are
  // smaller so both threads get work.
  const int64_t tile = m == 1 ? 16 : 64;
  const int64_t tiles = (n + tile - 1) / tile;
#pragma omp parallel
  {
    std::vector<float> panel(static_cast<size_t>(tile * k));
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t r0 = t * tile, rows = std::min(tile, n - r0);
      decode4(lut, packed, scales.data<float>(), w.blocksize, r0 * k, rows * k, panel.data());
      // No rounding to w.dtype: bitsandbytes 0.50's matmul_4bit dequantizes straight to the
      // activation dtype (as bnb4_linear, bnb_formats.cc).
      if (m == 1) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(rows), static_cast<int>(k),
                    1.0f, panel.data(), static_cast<int>(k), xp, 1, 1.0f, yp + r0, 1);
      } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m),
                    static_cast<int>(rows), static_cast<int>(k), 1.0f, xp, static_cast<int>(k),
                    panel.data(), static_cast<int>(k), 1.0f, yp + r0, static_cast<int>(n));
      }
    }
  }
  return y;
}

Tensor bnb8_linear_int_gemm(const Tensor& x, const Bnb8Weight& w, const Tensor* bias,
                            float threshold) {
  const int64_t m = rows_of(x), n = w.out_features(), k = w.in_features();
  Shape s = x.shape();
  s.back() = n;
  Tensor y = Tensor::empty(s);
  if (m == 0 || n == 0) return y;
  const Int8RowQuant qa = int8_vectorwise_quant_parallel(x, threshold);
  const int8_t* cb = w.cb.data<int8_t>();
  const float* scb = w.scb.data<float>();
  const std::vector<float> b32 = bias_f32(bias, n, "bnb8_linear");
  std::vector<float> af(static_cast<size_t>(m * k));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < m * k; ++i) af[static_cast<size_t>(i)] = qa.q[static_cast<size_t>(i)];
  std::vector<int32_t> acc(static_cast<size_t>(m * n));
  int8_gemm_exact(af.data(), m, k, cb, n, acc.data());
  float* yp = y.data<float>();
  // int8_mm_dequant: (acc * (row_absmax * SCB)) * 6.200124e-05 (bnb's literal), then + bias.
  constexpr float kDequant = 6.200124e-05f;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      float v = static_cast<float>(acc[i * n + j]) * (qa.row_absmax[i] * scb[j]) * kDequant;
      if (!b32.empty()) v += b32[j];
      yp[i * n + j] = v;
    }
  }
  if (!qa.outlier_cols.empty()) {
    // output.addmm(x[:, cols], dequant(CB[:, cols]).t()): original-precision activations
    // against the dequantized int8 weight columns (as bnb8_linear).
    const int64_t nc = static_cast<int64_t>(qa.outlier_cols.size());
    std::vector<float> sa(static_cast<size_t>(m * nc)), sb(static_cast<size_t>(n * nc));
    const float* xp = x.data<float>();
    for (int64_t i = 0; i < m; ++i)
      for (int64_t c = 0; c < nc; ++c) sa[i * nc + c] = xp[i * k + qa.outlier_cols[c]];
    for (int64_t j = 0; j < n; ++j)
      for (int64_t c = 0; c < nc; ++c)
        sb[j * nc + c] =
            (static_cast<float>(cb[j * k + qa.outlier_cols[c]]) * scb[j]) * 7.874015718698502e-3f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(n),
                static_cast<int>(nc), 1.0f, sa.data(), static_cast<int>(nc), sb.data(),
                static_cast<int>(nc), 1.0f, yp, static_cast<int>(n));
  }
  return y;
}

}  // namespace fluxserve
