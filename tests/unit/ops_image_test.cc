// The CPU image ops (conv2d, group_norm, upsample_nearest2x) against naive double-precision
// references on odd shapes, strides, paddings and weight dtypes.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <tuple>

#include "kernels/ops.h"
#include "tests/unit/test_util.h"

namespace fluxserve {
namespace {

using testing::randn;
using testing::rel_l2;



std::vector<double> conv_ref(const Tensor& x, const Tensor& w, const Tensor* b, int s, int p) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const Tensor w32 = *w.as_f32();
  const int64_t O = w.size(0), kh = w.size(2), kw = w.size(3);
  const int64_t Ho = (H + 2 * p - kh) / s + 1, Wo = (W + 2 * p - kw) / s + 1;
  std::vector<double> y(static_cast<size_t>(B * O * Ho * Wo));
  for (int64_t n = 0; n < B; ++n)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t oy = 0; oy < Ho; ++oy)
        for (int64_t ox = 0; ox < Wo; ++ox) {
          double acc = b ? b->data<float>()[o] : 0.0;
          for (int64_t c = 0; c < C; ++c)
            for (int64_t ky = 0; ky < kh; ++ky)
              for (int64_t kx = 0; kx < kw; ++kx) {
                const int64_t iy = oy * s - p + ky, ix = ox * s - p + kx;
                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                acc += double(x.data<float>()[((n * C + c) * H + iy) * W + ix]) *
                       w32.data<float>()[((o * C + c) * kh + ky) * kw + kx];
              }
          y[((n * O + o) * Ho + oy) * Wo + ox] = acc;
        }
  return y;
}

TEST(OpsImage, Conv2dMatchesNaiveOnOddShapes) {
  // (B, C, H, W, O, k, stride, padding)
  const std::tuple<int, int, int, int, int, int, int, int> cases[] = {
      {1, 1, 1, 1, 1, 1, 1, 0},  {2, 3, 7, 5, 4, 3, 1, 1}, {1, 5, 9, 11, 7, 3, 2, 1},
      {2, 4, 6, 10, 3, 1, 1, 0}, {1, 3, 8, 7, 5, 1, 2, 0}, {1, 2, 5, 6, 3, 5, 1, 2},
      {1, 6, 4, 4, 2, 3, 1, 0},  {2, 3, 6, 9, 4, 4, 3, 2}, {1, 17, 13, 19, 33, 3, 1, 1},
      {1, 2, 3, 3, 2, 3, 1, 3},  // padding larger than half the kernel: all-zero border taps
  };
  uint32_t seed = 100;
  for (auto [B, C, H, W, O, k, s, p] : cases) {
    const Tensor x = randn({B, C, H, W}, seed++), w = randn({O, C, k, k}, seed++, 0.5f);
    const Tensor b = randn({O}, seed++);
    const Tensor y = ops::conv2d(x, w, &b, s, p);
    const int64_t Ho = (H + 2 * p - k) / s + 1, Wo = (W + 2 * p - k) / s + 1;
    ASSERT_EQ(y.shape(), (Shape{B, O, Ho, Wo}));
    EXPECT_LT(rel_l2(y, conv_ref(x, w, &b, s, p)), 1e-6)
        << B << "x" << C << "x" << H << "x" << W << " O=" << O << " k=" << k << " s=" << s
        << " p=" << p;
    const Tensor y_nb = ops::conv2d(x, w, nullptr, s, p);
    EXPECT_LT(rel_l2(y_nb, conv_ref(x, w, nullptr, s, p)), 1e-6);
  }
}

TEST(OpsImage, Conv2dWeightDtypesConvertLikeLinear) {
  const Tensor x = randn({2, 5, 7, 6}, 1), w = randn({4, 5, 3, 3}, 2), b = randn({4}, 3);
  for (DType dt : {DType::kBF16, DType::kF16}) {
    const Tensor wq = *w.to(dt);
    const Tensor wr = *wq.as_f32();
    const Tensor yq = ops::conv2d(x, wq, &b, 1, 1), yr = ops::conv2d(x, wr, &b, 1, 1);
    ASSERT_EQ(yq.shape(), yr.shape());
    for (int64_t i = 0; i < yq.numel(); ++i) ASSERT_EQ(yq.data<float>()[i], yr.data<float>()[i]);
    EXPECT_LT(rel_l2(yq, conv_ref(x, wq, &b, 1, 1)), 1e-6);
  }
}

