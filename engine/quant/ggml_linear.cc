#include "engine/quant/ggml_linear.h"

#include <algorithm>
#include <vector>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "absl/strings/str_cat.h"
#include "engine/quant/panel_gemm.h"
#include "kernels/common/dtype_math.h"
#include "kernels/common/ggml_decode.h"

namespace fluxserve {
namespace {

using ggml::kQK;
using ggml::kQK_K;

// torch's CPU float16 arithmetic: each op is computed in f32 and rounded to fp16 (round to
// nearest even, subnormals kept), which F16C's conversions do in hardware.
inline float h1(float v) {
#if defined(__F16C__)
  return _cvtsh_ss(_cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT));
#else
  return dmath::f16_to_f32(dmath::f32_to_f16(v));
#endif
}

// Rounds y[0..n) to fp16 values in place (n a multiple of 16).
inline void round_f16(float* y, int n) {
#if defined(__F16C__)
  for (int i = 0; i < n; i += 8) {
    const __m256 v = _mm256_loadu_ps(y + i);
    _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT)));
  }
#else
  for (int i = 0; i < n; ++i) y[i] = h1(y[i]);
#endif
}

inline float f16_at(const uint8_t* p) { return ggml::detail::f16_at(p); }

// y = h(y + c) over n values (torch: fp16 tensor + fp16 tensor).
inline void add_round(float* y, int n, float c) {
  for (int i = 0; i < n; ++i) y[i] += c;
  round_f16(y, n);
}

// ---- dequantize_blocks_* of diffusers/quantizers/gguf/utils.py, one block each ----------------
// Element order is ggml's (the torch port reshapes to the same order); only the rounding differs.

void q8_0(const uint8_t* b, float* y) {  // d * x
  const float d = f16_at(b);
  for (int j = 0; j < kQK; ++j) y[j] = d * static_cast<float>(static_cast<int8_t>(b[2 + j]));
  round_f16(y, kQK);
}

void q4_0(const uint8_t* b, float* y) {  // d * (q - 8)
  const float d = f16_at(b);
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = d * static_cast<float>((b[2 + j] & 0x0F) - 8);
    y[j + kQK / 2] = d * static_cast<float>((b[2 + j] >> 4) - 8);
  }
  round_f16(y, kQK);
}

void q4_1(const uint8_t* b, float* y) {  // (d * q) + m
  const float d = f16_at(b), m = f16_at(b + 2);
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = d * static_cast<float>(b[4 + j] & 0x0F);
    y[j + kQK / 2] = d * static_cast<float>(b[4 + j] >> 4);
  }
  round_f16(y, kQK);
  add_round(y, kQK, m);
}

uint32_t u32_at(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}

void q5(const uint8_t* qs, uint32_t qh, float d, int offset, float* y) {
  for (int j = 0; j < kQK / 2; ++j) {
    const int x0 = ((qs[j] & 0x0F) | static_cast<int>(((qh >> j) << 4) & 0x10)) - offset;
    const int x1 = ((qs[j] >> 4) | static_cast<int>((qh >> (j + 12)) & 0x10)) - offset;
    y[j] = d * static_cast<float>(x0);
    y[j + kQK / 2] = d * static_cast<float>(x1);
  }
  round_f16(y, kQK);
}

void q5_0(const uint8_t* b, float* y) { q5(b + 6, u32_at(b + 2), f16_at(b), 16, y); }

void q5_1(const uint8_t* b, float* y) {
  q5(b + 8, u32_at(b + 4), f16_at(b), 0, y);
  add_round(y, kQK, f16_at(b + 2));
}

void q2_k(const uint8_t* b, float* y) {  // dl = h(d * sc); ml = h(dmin * m); h(h(dl * q) - ml)
  const uint8_t* scales = b;
  const uint8_t* q = b + 16;
  const float d = f16_at(b + 80), dmin = f16_at(b + 82);
  int is = 0;
  for (int n = 0; n < kQK_K; n += 128) {
    for (int shift = 0; shift < 8; shift += 2) {
      for (int half = 0; half < 2; ++half) {
        const uint8_t sc = scales[is++];
        const float dl = h1(d * static_cast<float>(sc & 0xF));
        const float ml = h1(dmin * static_cast<float>(sc >> 4));
        for (int l = 0; l < 16; ++l) y[l] = dl * static_cast<float>((q[l + 16 * half] >> shift) & 3);
        round_f16(y, 16);
        add_round(y, 16, -ml);
        y += 16;
      }
    }
    q += 32;
  }
}

