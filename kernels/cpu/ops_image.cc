// CPU image ops for the VAE decoder: conv2d (im2col in bands of output rows + OpenBLAS sgemm),
// GroupNorm (statistics in double) and nearest-neighbour 2x upsampling, all NCHW f32.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "engine/core/check.h"
#include "kernels/cpu/ops_cpu.h"

namespace fluxserve::cpu {
namespace {

void require_f32(const Tensor& t, const char* op) {
  FLUX_CHECK(t.dtype() == DType::kF32) << op << ": expected float32, got " << dtype_name(t.dtype());
}

// Minimum work per OpenMP region, so tiny tensors stay single-threaded.
constexpr int64_t kParallelMin = 1 << 14;

// The im2col buffer of one band of output rows stays below this: at 1024x1024 with 128 input
// channels a 3x3 column row is 1152 x 1024 floats (4.5 MiB), so a band holds ~7 output rows
// (N = ~7000 columns, plenty for the GEMM) instead of the 4.5 GiB a whole-image im2col would take.
constexpr int64_t kBandBytes = 32 << 20;

struct ConvGeom {
  int64_t c, h, w;  // input channels and size
  int64_t kh, kw;   // kernel
  int64_t stride, pad;
  int64_t ho, wo;  // output size
};

// Column matrix for output rows [r0, r0 + nr) of one image: col[k, r * wo + ox] with
// k = (c * kh + ky) * kw + kx, zero where the kernel tap falls into the padding.
void im2col_band(const float* x, const ConvGeom& g, int64_t r0, int64_t nr, float* col) {
  const int64_t k_total = g.c * g.kh * g.kw, n = nr * g.wo;
#pragma omp parallel for if (k_total * n > kParallelMin)
  for (int64_t k = 0; k < k_total; ++k) {
    const int64_t c = k / (g.kh * g.kw), ky = (k / g.kw) % g.kh, kx = k % g.kw;
    // Output columns whose tap lands inside the image: ix = ox * stride - pad + kx in [0, w).
    const int64_t lo_num = g.pad - kx, hi_num = g.w - 1 + g.pad - kx;
    int64_t ox_lo = lo_num <= 0 ? 0 : (lo_num + g.stride - 1) / g.stride;
    int64_t ox_hi = hi_num < 0 ? 0 : std::min(g.wo, hi_num / g.stride + 1);
    ox_lo = std::min(ox_lo, g.wo);
    ox_hi = std::max(ox_hi, ox_lo);
    for (int64_t r = 0; r < nr; ++r) {
      float* dst = col + k * n + r * g.wo;
      const int64_t iy = (r0 + r) * g.stride - g.pad + ky;
      if (iy < 0 || iy >= g.h) {
        std::memset(dst, 0, static_cast<size_t>(g.wo) * sizeof(float));
        continue;
      }
      const float* src = x + (c * g.h + iy) * g.w;
      std::memset(dst, 0, static_cast<size_t>(ox_lo) * sizeof(float));
      if (g.stride == 1) {
        std::memcpy(dst + ox_lo, src + ox_lo - g.pad + kx,
                    static_cast<size_t>(ox_hi - ox_lo) * sizeof(float));
      } else {
        for (int64_t ox = ox_lo; ox < ox_hi; ++ox) dst[ox] = src[ox * g.stride - g.pad + kx];
      }
      std::memset(dst + ox_hi, 0, static_cast<size_t>(g.wo - ox_hi) * sizeof(float));
    }
  }
}

}  // namespace

Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor* b, int stride, int padding) {
  require_f32(x, "conv2d");
  FLUX_CHECK(x.dim() == 4 && w.dim() == 4 && w.size(1) == x.size(1) && stride >= 1 &&
             padding >= 0 && x.size(2) + 2 * padding >= w.size(2) &&
             x.size(3) + 2 * padding >= w.size(3))
      << "conv2d: x " << x.shape_str() << " weight " << w.shape_str() << " stride " << stride
      << " padding " << padding;
  ConvGeom g{x.size(1), x.size(2), x.size(3), w.size(2), w.size(3), stride, padding, 0, 0};
  g.ho = (g.h + 2 * g.pad - g.kh) / g.stride + 1;
  g.wo = (g.w + 2 * g.pad - g.kw) / g.stride + 1;
  const int64_t bsz = x.size(0), o = w.size(0), k = g.c * g.kh * g.kw, plane = g.ho * g.wo;
  Tensor y = Tensor::empty({bsz, o, g.ho, g.wo});
  if (y.numel() == 0) return y;
  float* yp = y.data<float>();
  // As in linear(): the bias is written first and the GEMMs accumulate onto it (beta = 1).
  if (b != nullptr) {
    FLUX_CHECK(b->numel() == o) << "conv2d: bias " << b->shape_str() << " for " << o << " outputs";
    absl::StatusOr<Tensor> b32 = b->as_f32();
    FLUX_CHECK(b32.ok()) << b32.status();
    const float* bp = b32->data<float>();
#pragma omp parallel for if (y.numel() > kParallelMin)
    for (int64_t i = 0; i < bsz * o; ++i) std::fill_n(yp + i * plane, plane, bp[i % o]);
  } else {
    std::memset(yp, 0, y.nbytes());
  }
  if (k == 0) return y;
  absl::StatusOr<Tensor> w32 = w.as_f32();  // [O, K] row-major: K = (c, ky, kx)
  FLUX_CHECK(w32.ok()) << w32.status();
  const float* wp = w32->data<float>();
  const float* xp = x.data<float>();
  const int64_t in_plane = g.c * g.h * g.w;

  if (g.kh == 1 && g.kw == 1 && g.stride == 1 && g.pad == 0) {
    // 1x1: the input image [C, H*W] already is the column matrix.
    for (int64_t i = 0; i < bsz; ++i) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(o),
                  static_cast<int>(plane), static_cast<int>(k), 1.0f, wp, static_cast<int>(k),
                  xp + i * in_plane, static_cast<int>(plane), 1.0f, yp + i * o * plane,
                  static_cast<int>(plane));
    }
    return y;
  }

  const int64_t row_bytes = k * g.wo * static_cast<int64_t>(sizeof(float));
  const int64_t band = std::clamp<int64_t>(kBandBytes / std::max<int64_t>(row_bytes, 1), 1, g.ho);
  std::vector<float> col(static_cast<size_t>(k * band * g.wo));
  for (int64_t i = 0; i < bsz; ++i) {
    for (int64_t r0 = 0; r0 < g.ho; r0 += band) {
      const int64_t nr = std::min(band, g.ho - r0), n = nr * g.wo;
      im2col_band(xp + i * in_plane, g, r0, nr, col.data());
      // y[i][:, r0 * wo : (r0 + nr) * wo] += W [O, K] . col [K, n]
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(o),
                  static_cast<int>(n), static_cast<int>(k), 1.0f, wp, static_cast<int>(k),
                  col.data(), static_cast<int>(n), 1.0f, yp + i * o * plane + r0 * g.wo,
                  static_cast<int>(plane));
    }
  }
  return y;
}

