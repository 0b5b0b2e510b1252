// torchao formats against fixtures made by torchao 0.18 (tools/golden/generate_torchao.py):
// codes, scales and zero points bit for bit, dequantized weights equal, linear outputs within
// 1e-5 relative (f32) of torchao's CPU forward or, where torchao cannot run on the CPU, of the
// primitive-level reference recorded in meta.json.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/io/safetensors.h"
#include "engine/quant/torchao_formats.h"
#include "tests/golden/golden_util.h"

namespace fluxserve {
namespace {

using testing::fixture;

nlohmann::json meta() {
  std::ifstream f(fixture("torchao/meta.json"));
  return nlohmann::json::parse(f);
}

// Bytes equal, with int code tensors compared through int64 so a dtype mismatch of the same
// values (uint8 vs int32) does not matter; f32 compared by bit pattern.
void expect_same(const Tensor& ours, const Tensor& ref, const std::string& what) {
  ASSERT_EQ(ours.numel(), ref.numel()) << what << ": " << ours.shape_str() << " vs " << ref.shape_str();
  if (dtype_is_float(ref.dtype()) && ref.dtype() != DType::kF8E4M3FN && ref.dtype() != DType::kF8E5M2) {
    Tensor a = *ours.as_f32(), b = *ref.as_f32();
    int bad = 0;
    for (int64_t i = 0; i < b.numel() && bad < 5; ++i) {
      uint32_t x, y;
      std::memcpy(&x, a.data<float>() + i, 4);
      std::memcpy(&y, b.data<float>() + i, 4);
      if (x != y && !(std::isnan(a.data<float>()[i]) && std::isnan(b.data<float>()[i]))) {
        ADD_FAILURE() << what << "[" << i << "]: ours " << a.data<float>()[i] << " torchao "
                      << b.data<float>()[i];
        ++bad;
      }
    }
    return;
  }
  if (ref.dtype() == DType::kF8E4M3FN || ref.dtype() == DType::kF8E5M2) {
    ASSERT_EQ(ours.dtype(), ref.dtype()) << what;
    EXPECT_EQ(std::memcmp(ours.raw(), ref.raw(), ref.nbytes()), 0) << what;
    return;
  }
  Tensor a = *ours.to(DType::kF32), b = *ref.to(DType::kF32);  // small ints: exact in f32
  int bad = 0;
  for (int64_t i = 0; i < b.numel() && bad < 5; ++i) {
    if (a.data<float>()[i] != b.data<float>()[i]) {
      ADD_FAILURE() << what << "[" << i << "]: ours " << a.data<float>()[i] << " torchao "
                    << b.data<float>()[i];
      ++bad;
    }
  }
}

void check_case(const std::string& name) {
  const nlohmann::json m = meta();
  const auto& c = m["cases"][name];
  auto file = SafetensorsFile::open(fixture("torchao/" + name + ".safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  const Tensor w0 = *(*file)->get("w");
  const Tensor x = *(*file)->get("x");
  const Tensor bias = *(*file)->get("bias");
  for (const auto& f : c["formats"]) {
    const std::string key = f["key"];
    SCOPED_TRACE(name + " " + key);
    auto spec = torchao::parse_quant_type(f["quant_type"].get<std::string>(), f["group_size"].get<int64_t>());
    ASSERT_TRUE(spec.ok()) << spec.status();
    const Tensor w = (*file)->find(key + ".w") ? *(*file)->get(key + ".w") : w0;
    auto q = torchao::quantize_weight(w, *spec);
    ASSERT_TRUE(q.ok()) << q.status();
    expect_same(q->qdata, *(*file)->get(key + ".qdata"), key + ".qdata");
    expect_same(q->scale, *(*file)->get(key + ".scale"), key + ".scale");
    if ((*file)->find(key + ".zero_point")) {
      expect_same(q->zero_point, *(*file)->get(key + ".zero_point"), key + ".zero_point");
    }
    expect_same(torchao::dequantize_weight(*q), *(*file)->get(key + ".deq"), key + ".deq");
    if ((*file)->find(key + ".xq")) {
      auto a = torchao::quantize_activation(x, *spec);
      ASSERT_TRUE(a.ok()) << a.status();
      expect_same(a->qdata, *(*file)->get(key + ".xq"), key + ".xq");
      expect_same(a->scale, *(*file)->get(key + ".xscale"), key + ".xscale");
      if ((*file)->find(key + ".xzero")) {
        expect_same(a->zero_point, *(*file)->get(key + ".xzero"), key + ".xzero");
      }
    }
    if ((*file)->find(key + ".y")) {
      auto y = torchao::quantized_linear(x, *q, &bias);
      ASSERT_TRUE(y.ok()) << y.status();
      const double err = testing::rel_error(*y, *(*file)->get(key + ".y"));
      EXPECT_LE(err, 1e-5) << key << " linear vs " << f["linear_source"].get<std::string>();
    }
  }
}

TEST(TorchaoGolden, Float32WeightsCodesScalesDequantAndLinear) { check_case("w_f32"); }

TEST(TorchaoGolden, Bfloat16WeightsCodesScalesAndDequant) { check_case("w_bf16"); }

TEST(TorchaoGolden, GroupSizeNotDividingKIsAnError) {
  const nlohmann::json m = meta();  // a range-for over meta()["errors"] would dangle
  for (const auto& e : m["errors"]) {
    auto spec = torchao::parse_quant_type(e["quant_type"].get<std::string>(), e["group_size"].get<int64_t>());
    ASSERT_TRUE(spec.ok()) << spec.status();
    Tensor w = Tensor::zeros({e["n"].get<int64_t>(), e["k"].get<int64_t>()});
    auto q = torchao::quantize_weight(w, *spec);
    ASSERT_FALSE(q.ok());
    EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(q.status().message()).find("does not divide in_features"), std::string::npos)
        << q.status();
  }
}

}  // namespace
}  // namespace fluxserve
