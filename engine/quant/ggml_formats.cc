#include "engine/quant/ggml_formats.h"

#include <cfloat>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/common/dtype_math.h"

namespace fluxserve {

namespace {

void put_f16(uint8_t* p, float v) {
  const uint16_t h = dmath::f32_to_f16(v);
  p[0] = static_cast<uint8_t>(h & 0xFF);
  p[1] = static_cast<uint8_t>(h >> 8);
}

void put_u32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

// First value of largest magnitude (ggml keeps the sign: the scale maps it to -8 / -16).
float signed_absmax(const float* x) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < ggml::kQK; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  return max;
}

void min_max(const float* x, float* mn, float* mx) {
  float lo = FLT_MAX, hi = -FLT_MAX;
  for (int j = 0; j < ggml::kQK; ++j) {
    if (x[j] < lo) lo = x[j];
    if (x[j] > hi) hi = x[j];
  }
  *mn = lo;
  *mx = hi;
}

int min_int(int a, int b) { return a < b ? a : b; }

}  // namespace

// ---- reference quantizers (ggml-quants.c quantize_row_*_ref, one block) ---------------------

void quantize_block_q8_0(const float* x, uint8_t* out) {
  float amax = 0.0f;
  for (int j = 0; j < ggml::kQK; ++j) amax = std::fmax(amax, std::fabs(x[j]));
  const float d = amax / ((1 << 7) - 1);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  put_f16(out, d);
  for (int j = 0; j < ggml::kQK; ++j) {
    const float x0 = x[j] * id;
    out[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::roundf(x0)));
  }
}

void quantize_block_q4_0(const float* x, uint8_t* out) {
  const float max = signed_absmax(x);
  const float d = max / -8;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  put_f16(out, d);
  for (int j = 0; j < ggml::kQK / 2; ++j) {
    const float x0 = x[j] * id;
    const float x1 = x[ggml::kQK / 2 + j] * id;
    const uint8_t xi0 = static_cast<uint8_t>(min_int(15, static_cast<int8_t>(x0 + 8.5f)));
    const uint8_t xi1 = static_cast<uint8_t>(min_int(15, static_cast<int8_t>(x1 + 8.5f)));
    out[2 + j] = static_cast<uint8_t>(xi0 | (xi1 << 4));
  }
}

void quantize_block_q4_1(const float* x, uint8_t* out) {
  float min, max;
  min_max(x, &min, &max);
  const float d = (max - min) / ((1 << 4) - 1);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  put_f16(out, d);
  put_f16(out + 2, min);
  for (int j = 0; j < ggml::kQK / 2; ++j) {
    const float x0 = (x[j] - min) * id;
    const float x1 = (x[ggml::kQK / 2 + j] - min) * id;
    const uint8_t xi0 = static_cast<uint8_t>(min_int(15, static_cast<int8_t>(x0 + 0.5f)));
    const uint8_t xi1 = static_cast<uint8_t>(min_int(15, static_cast<int8_t>(x1 + 0.5f)));
    out[4 + j] = static_cast<uint8_t>(xi0 | (xi1 << 4));
  }
}

