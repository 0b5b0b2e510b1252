#include "engine/pipeline/torch_rng.h"

#include <cmath>
#include <cstring>

#include "engine/core/check.h"
#include "kernels/common/dtype_math.h"

namespace fluxserve {
namespace {

constexpr int kN = 624;
constexpr int kM = 397;
constexpr uint32_t kMatrixA = 0x9908b0dfu;
constexpr double kPi = 3.14159265358979323846;

inline uint32_t fbits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bitsf(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// Lane-wise _mm256_and_ps / andnot / or / xor with a mask.
inline float fand(float v, uint32_t m) { return bitsf(fbits(v) & m); }
inline float fandnot(uint32_t m, float v) { return bitsf(~m & fbits(v)); }
inline float fxor(float v, uint32_t m) { return bitsf(fbits(v) ^ m); }

// ---- native/cpu/avx_mathfun.h, one lane at a time ---------------------------------------------
// Each step is one IEEE float operation per lane, as in torch's AVX2 kernel *as compiled*: torch
// builds it with -mavx2 -mfma and GCC's default -ffp-contract=fast, and GCC's _mm256_mul_ps /
// _mm256_add_ps are plain vector arithmetic, so every multiply whose only use is an add/sub was
// contracted into vfmadd/vfmsub/vfnmadd. The std::fma calls below are exactly those fusions, read
// off the disassembly of normal_kernel in libtorch_cpu.so (torch 2.15.0 wheel, the AVX2 copy);
// the remaining multiplies and adds are separate instructions there too. (This file itself is
// compiled with -ffp-contract=off, so nothing else is fused.)

// Constants: float arrays initialised from these (double) literals, i.e. rounded to float.
const float kSqrtHF = static_cast<float>(0.707106781186547524);
const float kLogP[9] = {static_cast<float>(7.0376836292E-2),  static_cast<float>(-1.1514610310E-1),
                        static_cast<float>(1.1676998740E-1),  static_cast<float>(-1.2420140846E-1),
                        static_cast<float>(+1.4249322787E-1), static_cast<float>(-1.6668057665E-1),
                        static_cast<float>(+2.0000714765E-1), static_cast<float>(-2.4999993993E-1),
                        static_cast<float>(+3.3333331174E-1)};
const float kLogQ1 = static_cast<float>(-2.12194440e-4);
const float kLogQ2 = static_cast<float>(0.693359375);
const float kMinusDP1 = static_cast<float>(-0.78515625);
const float kMinusDP2 = static_cast<float>(-2.4187564849853515625e-4);
const float kMinusDP3 = static_cast<float>(-3.77489497744594108e-8);
const float kSinP0 = static_cast<float>(-1.9515295891E-4);
const float kSinP1 = static_cast<float>(8.3321608736E-3);
const float kSinP2 = static_cast<float>(-1.6666654611E-1);
const float kCosP0 = static_cast<float>(2.443315711809948E-005);
const float kCosP1 = static_cast<float>(-1.388731625493765E-003);
const float kCosP2 = static_cast<float>(4.166664568298827E-002);
const float kFOPI = static_cast<float>(1.27323954473516);

// log256_ps.
float cephes_logf(float x) {
  const uint32_t invalid = (x <= 0.0f) ? 0xffffffffu : 0u;  // _CMP_LE_OS (false for NaN)
  // _mm256_max_ps(x, min_norm_pos): the second operand when x is NaN or not greater.
  const float min_norm = bitsf(0x00800000u);
  x = (x > min_norm) ? x : min_norm;
  int32_t imm0 = static_cast<int32_t>(fbits(x) >> 23);
  x = bitsf((fbits(x) & ~0x7f800000u) | fbits(0.5f));
  imm0 -= 0x7f;
  float e = static_cast<float>(imm0);
  e = e + 1.0f;
  const uint32_t mask = (x < kSqrtHF) ? 0xffffffffu : 0u;  // _CMP_LT_OS
  float tmp = fand(x, mask);
  x = x - 1.0f;
  e = e - fand(1.0f, mask);
  x = x + tmp;
  const float z = x * x;
  float y = kLogP[0];
  for (int i = 1; i < 9; ++i) y = std::fma(y, x, kLogP[i]);  // y = y * x; y = y + p_i
  y = y * x;
  y = std::fma(y, z, e * kLogQ1);  // y = y * z; tmp = e * q1; y = y + tmp
  y = std::fma(-z, 0.5f, y);       // tmp = z * 0.5; y = y - tmp
  x = x + y;
  x = std::fma(e, kLogQ2, x);      // tmp = e * q2; x = x + tmp
  return bitsf(fbits(x) | invalid);
}

// sincos256_ps.
void cephes_sincosf(float x, float* s, float* c) {
  uint32_t sign_bit_sin = fbits(x) & 0x80000000u;
  x = bitsf(fbits(x) & 0x7fffffffu);
  float y = x * kFOPI;
  // _mm256_cvttps_epi32 (out-of-range lanes give INT32_MIN; |θ| <= 2π here).
  int32_t imm2 = (y < 2147483648.0f) ? static_cast<int32_t>(y) : INT32_MIN;
  imm2 = static_cast<int32_t>(static_cast<uint32_t>(imm2) + 1u);
  imm2 &= ~1;
  y = static_cast<float>(imm2);
  int32_t imm4 = imm2;
  const uint32_t swap_sign_bit_sin = (static_cast<uint32_t>(imm2) & 4u) << 29;
  const uint32_t poly_mask = ((imm2 & 2) == 0) ? 0xffffffffu : 0u;
  // x = ((x + y * DP1) + y * DP2) + y * DP3, each step one FMA.
  x = std::fma(y, kMinusDP1, x);
  x = std::fma(y, kMinusDP2, x);
  x = std::fma(y, kMinusDP3, x);
  imm4 = static_cast<int32_t>(static_cast<uint32_t>(imm4) - 2u);
  const uint32_t sign_bit_cos = (~static_cast<uint32_t>(imm4) & 4u) << 29;
  sign_bit_sin ^= swap_sign_bit_sin;

  const float z = x * x;
  const float tmp = z * 0.5f;
  y = std::fma(kCosP0, z, kCosP1);  // y = p0 * z + p1
  y = std::fma(y, z, kCosP2);
  y = y * z;
  y = std::fma(y, z, -tmp);         // y = y * z; y = y - tmp
  y = y + 1.0f;

  float y2 = std::fma(kSinP0, z, kSinP1);
  y2 = std::fma(y2, z, kSinP2);
  y2 = y2 * z;
  y2 = std::fma(y2, x, x);          // y2 = y2 * x; y2 = y2 + x

  const float ysin2 = fand(y2, poly_mask);
  const float ysin1 = fandnot(poly_mask, y);
  y2 = y2 - ysin2;
  y = y - ysin1;
  const float r1 = ysin1 + ysin2;
  const float r2 = y + y2;
  *s = fxor(r1, sign_bit_sin);
  *c = fxor(r2, sign_bit_cos);
}

}  // namespace

TorchGenerator::TorchGenerator(uint64_t seed, TorchRngPath path) : path_(path) { manual_seed(seed); }

void TorchGenerator::manual_seed(uint64_t seed) {
  // CPUGeneratorImpl::set_current_seed -> mt19937(seed) -> init_with_uint32.
  seed_ = seed;
  next_double_normal_.reset();
  state_[0] = static_cast<uint32_t>(seed & 0xffffffffu);
  for (int j = 1; j < kN; ++j) {
    state_[j] = 1812433253u * (state_[j - 1] ^ (state_[j - 1] >> 30)) + static_cast<uint32_t>(j);
  }
  left_ = 1;
  next_ = 0;
}

uint32_t TorchGenerator::random() {
  if (--left_ == 0) {
    // mt19937_engine::next_state.
    auto mix = [](uint32_t u, uint32_t v) { return (u & 0x80000000u) | (v & 0x7fffffffu); };
    auto twist = [&](uint32_t u, uint32_t v) { return (mix(u, v) >> 1) ^ ((v & 1u) ? kMatrixA : 0u); };
    uint32_t* p = state_.data();
    left_ = kN;
    next_ = 0;
    for (int j = kN - kM + 1; --j; ++p) *p = p[kM] ^ twist(p[0], p[1]);
    for (int j = kM; --j; ++p) *p = p[kM - kN] ^ twist(p[0], p[1]);
    *p = p[kM - kN] ^ twist(p[0], state_[0]);
  }
  uint32_t y = state_[next_++];
  y ^= (y >> 11);
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= (y >> 18);
  return y;
}

uint64_t TorchGenerator::random64() {
  const uint32_t hi = random();
  const uint32_t lo = random();
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

float TorchGenerator::uniform_float() {
  // transformation::uniform_real<float>(random(), 0, 1): x * (to - from) + from.
  const float x = static_cast<float>(random() & ((1u << 24) - 1)) * (1.0f / (1u << 24));
  return x * 1.0f + 0.0f;
}

double TorchGenerator::uniform_double() {
  const double x =
      static_cast<double>(random64() & ((uint64_t{1} << 53) - 1)) * (1.0 / (uint64_t{1} << 53));
  return x * 1.0 + 0.0;
}

double TorchGenerator::normal_double() {
  // at::normal_distribution<double>(0, 1)::operator(); transformation::normal = val * std + mean.
  if (next_double_normal_.has_value()) {
    const double ret = *next_double_normal_;
    next_double_normal_.reset();
    return ret * 1.0 + 0.0;
  }
  const double u1 = uniform_double();
  const double u2 = uniform_double();
  const double r = std::sqrt(-2.0 * std::log1p(-u2));
  const double theta = 2.0 * kPi * u1;
  next_double_normal_ = r * std::sin(theta);
  const double ret = r * std::cos(theta);
  return ret * 1.0 + 0.0;
}

void TorchGenerator::normal_fill_16(float* data) const {
  // mean 0, std 1: the final fma(n, std, mean) only turns -0 into +0.
  if (path_ == TorchRngPath::kX86Vectorized) {
    // NormalFill16<float, true> under CPU_CAPABILITY_AVX2.
    const float two_pi = static_cast<float>(2.0f * kPi);
    for (int j = 0; j < 8; ++j) {
      const float u1 = 1.0f - data[j];
      const float u2 = data[j + 8];
      const float radius = std::sqrt(-2.0f * cephes_logf(u1));
      const float theta = two_pi * u2;
      float s, c;
      cephes_sincosf(theta, &s, &c);
      const float n1 = radius * c;
      const float n2 = radius * s;
      data[j] = std::fma(n1, 1.0f, 0.0f);
      data[j + 8] = std::fma(n2, 1.0f, 0.0f);
    }
  } else {
    // The generic NormalFill16<opmath_t = float>.
    for (int j = 0; j < 8; ++j) {
      const float u1 = 1 - data[j];
      const float u2 = data[j + 8];
      const float radius = std::sqrt(-2 * std::log(u1));
      const float theta = static_cast<float>(2.0f * kPi * u2);  // double product, then rounded
      data[j] = std::fma(radius * std::cos(theta), 1.0f, 0.0f);
      data[j + 8] = std::fma(radius * std::sin(theta), 1.0f, 0.0f);
    }
  }
}

void TorchGenerator::randn_f32(float* data, int64_t n) {
  if (n < 16) {
    for (int64_t i = 0; i < n; ++i) data[i] = static_cast<float>(normal_double());
    return;
  }
  for (int64_t i = 0; i < n; ++i) data[i] = uniform_float();
  for (int64_t i = 0; i < n - 15; i += 16) normal_fill_16(data + i);
  if (n % 16 != 0) {
    float* tail = data + n - 16;
    for (int i = 0; i < 16; ++i) tail[i] = uniform_float();
    normal_fill_16(tail);
  }
}

Tensor TorchGenerator::randn(const Shape& shape, DType out) {
  Tensor t = Tensor::empty(shape, out);
  const int64_t n = t.numel();
  if (out == DType::kF32) {
    randn_f32(t.data<float>(), n);
    return t;
  }
  FLUX_CHECK(out == DType::kBF16 || out == DType::kF16);
  auto round = [out](float f) { return out == DType::kBF16 ? dmath::f32_to_bf16(f) : dmath::f32_to_f16(f); };
  uint16_t* data = t.data<uint16_t>();
  if (n < 16) {
    // static_cast<BFloat16/Half>(double): through float, both rounding to nearest even.
    for (int64_t i = 0; i < n; ++i) data[i] = round(static_cast<float>(normal_double()));
    return t;
  }
  float buf[16];
  for (int64_t i = 0; i < n - 15; i += 16) {
    for (float& b : buf) b = uniform_float();
    normal_fill_16(buf);
    for (int j = 0; j < 16; ++j) data[i + j] = round(buf[j]);
  }
  if (n % 16 != 0) {
    for (float& b : buf) b = uniform_float();
    normal_fill_16(buf);
    for (int j = 0; j < 16; ++j) data[n - 16 + j] = round(buf[j]);
  }
  return t;
}

Tensor randn_per_sample(std::span<const uint64_t> seeds, const Shape& shape, DType out,
                        TorchRngPath path) {
  FLUX_CHECK(!shape.empty() && shape[0] == static_cast<int64_t>(seeds.size()));
  Tensor t = Tensor::empty(shape, out);
  Shape item = shape;
  item[0] = 1;
  const size_t item_bytes = static_cast<size_t>(shape_numel(item)) * dtype_size(out);
  for (size_t i = 0; i < seeds.size(); ++i) {
    TorchGenerator gen(seeds[i], path);
    const Tensor s = gen.randn(item, out);
    std::memcpy(static_cast<char*>(t.raw()) + i * item_bytes, s.raw(), item_bytes);
  }
  return t;
}

}  // namespace fluxserve
