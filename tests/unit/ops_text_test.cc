// The text-encoder CPU ops (attention_ex with bias / causal mask, quick_gelu, mul, embedding)
// against straightforward double-precision references on random data and odd shapes.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <tuple>
#include <vector>

#include "kernels/ops.h"
#include "tests/unit/test_util.h"

namespace fluxserve {
namespace {

using testing::randn;
using testing::rel_l2;



// softmax(scale * q k^T + bias [+ causal]) v in double; q, k, v: [B, S, H, D].
std::vector<double> naive_attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                                    const Tensor* bias, bool causal) {
  const int b = static_cast<int>(q.size(0)), s = static_cast<int>(q.size(1));
  const int h = static_cast<int>(q.size(2)), d = static_cast<int>(q.size(3));
  auto at = [&](const Tensor& t, int bb, int ss, int hh, int dd) {
    return double(t.data<float>()[((bb * s + ss) * h + hh) * d + dd]);
  };
  std::vector<double> ref(static_cast<size_t>(b * s * h * d));
  for (int bb = 0; bb < b; ++bb)
    for (int hh = 0; hh < h; ++hh)
      for (int i = 0; i < s; ++i) {
        const int n = causal ? i + 1 : s;
        std::vector<double> p(static_cast<size_t>(n));
        double mx = -1e300, sum = 0;
        for (int j = 0; j < n; ++j) {
          double dot = 0;
          for (int dd = 0; dd < d; ++dd) dot += at(q, bb, i, hh, dd) * at(k, bb, j, hh, dd);
          p[j] = dot * scale;
          if (bias) p[j] += bias->data<float>()[(hh * s + i) * s + j];
          mx = std::max(mx, p[j]);
        }
        for (double& x : p) sum += (x = std::exp(x - mx));
        for (int dd = 0; dd < d; ++dd) {
          double o = 0;
          for (int j = 0; j < n; ++j) o += p[j] / sum * at(v, bb, j, hh, dd);
          ref[((bb * s + i) * h + hh) * d + dd] = o;
        }
      }
  return ref;
}

TEST(OpsText, AttentionExBiasAndCausalMatchNaive) {
  // 300 > the 256-row query block: the causal key range differs between blocks.
  for (auto [b, s, h, d] :
       {std::tuple{1, 1, 1, 2}, {2, 17, 4, 8}, {1, 77, 3, 16}, {2, 300, 2, 8}}) {
    const Tensor q = randn({b, s, h, d}, 11), k = randn({b, s, h, d}, 12),
                 v = randn({b, s, h, d}, 13);
    const Tensor bias = randn({h, s, s}, 14, 2.0f);
    const float scale = 1.0f / std::sqrt(float(d));
    for (const bool causal : {false, true}) {
      for (const Tensor* bp : {static_cast<const Tensor*>(nullptr), &bias}) {
        const Tensor out = ops::attention_ex(q, k, v, bp == nullptr ? scale : 1.0f, bp, causal);
        ASSERT_EQ(out.shape(), (Shape{b, s, h * d}));
        EXPECT_LT(rel_l2(out, naive_attention(q, k, v, bp == nullptr ? scale : 1.0f, bp, causal)),
                  1e-5)
            << "s=" << s << " causal=" << causal << " bias=" << (bp != nullptr);
      }
    }
  }
}

TEST(OpsText, AttentionExWithoutOptionsIsAttention) {
  const Tensor q = randn({2, 67, 3, 16}, 21), k = randn({2, 67, 3, 16}, 22),
               v = randn({2, 67, 3, 16}, 23);
  const Tensor a = ops::attention(q, k, v, 0.25f),
               b = ops::attention_ex(q, k, v, 0.25f, nullptr, false);
  for (int64_t i = 0; i < a.numel(); ++i) ASSERT_EQ(a.data<float>()[i], b.data<float>()[i]);
}

TEST(OpsText, CausalMaskGivesExactlyZeroWeightToLaterKeys) {
  // Huge values in later keys/values must not leak into earlier queries, not even as 0 * inf.
  const int64_t s = 9, h = 2, d = 4;
  const Tensor q = randn({1, s, h, d}, 31);
  Tensor k = randn({1, s, h, d}, 32), v = randn({1, s, h, d}, 33);
  Tensor k2 = k.clone(), v2 = v.clone();
  for (int64_t j = 5; j < s; ++j) {
    for (int64_t x = 0; x < h * d; ++x) {
      k2.data<float>()[j * h * d + x] = 1e4f;
      v2.data<float>()[j * h * d + x] = 3e30f;
    }
  }
  const Tensor a = ops::attention_ex(q, k, v, 0.5f, nullptr, true);
  const Tensor b = ops::attention_ex(q, k2, v2, 0.5f, nullptr, true);
  for (int64_t i = 0; i < 5 * h * d; ++i) ASSERT_EQ(a.data<float>()[i], b.data<float>()[i]) << i;
  // Row 0 attends to key 0 only: the output is exactly v[0].
  for (int64_t x = 0; x < h * d; ++x) EXPECT_EQ(a.data<float>()[x], v.data<float>()[x]);
}

TEST(OpsText, QuickGeluMatchesDouble) {
  Tensor x = randn({3, 1001}, 41, 4.0f);
  x.data<float>()[0] = -100.f;
  x.data<float>()[1] = 100.f;
  x.data<float>()[2] = 0.f;
  std::vector<double> ref(static_cast<size_t>(x.numel()));
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double v = x.data<float>()[i];
    ref[i] = v / (1.0 + std::exp(-1.702 * v));
  }
  ops::quick_gelu_(x);
  EXPECT_LT(rel_l2(x, ref), 1e-6);
  // Elementwise: float32's 1.702f and exp's ulps, scaled by |1.702 x| in the far negative tail.
  for (int64_t i = 0; i < x.numel(); ++i) {
    ASSERT_NEAR(x.data<float>()[i], ref[i], 4e-6 * std::abs(ref[i]) + 1e-30) << i;
  }
  EXPECT_EQ(x.data<float>()[1], 100.f);
  EXPECT_EQ(x.data<float>()[2], 0.f);
}

