// quantize_linear_weight dispatch of the torchao <= 0.14 types (int4dq, fpX, uintX) and the GGUF
// linear (make_ggml_linear): the panel-tiled forward equals x · dequantize()ᵀ + bias for GEMV,
// odd M and N not a multiple of the panel, and diffusers' fp16 block math stays within an fp16
// rounding of ggml's f32 decode.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "engine/quant/ggml_formats.h"
#include "engine/quant/ggml_linear.h"
#include "engine/quant/quantized_linear.h"
#include "engine/quant/torchao_formats.h"
#include "kernels/common/dtype_math.h"
#include "tests/unit/test_util.h"

namespace fluxserve {
namespace {

using testing::randn;

// y = x · wᵀ + b in double.
std::vector<double> reference(const Tensor& x, const Tensor& w, const Tensor* b) {
  const int64_t m = x.size(0), k = x.size(1), n = w.size(0);
  std::vector<double> y(static_cast<size_t>(m * n));
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t c = 0; c < n; ++c) {
      double s = b != nullptr ? b->data<float>()[c] : 0.0;
      for (int64_t j = 0; j < k; ++j) {
        s += static_cast<double>(x.data<float>()[r * k + j]) * w.data<float>()[c * k + j];
      }
      y[static_cast<size_t>(r * n + c)] = s;
    }
  }
  return y;
}

ComponentQuantConfig torchao_config(const nlohmann::json& entry) {
  nlohmann::json e = entry;
  e["quant_backend"] = "torchao";
  auto q = PipelineQuantConfig::from_json({{"quant_mapping", {{"transformer", e}}}});
  EXPECT_TRUE(q.ok()) << q.status();
  return *q->resolve("transformer");
}

TEST(QuantizedLinear, TorchAoOldTypesDispatch) {
  const Tensor w = randn({48, 128}, 1, 0.05f);
  const Tensor x = randn({5, 128}, 2);
  struct Case {
    nlohmann::json entry;
    std::string spec;
    int64_t group;
  };
  for (const Case& c : std::vector<Case>{{{{"quant_type", "int4dq"}}, "int4dq", 0},
                                         {{{"quant_type", "int4dq"}, {"group_size", 64}}, "int4dq", 64},
                                         {{{"quant_type", "fp6"}}, "fp6_e3m2", 0},
                                         {{{"quant_type", "fp5_e2m2"}}, "fp5_e2m2", 0},
                                         {{{"quant_type", "uint3wo"}}, "uint3wo", 0},
                                         {{{"quant_type", "uintx_weight_only"}, {"dtype", "uint6"},
                                           {"group_size", 32}}, "uint6wo", 32}}) {
    SCOPED_TRACE(c.entry.dump());
    auto q = quantize_linear_weight(w, torchao_config(c.entry), "layer");
    ASSERT_TRUE(q.ok()) << q.status();
    ASSERT_NE(*q, nullptr);
    auto spec = torchao::parse_quant_type(c.spec, c.group);
    ASSERT_TRUE(spec.ok()) << spec.status();
    auto direct = torchao::quantize_weight(w, *spec);
    ASSERT_TRUE(direct.ok());
    const Tensor a = (*q)->dequantize(), b = torchao::dequantize_weight(*direct);
    for (int64_t i = 0; i < a.numel(); ++i) ASSERT_EQ(a.data<float>()[i], b.data<float>()[i]) << i;
    auto y = (*q)->forward(x, nullptr);
    ASSERT_TRUE(y.ok()) << y.status();
    EXPECT_LT(testing::rel_l2(*y, reference(x, a, nullptr)), 2e-2);  // dynamic formats quantize x
  }
  // A group size that does not divide K leaves the layer unquantized, as torchao does.
  auto skip = quantize_linear_weight(randn({8, 96}, 3), torchao_config({{"quant_type", "uint4wo"}}), "l");
  ASSERT_TRUE(skip.ok());
  EXPECT_EQ(*skip, nullptr);
}

