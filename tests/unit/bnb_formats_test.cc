// bitsandbytes formats without the library: decode tables and nibble order, quantize/dequantize
// round trips, the quant-state JSON (Python json.dumps form) and its validation, state-dict round
// trips through safetensors, and the linears against plain f32 references.
#include "engine/quant/bnb_formats.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "engine/io/safetensors.h"
#include "tests/unit/test_util.h"

namespace fluxserve {
namespace {

using testing::expect_error;
using testing::randn;

using TensorMap = std::map<std::string, Tensor>;

KeyChecker has_in(const TensorMap& m) {
  return [&m](const std::string& k) { return m.contains(k); };
}
TensorGetter get_in(const TensorMap& m) {
  return [&m](const std::string& k) -> absl::StatusOr<Tensor> {
    auto it = m.find(k);
    if (it == m.end()) return absl::NotFoundError("no tensor '" + k + "'");
    return it->second;
  };
}
TensorMap to_map(const std::vector<std::pair<std::string, Tensor>>& v) {
  return {v.begin(), v.end()};
}

Tensor json_tensor(const std::string& s) {
  Tensor t = Tensor::empty({static_cast<int64_t>(s.size())}, DType::kU8);
  std::memcpy(t.raw(), s.data(), s.size());
  return t;
}

TEST(BnbDecode, TablesAndNibbleOrder) {
  EXPECT_EQ(bnb::nf4_value(0), -1.0f);
  EXPECT_EQ(bnb::nf4_value(7), 0.0f);
  EXPECT_EQ(bnb::nf4_value(15), 1.0f);
  EXPECT_EQ(bnb::fp4_value(3), 1.0f);
  EXPECT_EQ(bnb::fp4_value(11), -1.0f);
  EXPECT_EQ(bnb::fp4_value(1), 0.0625f / 12.0f);
  EXPECT_EQ(bnb::fp4_value(8), 0.0f);
  const uint8_t packed[2] = {0x1f, 0xa0};
  EXPECT_EQ(bnb::nibble_at(packed, 0), 1u);  // the earlier element is the high nibble
  EXPECT_EQ(bnb::nibble_at(packed, 1), 15u);
  EXPECT_EQ(bnb::nibble_at(packed, 2), 10u);
  EXPECT_EQ(bnb::dequant4(Quant4::kNF4, packed, 1, 2.5f), 2.5f);
}

TEST(Bnb4, QuantizeRoundTripIsWithinHalfAStep) {
  for (Quant4 t : {Quant4::kNF4, Quant4::kFP4}) {
    for (bool dq : {false, true}) {
      const Tensor w = randn({13, 77}, 3);
      auto q = bnb4_quantize(w, {t, 64, dq});
      ASSERT_TRUE(q.ok()) << q.status();
      EXPECT_EQ(q->packed.shape(), (Shape{(13 * 77 + 1) / 2, 1}));
      EXPECT_EQ(q->num_blocks(), (13 * 77 + 63) / 64);
      EXPECT_TRUE(bnb4_validate(*q, "w").ok());
      const Tensor d = bnb4_dequantize(*q);
      const Tensor s = bnb4_block_scales(*q);
      for (int64_t i = 0; i < w.numel(); ++i) {
        // Largest gap between neighbouring codes is 1/3 (FP4 between 2/3 and 1), plus the
        // nested-scale error.
        EXPECT_LE(std::fabs(d.data<float>()[i] - w.data<float>()[i]),
                  0.34f * s.data<float>()[i / 64] + 0.05f);
      }
      // Re-quantizing the dequantized weight reproduces it when the scales are exact (the codes
      // may differ only where FP4's two zeros meet).
      if (!dq) {
        auto q2 = bnb4_quantize(d, {t, 64, false});
        ASSERT_TRUE(q2.ok());
        const Tensor d2 = bnb4_dequantize(*q2);
        for (int64_t i = 0; i < d.numel(); ++i)
          EXPECT_EQ(d2.data<float>()[i], d.data<float>()[i]) << i;
      }
    }
  }
}

TEST(Bnb4, BlocksizeErrors) {
  const Tensor w = randn({4, 64}, 1);
  for (int64_t bs : {0, 16, 48, 100, 8192}) {
    expect_error(bnb4_quantize(w, {Quant4::kNF4, bs, false}).status(),
                 {"invalid blocksize", std::to_string(bs)});
  }
  for (int64_t bs : {32, 64, 128, 256, 512, 1024, 2048, 4096})
    EXPECT_TRUE(bnb4_quantize(w, {Quant4::kNF4, bs, false}).ok());
  expect_error(bnb4_quantize(Tensor::zeros({4, 4}, DType::kI8)).status(), {"int8"});
}

TEST(Bnb4, StateJsonMatchesPython) {
  Bnb4Weight w;
  w.quant_type = Quant4::kNF4;
  w.blocksize = 64;
  w.dtype = DType::kBF16;
  w.shape = {5, 128};
  EXPECT_EQ(bnb4_state_json(w),
            R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [5, 128]})");
  w.nested = true;
  w.nested_offset = 2.825000047683716f;
  EXPECT_EQ(
      bnb4_state_json(w),
      R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [5, 128], )"
      R"("nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 2.825000047683716})");
  w.nested_offset = 1.5e-05f;
  EXPECT_NE(bnb4_state_json(w).find("\"nested_offset\": 1.4999999621068127e-05}"),
            std::string::npos)
      << bnb4_state_json(w);
  w.nested_offset = 0.0001f;
  EXPECT_NE(bnb4_state_json(w).find("\"nested_offset\": 9.999999747378752e-05}"), std::string::npos)
      << bnb4_state_json(w);
  w.nested_offset = 3.0f;
  EXPECT_NE(bnb4_state_json(w).find("\"nested_offset\": 3.0}"), std::string::npos);
  w.nested_offset = 0.25f;
  EXPECT_NE(bnb4_state_json(w).find("\"nested_offset\": 0.25}"), std::string::npos);
}

