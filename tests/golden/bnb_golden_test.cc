// bitsandbytes formats against the library itself (tools/golden/generate_bnb.py, bnb 0.50.2 on
// the CPU): 4-bit packed bytes, absmax and nested state bit for bit, the quant-state JSON byte for
// byte, dequantized weights equal, Linear4bit and MatMul8bitLt outputs within 1e-5, LLM.int8
// CB/SCB and activation quantization exact, and torch's float32 mean (the double-quant offset).
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>

#include "engine/io/safetensors.h"
#include "engine/quant/bnb_formats.h"
#include "tests/golden/golden_util.h"

namespace fluxserve {
namespace {

using testing::fixture;
using testing::rel_error;

std::shared_ptr<const SafetensorsFile> golden() {
  static std::shared_ptr<const SafetensorsFile> f = [] {
    auto r = SafetensorsFile::open(fixture("bnb/bnb_golden.safetensors"));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : nullptr;
  }();
  return f;
}

Tensor get(const std::string& key) {
  auto t = golden()->get(key);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *t : Tensor();
}

bool has(const std::string& key) { return golden()->find(key) != nullptr; }

void expect_same_bytes(const Tensor& ours, const Tensor& ref, const std::string& what) {
  ASSERT_EQ(ours.dtype(), ref.dtype()) << what;
  ASSERT_EQ(ours.nbytes(), ref.nbytes()) << what;
  EXPECT_EQ(std::memcmp(ours.raw(), ref.raw(), ref.nbytes()), 0) << what << " differs";
}

void expect_equal_values(const Tensor& ours, const Tensor& ref, const std::string& what) {
  ASSERT_EQ(ours.numel(), ref.numel()) << what;
  const Tensor a = *ours.as_f32(), b = *ref.as_f32();
  int64_t bad = 0;
  for (int64_t i = 0; i < b.numel(); ++i) bad += a.data<float>()[i] != b.data<float>()[i];
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << b.numel() << " values differ";
}

struct Case4 {
  std::string name;
  Quant4 type;
  bool nested;
  int64_t blocksize;
};

class Bnb4Golden : public ::testing::TestWithParam<Case4> {};

TEST_P(Bnb4Golden, QuantizeIsBitExact) {
  const Case4& c = GetParam();
  absl::StatusOr<Bnb4Weight> q =
      bnb4_quantize(get(c.name + ".orig"), {c.type, c.blocksize, c.nested});
  ASSERT_TRUE(q.ok()) << q.status();
  for (auto& [key, t] : bnb4_state_dict(c.name, *q)) {
    ASSERT_TRUE(has(key)) << key << " not in the fixture";
    expect_same_bytes(t, get(key), key);
  }
  if (!c.nested) {
    EXPECT_FALSE(has(c.name + ".weight.nested_absmax"));
  }
}

TEST_P(Bnb4Golden, LoadsLibraryStateAndDequantizes) {
  const Case4& c = GetParam();
  absl::StatusOr<Bnb4Weight> w =
      bnb4_load(c.name, has, [](const std::string& k) { return golden()->get(k); });
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->quant_type, c.type);
  EXPECT_EQ(w->blocksize, c.blocksize);
  EXPECT_EQ(w->nested, c.nested);
  EXPECT_EQ(w->dtype, get(c.name + ".orig").dtype());
  expect_equal_values(bnb4_dequantize(*w), get(c.name + ".dequant_f32"), c.name + " dequant f32");
  const Tensor d = bnb4_dequantize_as_dtype(*w);
  expect_equal_values(d, get(c.name + ".dequant"), c.name + " dequant");
}

TEST_P(Bnb4Golden, LinearMatchesMatmul4bit) {
  const Case4& c = GetParam();
  absl::StatusOr<Bnb4Weight> w =
      bnb4_load(c.name, has, [](const std::string& k) { return golden()->get(k); });
  ASSERT_TRUE(w.ok()) << w.status();
  const Tensor x = get(c.name + ".x"), b = get(c.name + ".bias");
  EXPECT_LE(rel_error(bnb4_linear(x, *w, &b), get(c.name + ".y")), 1e-5);
  EXPECT_LE(rel_error(bnb4_linear(x, *w, nullptr), get(c.name + ".y_nobias")), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, Bnb4Golden,
    ::testing::Values(Case4{"a", Quant4::kNF4, true, 64}, Case4{"b", Quant4::kFP4, false, 64},
                      Case4{"c", Quant4::kNF4, false, 128}, Case4{"d", Quant4::kNF4, true, 128},
                      Case4{"e", Quant4::kFP4, true, 64}, Case4{"f", Quant4::kNF4, true, 64},
                      Case4{"g", Quant4::kFP4, false, 128}),
    [](const auto& info) { return info.param.name; });

class Bnb8Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(Bnb8Golden, WeightQuantizationIsExact) {
  const std::string& n = GetParam();
  absl::StatusOr<Bnb8Weight> w = bnb8_quantize(get(n + ".orig"));
  ASSERT_TRUE(w.ok()) << w.status();
  expect_same_bytes(w->cb, get(n + ".CB"), n + ".CB");
  expect_same_bytes(w->scb, get(n + ".SCB"), n + ".SCB");
}

TEST_P(Bnb8Golden, ActivationQuantizationIsExact) {
  const std::string& n = GetParam();
  for (int t : {0, 6}) {
    const std::string sfx = "_t" + std::to_string(t);
    Int8RowQuant q = int8_vectorwise_quant(get(n + ".x"), static_cast<float>(t));
    const Tensor ca = get(n + ".CA" + sfx), sca = get(n + ".SCA" + sfx),
                 cols = get(n + ".cols" + sfx);
    ASSERT_EQ(static_cast<int64_t>(q.q.size()), ca.numel());
    EXPECT_EQ(std::memcmp(q.q.data(), ca.raw(), q.q.size()), 0) << n << sfx;
    ASSERT_EQ(static_cast<int64_t>(q.row_absmax.size()), sca.numel());
    EXPECT_EQ(std::memcmp(q.row_absmax.data(), sca.raw(), sca.nbytes()), 0) << n << sfx;
    ASSERT_EQ(static_cast<int64_t>(q.outlier_cols.size()), cols.numel()) << n << sfx;
    for (int64_t i = 0; i < cols.numel(); ++i)
      EXPECT_EQ(q.outlier_cols[i], cols.data<int64_t>()[i]);
    if (t > 0) {
      EXPECT_GE(cols.numel(), 3);  // the planted outliers are there
    }
  }
}

TEST_P(Bnb8Golden, LinearMatchesMatMul8bitLt) {
  const std::string& n = GetParam();
  const Bnb8Weight w{get(n + ".CB"), get(n + ".SCB")};
  const Tensor x = get(n + ".x"), b = get(n + ".bias");
  EXPECT_LE(rel_error(bnb8_linear(x, w, &b, 0.0f), get(n + ".y_t0")), 1e-5);
  EXPECT_LE(rel_error(bnb8_linear(x, w, &b, 6.0f), get(n + ".y_t6")), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Cases, Bnb8Golden, ::testing::Values("i8a", "i8b"));

TEST(BnbGolden, TorchMeanF32IsBitExact) {
  for (int n : {1, 3, 15, 16, 17, 63, 64, 65, 100, 255, 256, 257, 1000, 4097, 20000}) {
    const Tensor in = get("mean.in." + std::to_string(n)),
                 out = get("mean.out." + std::to_string(n));
    EXPECT_EQ(torch_mean_f32(in.data<float>(), n), out.data<float>()[0]) << "n = " << n;
  }
}

}  // namespace
}  // namespace fluxserve
