#include "engine/quant/torchao_formats.h"

#include <cblas.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/common/dtype_math.h"
#include "kernels/common/torchao_decode.h"

namespace fluxserve::torchao {
namespace {

using taomath::round_half_even;
using taomath::round_to;

constexpr float kF32Eps = std::numeric_limits<float>::epsilon();

absl::Status bad(std::string_view quant_type, std::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("torchao quant_type '", std::string(quant_type), "': ", std::string(why)));
}

// The weight (or activation) as f32 values plus whether torch would compute on it in bf16.
struct Rows {
  std::vector<float> v;
  int64_t n = 0, k = 0;
  bool bf16 = false;
};

absl::StatusOr<Rows> rows_of(const Tensor& t, std::string_view what) {
  if (t.dim() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(what), ": expected a 2-D tensor, got ", t.shape_str()));
  }
  if (t.dtype() != DType::kF32 && t.dtype() != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(what), ": dtype ",
                                                   dtype_name(t.dtype()),
                                                   " unsupported (float32 or bfloat16)"));
  }
  Rows r;
  r.n = t.size(0);
  r.k = t.size(1);
  r.bf16 = t.dtype() == DType::kBF16;
  r.v.resize(static_cast<size_t>(r.n * r.k));
  if (r.bf16) {
    const uint16_t* p = t.data<uint16_t>();
    for (size_t i = 0; i < r.v.size(); ++i) r.v[i] = dmath::bf16_to_f32(p[i]);
  } else {
    std::memcpy(r.v.data(), t.data<float>(), r.v.size() * sizeof(float));
  }
  return r;
}

// choose_qparams_affine SYMMETRIC over one block: amax / ((qmax - qmin) / 2), clamped to eps,
// computed in the input dtype and stored as f32 (Int8Tensor: scale_dtype f32, eps f32 eps).
float symmetric_scale(const float* p, int64_t len, int32_t qmin, int32_t qmax, bool bf16) {
  float mn = 0.0f, mx = 0.0f;  // min(min, 0), max(max, 0)
  for (int64_t i = 0; i < len; ++i) {
    mn = std::min(mn, p[i]);
    mx = std::max(mx, p[i]);
  }
  const float amax = std::max(-mn, mx);
  const float s = round_to(amax / (static_cast<float>(qmax - qmin) / 2.0f), bf16);
  return std::max(s, round_to(kF32Eps, bf16));
}

// choose_qparams_affine ASYMMETRIC (integer zero point), in the input dtype.
void asymmetric_qparams(const float* p, int64_t len, int32_t qmin, int32_t qmax, float eps,
                        bool bf16, float* scale, int32_t* zp) {
  float mn = 0.0f, mx = 0.0f;
  for (int64_t i = 0; i < len; ++i) {
    mn = std::min(mn, p[i]);
    mx = std::max(mx, p[i]);
  }
  float s = round_to(round_to(mx - mn, bf16) / static_cast<float>(qmax - qmin), bf16);
  s = std::max(s, round_to(eps, bf16));
  float z = static_cast<float>(qmin) - round_half_even(round_to(mn / s, bf16));
  z = std::clamp(z, static_cast<float>(qmin), static_cast<float>(qmax));
  *scale = s;
  *zp = static_cast<int32_t>(z);
}

// Integer-domain quantize of one block with an f32-or-bf16 scale: torchao multiplies by
// (1.0 / scale) in the scale's dtype.
void quantize_block(const float* p, int64_t len, float scale, int32_t zp, int32_t qmin,
                    int32_t qmax, bool scale_bf16, int32_t* out) {
  const float inv = round_to(1.0f / scale, scale_bf16);
  for (int64_t i = 0; i < len; ++i) {
    if (scale_bf16) {
      // bf16 * bf16 rounds to bf16; adding the int32 zero point stays in bf16.
      float q = round_to(round_half_even(round_to(p[i] * inv, true)) + static_cast<float>(zp), true);
      out[i] = static_cast<int32_t>(std::clamp(q, static_cast<float>(qmin), static_cast<float>(qmax)));
    } else {
      out[i] = taomath::affine_code(p[i], inv, zp, qmin, qmax);
    }
  }
}

// Float8 scale over a block: amax (input dtype) / finfo.max, no eps clamp (as torchao).
float float8_scale(const float* p, int64_t len, float fmax, bool bf16) {
  float amax = 0.0f;
  for (int64_t i = 0; i < len; ++i) amax = std::max(amax, std::fabs(p[i]));
  return round_to(amax / fmax, bf16);
}

