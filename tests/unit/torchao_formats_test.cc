// torchao formats: parsing and error cases, element codecs, quantize/dequantize round trips and
// the quantized linear against a double-precision reference on the dequantized weight.
#include "engine/quant/torchao_formats.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kernels/common/torchao_decode.h"
#include "tests/unit/test_util.h"

namespace fluxserve {
namespace {

using testing::expect_error;
using testing::randn;

TEST(TorchaoFormats, ParsesDiffusersShorthands) {
  auto s = torchao::parse_quant_type("int4wo");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->group_size, 128);
  s = torchao::parse_quant_type("float8wo");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->fp8, DType::kF8E5M2);
  s = torchao::parse_quant_type("float8dq_e4m3_row");
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->per_row);
  s = torchao::parse_quant_type("fp6_e3m2");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->ebits, 3);
  EXPECT_EQ(s->mbits, 2);
  s = torchao::parse_quant_type("uint3wo", 32);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->bits, 3);
  EXPECT_EQ(s->group_size, 32);
}

TEST(TorchaoFormats, RejectsBadQuantTypes) {
  expect_error(torchao::parse_quant_type("fp6_e3m3").status(), {"fp6_e3m3", "X = 6", "1 + A + B = 7"});
  expect_error(torchao::parse_quant_type("fp9_e4m4").status(), {"fp9_e4m4"});
  expect_error(torchao::parse_quant_type("uint9wo").status(), {"uint9wo", "1..8"});
  expect_error(torchao::parse_quant_type("int3wo").status(), {"int3wo", "unknown"});
  expect_error(torchao::parse_quant_type("int8wo", 64).status(), {"int8wo", "group_size 64"});
  expect_error(torchao::parse_quant_type("int4wo", -1).status(), {"must be positive"});
}

TEST(TorchaoFormats, RejectsGroupSizeNotDividingKAndBadInputs) {
  auto spec = *torchao::parse_quant_type("int4wo", 64);
  expect_error(torchao::quantize_weight(Tensor::zeros({3, 96}), spec).status(),
               {"int4wo", "group_size 64", "in_features 96"});
  expect_error(torchao::quantize_weight(Tensor::zeros({3, 4, 64}), spec).status(), {"2-D"});
  expect_error(torchao::quantize_weight(Tensor::zeros({3, 64}, DType::kF16), spec).status(), {"float16"});
  auto q = *torchao::quantize_weight(Tensor::zeros({3, 64}), spec);
  expect_error(torchao::quantized_linear(Tensor::zeros({2, 32}), q).status(), {"[3, 64]"});
  expect_error(torchao::quantize_activation(Tensor::zeros({2, 64}), spec).status(), {"int4wo"},
               absl::StatusCode::kFailedPrecondition);
}

TEST(TorchaoFormats, FpxCodecRoundTripsEveryCode) {
  for (int e = 1; e <= 5; ++e) {
    for (int m = 0; 1 + e + m <= 8; ++m) {
      for (uint32_t c = 0; c < (1u << (1 + e + m)); ++c) {
        const float v = taomath::fpx_to_f32(static_cast<uint8_t>(c), e, m);
        const uint8_t back = taomath::f32_to_fpx(v, e, m);
        // -0 encodes as the sign bit alone; every other code is its own encoding.
        EXPECT_EQ(back, c) << "e" << e << "m" << m << " code " << c << " value " << v;
      }
      const float mx = taomath::fpx_max_normal(e, m);
      EXPECT_EQ(taomath::f32_to_fpx(mx * 4.0f, e, m), (1u << (e + m)) - 1u);  // saturates
    }
  }
  EXPECT_EQ(taomath::fpx_max_normal(3, 2), 28.0f);
  EXPECT_EQ(taomath::fpx_max_normal(2, 3), 7.5f);
}

// Every format: the dequantized weight is close to the original and the linear matches a
// double-precision GEMM on the dequantized weight (dynamic formats: on the dequantized input).
TEST(TorchaoFormats, RoundTripAndLinearEveryFormat) {
  const Tensor w = randn({7, 128}, 11, 0.05f);
  const Tensor x = randn({3, 128}, 12);
  const Tensor bias = randn({7}, 13, 0.1f);
  struct Case {
    std::string qt;
    int64_t gs;
    double max_rel;  // dequantization error bound, relative to ||w||
  };
  const std::vector<Case> cases = {
      {"int8wo", 0, 0.01},   {"int8dq", 0, 0.01},        {"int4wo", 32, 0.12},
      {"int4dq", 64, 0.12},  {"float8wo", 0, 0.1},       {"float8wo_e4m3", 0, 0.05},
      {"float8dq", 0, 0.05}, {"float8dq_e4m3_row", 0, 0.05}, {"fp6_e3m2", 0, 0.1},
      {"fp4_e2m1", 0, 0.25}, {"uint2wo", 0, 0.6},        {"uint7wo", 32, 0.02},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.qt);
    auto spec = torchao::parse_quant_type(c.qt, c.gs);
    ASSERT_TRUE(spec.ok()) << spec.status();
    auto q = torchao::quantize_weight(w, *spec);
    ASSERT_TRUE(q.ok()) << q.status();
    const Tensor d = torchao::dequantize_weight(*q);
    std::vector<double> ref(w.data<float>(), w.data<float>() + w.numel());
    EXPECT_LE(testing::rel_l2(d, ref), c.max_rel);
    // Linear: recompute from the dequantized weight (and dequantized activation) in double.
    Tensor xd = x.clone();
    auto a = torchao::quantize_activation(x, *spec);
    if (a.ok()) {
      for (int64_t r = 0; r < 3; ++r) {
        for (int64_t j = 0; j < 128; ++j) {
          const int64_t i = r * 128 + j;
          const float s = a->scale.data<float>()[a->scale.numel() == 1 ? 0 : r];
          float v;
          if (a->qdata.dtype() == DType::kI8) {
            v = a->qdata.data<int8_t>()[i] * s;
          } else if (a->qdata.dtype() == DType::kU8) {
            v = static_cast<float>(a->qdata.data<uint8_t>()[i] - a->zero_point.data<int32_t>()[r]) * s;
          } else {
            v = dmath::f8e4m3fn_to_f32(a->qdata.data<uint8_t>()[i]) * s;
          }
          xd.data<float>()[i] = v;
        }
      }
    }
    auto y = torchao::quantized_linear(x, *q, &bias);
    ASSERT_TRUE(y.ok()) << y.status();
    std::vector<double> yref(3 * 7);
    for (int64_t r = 0; r < 3; ++r) {
      for (int64_t n = 0; n < 7; ++n) {
        double s = bias.data<float>()[n];
        for (int64_t j = 0; j < 128; ++j) {
          s += static_cast<double>(xd.data<float>()[r * 128 + j]) * d.data<float>()[n * 128 + j];
        }
        yref[r * 7 + n] = s;
      }
    }
    EXPECT_LE(testing::rel_l2(*y, yref), 1e-5);
  }
}

TEST(TorchaoFormats, Int8ScaleIsAmaxOver127_5AndZeroRowsUseEps) {
  Tensor w = Tensor::zeros({2, 32});
  w.data<float>()[0] = -2.55f;
  auto q = *torchao::quantize_weight(w, *torchao::parse_quant_type("int8wo"));
  EXPECT_EQ(q.scale.data<float>()[0], 2.55f / 127.5f);
  EXPECT_EQ(q.qdata.data<int8_t>()[0], -128);
  EXPECT_EQ(q.scale.data<float>()[1], std::numeric_limits<float>::epsilon());
}

}  // namespace
}  // namespace fluxserve
