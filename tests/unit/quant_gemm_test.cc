// The fast quantized-linear paths (panel decode + sgemm, exact chunked int8 sgemm) against the
// straightforward computations they replace: integer accumulators exactly equal, decoded weights
// bit-identical, f32 sums to rounding. Shapes are odd on purpose: K not a multiple of the sgemm
// chunk or of two, N not a multiple of a panel, M = 1 (the GEMV path) and M = 17.
#include <cblas.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "engine/quant/bnb_formats.h"
#include "engine/quant/ggml_formats.h"
#include "engine/quant/ggml_linear.h"
#include "engine/quant/int_gemm.h"
#include "engine/quant/torchao_formats.h"
#include "kernels/common/dtype_math.h"
#include "tests/unit/test_util.h"

namespace fluxserve {
namespace {

using testing::randn;

Tensor row(const Tensor& x, int64_t i) {
  const int64_t k = x.size(1);
  Tensor r = Tensor::empty({1, k});
  std::memcpy(r.raw(), x.data<float>() + i * k, static_cast<size_t>(k) * sizeof(float));
  return r;
}

Tensor identity(int64_t k) {
  Tensor t = Tensor::zeros({k, k});
  for (int64_t i = 0; i < k; ++i) t.data<float>()[i * k + i] = 1.0f;
  return t;
}

// y = x · wᵀ (+ bias) with one plain sgemm: the reference for the panel paths.
Tensor sgemm_ref(const Tensor& x, const Tensor& w, const Tensor* bias) {
  const int64_t m = x.size(0), k = x.size(1), n = w.size(0);
  Tensor y = Tensor::zeros({m, n});
  if (bias != nullptr) {
    for (int64_t i = 0; i < m; ++i)
      std::memcpy(y.data<float>() + i * n, bias->data<float>(), n * sizeof(float));
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, x.data<float>(), k,
              w.data<float>(), k, 1.0f, y.data<float>(), n);
  return y;
}

// Largest difference from ref over max |ref|.
double max_rel(const Tensor& a, const Tensor& ref) {
  EXPECT_EQ(a.numel(), ref.numel());
  double mx = 0.0, ma = 0.0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    mx = std::max(mx, std::fabs(static_cast<double>(a.data<float>()[i]) - ref.data<float>()[i]));
    ma = std::max(ma, std::fabs(static_cast<double>(ref.data<float>()[i])));
  }
  return ma == 0.0 ? mx : mx / ma;
}

// a [M, N] == bᵀ for b [N, M], value by value (+0 and -0 compare equal).
void expect_transposed_equal(const Tensor& a, const Tensor& b, const std::string& what) {
  const int64_t m = a.size(0), n = a.size(1);
  ASSERT_EQ(b.size(0), n);
  ASSERT_EQ(b.size(1), m);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j)
      ASSERT_EQ(a.data<float>()[i * n + j], b.data<float>()[j * m + i])
          << what << " " << i << "," << j;
}

TEST(IntGemm, ChunkBoundKeepsPartialSumsExact) {
  EXPECT_EQ(exact_sgemm_chunk(128, 128), 1024);
  EXPECT_EQ(exact_sgemm_chunk(255, 15), 4386);
}

// acc = a · bᵀ in int64, the reference for both int8 GEMMs.
std::vector<int32_t> int_ref(const std::vector<int8_t>& a, int64_t m, int64_t k,
                             const std::vector<int8_t>& b, int64_t n) {
  std::vector<int32_t> r(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      int64_t s = 0;
      for (int64_t c = 0; c < k; ++c) s += int64_t{a[i * k + c]} * b[j * k + c];
      r[i * n + j] = static_cast<int32_t>(s);
    }
  }
  return r;
}