float fp8_max(DType t) { return t == DType::kF8E5M2 ? 57344.0f : 448.0f; }

uint8_t to_fp8(float v, float scale, DType t) {
  const float fmax = fp8_max(t);
  float s = v / scale;
  if (!std::isnan(s)) s = std::clamp(s, -fmax, fmax);
  return t == DType::kF8E5M2 ? dmath::f32_to_f8e5m2(s) : dmath::f32_to_f8e4m3fn(s);
}

float from_fp8(uint8_t b, DType t) {
  return t == DType::kF8E5M2 ? dmath::f8e5m2_to_f32(b) : dmath::f8e4m3fn_to_f32(b);
}

// A whole non-empty decimal string (std::string_view: Debian's absl has its own string_view).
bool parse_int(std::string_view s, int* out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && p == s.data() + s.size();
}

int64_t groups_of(const FormatSpec& s, int64_t k) { return s.group_size > 0 ? k / s.group_size : 1; }

}  // namespace

absl::StatusOr<FormatSpec> parse_quant_type(std::string_view qt, int64_t group_size) {
  FormatSpec s;
  s.name = std::string(qt);
  auto starts = [&](std::string_view p) { return qt.substr(0, p.size()) == p; };
  bool grouped = false;
  if (qt == "int8wo" || qt == "int8_weight_only") {
    s.format = Format::kInt8WeightOnly;
  } else if (qt == "int8dq" || qt == "int8_dynamic_activation_int8_weight") {
    s.format = Format::kInt8DynAct;
  } else if (qt == "int4wo" || qt == "int4_weight_only") {
    s.format = Format::kInt4WeightOnly;
    s.group_size = 128;
    grouped = true;
  } else if (qt == "int4dq" || qt == "int8_dynamic_activation_int4_weight") {
    s.format = Format::kInt4DynAct;
    s.group_size = 32;
    grouped = true;
  } else if (qt == "float8wo" || qt == "float8wo_e5m2" || qt == "float8_weight_only") {
    s.format = Format::kFloat8WeightOnly;
    s.fp8 = DType::kF8E5M2;
  } else if (qt == "float8wo_e4m3") {
    s.format = Format::kFloat8WeightOnly;
  } else if (qt == "float8dq" || qt == "float8dq_e4m3" || qt == "float8dq_e4m3_tensor" ||
             qt == "float8_dynamic_activation_float8_weight") {
    s.format = Format::kFloat8DynAct;
  } else if (qt == "float8dq_e4m3_row") {
    s.format = Format::kFloat8DynAct;
    s.per_row = true;
  } else if (starts("uint") && qt.size() >= 7 && qt.substr(qt.size() - 2) == "wo") {
    int bits = 0;
    if (!parse_int(qt.substr(4, qt.size() - 6), &bits) || bits < 1 || bits > 8) {
      return bad(qt, "uintXwo needs X in 1..8");
    }
    s.format = Format::kUintxWeightOnly;
    s.bits = bits;
    s.group_size = 64;
    grouped = true;
  } else if (starts("fp") && qt.find("_e") != std::string_view::npos) {
    // fpX_eAwB (diffusers) or fpX_eAmB.
    const size_t u = qt.find("_e");
    const size_t w = qt.find_first_of("wm", u + 2);
    int x = 0, a = 0, b = 0;
    if (w == std::string_view::npos || !parse_int(qt.substr(2, u - 2), &x) ||
        !parse_int(qt.substr(u + 2, w - u - 2), &a) ||
        !parse_int(qt.substr(w + 1), &b)) {
      return bad(qt, "expected fpX_eAwB (e.g. fp6_e3m2)");
    }
    if (a < 1 || b < 0 || x > 8 || x < 2) return bad(qt, "need 1 <= A, 0 <= B and 1 + A + B <= 8");
    if (x != 1 + a + b) {
      return bad(qt, absl::StrCat("X = ", x, " but 1 + A + B = ", 1 + a + b));
    }
    s.format = Format::kFpxWeightOnly;
    s.bits = x;
    s.ebits = a;
    s.mbits = b;
  } else {
    return bad(qt, "unknown (int8wo, int8dq, int4wo, int4dq, float8wo[_e5m2|_e4m3], "
                   "float8dq[_e4m3[_tensor|_row]], fpX_eAwB, uintXwo)");
  }
  if (group_size > 0) {
    if (!grouped) return bad(qt, absl::StrCat("group_size ", group_size, " not supported"));
    s.group_size = group_size;
  } else if (group_size < 0) {
    return bad(qt, absl::StrCat("group_size ", group_size, " must be positive"));
  }
  return s;
}

