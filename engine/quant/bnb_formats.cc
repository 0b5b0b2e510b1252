#include "engine/quant/bnb_formats.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/core/check.h"
#include "engine/core/status.h"
#include "engine/io/json_util.h"
#include "kernels/common/dtype_math.h"

namespace fluxserve {
namespace {

// ---- tables taken from bitsandbytes 0.50.2 (values printed from the library) -----------------

// Midpoints between value-sorted codes, (a + b) / 2 in float32 (_get_4bit_quantize_bounds).
constexpr float kNF4Bounds[15] = {
    -0x1.b239b0p-1f, -0x1.38a4e0p-1f, -0x1.d70900p-2f, -0x1.5bd4ecp-2f, -0x1.e079d8p-3f,
    -0x1.1a7178p-3f, -0x1.74f0e2p-5f, 0x1.45f5fep-5f,  0x1.ec90c4p-4f,  0x1.a0cfc0p-3f,
    0x1.2b05a8p-2f,  0x1.8ea7f2p-2f,  0x1.00da08p-1f,  0x1.491b5ep-1f,  0x1.b913b4p-1f};
constexpr float kFP4Bounds[15] = {
    -0x1.aaaaacp-1f, -0x1.2aaaacp-1f, -0x1.aaaaacp-2f, -0x1.2aaaacp-2f,
    -0x1.aaaaacp-3f, -0x1.6p-4f,      -0x1.555556p-9f, 0.0f,
    0x1.555556p-9f,  0x1.6p-4f,       0x1.aaaaacp-3f,  0x1.2aaaacp-2f,
    0x1.aaaaacp-2f,  0x1.2aaaacp-1f,  0x1.aaaaacp-1f};
// torch.argsort of the FP4 code (sorted position -> bit pattern); +0 (code 0) sorts before the
// code-8 zero, so exact zeros get code 0 and tiny positive values code 8.
constexpr uint8_t kFP4Order[16] = {11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3};

// create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), float32.
constexpr float kDynamicMap[256] = {
    -0x1.fc6666p-1f,  -0x1.f53334p-1f,  -0x1.ee0000p-1f,  -0x1.e6ccccp-1f,
    -0x1.df999ap-1f,  -0x1.d86666p-1f,  -0x1.d13334p-1f,  -0x1.ca0000p-1f,
    -0x1.c2ccccp-1f,  -0x1.bb999ap-1f,  -0x1.b46666p-1f,  -0x1.ad3334p-1f,
    -0x1.a60000p-1f,  -0x1.9eccccp-1f,  -0x1.97999ap-1f,  -0x1.906666p-1f,
    -0x1.893334p-1f,  -0x1.820000p-1f,  -0x1.7accccp-1f,  -0x1.73999ap-1f,
    -0x1.6c6668p-1f,  -0x1.653334p-1f,  -0x1.5e0000p-1f,  -0x1.56ccccp-1f,
    -0x1.4f999ap-1f,  -0x1.486668p-1f,  -0x1.413334p-1f,  -0x1.3a0000p-1f,
    -0x1.32ccccp-1f,  -0x1.2b999ap-1f,  -0x1.246668p-1f,  -0x1.1d3334p-1f,
    -0x1.160000p-1f,  -0x1.0eccccp-1f,  -0x1.079998p-1f,  -0x1.006666p-1f,
    -0x1.f26664p-2f,  -0x1.e40000p-2f,  -0x1.d59998p-2f,  -0x1.c73334p-2f,
    -0x1.b8ccccp-2f,  -0x1.aa6666p-2f,  -0x1.9c0000p-2f,  -0x1.8d9998p-2f,
    -0x1.7f3334p-2f,  -0x1.70ccccp-2f,  -0x1.626666p-2f,  -0x1.540000p-2f,
    -0x1.459998p-2f,  -0x1.373334p-2f,  -0x1.28ccccp-2f,  -0x1.1a6668p-2f,
    -0x1.0c0000p-2f,  -0x1.fb3332p-3f,  -0x1.de6666p-3f,  -0x1.c1999ap-3f,
    -0x1.a4ccccp-3f,  -0x1.880000p-3f,  -0x1.6b3334p-3f,  -0x1.4e6666p-3f,
    -0x1.31999ap-3f,  -0x1.14ccccp-3f,  -0x1.fp-4f,       -0x1.b66668p-4f,
    -0x1.93d70ap-4f,  -0x1.8851eep-4f,  -0x1.7ccccep-4f,  -0x1.7147aep-4f,
    -0x1.65c290p-4f,  -0x1.5a3d70p-4f,  -0x1.4eb854p-4f,  -0x1.433334p-4f,
    -0x1.37ae14p-4f,  -0x1.2c28f6p-4f,  -0x1.20a3d6p-4f,  -0x1.151ebap-4f,
    -0x1.09999ap-4f,  -0x1.fc28f6p-5f,  -0x1.e51ebap-5f,  -0x1.ce147ap-5f,
    -0x1.b70a3ep-5f,  -0x1.ap-5f,       -0x1.88f5c2p-5f,  -0x1.71eb86p-5f,
    -0x1.5ae146p-5f,  -0x1.43d70ap-5f,  -0x1.2ccccep-5f,  -0x1.15c290p-5f,
    -0x1.fd70a4p-6f,  -0x1.cf5c2ap-6f,  -0x1.a147aep-6f,  -0x1.733334p-6f,
    -0x1.451ebap-6f,  -0x1.170a3ep-6f,  -0x1.d1eb86p-7f,  -0x1.75c290p-7f,
    -0x1.3e76c8p-7f,  -0x1.2c0830p-7f,  -0x1.19999ap-7f,  -0x1.072b02p-7f,
    -0x1.e978d4p-8f,  -0x1.c49ba6p-8f,  -0x1.9fbe76p-8f,  -0x1.7ae148p-8f,
    -0x1.56041ap-8f,  -0x1.3126e8p-8f,  -0x1.0c49bap-8f,  -0x1.ced914p-9f,
    -0x1.851eb8p-9f,  -0x1.3b645ap-9f,  -0x1.e353f8p-10f, -0x1.4fdf3ap-10f,
    -0x1.eecbfep-11f, -0x1.b3d07cp-11f, -0x1.78d500p-11f, -0x1.3dd982p-11f,
    -0x1.02de02p-11f, -0x1.8fc506p-12f, -0x1.19ce0ap-12f, -0x1.47ae16p-13f,
    -0x1.743e96p-14f, -0x1.15df66p-14f, -0x1.6f0068p-15f, -0x1.64840cp-16f,
    -0x1.040bfep-17f, -0x1.b43528p-19f, -0x1.27476ep-21f, 0.0f,
    0x1.27476ep-21f,  0x1.b43528p-19f,  0x1.040bfep-17f,  0x1.64840cp-16f,
    0x1.6f0068p-15f,  0x1.15df66p-14f,  0x1.743e96p-14f,  0x1.47ae16p-13f,
    0x1.19ce0ap-12f,  0x1.8fc506p-12f,  0x1.02de02p-11f,  0x1.3dd982p-11f,
    0x1.78d500p-11f,  0x1.b3d07cp-11f,  0x1.eecbfep-11f,  0x1.4fdf3ap-10f,
    0x1.e353f8p-10f,  0x1.3b645ap-9f,   0x1.851eb8p-9f,   0x1.ced914p-9f,
    0x1.0c49bap-8f,   0x1.3126e8p-8f,   0x1.56041ap-8f,   0x1.7ae148p-8f,
    0x1.9fbe76p-8f,   0x1.c49ba6p-8f,   0x1.e978d4p-8f,   0x1.072b02p-7f,
    0x1.19999ap-7f,   0x1.2c0830p-7f,   0x1.3e76c8p-7f,   0x1.75c290p-7f,
    0x1.d1eb86p-7f,   0x1.170a3ep-6f,   0x1.451ebap-6f,   0x1.733334p-6f,
    0x1.a147aep-6f,   0x1.cf5c2ap-6f,   0x1.fd70a4p-6f,   0x1.15c290p-5f,
    0x1.2ccccep-5f,   0x1.43d70ap-5f,   0x1.5ae146p-5f,   0x1.71eb86p-5f,
    0x1.88f5c2p-5f,   0x1.ap-5f,        0x1.b70a3ep-5f,   0x1.ce147ap-5f,
    0x1.e51ebap-5f,   0x1.fc28f6p-5f,   0x1.09999ap-4f,   0x1.151ebap-4f,
    0x1.20a3d6p-4f,   0x1.2c28f6p-4f,   0x1.37ae14p-4f,   0x1.433334p-4f,
    0x1.4eb854p-4f,   0x1.5a3d70p-4f,   0x1.65c290p-4f,   0x1.7147aep-4f,
    0x1.7ccccep-4f,   0x1.8851eep-4f,   0x1.93d70ap-4f,   0x1.b66668p-4f,
    0x1.fp-4f,        0x1.14ccccp-3f,   0x1.31999ap-3f,   0x1.4e6666p-3f,
    0x1.6b3334p-3f,   0x1.880000p-3f,   0x1.a4ccccp-3f,   0x1.c1999ap-3f,
    0x1.de6666p-3f,   0x1.fb3332p-3f,   0x1.0c0000p-2f,   0x1.1a6668p-2f,
    0x1.28ccccp-2f,   0x1.373334p-2f,   0x1.459998p-2f,   0x1.540000p-2f,
    0x1.626666p-2f,   0x1.70ccccp-2f,   0x1.7f3334p-2f,   0x1.8d9998p-2f,
    0x1.9c0000p-2f,   0x1.aa6666p-2f,   0x1.b8ccccp-2f,   0x1.c73334p-2f,
    0x1.d59998p-2f,   0x1.e40000p-2f,   0x1.f26664p-2f,   0x1.006666p-1f,
    0x1.079998p-1f,   0x1.0eccccp-1f,   0x1.160000p-1f,   0x1.1d3334p-1f,
    0x1.246668p-1f,   0x1.2b999ap-1f,   0x1.32ccccp-1f,   0x1.3a0000p-1f,
    0x1.413334p-1f,   0x1.486668p-1f,   0x1.4f999ap-1f,   0x1.56ccccp-1f,
    0x1.5e0000p-1f,   0x1.653334p-1f,   0x1.6c6668p-1f,   0x1.73999ap-1f,
    0x1.7accccp-1f,   0x1.820000p-1f,   0x1.893334p-1f,   0x1.906666p-1f,
    0x1.97999ap-1f,   0x1.9eccccp-1f,   0x1.a60000p-1f,   0x1.ad3334p-1f,
    0x1.b46666p-1f,   0x1.bb999ap-1f,   0x1.c2ccccp-1f,   0x1.ca0000p-1f,
    0x1.d13334p-1f,   0x1.d86666p-1f,   0x1.df999ap-1f,   0x1.e6ccccp-1f,
    0x1.ee0000p-1f,   0x1.f53334p-1f,   0x1.fc6666p-1f,   0x1.p+0f,
};

constexpr int64_t kNestedBlocksize = 256;

bool valid_blocksize(int64_t bs) { return bs >= 32 && bs <= 4096 && (bs & (bs - 1)) == 0; }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The code of a normalized value: the number of midpoints strictly below it (torch.bucketize,
// right=False), remapped to bit patterns for FP4.
uint8_t quantize4_value(Quant4 type, float s) {
  const float* bounds = type == Quant4::kNF4 ? kNF4Bounds : kFP4Bounds;
  int q = 0;
  while (q < 15 && bounds[q] < s) ++q;
  return type == Quant4::kNF4 ? static_cast<uint8_t>(q) : kFP4Order[q];
}

// bnb's CPU quantize_blockwise (csrc/cpu_ops.cpp quantize_cpu_impl): the normalized value is
// mapped to one of 65536 bins, ((v + 1) * 0.5) * 65535 + 0.5 truncated, and each bin holds the
// code whose midpoint interval contains the bin's left value -1 + 2i/65535.
struct DynamicLut {
  std::array<uint8_t, 65536> lut;
  DynamicLut() {
    float mid[255];
    for (int i = 0; i < 255; ++i) mid[i] = 0.5f * (kDynamicMap[i] + kDynamicMap[i + 1]);
    int c = 0;
    for (int i = 0; i < 65536; ++i) {
      const float val = -1.0f + (2.0f * static_cast<float>(i)) / 65535.0f;
      while (c < 255 && mid[c] < val) ++c;
      lut[i] = static_cast<uint8_t>(c);
    }
  }
};

const DynamicLut& dynamic_lut() {
  static const DynamicLut* lut = new DynamicLut();
  return *lut;
}

void quantize_blockwise_dynamic(const float* x, int64_t n, int64_t bs, uint8_t* out,
                                float* absmax) {
  const auto& lut = dynamic_lut().lut;
  for (int64_t b = 0; b * bs < n; ++b) {
    const int64_t s = b * bs, e = std::min(n, s + bs);
    float am = 0.0f;
    for (int64_t i = s; i < e; ++i) {
      const float a = std::fabs(x[i]);
      if (a > am) am = a;  // NaN never wins (bnb sanitizes NaN lanes to 0)
    }
    absmax[b] = am;
    if (am == 0.0f) {
      std::memset(out + s, 0, static_cast<size_t>(e - s));
      continue;
    }
    const float inv = 1.0f / am;
    for (int64_t i = s; i < e; ++i) {
      const float v = std::clamp(x[i] * inv, -1.0f, 1.0f);
      float t = (v + 1.0f) * 0.5f;
      t = t * 65535.0f;
      t = t + 0.5f;
      out[i] = lut[static_cast<uint32_t>(t) & 0xffffu];
    }
  }
}

// ATen's multi_row_sum (SumKernel.cpp): `rows` accumulators of `width` lanes each, cascaded in
// four levels so long sums stay accurate; reproduced to get torch's float32 rounding.
template <int kRows>
void multi_row_sum(const float* in, int64_t row_stride, int64_t size, int width, float* ret) {
  constexpr int kLevels = 4;
  int64_t clog2 = 1;
  if (size > 2) {
    clog2 = 64 - __builtin_clzll(static_cast<unsigned long long>(size - 1));
  }
  const int64_t level_power = std::max<int64_t>(4, clog2 / kLevels);
  const int64_t level_step = int64_t{1} << level_power;
  const int64_t level_mask = level_step - 1;
  std::vector<float> acc(static_cast<size_t>(kLevels * kRows * width), 0.0f);
  auto A = [&](int lvl, int r, int l) -> float& { return acc[(lvl * kRows + r) * width + l]; };
  auto add_row = [&](int64_t i) {
    const float* base = in + i * row_stride;
    for (int r = 0; r < kRows; ++r)
      for (int l = 0; l < width; ++l) A(0, r, l) += base[r * width + l];
  };
  int64_t i = 0;
  for (; i + level_step <= size;) {
    for (int64_t j = 0; j < level_step; ++j, ++i) add_row(i);
    for (int j = 1; j < kLevels; ++j) {
      for (int r = 0; r < kRows; ++r)
        for (int l = 0; l < width; ++l) {
          A(j, r, l) += A(j - 1, r, l);
          A(j - 1, r, l) = 0.0f;
        }
      const int64_t mask = level_mask << (j * level_power);
      if ((i & mask) != 0) break;
    }
  }
  for (; i < size; ++i) add_row(i);
  for (int j = 1; j < kLevels; ++j)
    for (int r = 0; r < kRows; ++r)
      for (int l = 0; l < width; ++l) A(0, r, l) += A(j, r, l);
  for (int r = 0; r < kRows; ++r)
    for (int l = 0; l < width; ++l) ret[r * width + l] = A(0, r, l);
}

// ATen row_sum: ilp of 4 vectors of `width` lanes, remainder vectors into the first accumulator.
void row_sum(const float* in, int64_t nvec, int width, float* out) {
  constexpr int kIlp = 4;
  std::vector<float> partial(static_cast<size_t>(kIlp * width));
  const int64_t size_ilp = nvec / kIlp;
  multi_row_sum<kIlp>(in, kIlp * width, size_ilp, width, partial.data());
  for (int64_t i = size_ilp * kIlp; i < nvec; ++i)
    for (int l = 0; l < width; ++l) partial[l] += in[i * width + l];
  for (int k = 1; k < kIlp; ++k)
    for (int l = 0; l < width; ++l) partial[l] += partial[k * width + l];
  std::copy(partial.begin(), partial.begin() + width, out);
}

// ---- small helpers -----------------------------------------------------------------------

absl::StatusOr<DType> parse_float_dtype(const std::string& s, const std::string& what,
                                        const std::string& field) {
  if (s == "float32") return DType::kF32;
  if (s == "bfloat16") return DType::kBF16;
  if (s == "float16") return DType::kF16;
  return absl::InvalidArgumentError(
      absl::StrCat(what, ": ", field, " '", s, "' is not one of float32, bfloat16, float16"));
}

// Python's repr(float): the shortest round-trip digits, fixed notation for exponents -5 < e < 16,
// otherwise d.ddde±XX.
std::string py_float_repr(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  if (v == 0.0) return std::signbit(v) ? "-0.0" : "0.0";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);
  std::string sci(buf, r.ptr);
  const size_t epos = sci.find('e');
  std::string mant = sci.substr(0, epos);
  const int exp = std::stoi(sci.substr(epos + 1));
  const bool neg = mant[0] == '-';
  if (neg) mant = mant.substr(1);
  std::string digits;
  for (char c : mant)
    if (c != '.') digits += c;
  std::string out = neg ? "-" : "";
  if (exp < -4 || exp >= 16) {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    out += exp < 0 ? "e-" : "e+";
    const int ae = std::abs(exp);
    if (ae < 10) out += "0";
    out += std::to_string(ae);
    return out;
  }
  if (exp < 0) {
    out += "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
  } else if (static_cast<int>(digits.size()) <= exp + 1) {
    out += digits + std::string(static_cast<size_t>(exp + 1 - digits.size()), '0') + ".0";
  } else {
    out += digits.substr(0, exp + 1) + "." + digits.substr(exp + 1);
  }
  return out;
}

Tensor u8_tensor(const std::string& s) {
  Tensor t = Tensor::empty({static_cast<int64_t>(s.size())}, DType::kU8);
  if (!s.empty()) std::memcpy(t.raw(), s.data(), s.size());
  return t;
}

std::string dims(const Shape& s) { return shape_str(s); }

absl::Status expect_tensor(const Tensor& t, DType dt, int64_t numel, const std::string& key) {
  if (t.dtype() != dt) {
    return absl::InvalidArgumentError(
        absl::StrCat(key, ": dtype ", dtype_name(t.dtype()), ", expected ", dtype_name(dt)));
  }
  if (t.numel() != numel) {
    return absl::InvalidArgumentError(absl::StrCat(key, ": shape ", t.shape_str(), " holds ",
                                                   t.numel(), " elements, expected ", numel));
  }
  return absl::OkStatus();
}

float round_to_f16(float v) { return dmath::f16_to_f32(dmath::f32_to_f16(v)); }

int8_t rne_to_i8(float v) {
  if (std::isnan(v)) return 0;
  const float r = std::nearbyint(v);  // default rounding mode: half to even, as torch.round
  return static_cast<int8_t>(std::clamp(r, -128.0f, 127.0f));
}

const float* f32_or_die(const Tensor& t) {
  FLUX_CHECK(t.dtype() == DType::kF32) << "expected float32, got " << dtype_name(t.dtype());
  return t.data<float>();
}

}  // namespace

const char* quant4_name(Quant4 t) { return t == Quant4::kNF4 ? "nf4" : "fp4"; }

float torch_mean_f32(const float* x, int64_t n, int lanes) {
  FLUX_CHECK(lanes > 0 && n > 0);
  float sum;
  if (n >= lanes) {
    // vectorized_inner_sum: whole vectors through row_sum, the scalar tail first, then the lanes.
    const int64_t nvec = n / lanes;
    std::vector<float> vacc(static_cast<size_t>(lanes));
    row_sum(x, nvec, lanes, vacc.data());
    float acc = 0.0f;
    for (int64_t k = nvec * lanes; k < n; ++k) acc += x[k];
    for (int l = 0; l < lanes; ++l) acc += vacc[l];
    sum = acc;
  } else {
    row_sum(x, n, 1, &sum);
  }
  return sum / static_cast<float>(n);
}

absl::StatusOr<Bnb4Weight> bnb4_quantize(const Tensor& w, const Bnb4Options& opt) {
  if (!valid_blocksize(opt.blocksize)) {
    return absl::InvalidArgumentError(absl::StrCat("bnb 4-bit: invalid blocksize ", opt.blocksize,
                                                   " (32 ... 4096, a power of two)"));
  }
  if (w.dtype() != DType::kF32 && w.dtype() != DType::kBF16 && w.dtype() != DType::kF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("bnb 4-bit: only float32/bfloat16/float16 weights can be quantized, got ",
                     dtype_name(w.dtype())));
  }
  FLUX_ASSIGN_OR_RETURN(Tensor wf, w.as_f32());
  Bnb4Weight q;
  q.quant_type = opt.quant_type;
  q.blocksize = opt.blocksize;
  q.dtype = w.dtype();
  q.shape = w.shape();
  const int64_t n = q.numel(), bs = opt.blocksize, nblocks = q.num_blocks();
  const float* x = wf.data<float>();
  std::vector<float> scaled(static_cast<size_t>(n));
  Tensor absmax = Tensor::empty({nblocks});
  float* am = absmax.data<float>();
  const int64_t full = n - n % bs;
  for (int64_t b = 0; b < full / bs; ++b) {
    float m = 0.0f;
    for (int64_t i = b * bs; i < (b + 1) * bs; ++i) m = std::max(m, std::fabs(x[i]));
    am[b] = m;
    // 1 / clamp(absmax, 1e-38) in float32, then one product per element.
    const float inv = 1.0f / std::max(m, 1e-38f);
    for (int64_t i = b * bs; i < (b + 1) * bs; ++i) scaled[i] = std::clamp(x[i] * inv, -1.0f, 1.0f);
  }
  if (full < n) {
    // The tail block: its stored absmax is the clamped one and elements are divided, not
    // multiplied by a reciprocal (backends/default/ops.py).
    float m = 0.0f;
    for (int64_t i = full; i < n; ++i) m = std::max(m, std::fabs(x[i]));
    m = std::max(m, 1e-38f);
    am[nblocks - 1] = m;
    for (int64_t i = full; i < n; ++i) scaled[i] = std::clamp(x[i] / m, -1.0f, 1.0f);
  }
  const int64_t nbytes = (n + 1) / 2;
  q.packed = Tensor::empty({nbytes, 1}, DType::kU8);
  uint8_t* p = q.packed.data<uint8_t>();
  for (int64_t j = 0; j < nbytes; ++j) {
    const uint8_t hi = quantize4_value(q.quant_type, scaled[2 * j]);
    const uint8_t lo = quantize4_value(q.quant_type, 2 * j + 1 < n ? scaled[2 * j + 1] : 0.0f);
    p[j] = static_cast<uint8_t>((hi << 4) | lo);
  }
  q.quant_map = Tensor::empty({16});
  for (uint32_t c = 0; c < 16; ++c)
    q.quant_map.data<float>()[c] = bnb::code4_value(q.quant_type, c);
  if (!opt.double_quant) {
    q.absmax = absmax;
    return q;
  }
  q.nested = true;
  q.nested_blocksize = kNestedBlocksize;
  q.nested_dtype = DType::kF32;
  q.nested_offset = torch_mean_f32(am, nblocks);
  std::vector<float> centered(static_cast<size_t>(nblocks));
  for (int64_t b = 0; b < nblocks; ++b) centered[b] = am[b] - q.nested_offset;
  q.absmax = Tensor::empty({nblocks}, DType::kU8);
  q.nested_absmax = Tensor::empty({ceil_div(nblocks, kNestedBlocksize)});
  quantize_blockwise_dynamic(centered.data(), nblocks, kNestedBlocksize, q.absmax.data<uint8_t>(),
                             q.nested_absmax.data<float>());
  q.nested_quant_map = Tensor::empty({256});
  std::memcpy(q.nested_quant_map.raw(), kDynamicMap, sizeof(kDynamicMap));
  return q;
}

