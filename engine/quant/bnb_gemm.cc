// The CPU linears of bnb_formats.h (bnb4_linear, bnb8_linear). 4-bit weights are decoded panel by
// panel (16-entry code table times the block absmax: the exact f32 products of bnb::dequant4)
// into per-thread buffers and multiplied with sgemm; LLM.int8's int32 product runs as exact
// chunked sgemm (int_gemm.h) for token batches and as direct int8 dot products for a few rows.
#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
// gcc 12 reports its own AVX-512 intrinsics' _mm512_undefined_* operands as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "engine/core/check.h"
#include "engine/quant/bnb_formats.h"
#include "engine/quant/int_gemm.h"
#include "engine/quant/panel_gemm.h"
#include "kernels/common/bnb_decode.h"

namespace fluxserve {
namespace {

// x [..., K] as [rows, K]; a K of 0 still has its leading rows.
int64_t rows_of(const Tensor& x) {
  int64_t m = 1;
  for (int d = 0; d + 1 < x.dim(); ++d) m *= x.size(d);
  return m;
}

// y [m, n] initialised with the bias rows (beta = 1 for the GEMMs) or zeros.
Tensor output_with_bias(const Tensor& x, int64_t n, const Tensor* bias, const char* op) {
  Shape s = x.shape();
  s.back() = n;
  Tensor y = Tensor::empty(s);
  const int64_t m = rows_of(x);
  if (bias != nullptr) {
    FLUX_CHECK(bias->numel() == n)
        << op << ": bias " << bias->shape_str() << " for " << n << " outputs";
    absl::StatusOr<Tensor> b = bias->as_f32();
    FLUX_CHECK(b.ok()) << b.status();
    for (int64_t i = 0; i < m; ++i)
      std::memcpy(y.data<float>() + i * n, b->data<float>(),
                  static_cast<size_t>(n) * sizeof(float));
  } else if (y.nbytes() > 0) {
    std::memset(y.raw(), 0, y.nbytes());
  }
  return y;
}

// Flat elements [begin, begin + count) of the 4-bit weight, each lut[code] * scales[block] (the
// product bnb::dequant4 computes), into out. begin is even (panels start at an even row) and
// blocks are a power of two >= 32 long (bnb4_validate), so every block segment starts on a whole
// byte; only the weight's last element can be a lone high nibble (N·K odd).
void decode4(const float* lut, const uint8_t* packed, const float* scales, int64_t bs,
             int64_t begin, int64_t count, float* out) {
#if defined(__AVX512F__)
  const __m512 table = _mm512_loadu_ps(lut);
  // Interleave the high nibbles (the earlier, even elements) with the low ones.
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
    for (; i + 32 <= stop; i += 32) {  // i even: 16 whole bytes
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed + (i >> 1)));
      const __m512i v = _mm512_cvtepu8_epi32(bytes);
      const __m512i hi = _mm512_srli_epi32(v, 4), lo = _mm512_and_si512(v, fifteen);
      const __m512i q0 = _mm512_permutex2var_epi32(hi, lo_idx, lo);
      const __m512i q1 = _mm512_permutex2var_epi32(hi, hi_idx, lo);
      _mm512_storeu_ps(out + (i - begin), _mm512_mul_ps(_mm512_permutexvar_ps(q0, table), sv));
      _mm512_storeu_ps(out + (i - begin) + 16, _mm512_mul_ps(_mm512_permutexvar_ps(q1, table), sv));
    }
#endif
    for (; i + 2 <= stop; i += 2) {
      const uint8_t byte = packed[i >> 1];
      out[i - begin] = lut[byte >> 4] * s;
      out[i - begin + 1] = lut[byte & 15] * s;
    }
    if (i < stop) out[i - begin] = lut[packed[i >> 1] >> 4] * s;  // the last, odd-N·K element
    f = stop;
  }
}

}  // namespace