Tensor group_norm(const Tensor& x, int groups, const Tensor& w, const Tensor& b, float eps) {
  require_f32(x, "group_norm");
  FLUX_CHECK(x.dim() >= 2 && groups > 0 && x.size(1) % groups == 0 && w.numel() == x.size(1) &&
             b.numel() == x.size(1) && w.dtype() == DType::kF32 && b.dtype() == DType::kF32)
      << "group_norm(" << groups << "): x " << x.shape_str() << " weight " << w.shape_str()
      << " bias " << b.shape_str();
  const int64_t bsz = x.size(0), c = x.size(1);
  const int64_t hw = bsz * c == 0 ? 0 : x.numel() / (bsz * c);
  const int64_t cg = c / groups, n = cg * hw;
  Tensor y = Tensor::empty(x.shape());
  if (y.numel() == 0) return y;
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  std::vector<float> mean(static_cast<size_t>(bsz * groups)), rstd(mean.size());
  // One (batch, group) is a contiguous run of cg * hw values: mean, then the centred variance,
  // both summed in double so a 4M-element group (1024x1024, 4 channels) stays exact to f32.
#pragma omp parallel for if (x.numel() > kParallelMin) schedule(dynamic)
  for (int64_t i = 0; i < bsz * groups; ++i) {
    const float* r = xp + i * n;
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; ++j) s += r[j];
    const double mu = s / static_cast<double>(n);
    double v = 0;
#pragma omp simd reduction(+ : v)
    for (int64_t j = 0; j < n; ++j) {
      const double d = r[j] - mu;
      v += d * d;
    }
    v /= static_cast<double>(n);
    mean[i] = static_cast<float>(mu);
    rstd[i] = static_cast<float>(1.0 / std::sqrt(v + static_cast<double>(eps)));
  }
  const float* wp = w.data<float>();
  const float* bp = b.data<float>();
#pragma omp parallel for if (x.numel() > kParallelMin)
  for (int64_t i = 0; i < bsz * c; ++i) {
    const int64_t ch = i % c, stat = (i / c) * groups + ch / cg;
    const float mu = mean[stat], rs = rstd[stat], wc = wp[ch], bc = bp[ch];
    const float* r = xp + i * hw;
    float* o = yp + i * hw;
#pragma omp simd
    for (int64_t j = 0; j < hw; ++j) o[j] = (r[j] - mu) * rs * wc + bc;
  }
  return y;
}

Tensor upsample_nearest2x(const Tensor& x) {
  FLUX_CHECK(x.dim() == 4) << "upsample_nearest2x: x " << x.shape_str();
  require_f32(x, "upsample_nearest2x");
  const int64_t planes = x.size(0) * x.size(1), h = x.size(2), w = x.size(3);
  Tensor y = Tensor::empty({x.size(0), x.size(1), 2 * h, 2 * w});
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
#pragma omp parallel for if (y.numel() > kParallelMin)
  for (int64_t r = 0; r < planes * h; ++r) {  // one input row -> two identical output rows
    const float* src = xp + r * w;
    float* dst = yp + r * 4 * w;
#pragma omp simd
    for (int64_t j = 0; j < 2 * w; ++j) dst[j] = src[j >> 1];
    std::memcpy(dst + 2 * w, dst, static_cast<size_t>(2 * w) * sizeof(float));
  }
  return y;
}

}  // namespace fluxserve::cpu