Tensor bnb4_block_scales(const Bnb4Weight& w) {
  const int64_t nblocks = w.num_blocks();
  if (!w.nested) return *w.absmax.as_f32();
  Tensor s = Tensor::empty({nblocks});
  const uint8_t* qa = w.absmax.data<uint8_t>();
  const float* code = f32_or_die(w.nested_quant_map);
  const float* nab = f32_or_die(w.nested_absmax);
  for (int64_t b = 0; b < nblocks; ++b) {
    s.data<float>()[b] = bnb::nested_scale(qa, code, nab, b, w.nested_blocksize, w.nested_offset);
  }
  return s;
}

namespace {

// Rows [r0, r0 + rows) of a 2-D view [R, C] of the weight, dequantized to f32 into `out`.
void dequant_range(const Bnb4Weight& w, const float* scales, int64_t begin, int64_t count,
                   float* out) {
  const uint8_t* p = w.packed.data<uint8_t>();
  const int64_t bs = w.blocksize;
#pragma omp parallel for if (count > (1 << 16))
  for (int64_t i = 0; i < count; ++i) {
    const int64_t f = begin + i;
    out[i] = bnb::dequant4(w.quant_type, p, f, scales[f / bs]);
  }
}

}  // namespace

Tensor bnb4_dequantize(const Bnb4Weight& w) {
  const Tensor scales = bnb4_block_scales(w);
  Tensor out = Tensor::empty(w.shape);
  dequant_range(w, scales.data<float>(), 0, w.numel(), out.data<float>());
  return out;
}