// Both implementations (the VNNI one where this build has it) and the dispatcher on operands at
// the int8 extremes: one unchunked f32 sum would pass 2^24 after 1025 products and round, and
// a = 127 against b = -128 drives the VNNI lanes (a + 128 = 255) to 255·128·K. K not a multiple
// of 4 or of the sgemm chunk, M not a multiple of the 6-row micro-kernel, N of a 64-row strip.
TEST(IntGemm, BothPathsExactOnExtremes) {
  for (int64_t k : {1, 3, 1024, 1025, 3072, 5001}) {
    for (int64_t m : {1, 5, 17}) {
      const int64_t n = 130;
      std::vector<int8_t> a(static_cast<size_t>(m * k)), b(static_cast<size_t>(n * k));
      for (int64_t i = 0; i < m * k; ++i) a[i] = (i % 7 == 0) ? -128 : 127;
      for (int64_t i = 0; i < n * k; ++i) b[i] = (i % 5 == 0) ? 127 : -128;
      const std::vector<int32_t> want = int_ref(a, m, k, b, n);
      std::vector<int32_t> acc(static_cast<size_t>(m * n), 7);
      int8_gemm_sgemm(a.data(), m, k, b.data(), n, acc.data());
      ASSERT_EQ(acc, want) << "sgemm m " << m << " k " << k;
      std::fill(acc.begin(), acc.end(), 7);
      if (int8_gemm_vnni(a.data(), m, k, b.data(), n, acc.data())) {
        ASSERT_EQ(acc, want) << "vnni m " << m << " k " << k;
      }
      std::fill(acc.begin(), acc.end(), 7);
      int8_gemm_exact(a.data(), m, k, b.data(), n, acc.data());
      ASSERT_EQ(acc, want) << "exact m " << m << " k " << k;
    }
  }
}

// The largest K the VNNI kernel takes: every lane at 255·(-128)·65536, just inside int32.
TEST(IntGemm, LongestVnniK) {
  const int64_t m = 7, n = 3, k = 65536;
  std::vector<int8_t> a(static_cast<size_t>(m * k), 127), b(static_cast<size_t>(n * k), -128);
  const std::vector<int32_t> want(static_cast<size_t>(m * n), 127 * -128 * 65536);
  std::vector<int32_t> acc(static_cast<size_t>(m * n));
  int8_gemm_exact(a.data(), m, k, b.data(), n, acc.data());
  EXPECT_EQ(acc, want);
  int8_gemm_sgemm(a.data(), m, k, b.data(), n, acc.data());
  EXPECT_EQ(acc, want);
}

// Random codes: the two implementations agree with the reference.
TEST(IntGemm, BothPathsExactOnRandomCodes) {
  const int64_t m = 23, n = 77, k = 301;
  std::vector<int8_t> a(static_cast<size_t>(m * k)), b(static_cast<size_t>(n * k));
  uint32_t st = 12345;
  auto next = [&] { return static_cast<int8_t>((st = st * 1664525u + 1013904223u) >> 24); };
  for (int8_t& v : a) v = next();
  for (int8_t& v : b) v = next();
  const std::vector<int32_t> want = int_ref(a, m, k, b, n);
  std::vector<int32_t> acc(static_cast<size_t>(m * n));
  int8_gemm_sgemm(a.data(), m, k, b.data(), n, acc.data());
  EXPECT_EQ(acc, want);
  if (int8_gemm_vnni(a.data(), m, k, b.data(), n, acc.data())) {
    EXPECT_EQ(acc, want);
  }
}

// bnb8_linear runs the integer GEMM from 16 rows on and direct dot products below; with
// threshold 0 rows are quantized independently, so the two must agree bit for bit. ±1 inputs
// and weights make every code ±127 and the accumulators pass 2^24.
TEST(Bnb8Linear, BatchedPathEqualsRowByRowOnExtremes) {
  for (int64_t m : {16, 17, 20}) {
    const int64_t n = 70, k = 3072;
    Tensor x = Tensor::empty({m, k}), w = Tensor::empty({n, k});
    for (int64_t i = 0; i < m * k; ++i) x.data<float>()[i] = (i % 3 == 0) ? -1.0f : 1.0f;
    for (int64_t i = 0; i < n * k; ++i) w.data<float>()[i] = (i % 11 == 0) ? -0.5f : 0.5f;
    for (int64_t i = 0; i < k; ++i) x.data<float>()[i] = 1.0f;
    auto q = bnb8_quantize(w);
    ASSERT_TRUE(q.ok()) << q.status();
    const Tensor bias = randn({n}, 3);
    const Tensor y = bnb8_linear(x, *q, &bias, 0.0f);
    for (int64_t i = 0; i < m; ++i) {
      const Tensor yi = bnb8_linear(row(x, i), *q, &bias, 0.0f);
      ASSERT_EQ(std::memcmp(yi.raw(), y.data<float>() + i * n, n * sizeof(float)), 0)
          << "m " << m << " row " << i;
    }
  }
}