TEST(OpsText, MulIsElementwise) {
  Tensor x = randn({5, 33}, 51);
  const Tensor y = randn({5, 33}, 52), x0 = x.clone();
  ops::mul_(x, y);
  for (int64_t i = 0; i < x.numel(); ++i) {
    ASSERT_EQ(x.data<float>()[i], x0.data<float>()[i] * y.data<float>()[i]);
  }
}

TEST(OpsText, EmbeddingPicksRowsForEveryDtype) {
  const Tensor table = randn({37, 13}, 61);
  Tensor ids64 = Tensor::empty({2, 5}, DType::kI64);
  Tensor ids32 = Tensor::empty({2, 5}, DType::kI32);
  const int64_t picks[] = {0, 36, 5, 5, 17, 1, 2, 3, 36, 0};
  for (int i = 0; i < 10; ++i) {
    ids64.data<int64_t>()[i] = picks[i];
    ids32.data<int32_t>()[i] = static_cast<int32_t>(picks[i]);
  }
  for (const DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
    const Tensor t = *table.to(dt);
    const Tensor exact = *t.as_f32();  // the stored values, widened
    for (const Tensor* ids : {&ids64, &ids32}) {
      const Tensor out = ops::embedding(t, *ids);
      ASSERT_EQ(out.shape(), (Shape{2, 5, 13})) << dtype_name(dt);
      ASSERT_EQ(out.dtype(), DType::kF32);
      for (int i = 0; i < 10; ++i)
        for (int j = 0; j < 13; ++j)
          ASSERT_EQ(out.data<float>()[i * 13 + j], exact.data<float>()[picks[i] * 13 + j])
              << dtype_name(dt) << " id " << picks[i];
    }
  }
}

TEST(OpsTextDeathTest, EmbeddingOutOfRangeIsAProgrammingError) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // OpenMP threads may be alive
  const Tensor table = randn({4, 3}, 71);
  Tensor ids = Tensor::empty({1}, DType::kI64);
  ids.data<int64_t>()[0] = 4;
  EXPECT_DEATH(ops::embedding(table, ids), "outside");
}

}  // namespace
}  // namespace fluxserve