Tensor bnb4_dequantize_as_dtype(const Bnb4Weight& w) {
  Tensor f = bnb4_dequantize(w);
  if (w.dtype == DType::kF32) return f;
  absl::StatusOr<Tensor> t = f.to(w.dtype);
  FLUX_CHECK(t.ok()) << t.status();
  return *t;
}

absl::Status bnb4_validate(const Bnb4Weight& w, std::string_view what) {
  const std::string wh(what);
  if (!valid_blocksize(w.blocksize)) {
    return absl::InvalidArgumentError(
        absl::StrCat(wh, ": invalid blocksize ", w.blocksize, " (32 ... 4096, a power of two)"));
  }
  if (w.shape.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(wh, ": empty quant_state shape"));
  }
  for (int64_t d : w.shape) {
    if (d < 0)
      return absl::InvalidArgumentError(
          absl::StrCat(wh, ": negative dimension in shape ", dims(w.shape)));
  }
  const int64_t n = w.numel(), nblocks = w.num_blocks();
  if (!w.packed.defined() || static_cast<int64_t>(w.packed.nbytes()) != (n + 1) / 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(wh, ": packed weight has ", w.packed.defined() ? w.packed.nbytes() : 0,
                     " bytes, expected ", (n + 1) / 2, " for shape ", dims(w.shape)));
  }
  FLUX_RETURN_IF_ERROR(
      expect_tensor(w.absmax, w.nested ? DType::kU8 : DType::kF32, nblocks, wh + ".absmax"));
  if (w.quant_map.defined())
    FLUX_RETURN_IF_ERROR(expect_tensor(w.quant_map, DType::kF32, 16, wh + ".quant_map"));
  if (w.nested) {
    if (w.nested_blocksize <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(wh, ": invalid nested_blocksize ", w.nested_blocksize));
    }
    if (w.nested_dtype != DType::kF32) {
      return absl::InvalidArgumentError(absl::StrCat(
          wh, ": nested_dtype ", dtype_name(w.nested_dtype), " is not supported (float32 only)"));
    }
    FLUX_RETURN_IF_ERROR(expect_tensor(w.nested_absmax, DType::kF32,
                                       ceil_div(nblocks, w.nested_blocksize),
                                       wh + ".nested_absmax"));
    FLUX_RETURN_IF_ERROR(
        expect_tensor(w.nested_quant_map, DType::kF32, 256, wh + ".nested_quant_map"));
  }
  return absl::OkStatus();
}

