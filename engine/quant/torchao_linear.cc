// torchao::quantized_linear (torchao_formats.h) on the CPU. Every format multiplies panels of
// weight rows decoded to f32 in per-thread buffers (never the whole weight per call), except
// int8dq, whose int32 accumulator is computed exactly (chunked sgemm for token batches, direct
// int8 dot products for a few rows).
#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/quant/int_gemm.h"
#include "engine/quant/panel_gemm.h"
#include "engine/quant/torchao_formats.h"
#include "kernels/common/dtype_math.h"

namespace fluxserve::torchao {
namespace {

int64_t groups_of(const FormatSpec& s, int64_t k) {
  return s.group_size > 0 ? k / s.group_size : 1;
}

float from_fp8(uint8_t b, DType t) {
  return t == DType::kF8E5M2 ? dmath::f8e5m2_to_f32(b) : dmath::f8e4m3fn_to_f32(b);
}

// y[r, c] = (y[r, c] * row_scale[r]) * col_scale[c], a null scale skipped (int8wo scales the
// output per weight row, int4dq per token).
void scale_output(int64_t m, int64_t n, float* yp, const float* row_scale, const float* col_scale) {
#pragma omp parallel for schedule(static) if (m * n > (1 << 16))
  for (int64_t r = 0; r < m; ++r) {
    float* y = yp + r * n;
    if (row_scale != nullptr) {
      for (int64_t c = 0; c < n; ++c) y[c] *= row_scale[r];
    }
    if (col_scale != nullptr) {
      for (int64_t c = 0; c < n; ++c) y[c] *= col_scale[c];
    }
  }
}

// int8dq: float(int32 acc) * s_x, then * s_w (int_scaled_matmul), from an exact accumulator.
void int8dq_linear(const QuantizedActivation& a, const QuantizedWeight& w, int64_t m, int64_t n,
                   int64_t k, float* yp) {
  const int8_t* qx = a.qdata.data<int8_t>();
  const int8_t* qw = w.qdata.data<int8_t>();
  std::vector<int32_t> acc(static_cast<size_t>(m * n));
  if (m >= 16) {
    // Token batches: an integer GEMM (int_gemm.h: VNNI, or chunked sgemm kept exact).
    int8_gemm_exact(qx, m, k, qw, n, acc.data());
  } else {
    // A few rows: direct dot products, parallel over the weight rows.
#pragma omp parallel for schedule(static) if (n * k > (1 << 16))
    for (int64_t c = 0; c < n; ++c) {
      for (int64_t r = 0; r < m; ++r) {
        int32_t sum = 0;
        for (int64_t j = 0; j < k; ++j) sum += int32_t{qx[r * k + j]} * int32_t{qw[c * k + j]};
        acc[static_cast<size_t>(r * n + c)] = sum;
      }
    }
  }
  const float* sx = a.scale.data<float>();
  const float* sw = w.scale.data<float>();
#pragma omp parallel for schedule(static) if (m * n > (1 << 16))
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t c = 0; c < n; ++c)
      yp[r * n + c] = (static_cast<float>(acc[static_cast<size_t>(r * n + c)]) * sx[r]) * sw[c];
  }
}

// int4dq (DA8W4): y = s_x · Σ_j (x_q[j] - z_x) · ((w_q[j] - z_w[g]) · s_w[g]), as torchao's own
// fallback computes it (dequantize, then a float matmul): the activation integers are exact in
// f32 and each weight term is one f32 product, summed by sgemm. The golden reference instead
// adds exact int32 group sums in float64; the two differ by f32 rounding of a K-term sum
// (~1e-7 relative here, the golden tolerance is 1e-5), and a per-group integer GEMM would need
// one K = group_size product per group, far slower than one sgemm on CPU.
void int4dq_linear(const QuantizedActivation& a, const QuantizedWeight& w, bool asym, int64_t m,
                   int64_t n, int64_t k, float* yp) {
  const int64_t g = groups_of(w.spec, k), gs = k / g;
  std::vector<float> xf(static_cast<size_t>(m * k));
  const uint8_t* xu = asym ? a.qdata.data<uint8_t>() : nullptr;
  const int8_t* xs = asym ? nullptr : a.qdata.data<int8_t>();
  const int32_t* zx = asym ? a.zero_point.data<int32_t>() : nullptr;
#pragma omp parallel for schedule(static) if (m * k > (1 << 16))
  for (int64_t r = 0; r < m; ++r) {
    float* o = xf.data() + r * k;
    if (asym) {
      for (int64_t j = 0; j < k; ++j) o[j] = static_cast<float>(int32_t{xu[r * k + j]} - zx[r]);
    } else {
      for (int64_t j = 0; j < k; ++j) o[j] = static_cast<float>(xs[r * k + j]);
    }
  }
  const uint8_t* qw = w.qdata.data<uint8_t>();
  const int32_t* zw = w.zero_point.data<int32_t>();
  const float* sw = w.scale.data<float>();
  panel_gemm(m, n, k, xf.data(), 0.0f, yp, [&](int64_t r0, int64_t rows, float* dst) {
    for (int64_t r = r0; r < r0 + rows; ++r) {
      for (int64_t gi = 0; gi < g; ++gi) {
        const int32_t z = zw[r * g + gi];
        const float s = sw[r * g + gi];
        const uint8_t* q = qw + r * k + gi * gs;
        float* o = dst + (r - r0) * k + gi * gs;
        for (int64_t j = 0; j < gs; ++j) o[j] = static_cast<float>(int32_t{q[j]} - z) * s;
      }
    }
  });
  scale_output(m, n, yp, a.scale.data<float>(), nullptr);
}

}  // namespace