void quantize_block_q5_0(const float* x, uint8_t* out) {
  const float max = signed_absmax(x);
  const float d = max / -16;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  put_f16(out, d);
  uint32_t qh = 0;
  for (int j = 0; j < ggml::kQK / 2; ++j) {
    const float x0 = x[j] * id;
    const float x1 = x[ggml::kQK / 2 + j] * id;
    const uint8_t xi0 = static_cast<uint8_t>(min_int(31, static_cast<int8_t>(x0 + 16.5f)));
    const uint8_t xi1 = static_cast<uint8_t>(min_int(31, static_cast<int8_t>(x1 + 16.5f)));
    out[6 + j] = static_cast<uint8_t>((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
    qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
    qh |= ((xi1 & 0x10u) >> 4) << (j + ggml::kQK / 2);
  }
  put_u32(out + 2, qh);
}

void quantize_block_q5_1(const float* x, uint8_t* out) {
  float min, max;
  min_max(x, &min, &max);
  const float d = (max - min) / ((1 << 5) - 1);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  put_f16(out, d);
  put_f16(out + 2, min);
  uint32_t qh = 0;
  for (int j = 0; j < ggml::kQK / 2; ++j) {
    const float x0 = (x[j] - min) * id;
    const float x1 = (x[ggml::kQK / 2 + j] - min) * id;
    const uint8_t xi0 = static_cast<uint8_t>(x0 + 0.5f);
    const uint8_t xi1 = static_cast<uint8_t>(x1 + 0.5f);
    out[8 + j] = static_cast<uint8_t>((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
    qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
    qh |= ((xi1 & 0x10u) >> 4) << (j + ggml::kQK / 2);
  }
  put_u32(out + 4, qh);
}

// ---- whole tensors --------------------------------------------------------------------------

absl::StatusOr<uint64_t> ggml_nbytes(GgmlType type, int64_t n) {
  const ggml::GgmlTypeInfo ti = ggml::ggml_type_info(type);
  if (ti.block_size == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown ggml type ", static_cast<uint32_t>(type)));
  }
  if (n < 0 || n % ti.block_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat(n, " elements of ", ti.name,
                                                   " are not a whole number of ", ti.block_size,
                                                   "-element blocks"));
  }
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(static_cast<uint64_t>(n / ti.block_size),
                             static_cast<uint64_t>(ti.type_size), &bytes)) {
    return absl::InvalidArgumentError(absl::StrCat(n, " elements of ", ti.name, " overflow"));
  }
  return bytes;
}

absl::Status ggml_dequantize(GgmlType type, const uint8_t* src, size_t src_bytes, int64_t n,
                             float* dst) {
  const ggml::GgmlTypeInfo ti = ggml::ggml_type_info(type);
  auto nbytes = ggml_nbytes(type, n);
  if (!nbytes.ok()) return nbytes.status();
  if (!ti.decodable) {
    return absl::UnimplementedError(
        absl::StrCat("dequantizing ggml type ", ti.name, " is not supported"));
  }
  if (*nbytes != src_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(n, " elements of ", ti.name, " need ", *nbytes, " bytes, got ", src_bytes));
  }
  const int64_t nblocks = n / ti.block_size;
  const int64_t bs = ti.block_size, ts = ti.type_size;
#pragma omp parallel for schedule(static) if (nblocks > 4096)
  for (int64_t b = 0; b < nblocks; ++b) {
    ggml::dequantize_block(type, src + b * ts, dst + b * bs);
  }
  return absl::OkStatus();
}

absl::StatusOr<Tensor> ggml_dequantize(const GgufTensorView& t) {
  Tensor out = Tensor::empty(t.shape(), DType::kF32);
  absl::Status s = ggml_dequantize(t.type(), t.data, t.nbytes, t.info->numel(), out.data<float>());
  if (!s.ok()) {
    return absl::Status(s.code(), absl::StrCat("tensor '", t.name(), "': ", s.message()));
  }
  return out;
}

bool ggml_can_quantize(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1:
      return true;
    default:
      return false;
  }
}

absl::Status ggml_quantize(GgmlType type, const float* src, int64_t n, uint8_t* dst,
                           size_t dst_bytes) {
  const ggml::GgmlTypeInfo ti = ggml::ggml_type_info(type);
  auto nbytes = ggml_nbytes(type, n);
  if (!nbytes.ok()) return nbytes.status();
  if (!ggml_can_quantize(type)) {
    return absl::UnimplementedError(
        absl::StrCat("quantizing to ggml type ", ti.name, " is not supported"));
  }
  if (*nbytes != dst_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(n, " elements of ", ti.name, " need ", *nbytes,
                                                   " bytes, the buffer holds ", dst_bytes));
  }
  const int64_t nblocks = n / ti.block_size;
  const int64_t bs = ti.block_size, ts = ti.type_size;
#pragma omp parallel for schedule(static) if (nblocks > 4096)
  for (int64_t b = 0; b < nblocks; ++b) {
    const float* x = src + b * bs;
    uint8_t* y = dst + b * ts;
    switch (type) {
      case GgmlType::kF32:
        std::memcpy(y, x, 4);
        break;
      case GgmlType::kF16:
        put_f16(y, *x);
        break;
      case GgmlType::kBF16: {
        const uint16_t h = dmath::f32_to_bf16(*x);
        y[0] = static_cast<uint8_t>(h & 0xFF);
        y[1] = static_cast<uint8_t>(h >> 8);
        break;
      }
      case GgmlType::kQ8_0:
        quantize_block_q8_0(x, y);
        break;
      case GgmlType::kQ4_0:
        quantize_block_q4_0(x, y);
        break;
      case GgmlType::kQ4_1:
        quantize_block_q4_1(x, y);
        break;
      case GgmlType::kQ5_0:
        quantize_block_q5_0(x, y);
        break;
      case GgmlType::kQ5_1:
        quantize_block_q5_1(x, y);
        break;
      default:
        break;  // refused above
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint8_t>> ggml_quantize(GgmlType type, const float* src, int64_t n) {
  auto nbytes = ggml_nbytes(type, n);
  if (!nbytes.ok()) return nbytes.status();
  std::vector<uint8_t> out(static_cast<size_t>(*nbytes));
  absl::Status s = ggml_quantize(type, src, n, out.data(), out.size());
  if (!s.ok()) return s;
  return out;
}

}  // namespace fluxserve