absl::StatusOr<QuantizedWeight> quantize_weight(const Tensor& w, const FormatSpec& spec) {
  auto rows = rows_of(w, absl::StrCat("quantize_weight(", spec.name, ")"));
  if (!rows.ok()) return rows.status();
  const int64_t n = rows->n, k = rows->k;
  const bool bf16 = rows->bf16;
  if (spec.group_size > 0 && (k % spec.group_size != 0)) {
    return bad(spec.name, absl::StrCat("group_size ", spec.group_size,
                                       " does not divide in_features ", k));
  }
  if (spec.format == Format::kFpxWeightOnly &&
      (spec.bits != 1 + spec.ebits + spec.mbits || spec.bits > 8 || spec.ebits < 1)) {
    return bad(spec.name, "inconsistent fpX_eAwB bits");
  }
  QuantizedWeight q;
  q.spec = spec;
  q.weight_dtype = w.dtype();
  const int64_t g = groups_of(spec, k), gs = k / g;
  const float* src = rows->v.data();
  q.scale = Tensor::empty({n, g});
  float* sc = q.scale.data<float>();
  switch (spec.format) {
    case Format::kInt8WeightOnly:
    case Format::kInt8DynAct: {
      q.qdata = Tensor::empty({n, k}, DType::kI8);
      std::vector<int32_t> codes(static_cast<size_t>(k));
      for (int64_t r = 0; r < n; ++r) {
        sc[r] = symmetric_scale(src + r * k, k, -128, 127, bf16);
        quantize_block(src + r * k, k, sc[r], 0, -128, 127, false, codes.data());
        for (int64_t j = 0; j < k; ++j) q.qdata.data<int8_t>()[r * k + j] = static_cast<int8_t>(codes[j]);
      }
      break;
    }
    case Format::kInt4WeightOnly: {
      // _choose_qparams_affine_tinygemm / _quantize_affine_tinygemm, all in the weight dtype,
      // eps 1e-6, mid point 8, float zero point.
      q.qdata = Tensor::empty({n, k}, DType::kU8);
      q.zero_point = Tensor::empty({n, g});
      for (int64_t r = 0; r < n; ++r) {
        for (int64_t gi = 0; gi < g; ++gi) {
          const float* p = src + r * k + gi * gs;
          float mn = p[0], mx = p[0];
          for (int64_t i = 1; i < gs; ++i) {
            mn = std::min(mn, p[i]);
            mx = std::max(mx, p[i]);
          }
          float s = round_to(round_to(mx - mn, bf16) / 15.0f, bf16);
          s = std::max(s, round_to(1e-6f, bf16));
          const float zero = round_to(mn + round_to(s * 8.0f, bf16), bf16);
          const float minv = round_to(zero - round_to(s * 8.0f, bf16), bf16);
          sc[r * g + gi] = s;
          q.zero_point.data<float>()[r * g + gi] = zero;
          uint8_t* out = q.qdata.data<uint8_t>() + r * k + gi * gs;
          for (int64_t i = 0; i < gs; ++i) {
            const float v = round_half_even(round_to(round_to(p[i] - minv, bf16) / s, bf16));
            out[i] = static_cast<uint8_t>(std::clamp(v, 0.0f, 15.0f));
          }
        }
      }
      break;
    }
    case Format::kInt4DynAct:
    case Format::kUintxWeightOnly: {
      // int4dq (DA8W4): uint4 [0,15], eps 1e-6, f32 scale. uintX: [0, 2^X-1], f32 eps, scale
      // kept in the weight dtype (so the quantize multiply runs in bf16 for bf16 weights).
      const bool is_uintx = spec.format == Format::kUintxWeightOnly;
      const int32_t qmax = is_uintx ? (1 << spec.bits) - 1 : 15;
      const float eps = is_uintx ? kF32Eps : 1e-6f;
      q.qdata = Tensor::empty({n, k}, DType::kU8);
      q.zero_point = Tensor::empty({n, g}, DType::kI32);
      std::vector<int32_t> codes(static_cast<size_t>(gs));
      for (int64_t r = 0; r < n; ++r) {
        for (int64_t gi = 0; gi < g; ++gi) {
          const float* p = src + r * k + gi * gs;
          float s;
          int32_t zp;
          asymmetric_qparams(p, gs, 0, qmax, eps, bf16, &s, &zp);
          sc[r * g + gi] = s;
          q.zero_point.data<int32_t>()[r * g + gi] = zp;
          quantize_block(p, gs, s, zp, 0, qmax, is_uintx && bf16, codes.data());
          uint8_t* out = q.qdata.data<uint8_t>() + r * k + gi * gs;
          for (int64_t i = 0; i < gs; ++i) out[i] = static_cast<uint8_t>(codes[i]);
        }
      }
      break;
    }
    case Format::kFloat8WeightOnly:
    case Format::kFloat8DynAct: {
      const bool per_tensor = spec.format == Format::kFloat8DynAct && !spec.per_row;
      const float fmax = fp8_max(spec.fp8);
      q.qdata = Tensor::empty({n, k}, spec.fp8);
      if (per_tensor) {
        q.scale = Tensor::empty({1, 1});
        q.scale.data<float>()[0] = float8_scale(src, n * k, fmax, bf16);
      }
      for (int64_t r = 0; r < n; ++r) {
        const float s = per_tensor ? q.scale.data<float>()[0] : float8_scale(src + r * k, k, fmax, bf16);
        if (!per_tensor) q.scale.data<float>()[r] = s;
        for (int64_t j = 0; j < k; ++j) q.qdata.data<uint8_t>()[r * k + j] = to_fp8(src[r * k + j], s, spec.fp8);
      }
      break;
    }
    case Format::kFpxWeightOnly: {
      // _choose_qparams_affine_floatx: f32 amax clamped to 1e-12 over max_normal, stored in the
      // weight dtype; codes from x / scale in f32.
      const float max_normal = taomath::fpx_max_normal(spec.ebits, spec.mbits);
      q.qdata = Tensor::empty({n, k}, DType::kU8);
      for (int64_t r = 0; r < n; ++r) {
        float amax = 0.0f;
        for (int64_t j = 0; j < k; ++j) amax = std::max(amax, std::fabs(src[r * k + j]));
        const float s = round_to(std::max(amax, 1e-12f) / max_normal, bf16);
        sc[r] = s;
        for (int64_t j = 0; j < k; ++j) {
          q.qdata.data<uint8_t>()[r * k + j] = taomath::f32_to_fpx(src[r * k + j] / s, spec.ebits, spec.mbits);
        }
      }
      break;
    }
  }
  return q;
}

