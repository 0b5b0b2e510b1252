#include "engine/quant/torchao_formats.h"

#include <cblas.h>

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/quant/int_gemm.h"
#include "kernels/common/dtype_math.h"

namespace fluxserve::torchao {
namespace {

int64_t groups_of(const FormatSpec& s, int64_t k) { return s.group_size > 0 ? k / s.group_size : 1; }

float from_fp8(uint8_t b, DType t) {
  return t == DType::kF8E5M2 ? dmath::f8e5m2_to_f32(b) : dmath::f8e4m3fn_to_f32(b);
}

// y [m, n] = x [m, k] · Wᵀ where decode(r0, rows, dst) writes weight rows [r0, r0 + rows) as f32.
// Panels of rows are decoded into per-thread buffers, OpenMP over panels; OpenBLAS' OpenMP build
// runs sgemm single-threaded inside the parallel region (as ggml_linear.cc relies on).
template <class Decode>
void panel_gemm(int64_t m, int64_t n, int64_t k, const float* xp, float* yp, Decode&& decode) {
  if (m <= 0 || n <= 0) return;
  if (k == 0) {
    std::fill_n(yp, m * n, 0.0f);
    return;
  }
  // 64-row panels (768 KiB at K = 3072) stay in L2; GEMV panels are smaller to share the work.
  const int64_t tile = m == 1 ? 16 : 64;
  const int64_t tiles = (n + tile - 1) / tile;
#pragma omp parallel
  {
    std::vector<float> panel(static_cast<size_t>(tile * k));
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t r0 = t * tile, rows = std::min(tile, n - r0);
      decode(r0, rows, panel.data());
      if (m == 1) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(rows), static_cast<int>(k), 1.0f,
                    panel.data(), static_cast<int>(k), xp, 1, 0.0f, yp + r0, 1);
      } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m),
                    static_cast<int>(rows), static_cast<int>(k), 1.0f, xp, static_cast<int>(k),
                    panel.data(), static_cast<int>(k), 0.0f, yp + r0, static_cast<int>(n));
      }
    }
  }
}

}  // namespace