// Random values, K = 1500 (one full 1024 chunk and a partial one), N not a multiple of 128.
TEST(Bnb8Linear, BatchedPathEqualsRowByRowOnRandomValues) {
  const int64_t m = 17, n = 131, k = 1500;
  const Tensor x = randn({m, k}, 7, 2.0f);
  const Tensor w = randn({n, k}, 8, 0.05f);
  auto q = bnb8_quantize(w);
  ASSERT_TRUE(q.ok());
  const Tensor y = bnb8_linear(x, *q, nullptr, 0.0f);
  for (int64_t i = 0; i < m; ++i) {
    const Tensor yi = bnb8_linear(row(x, i), *q, nullptr, 0.0f);
    ASSERT_EQ(std::memcmp(yi.raw(), y.data<float>() + i * n, n * sizeof(float)), 0) << i;
  }
  // Threshold 6: the outlier columns depend on the whole batch, so the batched result is checked
  // against the definition instead (unit-scale x, one injected outlier).
  Tensor xo = randn({m, k}, 9);
  xo.data<float>()[3 * k + 10] = 9.0f;
  const Tensor yo = bnb8_linear(xo, *q, nullptr, 6.0f);
  const Int8RowQuant qa = int8_vectorwise_quant(xo, 6.0f);
  ASSERT_EQ(qa.outlier_cols, std::vector<int64_t>{10});
  const Tensor wd = bnb8_dequantize(*q);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      int32_t acc = 0;
      for (int64_t c = 0; c < k; ++c)
        acc += int32_t{qa.q[i * k + c]} * q->cb.data<int8_t>()[j * k + c];
      const float v =
          static_cast<float>(acc) * (qa.row_absmax[i] * q->scb.data<float>()[j]) * 6.200124e-05f;
      const float want = v + xo.data<float>()[i * k + 10] * wd.data<float>()[j * k + 10];
      ASSERT_NEAR(yo.data<float>()[i * n + j], want, 1e-6f * (std::fabs(want) + 1.0f))
          << i << "," << j;
    }
  }
}

// int8dq: per-token activation scales, so the batched (integer GEMM) path equals row by row.
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