TEST(OpsImage, Conv2dBandsCoverLargeImages) {
  // 64 input channels x 3x3 x 1100 columns: ~2.5 MiB per output row, so the 32 MiB band
  // holds 13 rows and 40 rows take 4 bands, the last one partial.
  const int64_t C = 64, H = 40, W = 1100, O = 3;
  const Tensor x = randn({1, C, H, W}, 4), w = randn({O, C, 3, 3}, 5, 0.1f), b = randn({O}, 6);
  const Tensor y = ops::conv2d(x, w, &b, 1, 1);
  EXPECT_LT(rel_l2(y, conv_ref(x, w, &b, 1, 1)), 1e-6);
}

TEST(OpsImage, GroupNormMatchesNaive) {
  // (B, C, H, W, groups); large offsets check that the variance is centred, not E[x^2] - E[x]^2.
  const std::tuple<int, int, int, int, int> cases[] = {
      {1, 1, 1, 1, 1}, {2, 6, 5, 7, 3}, {1, 32, 9, 13, 8}, {3, 4, 1, 17, 4}, {1, 12, 33, 31, 1}};
  uint32_t seed = 200;
  for (auto [B, C, H, W, G] : cases) {
    const Tensor x = randn({B, C, H, W}, seed++, 2.0f, 50.0f);
    const Tensor w = randn({C}, seed++, 0.5f, 1.0f), b = randn({C}, seed++);
    const float eps = 1e-6f;
    const Tensor y = ops::group_norm(x, G, w, b, eps);
    ASSERT_EQ(y.shape(), x.shape());
    std::vector<double> ref(static_cast<size_t>(x.numel()));
    const int64_t hw = int64_t(H) * W, cg = C / G, n = cg * hw;
    for (int64_t bg = 0; bg < int64_t(B) * G; ++bg) {
      const float* r = x.data<float>() + bg * n;
      double mu = 0, var = 0;
      for (int64_t j = 0; j < n; ++j) mu += r[j];
      mu /= double(n);
      for (int64_t j = 0; j < n; ++j) var += (r[j] - mu) * (r[j] - mu);
      var /= double(n);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t ch = (bg % G) * cg + j / hw;
        ref[bg * n + j] =
            (r[j] - mu) / std::sqrt(var + eps) * w.data<float>()[ch] + b.data<float>()[ch];
      }
    }
    // A single element per group normalizes to exactly 0: compare absolutely there.
    if (n == 1) {
      for (int64_t i = 0; i < y.numel(); ++i) EXPECT_NEAR(y.data<float>()[i], ref[i], 1e-6);
    } else {
      EXPECT_LT(rel_l2(y, ref), 2e-6) << B << "x" << C << "x" << H << "x" << W << " G=" << G;
    }
  }
}

TEST(OpsImage, UpsampleNearest2x) {
  for (auto [B, C, H, W] : {std::tuple{1, 1, 1, 1}, {2, 3, 5, 7}, {1, 4, 9, 2}}) {
    const Tensor x = randn({B, C, H, W}, 300);
    const Tensor y = ops::upsample_nearest2x(x);
    ASSERT_EQ(y.shape(), (Shape{B, C, 2 * H, 2 * W}));
    for (int64_t p = 0; p < int64_t(B) * C; ++p)
      for (int64_t oy = 0; oy < 2 * H; ++oy)
        for (int64_t ox = 0; ox < 2 * W; ++ox)
          ASSERT_EQ(y.data<float>()[(p * 2 * H + oy) * 2 * W + ox],
                    x.data<float>()[(p * H + oy / 2) * W + ox / 2]);
  }
}

}  // namespace
}  // namespace fluxserve
