// The CPU ops against straightforward double-precision references on random data and odd
// shapes (the pattern of ggml's test-backend-ops; the CUDA backend will join the same table).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "engine/pipeline/latents.h"
#include "kernels/cpu/vec_math.h"
#include "kernels/ops.h"
#include "tests/unit/test_util.h"

namespace fluxserve {
namespace {

using testing::randn;
using testing::rel_l2;



TEST(OpsCpu, LinearOddShapesAndWeightDtypes) {
  for (auto [m, k, n] : {std::tuple{1, 1, 1}, {7, 13, 5}, {33, 64, 17}, {130, 96, 200}}) {
    const Tensor x = randn({m, k}, 1), w = randn({n, k}, 2), b = randn({n}, 3);
    std::vector<double> ref(static_cast<size_t>(m * n));
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        double s = b.data<float>()[j];
        for (int p = 0; p < k; ++p) s += double(x.data<float>()[i * k + p]) * w.data<float>()[j * k + p];
        ref[i * n + j] = s;
      }
    EXPECT_LT(rel_l2(ops::linear(x, w, &b), ref), 1e-6) << m << "x" << k << "x" << n;
    // bf16 weights: equal to f32 compute on the bf16-rounded weights.
    const Tensor wb = *w.to(DType::kBF16);
    const Tensor wr = *wb.as_f32();
    const Tensor yb = ops::linear(x, wb, &b), yr = ops::linear(x, wr, &b);
    for (int64_t i = 0; i < yb.numel(); ++i) ASSERT_EQ(yb.data<float>()[i], yr.data<float>()[i]);
  }
}

TEST(OpsCpu, AttentionMatchesNaiveSoftmax) {
  for (auto [b, s, h, d] : {std::tuple{1, 1, 1, 2}, {2, 67, 3, 16}, {1, 130, 2, 24}}) {
    const Tensor q = randn({b, s, h, d}, 4), k = randn({b, s, h, d}, 5), v = randn({b, s, h, d}, 6);
    const float scale = 1.0f / std::sqrt(float(d));
    std::vector<double> ref(static_cast<size_t>(b * s * h * d));
    auto at = [&](const Tensor& t, int bb, int ss, int hh, int dd) {
      return double(t.data<float>()[((bb * s + ss) * h + hh) * d + dd]);
    };
    for (int bb = 0; bb < b; ++bb)
      for (int hh = 0; hh < h; ++hh)
        for (int i = 0; i < s; ++i) {
          std::vector<double> p(static_cast<size_t>(s));
          double mx = -1e300, sum = 0;
          for (int j = 0; j < s; ++j) {
            double dot = 0;
            for (int dd = 0; dd < d; ++dd) dot += at(q, bb, i, hh, dd) * at(k, bb, j, hh, dd);
            p[j] = dot * scale;
            mx = std::max(mx, p[j]);
          }
          for (double& x : p) sum += (x = std::exp(x - mx));
          for (int dd = 0; dd < d; ++dd) {
            double o = 0;
            for (int j = 0; j < s; ++j) o += p[j] / sum * at(v, bb, j, hh, dd);
            ref[((bb * s + i) * h + hh) * d + dd] = o;
          }
        }
    EXPECT_LT(rel_l2(ops::attention(q, k, v, scale), ref), 1e-5) << s;
  }
}

TEST(OpsCpu, NormsAndModulation) {
  const int64_t b = 2, s = 5, d = 37;
  const Tensor x = randn({b, s, d}, 7, 3.0f), shift = randn({b, d}, 8), scale = randn({b, d}, 9);
  std::vector<double> ref(static_cast<size_t>(b * s * d));
  for (int64_t r = 0; r < b * s; ++r) {
    const float* row = x.data<float>() + r * d;
    double mu = 0, var = 0;
    for (int64_t j = 0; j < d; ++j) mu += row[j];
    mu /= d;
    for (int64_t j = 0; j < d; ++j) var += (row[j] - mu) * (row[j] - mu);
    var /= d;
    const int64_t bb = r / s;
    for (int64_t j = 0; j < d; ++j)
      ref[r * d + j] = (row[j] - mu) / std::sqrt(var + 1e-6) * (1 + scale.data<float>()[bb * d + j]) +
                       shift.data<float>()[bb * d + j];
  }
  EXPECT_LT(rel_l2(ops::layer_norm_modulate(x, shift, scale, 1e-6f), ref), 1e-6);

  Tensor y = x.clone();
  const Tensor w = randn({d}, 10);
  ops::rms_norm_(y, w, 1e-6f);
  for (int64_t r = 0; r < b * s; ++r) {
    const float* row = x.data<float>() + r * d;
    double ms = 0;
    for (int64_t j = 0; j < d; ++j) ms += double(row[j]) * row[j];
    ms /= d;
    for (int64_t j = 0; j < d; ++j) ref[r * d + j] = row[j] / std::sqrt(ms + 1e-6) * w.data<float>()[j];
  }
  EXPECT_LT(rel_l2(y, ref), 1e-6);

  Tensor g = x.clone();
  const Tensor gate = randn({b, d}, 11), other = randn({b, s, d}, 12);
  ops::gated_add_(g, gate, other);
  for (int64_t i = 0; i < b * s * d; ++i)
    ref[i] = double(x.data<float>()[i]) + double(gate.data<float>()[(i / (s * d)) * d + i % d]) * other.data<float>()[i];
  EXPECT_LT(rel_l2(g, ref), 1e-7);
}

TEST(OpsCpu, Activations) {
  Tensor x = randn({1000}, 13, 4.0f);
  x.data<float>()[0] = -100.f;
  x.data<float>()[1] = 100.f;
  Tensor g = x.clone(), s = x.clone();
  ops::gelu_tanh_(g);
  ops::silu_(s);
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double v = x.data<float>()[i];
    const double gr = 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
    const double sr = v / (1 + std::exp(-v));
    EXPECT_NEAR(g.data<float>()[i], gr, 1e-6 * std::max(1.0, std::fabs(gr))) << v;
    EXPECT_NEAR(s.data<float>()[i], sr, 1e-6 * std::max(1.0, std::fabs(sr))) << v;
  }
}