// Weight-only formats. quantized_linear(I) is Wᵀ exactly (one non-zero product per output), so
// the panel decode must reproduce dequantize_weight bit for bit; on random x the panels match
// one sgemm on the whole dequantized weight to rounding, for the GEMV path (M = 1) too.
TEST(TorchAoWeightOnly, PanelsMatchWholeDequantizedGemm) {
  const int64_t n = 200;  // not a multiple of the 64- or 16-row panels
  for (const char* qt :
       {"int4wo", "int8wo", "float8wo", "float8wo_e4m3", "fp6_e3m2", "uint4wo", "uint2wo"}) {
    const std::string name = qt;
    const bool grouped = name == "int4wo" || name == "uint4wo" || name == "uint2wo";
    const int64_t k = grouped ? 256 : 257;  // per-row formats take any K
    const Tensor w = randn({n, k}, 2, 0.05f);
    for (bool bf16 : {false, true}) {
      auto spec = torchao::parse_quant_type(qt);
      ASSERT_TRUE(spec.ok()) << qt;
      auto q = torchao::quantize_weight(bf16 ? *w.to(DType::kBF16) : w, *spec);
      ASSERT_TRUE(q.ok()) << q.status();
      const Tensor wd = torchao::dequantize_weight(*q);
      const std::string what = name + (bf16 ? " bf16" : "");
      if (name != "int8wo") {  // int8wo applies its scale to the output (checked below)
        auto yi = torchao::quantized_linear(identity(k), *q);
        ASSERT_TRUE(yi.ok());
        expect_transposed_equal(*yi, wd, what);
      }
      // int8wo: torchao's Int8Tensor multiplies x by the codes and scales the output in f32.
      Tensor codes = Tensor::empty({n, k});
      if (name == "int8wo") {
        for (int64_t i = 0; i < n * k; ++i) codes.data<float>()[i] = q->qdata.data<int8_t>()[i];
      }
      for (int64_t m : {1, 17, 33}) {
        const Tensor x = randn({m, k}, 1 + static_cast<uint32_t>(m));
        const Tensor bias = randn({n}, 9);
        auto y = torchao::quantized_linear(x, *q, &bias);
        ASSERT_TRUE(y.ok());
        Tensor ref = sgemm_ref(x, wd, &bias);
        if (name == "int8wo") {
          ref = sgemm_ref(x, codes, nullptr);
          for (int64_t i = 0; i < m * n; ++i) {
            ref.data<float>()[i] =
                ref.data<float>()[i] * q->scale.data<float>()[i % n] + bias.data<float>()[i % n];
          }
        }
        EXPECT_LE(max_rel(*y, ref), 2e-6) << what << " m " << m;
      }
    }
  }
}

// int4dq against its definition (the golden fixture's): exact int32 sums per group, combined
// in float64 with both scales; asymmetric uint8 and symmetric int8 activations.
TEST(TorchAoInt4Dq, MatchesPerGroupInt32Reference) {
  const int64_t n = 70;
  for (int64_t gs : {32, 128}) {
    const int64_t k = gs == 32 ? 160 : 384;
    const Tensor w = randn({n, k}, 21, 0.05f);
    for (bool sym : {false, true}) {
      auto spec = torchao::parse_quant_type("int4dq", gs);
      ASSERT_TRUE(spec.ok());
      spec->act_symmetric = sym;
      auto q = torchao::quantize_weight(w, *spec);
      ASSERT_TRUE(q.ok()) << q.status();
      for (int64_t m : {1, 17}) {
        const Tensor x = randn({m, k}, 22 + static_cast<uint32_t>(m), 1.5f, 0.3f);
        auto y = torchao::quantized_linear(x, *q);
        ASSERT_TRUE(y.ok());
        auto a = torchao::quantize_activation(x, *spec);
        ASSERT_TRUE(a.ok());
        const int64_t g = k / gs;
        Tensor ref = Tensor::empty({m, n});
        for (int64_t r = 0; r < m; ++r) {
          for (int64_t c = 0; c < n; ++c) {
            double sum = 0.0;
            for (int64_t gi = 0; gi < g; ++gi) {
              int32_t acc = 0;
              for (int64_t j = gi * gs; j < (gi + 1) * gs; ++j) {
                const int32_t xv = sym ? int32_t{a->qdata.data<int8_t>()[r * k + j]}
                                       : int32_t{a->qdata.data<uint8_t>()[r * k + j]} -
                                             a->zero_point.data<int32_t>()[r];
                acc += xv * (int32_t{q->qdata.data<uint8_t>()[c * k + j]} -
                             q->zero_point.data<int32_t>()[c * g + gi]);
              }
              sum += static_cast<double>(acc) * a->scale.data<float>()[r] *
                     static_cast<double>(q->scale.data<float>()[c * g + gi]);
            }
            ref.data<float>()[r * n + c] = static_cast<float>(sum);
          }
        }
        EXPECT_LE(max_rel(*y, ref), 2e-6) << "gs " << gs << " sym " << sym << " m " << m;
      }
    }
  }
}