TEST(Bnb4, StateJsonErrors) {
  Bnb4Weight w;
  auto parse = [&](const std::string& j) {
    return bnb4_parse_state_json(j, &w, "P.weight.quant_state");
  };
  EXPECT_TRUE(
      parse(R"({"quant_type": "fp4", "blocksize": 128, "dtype": "float16", "shape": [3, 4]})")
          .ok());
  EXPECT_EQ(w.quant_type, Quant4::kFP4);
  EXPECT_EQ(w.dtype, DType::kF16);
  expect_error(parse("{not json"), {"P.weight.quant_state"});
  expect_error(parse("[1, 2]"), {"expected an object"});
  expect_error(parse(R"({"blocksize": 64, "dtype": "float32", "shape": [3, 4]})"), {"quant_type"});
  expect_error(
      parse(R"({"quant_type": "int4", "blocksize": 64, "dtype": "float32", "shape": [3, 4]})"),
      {"int4"});
  expect_error(
      parse(R"({"quant_type": "nf4", "blocksize": 96, "dtype": "float32", "shape": [3, 4]})"),
      {"blocksize", "96"});
  expect_error(parse(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "int8", "shape": [3, 4]})"),
               {"dtype", "int8"});
  expect_error(parse(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float32"})"), {"shape"});
  expect_error(
      parse(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [3, -4]})"),
      {"negative"});
  expect_error(
      parse(
          R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [3, 4], "nested_offset": 1.0})"),
      {"together"});
  expect_error(
      parse(
          R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [3, 4], "colour": 1})"),
      {"unknown", "colour"});
}

TEST(Bnb4, StateDictRoundTripThroughSafetensors) {
  const std::string dir = testing::make_temp_dir("bnb4");
  const Tensor w = *randn({9, 96}, 5).to(DType::kBF16);
  auto q = bnb4_quantize(w, {Quant4::kFP4, 32, true});
  ASSERT_TRUE(q.ok());
  const auto sd = bnb4_state_dict("blk.attn.to_q", *q);
  ASSERT_TRUE(write_safetensors(dir + "/w.safetensors", sd).ok());
  auto f = SafetensorsFile::open(dir + "/w.safetensors");
  ASSERT_TRUE(f.ok());
  auto back = bnb4_load(
      "blk.attn.to_q", [&](const std::string& k) { return (*f)->find(k) != nullptr; },
      [&](const std::string& k) { return (*f)->get(k); });
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->shape, q->shape);
  EXPECT_EQ(back->dtype, DType::kBF16);
  EXPECT_EQ(back->nested_offset, q->nested_offset);
  const Tensor a = bnb4_dequantize(*q), b = bnb4_dequantize(*back);
  EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0);
}

TEST(Bnb4, LoadErrorsNameTheKey) {
  auto q = bnb4_quantize(randn({6, 64}, 2), {Quant4::kNF4, 64, true});
  ASSERT_TRUE(q.ok());
  const TensorMap good = to_map(bnb4_state_dict("m", *q));
  ASSERT_TRUE(bnb4_load("m", has_in(good), get_in(good)).ok());
  {
    TensorMap m = good;
    m.erase("m.weight.quant_state.bitsandbytes__nf4");
    expect_error(bnb4_load("m", has_in(m), get_in(m)).status(), {"m.weight", "neither"});
  }
  {
    TensorMap m = good;
    m["m.weight.quant_state.bitsandbytes__fp4"] = m["m.weight.quant_state.bitsandbytes__nf4"];
    expect_error(bnb4_load("m", has_in(m), get_in(m)).status(), {"both"});
  }
  {
    TensorMap m = good;
    m.erase("m.weight.nested_absmax");
    expect_error(bnb4_load("m", has_in(m), get_in(m)).status(), {"m.weight.nested_absmax"},
                 absl::StatusCode::kNotFound);
  }
  {
    TensorMap m = good;  // shape says more elements than the packed bytes hold
    m["m.weight.quant_state.bitsandbytes__nf4"] = json_tensor(
        R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [7, 64], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.5})");
    expect_error(bnb4_load("m", has_in(m), get_in(m)).status(), {"bytes", "expected 224"});
  }
  {
    TensorMap m = good;
    m["m.weight.absmax"] = Tensor::zeros({5}, DType::kU8);
    expect_error(bnb4_load("m", has_in(m), get_in(m)).status(), {"m.weight.absmax", "expected 6"});
  }
  {
    TensorMap m = good;
    m["m.weight.quant_state.bitsandbytes__nf4"] = json_tensor(
        R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [6, 64]})");
    expect_error(bnb4_load("m", has_in(m), get_in(m)).status(), {"nested_absmax"});
  }
  {
    TensorMap m = good;
    m["m.weight.quant_state.bitsandbytes__nf4"] = json_tensor(
        R"({"quant_type": "fp4", "blocksize": 64, "dtype": "float32", "shape": [6, 64], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.5})");
    expect_error(bnb4_load("m", has_in(m), get_in(m)).status(), {"suffix"});
  }
}