std::string bnb4_state_json(const Bnb4Weight& w) {
  std::vector<std::string> dims_s;
  for (int64_t d : w.shape) dims_s.push_back(std::to_string(d));
  std::string s = absl::StrCat(
      "{\"quant_type\": \"", quant4_name(w.quant_type), "\", \"blocksize\": ", w.blocksize,
      ", \"dtype\": \"", dtype_name(w.dtype), "\", \"shape\": [", absl::StrJoin(dims_s, ", "), "]");
  if (w.nested) {
    absl::StrAppend(&s, ", \"nested_blocksize\": ", w.nested_blocksize, ", \"nested_dtype\": \"",
                    dtype_name(w.nested_dtype),
                    "\", \"nested_offset\": ", py_float_repr(static_cast<double>(w.nested_offset)));
  }
  s += "}";
  return s;
}

absl::Status bnb4_parse_state_json(std::string_view json, Bnb4Weight* w, std::string_view what) {
  const std::string wh(what);
  FLUX_ASSIGN_OR_RETURN(nlohmann::json j, parse_json(json, wh));
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(wh, ": quant state is a JSON ", json_type_name(j), ", expected an object"));
  }
  static const std::set<std::string> kKnown = {"quant_type",   "blocksize",        "dtype",
                                               "shape",        "nested_blocksize", "nested_dtype",
                                               "nested_offset"};
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (!kKnown.contains(it.key())) {
      return absl::InvalidArgumentError(
          absl::StrCat(wh, ": unknown quant state field '", it.key(), "'"));
    }
  }
  ConfigReader r(j, wh);
  FLUX_ASSIGN_OR_RETURN(std::string qt, r.get_string("quant_type"));
  if (qt == "nf4") {
    w->quant_type = Quant4::kNF4;
  } else if (qt == "fp4") {
    w->quant_type = Quant4::kFP4;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(wh, ": quant_type '", qt, "' is not nf4 or fp4"));
  }
  FLUX_ASSIGN_OR_RETURN(w->blocksize, r.get_int("blocksize"));
  if (!valid_blocksize(w->blocksize)) {
    return absl::InvalidArgumentError(
        absl::StrCat(wh, ": invalid blocksize ", w->blocksize, " (32 ... 4096, a power of two)"));
  }
  FLUX_ASSIGN_OR_RETURN(std::string dt, r.get_string("dtype"));
  FLUX_ASSIGN_OR_RETURN(w->dtype, parse_float_dtype(dt, wh, "dtype"));
  FLUX_ASSIGN_OR_RETURN(std::vector<int64_t> shape, r.get_int_list("shape"));
  if (shape.empty()) return absl::InvalidArgumentError(absl::StrCat(wh, ": shape is empty"));
  for (int64_t d : shape) {
    if (d < 0) return absl::InvalidArgumentError(absl::StrCat(wh, ": negative dimension in shape"));
  }
  w->shape = shape;
  const bool has_nb = r.has("nested_blocksize"), has_nd = r.has("nested_dtype"),
             has_no = r.has("nested_offset");
  if (has_nb != has_no || has_nb != has_nd) {
    return absl::InvalidArgumentError(absl::StrCat(
        wh, ": nested_blocksize, nested_dtype and nested_offset must be given together"));
  }
  w->nested = has_nb;
  if (w->nested) {
    FLUX_ASSIGN_OR_RETURN(w->nested_blocksize, r.get_int("nested_blocksize"));
    if (w->nested_blocksize <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(wh, ": invalid nested_blocksize ", w->nested_blocksize));
    }
    FLUX_ASSIGN_OR_RETURN(std::string nd, r.get_string("nested_dtype"));
    FLUX_ASSIGN_OR_RETURN(w->nested_dtype, parse_float_dtype(nd, wh, "nested_dtype"));
    FLUX_ASSIGN_OR_RETURN(double off, r.get_double("nested_offset"));
    w->nested_offset = static_cast<float>(off);
  }
  return absl::OkStatus();
}

