// The fast quantized-linear paths (panel decode + sgemm, exact chunked int8 sgemm) against the
// direct computations they replace: integer results exactly equal, f32 ones to rounding.
#include <cblas.h>
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "engine/quant/bnb_formats.h"
#include "engine/quant/bnb_gemm.h"
#include "engine/quant/int_gemm.h"
#include "engine/quant/torchao_formats.h"
#include "tests/unit/test_util.h"

namespace fluxserve {
namespace {

using testing::randn;

Tensor filled(Shape shape, float v) {
  Tensor t = Tensor::empty(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = v;
  return t;
}

Tensor row(const Tensor& x, int64_t i) {
  const int64_t k = x.size(1);
  Tensor r = Tensor::empty({1, k});
  std::memcpy(r.raw(), x.data<float>() + i * k, static_cast<size_t>(k) * sizeof(float));
  return r;
}

// Largest relative difference of a [M, N] result from ref, elementwise over max |ref|.
double max_rel(const Tensor& a, const Tensor& ref) {
  double mx = 0.0, ma = 0.0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    mx = std::max(mx, std::fabs(static_cast<double>(a.data<float>()[i]) - ref.data<float>()[i]));
    ma = std::max(ma, std::fabs(static_cast<double>(ref.data<float>()[i])));
  }
  return ma == 0.0 ? mx : mx / ma;
}

TEST(IntGemm, ChunkBoundKeepsPartialSumsExact) {
  EXPECT_EQ(exact_sgemm_chunk(128, 128), 1024);
  EXPECT_EQ(exact_sgemm_chunk(255, 15), 4386);
}

// All operands at the int8 extremes: one unchunked f32 sum would pass 2^24 after 1025 products.
TEST(IntGemm, AdversarialExtremesAreExact) {
  for (int64_t k : {1024, 1025, 3072, 5000}) {
    const int64_t m = 5, n = 130;
    std::vector<float> a(static_cast<size_t>(m * k));
    std::vector<int8_t> b(static_cast<size_t>(n * k));
    for (int64_t i = 0; i < m * k; ++i) a[i] = (i % 7 == 0) ? 127.0f : -128.0f;
    for (int64_t i = 0; i < n * k; ++i) b[i] = (i % 5 == 0) ? 127 : -128;
    std::vector<int32_t> acc(static_cast<size_t>(m * n));
    int8_gemm_exact(a.data(), m, k, b.data(), n, acc.data());
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        int64_t want = 0;
        for (int64_t c = 0; c < k; ++c)
          want += static_cast<int64_t>(a[i * k + c]) * b[j * k + c];
        ASSERT_EQ(acc[i * n + j], want) << "k " << k << " at " << i << "," << j;
      }
    }
  }
}

// bnb8_linear runs the chunked sgemm from 16 rows on and the direct dot products below; with
// threshold 0 rows are quantized independently, so the two must agree bit for bit. ±1 inputs
// and weights make every code ±127 and every accumulator 127·127·K > 2^24.
TEST(Bnb8Linear, BatchedPathEqualsRowByRowOnExtremes) {
  const int64_t m = 20, n = 70, k = 3072;
  Tensor x = Tensor::empty({m, k}), w = Tensor::empty({n, k});
  for (int64_t i = 0; i < m * k; ++i) x.data<float>()[i] = (i % 3 == 0) ? -1.0f : 1.0f;
  for (int64_t i = 0; i < n * k; ++i) w.data<float>()[i] = (i % 11 == 0) ? -0.5f : 0.5f;
  for (int64_t i = 0; i < k; ++i) x.data<float>()[i] = 1.0f;  // row 0: acc = ±127·127·3072 mix
  auto q = bnb8_quantize(w);
  ASSERT_TRUE(q.ok()) << q.status();
  const Tensor bias = randn({n}, 3);
  const Tensor y = bnb8_linear(x, *q, &bias, 0.0f);
  for (int64_t i = 0; i < m; ++i) {
    const Tensor yi = bnb8_linear(row(x, i), *q, &bias, 0.0f);
    ASSERT_EQ(std::memcmp(yi.raw(), y.data<float>() + i * n, n * sizeof(float)), 0) << "row " << i;
  }
  // Random values, with threshold 6 outliers: same as the row loop up to the outlier columns,
  // which depend on the whole batch; check against the reference tolerance instead.
  const Tensor xr = randn({m, k}, 7, 2.0f);
  const Tensor wr = randn({n, k}, 8, 0.05f);
  auto qr = bnb8_quantize(wr);
  ASSERT_TRUE(qr.ok());
  const Tensor y0 = bnb8_linear(xr, *qr, nullptr, 0.0f);
  for (int64_t i = 0; i < m; ++i) {
    const Tensor yi = bnb8_linear(row(xr, i), *qr, nullptr, 0.0f);
    ASSERT_EQ(std::memcmp(yi.raw(), y0.data<float>() + i * n, n * sizeof(float)), 0);
  }
}