Tensor bnb4_linear(const Tensor& x, const Bnb4Weight& w, const Tensor* bias) {
  FLUX_CHECK(x.dtype() == DType::kF32 && w.shape.size() == 2 && x.size(-1) == w.shape[1])
      << "bnb4_linear: x " << x.shape_str() << " vs weight " << shape_str(w.shape);
  const int64_t m = rows_of(x), n = w.shape[0], k = w.shape[1];
  Tensor y = output_with_bias(x, n, bias, "bnb4_linear");
  if (m == 0 || n == 0 || k == 0) return y;
  const Tensor scales = bnb4_block_scales(w);
  float lut[16];
  for (uint32_t q = 0; q < 16; ++q) lut[q] = bnb::code4_value(w.quant_type, q);
  const uint8_t* packed = w.packed.data<uint8_t>();
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  // No rounding to w.dtype: bitsandbytes 0.50's matmul_4bit (gemm_4bit) dequantizes straight to
  // the activation dtype, whatever dtype the weight was quantized from. Panels start at a
  // multiple of 16 rows, so decode4's begin is even.
  panel_gemm(m, n, k, xp, 1.0f, yp, [&](int64_t r0, int64_t rows, float* dst) {
    decode4(lut, packed, scales.data<float>(), w.blocksize, r0 * k, rows * k, dst);
  });
  return y;
}

Tensor bnb8_linear(const Tensor& x, const Bnb8Weight& w, const Tensor* bias, float threshold) {
  FLUX_CHECK(x.dtype() == DType::kF32 && x.size(-1) == w.in_features())
      << "bnb8_linear: x " << x.shape_str() << " vs weight " << w.cb.shape_str();
  const int64_t m = rows_of(x), n = w.out_features(), k = w.in_features();
  if (m == 0 || n == 0 || k == 0) return output_with_bias(x, n, bias, "bnb8_linear");
  Shape s = x.shape();
  s.back() = n;
  Tensor y = Tensor::empty(s);
  const Int8RowQuant qa = int8_vectorwise_quant(x, threshold);
  const int8_t* cb = w.cb.data<int8_t>();
  const float* scb = w.scb.data<float>();
  // The int32 accumulator of int8 x int8 -> int32 (torch._int_mm in bnb's CPU backend): exact on
  // both paths, so a row gives the same bits alone or in a batch.
  std::vector<int32_t> acc(static_cast<size_t>(m * n));
  if (m >= 16) {
    // Token batches: an integer GEMM (int_gemm.h: VNNI, or chunked sgemm kept exact).
    int8_gemm_exact(qa.q.data(), m, k, cb, n, acc.data());
  } else {
    // A few rows: direct dot products, parallel over the weight rows (widening the weight to f32
    // would cost more than the products).
#pragma omp parallel for schedule(static) if (n * k > (1 << 16))
    for (int64_t j = 0; j < n; ++j) {
      const int8_t* b = cb + j * k;
      for (int64_t i = 0; i < m; ++i) {
        const int8_t* a = qa.q.data() + i * k;
        int32_t sum = 0;
        for (int64_t c = 0; c < k; ++c)
          sum += static_cast<int32_t>(a[c]) * static_cast<int32_t>(b[c]);
        acc[static_cast<size_t>(i * n + j)] = sum;
      }
    }
  }
  std::vector<float> b32;
  if (bias != nullptr) {
    FLUX_CHECK(bias->numel() == n) << "bnb8_linear: bias " << bias->shape_str();
    absl::StatusOr<Tensor> b = bias->as_f32();
    FLUX_CHECK(b.ok()) << b.status();
    b32.assign(b->data<float>(), b->data<float>() + n);
  }
  float* yp = y.data<float>();
  // int8_mm_dequant: (acc * (row_absmax * SCB)) * 6.200124e-05 (bnb's literal), then + bias.
  constexpr float kDequant = 6.200124e-05f;
#pragma omp parallel for schedule(static) if (m * n > (1 << 16))
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      float v = static_cast<float>(acc[static_cast<size_t>(i * n + j)]) *
                (qa.row_absmax[i] * scb[j]) * kDequant;
      if (!b32.empty()) v += b32[j];
      yp[i * n + j] = v;
    }
  }
  if (!qa.outlier_cols.empty()) {
    // output.addmm(x[:, cols], dequant(CB[:, cols]).t()): original-precision activations
    // against the dequantized int8 weight columns.
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