// Random bytes with finite fp16 scales at `d_at` (K-quants: no quantizer to make them).
std::vector<uint8_t> random_blocks(GgmlType t, int64_t n, int64_t k, std::vector<int> d_at) {
  const ggml::GgmlTypeInfo ti = ggml::ggml_type_info(t);
  std::vector<uint8_t> b(static_cast<size_t>(n * k / ti.block_size * ti.type_size));
  std::mt19937 rng(5);
  for (uint8_t& v : b) v = static_cast<uint8_t>(rng());
  for (size_t i = 0; i < b.size(); i += static_cast<size_t>(ti.type_size)) {
    for (int off : d_at) {
      const uint16_t h = dmath::f32_to_f16(0.001f * static_cast<float>(1 + rng() % 7));
      b[i + off] = static_cast<uint8_t>(h & 0xFF);
      b[i + off + 1] = static_cast<uint8_t>(h >> 8);
    }
  }
  return b;
}

TEST(QuantizedLinear, GgufForwardMatchesDequantizedGemm) {
  const int64_t n = 70, k = 512;  // 70: panels of 64 and 16 rows leave a partial one
  const Tensor w = randn({n, k}, 7, 0.05f);
  const Tensor bias = randn({n}, 8);
  struct Case {
    GgmlType type;
    std::vector<uint8_t> bytes;
  };
  std::vector<Case> cases;
  for (GgmlType t : {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ5_0, GgmlType::kQ5_1,
                     GgmlType::kF16, GgmlType::kBF16}) {
    cases.push_back({t, *ggml_quantize(t, w.data<float>(), n * k)});
  }
  cases.push_back({GgmlType::kQ2_K, random_blocks(GgmlType::kQ2_K, n, k, {80, 82})});
  cases.push_back({GgmlType::kQ3_K, random_blocks(GgmlType::kQ3_K, n, k, {108})});
  cases.push_back({GgmlType::kQ4_K, random_blocks(GgmlType::kQ4_K, n, k, {0, 2})});
  cases.push_back({GgmlType::kQ5_K, random_blocks(GgmlType::kQ5_K, n, k, {0, 2})});
  cases.push_back({GgmlType::kQ6_K, random_blocks(GgmlType::kQ6_K, n, k, {208})});
  for (const Case& c : cases) {
    SCOPED_TRACE(ggml::ggml_type_info(c.type).name);
    auto q = make_ggml_linear(c.type, n, k, c.bytes.data(), c.bytes.size(), nullptr);
    ASSERT_TRUE(q.ok()) << q.status();
    const Tensor deq = (*q)->dequantize();
    // diffusers' fp16 block math vs ggml's f32: at most an fp16 rounding or two apart.
    std::vector<float> ggml_f32(static_cast<size_t>(n * k));
    ASSERT_TRUE(ggml_dequantize(c.type, c.bytes.data(), c.bytes.size(), n * k, ggml_f32.data()).ok());
    float amax = 0.0f;
    for (float v : ggml_f32) amax = std::max(amax, std::fabs(v));
    for (int64_t i = 0; i < n * k; ++i) {  // K-quants subtract: compare against the scale of w
      const float a = deq.data<float>()[i], b = ggml_f32[static_cast<size_t>(i)];
      ASSERT_LE(std::fabs(a - b), 2e-3f * amax) << i;
    }
    for (int64_t m : {1, 3, 130}) {
      const Tensor x = randn({m, k}, static_cast<uint32_t>(m));
      auto y = (*q)->forward(x, &bias);
      ASSERT_TRUE(y.ok()) << y.status();
      EXPECT_LT(testing::rel_l2(*y, reference(x, deq, &bias)), 1e-5) << "M = " << m;
    }
    // Leading dimensions are kept.
    auto y3 = (*q)->forward(randn({2, 3, k}, 9), nullptr);
    ASSERT_TRUE(y3.ok());
    EXPECT_EQ(y3->shape(), (Shape{2, 3, n}));
    EXPECT_FALSE((*q)->forward(randn({2, k + 32}, 9), nullptr).ok());
  }
  EXPECT_FALSE(make_ggml_linear(GgmlType::kQ8_0, 2, 33, nullptr, 0, nullptr).ok());
  EXPECT_FALSE(make_ggml_linear(GgmlType::kIQ4_NL, 2, 32, nullptr, 36, nullptr).ok());
  EXPECT_FALSE(make_ggml_linear(GgmlType::kQ8_0, 2, 32, nullptr, 60, nullptr).ok());
}

}  // namespace
}  // namespace fluxserve