absl::StatusOr<Tensor> quantized_linear(const Tensor& x, const QuantizedWeight& w, const Tensor* bias) {
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
  const int64_t m = x.numel() / std::max<int64_t>(k, 1);
  Shape out_shape = x.shape();
  out_shape.back() = n;
  Tensor y = Tensor::zeros(out_shape);
  float* yp = y.data<float>();
  const Tensor x2 = x.reshape({m, k});
  const FormatSpec& spec = w.spec;
  const float* sw = w.scale.data<float>();
  switch (spec.format) {
    case Format::kInt8WeightOnly: {
      // Int8Tensor per-row path: (x @ q^T) * scale; the codes are widened panel by panel.
      const int8_t* qd = w.qdata.data<int8_t>();
      panel_gemm(m, n, k, x2.data<float>(), yp, [&](int64_t r0, int64_t rows, float* dst) {
        for (int64_t i = 0; i < rows * k; ++i) dst[i] = qd[r0 * k + i];
      });
      for (int64_t r = 0; r < m; ++r)
        for (int64_t c = 0; c < n; ++c) yp[r * n + c] *= sw[c];
      break;
    }
    case Format::kInt8DynAct: {
      // int_scaled_matmul: float(int32 acc) * s_x, then * s_w.
      auto a = quantize_activation(x2, spec);
      if (!a.ok()) return a.status();
      const int8_t* qx = a->qdata.data<int8_t>();
      const int8_t* qw = w.qdata.data<int8_t>();
      if (m >= 16) {
        // Token batches: the same int32 accumulator through exact chunked sgemm (int_gemm.h).
        std::vector<float> xf(static_cast<size_t>(m * k));
        for (size_t i = 0; i < xf.size(); ++i) xf[i] = qx[i];
        std::vector<int32_t> acc(static_cast<size_t>(m * n));
        int8_gemm_exact(xf.data(), m, k, qw, n, acc.data());
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < m; ++r) {
          const float sx = a->scale.data<float>()[r];
          for (int64_t c = 0; c < n; ++c)
            yp[r * n + c] = (static_cast<float>(acc[r * n + c]) * sx) * sw[c];
        }
        break;
      }
#pragma omp parallel for if (m * n * k > (1 << 16))
      for (int64_t r = 0; r < m; ++r) {
        for (int64_t c = 0; c < n; ++c) {
          int32_t acc = 0;
          for (int64_t j = 0; j < k; ++j) acc += int32_t{qx[r * k + j]} * int32_t{qw[c * k + j]};
          yp[r * n + c] = (static_cast<float>(acc) * a->scale.data<float>()[r]) * sw[c];
        }
      }
      break;
    }
    case Format::kInt4DynAct: {
      // Exact int32 per group, groups combined in double: sum_g acc_g · s_x · s_w[g].
      auto a = quantize_activation(x2, spec);
      if (!a.ok()) return a.status();
      const int64_t g = groups_of(spec, k), gs = k / g;
      const bool asym = !spec.act_symmetric;
      const uint8_t* qw = w.qdata.data<uint8_t>();
      const int32_t* zw = w.zero_point.data<int32_t>();
#pragma omp parallel for if (m * n * k > (1 << 16))
      for (int64_t r = 0; r < m; ++r) {
        const int32_t zx = asym ? a->zero_point.data<int32_t>()[r] : 0;
        const double sx = a->scale.data<float>()[r];
        for (int64_t c = 0; c < n; ++c) {
          double sum = 0.0;
          for (int64_t gi = 0; gi < g; ++gi) {
            int32_t acc = 0;
            for (int64_t j = gi * gs; j < (gi + 1) * gs; ++j) {
              const int32_t xv = asym ? int32_t{a->qdata.data<uint8_t>()[r * k + j]} - zx
                                      : int32_t{a->qdata.data<int8_t>()[r * k + j]};
              acc += xv * (int32_t{qw[c * k + j]} - zw[c * g + gi]);
            }
            sum += static_cast<double>(acc) * sx * static_cast<double>(sw[c * g + gi]);
          }
          yp[r * n + c] = static_cast<float>(sum);
        }
      }
      break;
    }
    case Format::kFloat8DynAct: {
      // _scaled_mm semantics: fp8 products accumulated in f32, then s_x · s_w.
      auto a = quantize_activation(x2, spec);
      if (!a.ok()) return a.status();
      std::vector<float> xf(static_cast<size_t>(m * k)), wf(static_cast<size_t>(n * k));
      for (size_t i = 0; i < xf.size(); ++i) xf[i] = dmath::f8e4m3fn_to_f32(a->qdata.data<uint8_t>()[i]);
      for (size_t i = 0; i < wf.size(); ++i) wf[i] = from_fp8(w.qdata.data<uint8_t>()[i], spec.fp8);
      if (m > 0 && k > 0) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(n),
                    static_cast<int>(k), 1.0f, xf.data(), static_cast<int>(k), wf.data(),
                    static_cast<int>(k), 0.0f, yp, static_cast<int>(n));
      }
      for (int64_t r = 0; r < m; ++r) {
        const float sx = a->scale.data<float>()[spec.per_row ? r : 0];
        for (int64_t c = 0; c < n; ++c) yp[r * n + c] *= sx * sw[spec.per_row ? c : 0];
      }
      break;
    }
    default: {
      // Weight-only: dequantize (in the weight dtype, as torchao) then an f32 GEMM, one panel of
      // rows at a time so the decoded weight stays in cache and the decode runs in parallel.
      panel_gemm(m, n, k, x2.data<float>(), yp, [&](int64_t r0, int64_t rows, float* dst) {
        dequantize_rows(w, r0, rows, dst);
      });
      break;
    }
  }
  if (bias != nullptr) {
    const float* b = bias->data<float>();
    for (int64_t r = 0; r < m; ++r)
      for (int64_t c = 0; c < n; ++c) yp[r * n + c] += b[c];
  }
  return y;
}

}  // namespace fluxserve::torchao