// int8dq: per-token activation scales, so the batched (chunked sgemm) path equals row by row.
TEST(TorchAoInt8Dq, BatchedPathEqualsRowByRowOnExtremes) {
  const int64_t m = 17, n = 40, k = 2048 + 64;
  Tensor x = Tensor::empty({m, k}), w = Tensor::empty({n, k});
  for (int64_t i = 0; i < m * k; ++i) x.data<float>()[i] = (i % 4 == 0) ? -3.0f : 3.0f;
  for (int64_t i = 0; i < n * k; ++i) w.data<float>()[i] = (i % 9 == 0) ? 0.25f : -0.25f;
  auto spec = torchao::parse_quant_type("int8dq");
  ASSERT_TRUE(spec.ok());
  auto q = torchao::quantize_weight(w, *spec);
  ASSERT_TRUE(q.ok()) << q.status();
  auto y = torchao::quantized_linear(x, *q);
  ASSERT_TRUE(y.ok());
  for (int64_t i = 0; i < m; ++i) {
    auto yi = torchao::quantized_linear(row(x, i), *q);
    ASSERT_TRUE(yi.ok());
    ASSERT_EQ(std::memcmp(yi->raw(), y->data<float>() + i * n, n * sizeof(float)), 0) << i;
  }
}

// Weight-only formats: panels of dequantize_rows + sgemm against dequantize_weight + one sgemm.
TEST(TorchAoWeightOnly, PanelsMatchWholeDequantizedGemm) {
  const int64_t m = 33, n = 200, k = 256;
  const Tensor x = randn({m, k}, 1);
  const Tensor w = randn({n, k}, 2, 0.05f);
  for (const char* qt : {"int4wo", "int8wo", "float8wo", "float8wo_e4m3", "fp6_e3m2", "uint4wo",
                         "uint2wo"}) {
    for (bool bf16 : {false, true}) {
      auto spec = torchao::parse_quant_type(qt);
      ASSERT_TRUE(spec.ok()) << qt;
      Tensor src = w;
      if (bf16) src = *w.to(DType::kBF16);
      auto q = torchao::quantize_weight(src, *spec);
      ASSERT_TRUE(q.ok()) << q.status();
      const Tensor wd = torchao::dequantize_weight(*q);
      std::vector<float> rows(static_cast<size_t>(3 * k));
      torchao::dequantize_rows(*q, 50, 3, rows.data());
      ASSERT_EQ(std::memcmp(rows.data(), wd.data<float>() + 50 * k, rows.size() * 4), 0) << qt;
      Tensor ref = Tensor::zeros({m, n});
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, x.data<float>(), k,
                  wd.data<float>(), k, 0.0f, ref.data<float>(), n);
      if (std::string(qt) == "int8wo") {  // scales on the output: compare loosely
        auto y = torchao::quantized_linear(x, *q);
        ASSERT_TRUE(y.ok());
        EXPECT_LE(max_rel(*y, ref), 1e-5) << qt;
        continue;
      }
      auto y = torchao::quantized_linear(x, *q);
      ASSERT_TRUE(y.ok());
      EXPECT_LE(max_rel(*y, ref), 1e-6) << qt << (bf16 ? " bf16" : "");
    }
  }
}

// bnb 4-bit: table-driven panels against bnb4_dequantize + one sgemm, nf4/fp4, double quant.
TEST(Bnb4Linear, PanelsMatchDequantizedGemm) {
  const int64_t m = 24, n = 150, k = 320;
  const Tensor x = randn({m, k}, 4);
  const Tensor w = randn({n, k}, 5, 0.05f);
  const Tensor bias = randn({n}, 6);
  for (Quant4 t : {Quant4::kNF4, Quant4::kFP4}) {
    for (bool dq : {false, true}) {
      Bnb4Options opt;
      opt.quant_type = t;
      opt.double_quant = dq;
      auto q = bnb4_quantize(w, opt);
      ASSERT_TRUE(q.ok()) << q.status();
      const Tensor wd = bnb4_dequantize(*q);
      Tensor ref = Tensor::empty({m, n});
      for (int64_t i = 0; i < m; ++i)
        std::memcpy(ref.data<float>() + i * n, bias.data<float>(), n * sizeof(float));
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, x.data<float>(), k,
                  wd.data<float>(), k, 1.0f, ref.data<float>(), n);
      EXPECT_LE(max_rel(bnb4_linear(x, *q, &bias), ref), 1e-6);
      const Tensor y1 = bnb4_linear(row(x, 3), *q, &bias);
      Tensor r1 = Tensor::empty({1, n});
      std::memcpy(r1.raw(), ref.data<float>() + 3 * n, n * sizeof(float));
      EXPECT_LE(max_rel(y1, r1), 1e-6);
    }
  }
}

TEST(Bnb8Linear, ParallelRowQuantEqualsReference) {
  Tensor x = randn({9, 333}, 11, 3.0f);
  x.data<float>()[5] = 0.0f;
  for (int64_t c = 0; c < 333; ++c) x.data<float>()[2 * 333 + c] = 0.0f;  // an all-zero row
  x.data<float>()[40] = 70000.0f;                                          // float16 overflow
  for (float t : {0.0f, 6.0f}) {
    const Int8RowQuant a = int8_vectorwise_quant(x, t), b = int8_vectorwise_quant_parallel(x, t);
    EXPECT_EQ(a.q, b.q) << t;
    EXPECT_EQ(a.outlier_cols, b.outlier_cols) << t;
    ASSERT_EQ(a.row_absmax.size(), b.row_absmax.size());
    for (size_t i = 0; i < a.row_absmax.size(); ++i)
      EXPECT_EQ(a.row_absmax[i], b.row_absmax[i]) << t << " row " << i;
  }
}

}  // namespace
}  // namespace fluxserve