void q3_k(const uint8_t* b, float* y) {  // dl = h(d * (scale - 32)); h(dl * q)
  const uint8_t* hm = b;
  const uint8_t* q = b + 32;
  const uint8_t* sc = b + 96;
  const float d = f16_at(b + 108);
  int8_t scales[16];
  for (int i = 0; i < 16; ++i) {
    const int low = i < 8 ? (sc[i] & 0x0F) : (sc[i - 8] >> 4);
    const int high = (sc[8 + i % 4] >> (2 * (i / 4))) & 3;
    scales[i] = static_cast<int8_t>((low | (high << 4)) - 32);
  }
  int is = 0;
  uint8_t m = 1;
  for (int n = 0; n < kQK_K; n += 128) {
    for (int shift = 0; shift < 8; shift += 2) {
      for (int half = 0; half < 2; ++half) {
        const float dl = h1(d * static_cast<float>(scales[is++]));
        for (int l = 0; l < 16; ++l) {
          const int i = l + 16 * half;
          const int v = ((q[i] >> shift) & 3) - ((hm[i] & m) ? 0 : 4);
          y[l] = dl * static_cast<float>(v);
        }
        round_f16(y, 16);
        y += 16;
      }
      m = static_cast<uint8_t>(m << 1);
    }
    q += 32;
  }
}

// Q4_K / Q5_K: d_j = h(d * sc_j), m_j = h(dmin * min_j); h(h(d_j * q) - m_j) per 32 values.
void q45_k(const uint8_t* b, float* y, bool five) {
  const float d = f16_at(b), dmin = f16_at(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* q = five ? b + 48 : b + 16;
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, mn;
    ggml::detail::scale_min_k4(j, scales, &sc, &mn);
    const float dj = h1(d * static_cast<float>(sc));
    const float mj = h1(dmin * static_cast<float>(mn));
    const uint8_t* qq = q + 32 * (j / 2);
    for (int l = 0; l < 32; ++l) {
      int v = (j % 2 == 0) ? (qq[l] & 0xF) : (qq[l] >> 4);
      if (five) v |= ((qh[l] >> j) & 1) << 4;
      y[l] = dj * static_cast<float>(v);
    }
    round_f16(y, 32);
    add_round(y, 32, -mj);
    y += 32;
  }
}