absl::StatusOr<Tensor> quantized_linear(const Tensor& x, const QuantizedWeight& w,
                                        const Tensor* bias) {
  const int64_t n = w.out_features(), k = w.in_features();
  if (x.dtype() != DType::kF32 || x.dim() < 1 || x.size(-1) != k) {
    return absl::InvalidArgumentError(absl::StrCat("torchao linear (", w.spec.name, "): x ",
                                                   x.shape_str(), " ", dtype_name(x.dtype()),
                                                   " vs weight [", n, ", ", k, "] (float32 x)"));
  }
  if (bias != nullptr && (bias->numel() != n || bias->dtype() != DType::kF32)) {
    return absl::InvalidArgumentError(absl::StrCat("torchao linear (", w.spec.name, "): bias ",
                                                   bias->shape_str(), " for ", n, " outputs"));
  }
  int64_t m = 1;
  for (int d = 0; d + 1 < x.dim(); ++d) m *= x.size(d);
  Shape out_shape = x.shape();
  out_shape.back() = n;
  Tensor y = Tensor::zeros(out_shape);
  if (m == 0 || n == 0) return y;
  float* yp = y.data<float>();
  const Tensor x2 = x.reshape({m, k});
  const FormatSpec& spec = w.spec;
  const float* sw = w.scale.data<float>();
  switch (spec.format) {
    case Format::kInt8WeightOnly: {
      // Int8Tensor per-row path: (x @ q^T) * scale; the codes are widened panel by panel.
      const int8_t* qd = w.qdata.data<int8_t>();
      panel_gemm(m, n, k, x2.data<float>(), 0.0f, yp, [&](int64_t r0, int64_t rows, float* dst) {
        for (int64_t i = 0; i < rows * k; ++i) dst[i] = qd[r0 * k + i];
      });
      scale_output(m, n, yp, nullptr, sw);
      break;
    }
    case Format::kInt8DynAct: {
      auto a = quantize_activation(x2, spec);
      if (!a.ok()) return a.status();
      int8dq_linear(*a, w, m, n, k, yp);
      break;
    }
    case Format::kInt4DynAct: {
      auto a = quantize_activation(x2, spec);
      if (!a.ok()) return a.status();
      int4dq_linear(*a, w, !spec.act_symmetric, m, n, k, yp);
      break;
    }
    case Format::kFloat8DynAct: {
      // _scaled_mm semantics: products of fp8 values (exact in f32) accumulated in f32, then
      // s_x · s_w.
      auto a = quantize_activation(x2, spec);
      if (!a.ok()) return a.status();
      float lut[256], xlut[256];
      for (int b = 0; b < 256; ++b) {
        lut[b] = from_fp8(static_cast<uint8_t>(b), spec.fp8);
        xlut[b] = dmath::f8e4m3fn_to_f32(static_cast<uint8_t>(b));
      }
      const uint8_t* qx = a->qdata.data<uint8_t>();
      std::vector<float> xf(static_cast<size_t>(m * k));
#pragma omp parallel for schedule(static) if (m * k > (1 << 16))
      for (int64_t i = 0; i < m * k; ++i) xf[static_cast<size_t>(i)] = xlut[qx[i]];
      const uint8_t* qw = w.qdata.data<uint8_t>();
      panel_gemm(m, n, k, xf.data(), 0.0f, yp, [&](int64_t r0, int64_t rows, float* dst) {
        for (int64_t i = 0; i < rows * k; ++i) dst[i] = lut[qw[r0 * k + i]];
      });
      // acc · (s_x · s_w): _scaled_mm multiplies the accumulator by the product of the scales.
#pragma omp parallel for schedule(static) if (m * n > (1 << 16))
      for (int64_t r = 0; r < m; ++r) {
        const float sx = a->scale.data<float>()[spec.per_row ? r : 0];
        for (int64_t c = 0; c < n; ++c) yp[r * n + c] *= sx * sw[spec.per_row ? c : 0];
      }
      break;
    }
    default: {
      // Weight-only: dequantize (in the weight dtype, as torchao) then an f32 GEMM, one panel of
      // rows at a time so the decoded weight stays in cache and the decode runs in parallel.
      panel_gemm(m, n, k, x2.data<float>(), 0.0f, yp,
                 [&](int64_t r0, int64_t rows, float* dst) { dequantize_rows(w, r0, rows, dst); });
      break;
    }
  }
  if (bias != nullptr) {
    const float* b = bias->data<float>();
#pragma omp parallel for schedule(static) if (m * n > (1 << 16))
    for (int64_t r = 0; r < m; ++r)
      for (int64_t c = 0; c < n; ++c) yp[r * n + c] += b[c];
  }
  return y;
}

}  // namespace fluxserve::torchao