std::vector<std::pair<std::string, Tensor>> bnb4_state_dict(const std::string& prefix,
                                                            const Bnb4Weight& w) {
  const std::string p = prefix + ".weight";
  std::vector<std::pair<std::string, Tensor>> out;
  out.emplace_back(p, w.packed);
  out.emplace_back(p + ".absmax", w.absmax);
  out.emplace_back(p + ".quant_map", w.quant_map);
  if (w.nested) {
    out.emplace_back(p + ".nested_absmax", w.nested_absmax);
    out.emplace_back(p + ".nested_quant_map", w.nested_quant_map);
  }
  out.emplace_back(absl::StrCat(p, ".quant_state.bitsandbytes__", quant4_name(w.quant_type)),
                   u8_tensor(bnb4_state_json(w)));
  return out;
}

absl::StatusOr<Bnb4Weight> bnb4_load(const std::string& prefix, const KeyChecker& has,
                                     const TensorGetter& get) {
  const std::string p = prefix + ".weight";
  const std::string k_nf4 = p + ".quant_state.bitsandbytes__nf4",
                    k_fp4 = p + ".quant_state.bitsandbytes__fp4";
  const bool nf4 = has(k_nf4), fp4 = has(k_fp4);
  if (nf4 == fp4) {
    return absl::InvalidArgumentError(absl::StrCat(p, ": expected exactly one of '", k_nf4,
                                                   "' and '", k_fp4, "', found ",
                                                   nf4 ? "both" : "neither"));
  }
  const std::string state_key = nf4 ? k_nf4 : k_fp4;
  FLUX_ASSIGN_OR_RETURN(Tensor blob, get(state_key));
  if (blob.dtype() != DType::kU8 || blob.dim() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(state_key, ": expected a 1-D uint8 tensor of JSON bytes, got ",
                     dtype_name(blob.dtype()), " ", blob.shape_str()));
  }
  Bnb4Weight w;
  FLUX_RETURN_IF_ERROR(bnb4_parse_state_json(
      std::string_view(static_cast<const char*>(blob.raw()), blob.nbytes()), &w, state_key));
  if ((w.quant_type == Quant4::kNF4) != nf4) {
    return absl::InvalidArgumentError(absl::StrCat(
        state_key, ": quant_type '", quant4_name(w.quant_type), "' disagrees with the key suffix"));
  }
  FLUX_ASSIGN_OR_RETURN(Tensor packed, get(p));
  // quant_storage may be any dtype: the bytes are what count.
  w.packed = Tensor::view_of(packed.raw(), {static_cast<int64_t>(packed.nbytes()), 1}, DType::kU8,
                             packed.owner());
  FLUX_ASSIGN_OR_RETURN(w.absmax, get(p + ".absmax"));
  FLUX_ASSIGN_OR_RETURN(w.quant_map, get(p + ".quant_map"));
  if (w.nested) {
    FLUX_ASSIGN_OR_RETURN(w.nested_absmax, get(p + ".nested_absmax"));
    FLUX_ASSIGN_OR_RETURN(w.nested_quant_map, get(p + ".nested_quant_map"));
  } else if (has(p + ".nested_absmax") || has(p + ".nested_quant_map")) {
    return absl::InvalidArgumentError(absl::StrCat(
        p, ": nested_absmax/nested_quant_map present but the quant state has no nested_* fields"));
  }
  FLUX_RETURN_IF_ERROR(bnb4_validate(w, p));
  return w;
}