void q6_k(const uint8_t* b, float* y) {  // ds = h(d * sc); h(ds * q)
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = f16_at(b + 208);
  for (int n = 0; n < 2; ++n) {
    for (int l = 0; l < 32; ++l) {
      y[l + 0] = static_cast<float>(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
      y[l + 32] = static_cast<float>(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
      y[l + 64] = static_cast<float>(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
      y[l + 96] = static_cast<float>(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
    }
    for (int s = 0; s < 8; ++s) {
      const float ds = h1(d * static_cast<float>(sc[s]));
      for (int l = 0; l < 16; ++l) y[16 * s + l] *= ds;
    }
    round_f16(y, 128);
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

using BlockFn = void (*)(const uint8_t*, float*);

BlockFn block_fn(GgmlType type) {
  switch (type) {
    case GgmlType::kQ8_0: return q8_0;
    case GgmlType::kQ4_0: return q4_0;
    case GgmlType::kQ4_1: return q4_1;
    case GgmlType::kQ5_0: return q5_0;
    case GgmlType::kQ5_1: return q5_1;
    case GgmlType::kQ2_K: return q2_k;
    case GgmlType::kQ3_K: return q3_k;
    case GgmlType::kQ4_K: return [](const uint8_t* b, float* y) { q45_k(b, y, false); };
    case GgmlType::kQ5_K: return [](const uint8_t* b, float* y) { q45_k(b, y, true); };
    case GgmlType::kQ6_K: return q6_k;
    case GgmlType::kF32: return ggml::dequant_f32;
    case GgmlType::kF16: return ggml::dequant_f16;
    case GgmlType::kBF16: return ggml::dequant_bf16;
    default: return nullptr;
  }
}

// Rows [r0, r0 + count) of a [n, k] weight, dequantized into dst [count, k].
void decode_rows(BlockFn fn, const ggml::GgmlTypeInfo& ti, const uint8_t* data, int64_t k,
                 int64_t r0, int64_t count, float* dst) {
  const int64_t blocks = k / ti.block_size;
  const uint64_t row_bytes = static_cast<uint64_t>(blocks) * ti.type_size;
  for (int64_t r = 0; r < count; ++r) {
    const uint8_t* src = data + static_cast<uint64_t>(r0 + r) * row_bytes;
    float* out = dst + r * k;
    for (int64_t i = 0; i < blocks; ++i) fn(src + i * ti.type_size, out + i * ti.block_size);
  }
}

class GgmlLinear final : public QuantizedLinearWeight {
 public:
  GgmlLinear(GgmlType type, int64_t n, int64_t k, const uint8_t* data, uint64_t nbytes,
             std::shared_ptr<const void> owner)
      : type_(type), info_(ggml::ggml_type_info(type)), fn_(block_fn(type)), n_(n), k_(k),
        data_(data), nbytes_(nbytes), owner_(std::move(owner)) {}

  // x: [..., K] -> [..., N]. Panels of weight rows are decoded once into a per-thread buffer and
  // multiplied with every input row (panel_gemm.h).
  absl::StatusOr<Tensor> forward(const Tensor& x, const Tensor* bias) const override {
    if (x.dtype() != DType::kF32 || x.dim() < 1 || x.size(-1) != k_) {
      return absl::InvalidArgumentError(absl::StrCat("gguf linear (", info_.name, " [", n_, ", ",
                                                     k_, "]): input ", x.shape_str(), " ",
                                                     dtype_name(x.dtype())));
    }
    if (bias != nullptr && (bias->numel() != n_ || bias->dtype() != DType::kF32)) {
      return absl::InvalidArgumentError(absl::StrCat("gguf linear: bias ", bias->shape_str(),
                                                     " for ", n_, " outputs"));
    }
    const int64_t m = x.numel() / std::max<int64_t>(k_, 1);
    Shape shape = x.shape();
    shape.back() = n_;
    Tensor y = Tensor::empty(shape);
    float* yp = y.data<float>();
    const float* xp = x.data<float>();
    panel_gemm(m, n_, k_, xp, 0.0f, yp, [&](int64_t r0, int64_t rows, float* dst) {
      decode_rows(fn_, info_, data_, k_, r0, rows, dst);
    });
    if (bias != nullptr) {
      const float* b = bias->data<float>();
#pragma omp parallel for if (m * n_ > (1 << 16))
      for (int64_t r = 0; r < m; ++r) {
        for (int64_t c = 0; c < n_; ++c) yp[r * n_ + c] += b[c];
      }
    }
    return y;
  }

  Tensor dequantize() const override {
    Tensor w = Tensor::empty({n_, k_});
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n_; ++r) decode_rows(fn_, info_, data_, k_, r, 1, w.data<float>() + r * k_);
    return w;
  }
  int64_t nbytes() const override { return static_cast<int64_t>(nbytes_); }
  std::string format() const override { return absl::StrCat("gguf ", info_.name); }

 private:
  GgmlType type_;
  ggml::GgmlTypeInfo info_;
  BlockFn fn_;
  int64_t n_, k_;
  const uint8_t* data_;
  uint64_t nbytes_;
  std::shared_ptr<const void> owner_;
};

}  // namespace

bool ggml_linear_supports(GgmlType type) { return block_fn(type) != nullptr; }

absl::Status ggml_dequantize_diffusers(GgmlType type, const uint8_t* src, int64_t n, float* dst) {
  const ggml::GgmlTypeInfo ti = ggml::ggml_type_info(type);
  BlockFn fn = block_fn(type);
  if (fn == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("ggml type ", ti.name, " (id ",
                                                   static_cast<uint32_t>(type),
                                                   ") is not supported for GGUF model weights"));
  }
  if (n < 0 || n % ti.block_size != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(n, " elements are not whole ", ti.block_size, "-element ", ti.name, " blocks"));
  }
  const int64_t blocks = n / ti.block_size;
#pragma omp parallel for schedule(static) if (blocks > 4096)
  for (int64_t i = 0; i < blocks; ++i) fn(src + i * ti.type_size, dst + i * ti.block_size);
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const QuantizedLinearWeight>> make_ggml_linear(
    GgmlType type, int64_t n, int64_t k, const uint8_t* data, uint64_t nbytes,
    std::shared_ptr<const void> owner) {
  const ggml::GgmlTypeInfo ti = ggml::ggml_type_info(type);
  if (block_fn(type) == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("ggml type ", ti.name,
                                                   " is not supported for a Linear weight"));
  }
  if (n <= 0 || k <= 0 || k % ti.block_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("a ", ti.name, " weight [", n, ", ", k,
                                                   "] needs rows of whole ", ti.block_size,
                                                   "-element blocks"));
  }
  const uint64_t want = static_cast<uint64_t>(n) * static_cast<uint64_t>(k / ti.block_size) *
                        static_cast<uint64_t>(ti.type_size);
  if (nbytes != want) {
    return absl::InvalidArgumentError(absl::StrCat("a ", ti.name, " weight [", n, ", ", k,
                                                   "] has ", want, " bytes, got ", nbytes));
  }
  return std::make_shared<GgmlLinear>(type, n, k, data, nbytes, std::move(owner));
}

}  // namespace fluxserve