void dequantize_rows(const QuantizedWeight& q, int64_t r0, int64_t rows, float* dst) {
  const int64_t k = q.in_features();
  const FormatSpec& spec = q.spec;
  const bool bf16 = q.weight_dtype == DType::kBF16;
  const int64_t g = groups_of(spec, k), gs = k / std::max<int64_t>(g, 1);
  const bool one_scale = q.scale.numel() == 1;  // float8dq per tensor
  const float* sc = q.scale.data<float>();
  // Byte codes -> f32 once per call for the table-driven formats (the same conversions the
  // element loop used).
  float lut[256];
  if (spec.format == Format::kFloat8WeightOnly || spec.format == Format::kFloat8DynAct) {
    for (int b = 0; b < 256; ++b) lut[b] = from_fp8(static_cast<uint8_t>(b), spec.fp8);
  } else if (spec.format == Format::kFpxWeightOnly) {
    for (int b = 0; b < 256; ++b) lut[b] = taomath::fpx_to_f32(static_cast<uint8_t>(b), spec.ebits, spec.mbits);
  }
  for (int64_t r = r0; r < r0 + rows; ++r) {
    float* o = dst + (r - r0) * k;
    for (int64_t gi = 0; gi < g; ++gi) {
      const int64_t si = one_scale ? 0 : r * g + gi, j0 = gi * gs, i0 = r * k + j0;
      const float s = sc[si];
      switch (spec.format) {
        case Format::kInt8WeightOnly:
        case Format::kInt8DynAct: {
          const int8_t* qd = q.qdata.data<int8_t>() + i0;
          for (int64_t j = 0; j < gs; ++j) o[j0 + j] = round_to(static_cast<float>(qd[j]) * s, bf16);
          break;
        }
        case Format::kInt4WeightOnly: {
          // (q - 8) -> weight dtype, *= scale, += zero, each in the weight dtype.
          const uint8_t* qd = q.qdata.data<uint8_t>() + i0;
          const float zero = q.zero_point.data<float>()[si];
          for (int64_t j = 0; j < gs; ++j) {
            const float v = round_to(round_to(static_cast<float>(qd[j]) - 8.0f, bf16) * s, bf16);
            o[j0 + j] = round_to(v + zero, bf16);
          }
          break;
        }
        case Format::kInt4DynAct:
        case Format::kUintxWeightOnly: {
          const uint8_t* qd = q.qdata.data<uint8_t>() + i0;
          const float zp = static_cast<float>(q.zero_point.data<int32_t>()[si]);
          for (int64_t j = 0; j < gs; ++j)
            o[j0 + j] = round_to(round_to(static_cast<float>(qd[j]) - zp, bf16) * s, bf16);
          break;
        }
        case Format::kFloat8WeightOnly:
        case Format::kFloat8DynAct:
        case Format::kFpxWeightOnly: {
          const uint8_t* qd = q.qdata.data<uint8_t>() + i0;
          for (int64_t j = 0; j < gs; ++j) o[j0 + j] = round_to(lut[qd[j]] * s, bf16);
          break;
        }
      }
    }
  }
}

