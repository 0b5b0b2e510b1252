// Storage-dtype conversions: known encodings from the IEEE / OCP FP8 specs, and exhaustive
// decode->encode round trips over every bit pattern of the 8- and 16-bit formats.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/core/tensor.h"
#include "kernels/common/dtype_math.h"

namespace fluxserve::dmath {
namespace {

TEST(DTypeMath, KnownF16Encodings) {
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0x7bff), 65504.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0xc000), -2.0f);
  EXPECT_TRUE(std::isinf(f16_to_f32(0x7c00)));
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // rounds past max -> inf
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie -> even
  EXPECT_EQ(f32_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // tie at half the smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.5f, -25)), 0x0001);
}

TEST(DTypeMath, KnownBf16Encodings) {
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);  // tie -> even
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_EQ(f32_to_bf16(3500.0f), f32_to_bf16(3504.0f));  // FLUX guidance 3.5 * 1000 -> 3504
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(3500.0f)), 3504.0f);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(DTypeMath, KnownF8Encodings) {
  EXPECT_EQ(f8e4m3fn_to_f32(0x7e), 448.0f);
  EXPECT_TRUE(std::isnan(f8e4m3fn_to_f32(0x7f)));
  EXPECT_EQ(f8e4m3fn_to_f32(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(f8e4m3fn_to_f32(0x38), 1.0f);
  EXPECT_EQ(f32_to_f8e4m3fn(464.0f), 0x7e);  // tie between 448 and 480 -> even (448)
  EXPECT_EQ(f32_to_f8e4m3fn(470.0f), 0x7f);  // rounds to 480: not representable -> NaN
  EXPECT_EQ(f8e5m2_to_f32(0x7b), 57344.0f);
  EXPECT_TRUE(std::isinf(f8e5m2_to_f32(0x7c)));
  EXPECT_EQ(f8e5m2_to_f32(0x3c), 1.0f);
}

TEST(DTypeMath, ExhaustiveRoundTrips) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = f16_to_f32(static_cast<uint16_t>(h));
    if (!std::isnan(f)) {
      EXPECT_EQ(f32_to_f16(f), h) << std::hex << h;
    }
    const float b = bf16_to_f32(static_cast<uint16_t>(h));
    if (!std::isnan(b)) {
      EXPECT_EQ(f32_to_bf16(b), h) << std::hex << h;
    }
  }
  for (uint32_t v = 0; v < 0x100; ++v) {
    const float a = f8e4m3fn_to_f32(static_cast<uint8_t>(v));
    if (!std::isnan(a)) {
      EXPECT_EQ(f32_to_f8e4m3fn(a), v) << std::hex << v;
    }
    const float b = f8e5m2_to_f32(static_cast<uint8_t>(v));
    if (!std::isnan(b)) {
      EXPECT_EQ(f32_to_f8e5m2(b), v) << std::hex << v;
    }
  }
}

TEST(DTypeMath, EncodeRoundsToNearest) {
  // Every f32 between two adjacent f16 values goes to the nearer one.
  for (uint16_t h = 0x3c00; h < 0x3c40; ++h) {
    const float lo = f16_to_f32(h), hi = f16_to_f32(static_cast<uint16_t>(h + 1));
    EXPECT_EQ(f32_to_f16(lo + (hi - lo) * 0.49f), h);
    EXPECT_EQ(f32_to_f16(lo + (hi - lo) * 0.51f), h + 1);
  }
}

TEST(TensorConvert, ToAndFromStorageTypes) {
  Tensor t = Tensor::from_vector({1.0f, -2.5f, 3504.0f, 0.1f}, {2, 2});
  for (DType d : {DType::kF16, DType::kBF16, DType::kF8E4M3FN, DType::kF8E5M2}) {
    auto c = t.to(d);
    ASSERT_TRUE(c.ok());
    auto back = c->as_f32();
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(back->shape(), t.shape());
    EXPECT_EQ(back->data<float>()[0], 1.0f) << dtype_name(d);
    EXPECT_EQ(back->data<float>()[1], -2.5f) << dtype_name(d);
  }
  EXPECT_FALSE(t.to(DType::kI32).ok());
  EXPECT_EQ(t.slice0(1, 1).data<float>()[0], 3504.0f);
  EXPECT_EQ(t.reshape({4}).size(0), 4);
}

}  // namespace
}  // namespace fluxserve::dmath