TEST(Bnb4, LinearMatchesDequantizedReference) {
  auto q = bnb4_quantize(randn({37, 200}, 7), {Quant4::kNF4, 64, true});
  ASSERT_TRUE(q.ok());
  const Tensor x = randn({3, 4, 200}, 8), b = randn({37}, 9);
  const Tensor y = bnb4_linear(x, *q, &b);
  EXPECT_EQ(y.shape(), (Shape{3, 4, 37}));
  const Tensor wd = bnb4_dequantize(*q);
  std::vector<double> ref(12 * 37);
  for (int i = 0; i < 12; ++i)
    for (int n = 0; n < 37; ++n) {
      double s = b.data<float>()[n];
      for (int k = 0; k < 200; ++k)
        s += double(x.data<float>()[i * 200 + k]) * wd.data<float>()[n * 200 + k];
      ref[i * 37 + n] = s;
    }
  EXPECT_LE(testing::rel_l2(y, ref), 1e-6);
}

TEST(Bnb8, QuantizeLinearAndStateDict) {
  const Tensor w = randn({11, 40}, 4, 0.2f);
  auto q = bnb8_quantize(w);
  ASSERT_TRUE(q.ok());
  const Tensor d = bnb8_dequantize(*q);
  for (int64_t i = 0; i < w.numel(); ++i) {
    EXPECT_LE(std::fabs(d.data<float>()[i] - w.data<float>()[i]),
              q->scb.data<float>()[i / 40] / 127.0f);
  }
  // Pure int8 vs the f32 product with dequantized weights: within int8 activation error.
  Tensor x = randn({5, 40}, 6);
  const Tensor y0 = bnb8_linear(x, *q, nullptr, 0.0f);
  std::vector<double> ref(5 * 11);
  for (int i = 0; i < 5; ++i)
    for (int n = 0; n < 11; ++n) {
      double s = 0;
      for (int k = 0; k < 40; ++k)
        s += double(x.data<float>()[i * 40 + k]) * d.data<float>()[n * 40 + k];
      ref[i * 11 + n] = s;
    }
  EXPECT_LE(testing::rel_l2(y0, ref), 2e-2);
  // A large outlier column is computed in f32 with threshold 6 and only then.
  x.data<float>()[2 * 40 + 3] = 50.0f;
  for (int n = 0; n < 11; ++n) {
    double s = 0;
    for (int k = 0; k < 40; ++k)
      s += double(x.data<float>()[2 * 40 + k]) * d.data<float>()[n * 40 + k];
    ref[2 * 11 + n] = s;
  }
  const Int8RowQuant qa = int8_vectorwise_quant(x, 6.0f);
  ASSERT_EQ(qa.outlier_cols, std::vector<int64_t>{3});
  EXPECT_LE(testing::rel_l2(bnb8_linear(x, *q, nullptr, 6.0f), ref), 2e-2);

  const TensorMap sd = to_map(bnb8_state_dict("p", *q));
  auto back = bnb8_load("p", has_in(sd), get_in(sd));
  ASSERT_TRUE(back.ok()) << back.status();
  TensorMap m = sd;
  m.erase("p.SCB");
  expect_error(bnb8_load("p", has_in(m), get_in(m)).status(), {"p.SCB"});
  m = sd;
  m["p.weight_format"] = Tensor::zeros({}, DType::kU8);
  m["p.weight_format"].data<uint8_t>()[0] = 2;
  expect_error(bnb8_load("p", has_in(m), get_in(m)).status(), {"p.weight_format", "format 2"});
  m = sd;
  m["p.SCB"] = Tensor::zeros({10});
  expect_error(bnb8_load("p", has_in(m), get_in(m)).status(), {"p.SCB", "expected 11"});
  m = sd;
  m["p.weight"] = Tensor::zeros({11, 40});
  expect_error(bnb8_load("p", has_in(m), get_in(m)).status(), {"p.weight", "int8"});
}

}  // namespace
}  // namespace fluxserve