TEST(OpsCpu, VectorExpIsAccurate) {
  double worst = 0;
  for (float v = -87.0f; v < 88.0f; v += 0.0137f) {
    worst = std::max(worst, std::fabs(cpu::vexp(v) / std::exp(double(v)) - 1));
  }
  EXPECT_LT(worst, 5e-7);
  EXPECT_EQ(cpu::vexp(-1000.f), 0.0f);
}

TEST(OpsCpu, RopeRotatesInterleavedPairs) {
  const int64_t b = 1, s = 3, h = 2, d = 6;
  Tensor x = randn({b, s, h, d}, 14);
  const Tensor c = randn({s, d}, 15), sn = randn({s, d}, 16);
  Tensor y = x.clone();
  ops::rope_(y, c, sn);
  for (int64_t i = 0; i < s; ++i)
    for (int64_t hh = 0; hh < h; ++hh)
      for (int64_t k = 0; k < d; k += 2) {
        const float* xv = x.data<float>() + (i * h + hh) * d;
        const float* yv = y.data<float>() + (i * h + hh) * d;
        EXPECT_FLOAT_EQ(yv[k], xv[k] * c.data<float>()[i * d + k] - xv[k + 1] * sn.data<float>()[i * d + k]);
        EXPECT_FLOAT_EQ(yv[k + 1], xv[k + 1] * c.data<float>()[i * d + k + 1] + xv[k] * sn.data<float>()[i * d + k + 1]);
      }
}

TEST(OpsCpu, SequenceAndChannelPlumbing) {
  const Tensor a = randn({2, 3, 4}, 17), b = randn({2, 5, 4}, 18);
  const Tensor c = ops::cat_seq(a, b);
  ASSERT_EQ(c.shape(), (Shape{2, 8, 4}));
  EXPECT_EQ(c.data<float>()[(1 * 8 + 3) * 4 + 2], b.data<float>()[(1 * 5 + 0) * 4 + 2]);
  const Tensor back = ops::slice_seq(c, 3, 5);
  for (int64_t i = 0; i < b.numel(); ++i) ASSERT_EQ(back.data<float>()[i], b.data<float>()[i]);
  const Tensor l = ops::cat_last(a, a);
  EXPECT_EQ(l.data<float>()[7], a.data<float>()[3]);
  const auto parts = ops::chunk_last(l, 2);
  for (int64_t i = 0; i < a.numel(); ++i) ASSERT_EQ(parts[1].data<float>()[i], a.data<float>()[i]);
}

TEST(Latents, PackingFollowsFluxPipelineIndexing) {
  const int64_t B = 2, C = 3, h = 4, w = 6;
  const Tensor lat = randn({B, C, h, w}, 19);
  const Tensor packed = pack_latents(lat);
  ASSERT_EQ(packed.shape(), (Shape{B, (h / 2) * (w / 2), C * 4}));
  // token n = i * (w/2) + j, feature f = c*4 + dy*2 + dx (flux-spec.md §2.2)
  for (int64_t n = 0; n < B; ++n)
    for (int64_t i = 0; i < h / 2; ++i)
      for (int64_t j = 0; j < w / 2; ++j)
        for (int64_t c = 0; c < C; ++c)
          for (int64_t dy = 0; dy < 2; ++dy)
            for (int64_t dx = 0; dx < 2; ++dx)
              ASSERT_EQ(packed.data<float>()[((n * (h / 2) + i) * (w / 2) + j) * C * 4 + c * 4 + dy * 2 + dx],
                        lat.data<float>()[((n * C + c) * h + 2 * i + dy) * w + 2 * j + dx]);
  const Tensor un = unpack_latents(packed, h, w);
  for (int64_t i = 0; i < lat.numel(); ++i) ASSERT_EQ(un.data<float>()[i], lat.data<float>()[i]);
  const Tensor ids = latent_image_ids(2, 3);
  EXPECT_EQ(ids.data<float>()[5 * 3 + 1], 1.0f);  // token 5 = row 1, col 2
  EXPECT_EQ(ids.data<float>()[5 * 3 + 2], 2.0f);
}

}  // namespace
}  // namespace fluxserve
