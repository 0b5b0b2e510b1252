// TorchGenerator: the mt19937 stream, the two randn code paths (numel < 16 and >= 16) and their
// bookkeeping. Bit-exactness against torch itself is tests/golden/torch_rng_golden_test.cc.
#include "engine/pipeline/torch_rng.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/common/dtype_math.h"

namespace fluxserve {
namespace {

std::vector<float> values(const Tensor& t) {
  const float* p = t.data<float>();
  return std::vector<float>(p, p + t.numel());
}

std::vector<float> randn(uint64_t seed, const Shape& shape,
                         TorchRngPath path = TorchRngPath::kX86Vectorized) {
  TorchGenerator g(seed, path);
  return values(g.randn(shape));
}

TEST(TorchRng, Mt19937MatchesStdMt19937ForThirtyTwoBitSeeds) {
  for (uint32_t seed : {0u, 1u, 42u, 5489u, 0xffffffffu}) {
    std::mt19937 ref(seed);
    TorchGenerator g(seed);
    for (int i = 0; i < 2000; ++i) ASSERT_EQ(g.random(), ref()) << "seed " << seed << " draw " << i;
  }
  TorchGenerator g(5489);
  for (int i = 1; i < 10000; ++i) g.random();
  EXPECT_EQ(g.random(), 4123659995u);  // the C++ standard's check value for mt19937
}

TEST(TorchRng, OnlyTheLowThirtyTwoBitsOfTheSeedMatter) {
  EXPECT_EQ(randn(5, {40}), randn((uint64_t{1} << 32) + 5, {40}));
  EXPECT_EQ(randn(7, {3}), randn(0xffffffff00000007ull, {3}));
  TorchGenerator g((uint64_t{1} << 63) - 1);
  EXPECT_EQ(g.initial_seed(), (uint64_t{1} << 63) - 1);
}

TEST(TorchRng, Random64IsTwoDrawsHighFirst) {
  TorchGenerator a(3), b(3);
  const uint64_t hi = a.random(), lo = a.random();
  EXPECT_EQ(b.random64(), (hi << 32) | lo);
}

TEST(TorchRng, SameSeedSameValuesDifferentSeedsDiffer) {
  for (const Shape& shape : {Shape{1}, Shape{7}, Shape{16}, Shape{17}, Shape{2, 16, 6, 10}}) {
    EXPECT_EQ(randn(42, shape), randn(42, shape));
    EXPECT_NE(randn(42, shape), randn(43, shape));
    for (float v : randn(42, shape)) EXPECT_TRUE(std::isfinite(v));
  }
}

TEST(TorchRng, KnownTorchValuesForSeedZero) {
  // torch.randn(20, generator=torch.Generator().manual_seed(0))[:4], as torch prints them.
  const std::vector<float> v = randn(0, {20});
  const float expected[4] = {-1.1258f, -1.1524f, -0.2506f, -0.4339f};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(v[i], expected[i], 1e-4) << i;
  // torch.randn(7, generator=...manual_seed(42)): the scalar path.
  const std::vector<float> w = randn(42, {7});
  const float expected7[7] = {0.3367f, 0.1288f, 0.2345f, 0.2303f, -1.1229f, -0.1863f, 2.2082f};
  for (int i = 0; i < 7; ++i) EXPECT_NEAR(w[i], expected7[i], 1e-4) << i;
}

TEST(TorchRng, BelowSixteenCachesTheSecondSample) {
  // Box-Muller in double yields pairs; the second of a pair waits in the generator.
  const std::vector<float> two = randn(9, {2});
  TorchGenerator g(9);
  const float a = values(g.randn({1}))[0];
  const float b = values(g.randn({1}))[0];
  EXPECT_EQ(a, two[0]);
  EXPECT_EQ(b, two[1]);
  // manual_seed drops the cached sample.
  g.manual_seed(9);
  EXPECT_EQ(values(g.randn({1}))[0], two[0]);
  g.manual_seed(9);
  EXPECT_EQ(values(g.randn({2})), two);
}

TEST(TorchRng, SixteenAndAboveWorkInBlocksWithARecomputedTail) {
  const std::vector<float> v16 = randn(11, {16});
  const std::vector<float> v32 = randn(11, {32});
  EXPECT_EQ(std::vector<float>(v32.begin(), v32.begin() + 16), v16);
  // numel 17: the block [0,16) is overwritten from index 1 by a block drawn from fresh uniforms.
  const std::vector<float> v17 = randn(11, {17});
  EXPECT_EQ(v17[0], v16[0]);
  EXPECT_NE(v17[1], v16[1]);
  // Rows of a bigger tensor are one flat stream.
  EXPECT_EQ(randn(11, {4, 8}), v32);
}

TEST(TorchRng, DrawsContinueAcrossCalls) {
  TorchGenerator g(21);
  const std::vector<float> first = values(g.randn({16}));
  const std::vector<float> second = values(g.randn({16}));
  EXPECT_EQ(first, randn(21, {16}));
  EXPECT_NE(first, second);
  // An empty draw consumes nothing.
  TorchGenerator h(21);
  EXPECT_EQ(h.randn({0}).numel(), 0);
  EXPECT_EQ(values(h.randn({16})), first);
}

TEST(TorchRng, HalfPrecisionRoundsTheFloatBlocks) {
  // With numel % 16 == 0 bf16/f16 use exactly the f32 draws, rounded to nearest even.
  TorchGenerator g(42);
  const std::vector<float> f = randn(42, {2, 16, 8});
  const Tensor b = g.randn({2, 16, 8}, DType::kBF16);
  g.manual_seed(42);
  const Tensor h = g.randn({2, 16, 8}, DType::kF16);
  ASSERT_EQ(b.dtype(), DType::kBF16);
  for (size_t i = 0; i < f.size(); ++i) {
    ASSERT_EQ(b.data<uint16_t>()[i], dmath::f32_to_bf16(f[i])) << i;
    ASSERT_EQ(h.data<uint16_t>()[i], dmath::f32_to_f16(f[i])) << i;
  }
  // With a ragged tail the half path draws fewer uniforms than f32, so the tails differ.
  g.manual_seed(42);
  const Tensor b17 = g.randn({17}, DType::kBF16);
  const std::vector<float> f17 = randn(42, {17});
  EXPECT_EQ(b17.data<uint16_t>()[0], dmath::f32_to_bf16(f17[0]));
  EXPECT_NE(b17.data<uint16_t>()[16], dmath::f32_to_bf16(f17[16]));
}

TEST(TorchRng, PerSampleSeedsConcatenate) {
  const std::vector<uint64_t> seeds = {3, 4};
  const Tensor t = randn_per_sample(seeds, {2, 16, 4, 4});
  ASSERT_EQ(t.shape(), (Shape{2, 16, 4, 4}));
  std::vector<float> expect = randn(3, {1, 16, 4, 4});
  const std::vector<float> second = randn(4, {1, 16, 4, 4});
  expect.insert(expect.end(), second.begin(), second.end());
  EXPECT_EQ(values(t), expect);
}

TEST(TorchRng, PathsAgreeClosely) {
  // The AVX2 (cephes) and libm Box-Muller blocks differ only in the last bits.
  const std::vector<float> a = randn(1, {1, 16, 32, 32}, TorchRngPath::kX86Vectorized);
  const std::vector<float> b = randn(1, {1, 16, 32, 32}, TorchRngPath::kScalarLibm);
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(double(a[i]) - b[i]));
  EXPECT_LT(worst, 1e-5);
  EXPECT_EQ(randn(1, {15}, TorchRngPath::kX86Vectorized), randn(1, {15}, TorchRngPath::kScalarLibm));
}

TEST(TorchRng, LatentSizedDrawIsStandardNormal) {
  const std::vector<float> v = randn(123, {1, 16, 128, 128});
  double sum = 0, sq = 0;
  for (float x : v) {
    sum += x;
    sq += double(x) * x;
  }
  const double n = static_cast<double>(v.size());
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(std::sqrt(sq / n), 1.0, 0.01);
}

}  // namespace
}  // namespace fluxserve