Tensor dequantize_weight(const QuantizedWeight& q) {
  const int64_t n = q.out_features(), k = q.in_features();
  Tensor out = Tensor::empty({n, k});
  // Rows are independent: parallel.
#pragma omp parallel for schedule(static) if (n * k > (1 << 16))
  for (int64_t r = 0; r < n; ++r) dequantize_rows(q, r, 1, out.data<float>() + r * k);
  return out;
}

absl::StatusOr<QuantizedActivation> quantize_activation(const Tensor& x, const FormatSpec& spec) {
  if (spec.format != Format::kInt8DynAct && spec.format != Format::kInt4DynAct &&
      spec.format != Format::kFloat8DynAct) {
    return absl::FailedPreconditionError(
        absl::StrCat("torchao quant_type '", spec.name, "' does not quantize activations"));
  }
  auto rows = rows_of(x, absl::StrCat("quantize_activation(", spec.name, ")"));
  if (!rows.ok()) return rows.status();
  const int64_t m = rows->n, k = rows->k;
  const bool bf16 = rows->bf16;
  const float* src = rows->v.data();
  QuantizedActivation a;
  if (spec.format == Format::kFloat8DynAct) {
    const float fmax = fp8_max(DType::kF8E4M3FN);
    a.qdata = Tensor::empty({m, k}, DType::kF8E4M3FN);
    a.scale = Tensor::empty({spec.per_row ? m : 1, 1});
    if (!spec.per_row) a.scale.data<float>()[0] = float8_scale(src, m * k, fmax, bf16);
    // Rows are independent (activations are quantized on every call): parallel over rows.
#pragma omp parallel for schedule(static) if (m * k > (1 << 16))
    for (int64_t r = 0; r < m; ++r) {
      const float s = spec.per_row ? float8_scale(src + r * k, k, fmax, bf16) : a.scale.data<float>()[0];
      if (spec.per_row) a.scale.data<float>()[r] = s;
      for (int64_t j = 0; j < k; ++j) a.qdata.data<uint8_t>()[r * k + j] = to_fp8(src[r * k + j], s, DType::kF8E4M3FN);
    }
    return a;
  }
  // Per-token int8: int8dq symmetric [-128,127] (Int8Tensor); int4dq (DA8W4) symmetric
  // [-127,127] or asymmetric uint8 [0,255]; f32 scale, f32 eps.
  const bool asym = spec.format == Format::kInt4DynAct && !spec.act_symmetric;
  const int32_t qmin = asym ? 0 : (spec.format == Format::kInt4DynAct ? -127 : -128);
  const int32_t qmax = asym ? 255 : 127;
  a.qdata = Tensor::empty({m, k}, asym ? DType::kU8 : DType::kI8);
  a.scale = Tensor::empty({m, 1});
  if (asym) a.zero_point = Tensor::empty({m, 1}, DType::kI32);
#pragma omp parallel if (m * k > (1 << 16))
  {
    std::vector<int32_t> codes(static_cast<size_t>(k));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < m; ++r) {
      float s;
      int32_t zp = 0;
      if (asym) {
        asymmetric_qparams(src + r * k, k, qmin, qmax, kF32Eps, bf16, &s, &zp);
        a.zero_point.data<int32_t>()[r] = zp;
      } else {
        s = symmetric_scale(src + r * k, k, qmin, qmax, bf16);
      }
      a.scale.data<float>()[r] = s;
      quantize_block(src + r * k, k, s, zp, qmin, qmax, false, codes.data());
      for (int64_t j = 0; j < k; ++j) {
        if (asym) {
          a.qdata.data<uint8_t>()[r * k + j] = static_cast<uint8_t>(codes[j]);
        } else {
          a.qdata.data<int8_t>()[r * k + j] = static_cast<int8_t>(codes[j]);
        }
      }
    }
  }
  return a;
}

}  // namespace fluxserve::torchao