// ---- LLM.int8 ---------------------------------------------------------------------------

Int8RowQuant int8_vectorwise_quant(const Tensor& x, float threshold) {
  const float* xp = f32_or_die(x);
  const int64_t k = x.dim() == 0 ? 1 : x.size(-1);
  const int64_t m = k == 0 ? 0 : x.numel() / k;
  Int8RowQuant r;
  r.q.assign(static_cast<size_t>(m * k), 0);
  r.row_absmax.assign(static_cast<size_t>(m), 0.0f);
  std::vector<float> a(static_cast<size_t>(m * k));
  // Rows are independent except for the outlier columns (found serially below); activations are
  // quantized on every LLM.int8 forward, so the per-element work runs in parallel.
#pragma omp parallel for schedule(static) if (m * k > (1 << 16))
  for (int64_t i = 0; i < m * k; ++i) a[i] = round_to_f16(xp[i]);
  std::vector<char> outlier_col(static_cast<size_t>(k), 0);
  if (threshold > 0.0f) {
    const float t16 = round_to_f16(threshold);  // compared in float16, as torch does
    for (int64_t i = 0; i < m * k; ++i) {
      if (std::fabs(a[i]) >= t16) {
        outlier_col[i % k] = 1;
        a[i] = 0.0f;
      }
    }
    for (int64_t c = 0; c < k; ++c)
      if (outlier_col[c]) r.outlier_cols.push_back(c);
  }
#pragma omp parallel for schedule(static) if (m * k > (1 << 16))
  for (int64_t i = 0; i < m; ++i) {
    float am = 0.0f;
    for (int64_t c = 0; c < k; ++c) am = std::max(am, std::fabs(a[i * k + c]));
    r.row_absmax[i] = am;
    // 127.0 / row_stats is reciprocal() * 127 in torch: two f32 roundings.
    const float s = (1.0f / am) * 127.0f;
    for (int64_t c = 0; c < k; ++c) r.q[i * k + c] = rne_to_i8(a[i * k + c] * s);
  }
  if (m > 1) {
    for (int64_t c : r.outlier_cols)
      for (int64_t i = 0; i < m; ++i) r.q[i * k + c] = 0;
  }
  return r;
}