// float8dq: panels of decoded fp8 weights against the products of the decoded codes summed in
// float64, per-row and per-tensor scales.
TEST(TorchAoFloat8Dq, MatchesDecodedProducts) {
  const int64_t n = 90, k = 200;
  const Tensor w = randn({n, k}, 31, 0.05f);
  for (const char* qt : {"float8dq_e4m3_row", "float8dq_e4m3_tensor"}) {
    auto spec = torchao::parse_quant_type(qt);
    ASSERT_TRUE(spec.ok()) << qt;
    auto q = torchao::quantize_weight(w, *spec);
    ASSERT_TRUE(q.ok()) << q.status();
    for (int64_t m : {1, 17}) {
      const Tensor x = randn({m, k}, 32 + static_cast<uint32_t>(m));
      auto y = torchao::quantized_linear(x, *q);
      ASSERT_TRUE(y.ok());
      auto a = torchao::quantize_activation(x, *spec);
      ASSERT_TRUE(a.ok());
      Tensor ref = Tensor::empty({m, n});
      for (int64_t r = 0; r < m; ++r) {
        for (int64_t c = 0; c < n; ++c) {
          double sum = 0.0;
          for (int64_t j = 0; j < k; ++j)
            sum +=
                static_cast<double>(dmath::f8e4m3fn_to_f32(a->qdata.data<uint8_t>()[r * k + j])) *
                dmath::f8e4m3fn_to_f32(q->qdata.data<uint8_t>()[c * k + j]);
          const float sx = a->scale.data<float>()[spec->per_row ? r : 0];
          const float sw = q->scale.data<float>()[spec->per_row ? c : 0];
          ref.data<float>()[r * n + c] = static_cast<float>(sum * sx * sw);
        }
      }
      EXPECT_LE(max_rel(*y, ref), 2e-6) << qt << " m " << m;
    }
  }
}

// bnb 4-bit: the table-driven panel decode reproduces bnb4_dequantize bit for bit (through
// x = I), also for an odd in_features whose rows start mid-byte; on random x the panels match one
// sgemm on the dequantized weight, nf4/fp4, with and without double quant.
TEST(Bnb4Linear, PanelsMatchDequantizedGemm) {
  const int64_t n = 151;  // 151 x 333: the weight ends on a lone high nibble
  for (int64_t k : {320, 333}) {
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
        const std::string what =
            std::string(quant4_name(t)) + (dq ? " dq" : "") + " k " + std::to_string(k);
        expect_transposed_equal(bnb4_linear(identity(k), *q, nullptr), wd, what);
        for (int64_t m : {1, 17, 24}) {
          const Tensor x = randn({m, k}, 4 + static_cast<uint32_t>(m));
          EXPECT_LE(max_rel(bnb4_linear(x, *q, &bias), sgemm_ref(x, wd, &bias)), 2e-6)
              << what << " m " << m;
        }
      }
    }
  }
}

// GGUF: the panel decode reproduces dequantize() bit for bit (through x = I), and on random x the
// panels match one sgemm on the dequantized weight; 151 rows (no multiple of 16).
TEST(GgmlLinear, PanelsMatchDequantizedGemm) {
  const int64_t n = 151, k = 96;
  const Tensor w = randn({n, k}, 41, 0.05f);
  for (GgmlType t : {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ5_1}) {
    auto bytes = ggml_quantize(t, w.data<float>(), n * k);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    auto q = make_ggml_linear(t, n, k, bytes->data(), bytes->size(), nullptr);
    ASSERT_TRUE(q.ok()) << q.status();
    const Tensor wd = (*q)->dequantize();
    auto yi = (*q)->forward(identity(k), nullptr);
    ASSERT_TRUE(yi.ok());
    expect_transposed_equal(*yi, wd, (*q)->format());
    for (int64_t m : {1, 17, 70}) {
      const Tensor x = randn({m, k}, 42 + static_cast<uint32_t>(m));
      const Tensor bias = randn({n}, 43);
      auto y = (*q)->forward(x, &bias);
      ASSERT_TRUE(y.ok());
      EXPECT_LE(max_rel(*y, sgemm_ref(x, wd, &bias)), 2e-6) << (*q)->format() << " m " << m;
    }
  }
}

}  // namespace
}  // namespace fluxserve