absl::StatusOr<Bnb8Weight> bnb8_quantize(const Tensor& w) {
  if (w.dim() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("bnb int8: weight must be 2-D, got ", w.shape_str()));
  }
  if (!dtype_is_float(w.dtype())) {
    return absl::InvalidArgumentError(
        absl::StrCat("bnb int8: weight dtype ", dtype_name(w.dtype()), " is not floating point"));
  }
  FLUX_ASSIGN_OR_RETURN(Tensor wf, w.as_f32());
  Int8RowQuant q = int8_vectorwise_quant(wf, 0.0f);
  Bnb8Weight out;
  out.cb = Tensor::empty(w.shape(), DType::kI8);
  std::memcpy(out.cb.raw(), q.q.data(), q.q.size());
  out.scb = Tensor::from_vector(q.row_absmax, {w.size(0)});
  return out;
}

Tensor bnb8_dequantize(const Bnb8Weight& w) {
  const int64_t n = w.out_features(), k = w.in_features();
  Tensor out = Tensor::empty({n, k});
  const int8_t* cb = w.cb.data<int8_t>();
  const float* scb = w.scb.data<float>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < k; ++c)
      out.data<float>()[i * k + c] =
          (static_cast<float>(cb[i * k + c]) * scb[i]) * 7.874015718698502e-3f;
  return out;
}

std::vector<std::pair<std::string, Tensor>> bnb8_state_dict(const std::string& prefix,
                                                            const Bnb8Weight& w) {
  Tensor fmt = Tensor::zeros({}, DType::kU8);
  return {{prefix + ".weight", w.cb}, {prefix + ".SCB", w.scb}, {prefix + ".weight_format", fmt}};
}

absl::StatusOr<Bnb8Weight> bnb8_load(const std::string& prefix, const KeyChecker& has,
                                     const TensorGetter& get) {
  Bnb8Weight w;
  const std::string kw = prefix + ".weight", ks = prefix + ".SCB", kf = prefix + ".weight_format";
  FLUX_ASSIGN_OR_RETURN(w.cb, get(kw));
  if (w.cb.dtype() != DType::kI8 || w.cb.dim() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        kw, ": expected a 2-D int8 tensor, got ", dtype_name(w.cb.dtype()), " ", w.cb.shape_str()));
  }
  if (!has(ks)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kw, ": int8 weight without its '", ks, "' scales"));
  }
  FLUX_ASSIGN_OR_RETURN(w.scb, get(ks));
  FLUX_RETURN_IF_ERROR(expect_tensor(w.scb, DType::kF32, w.cb.size(0), ks));
  if (has(kf)) {
    FLUX_ASSIGN_OR_RETURN(Tensor f, get(kf));
    if (f.numel() != 1 ||
        (f.dtype() != DType::kU8 && f.dtype() != DType::kI64 && f.dtype() != DType::kI32)) {
      return absl::InvalidArgumentError(absl::StrCat(kf, ": expected one integer, got ",
                                                     dtype_name(f.dtype()), " ", f.shape_str()));
    }
    int64_t v = f.dtype() == DType::kU8    ? f.data<uint8_t>()[0]
                : f.dtype() == DType::kI32 ? f.data<int32_t>()[0]
                                           : f.data<int64_t>()[0];
    if (v != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          kf, ": format ", v, " (col32/col_turing/col_ampere) is not supported, only 0 = row"));
    }
  }
  return w;
}

}  // namespace fluxserve
