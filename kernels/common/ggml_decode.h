// ggml tensor types: block geometry of every type ggml knows, and per-block dequantization of the
// types FLUX GGUF files use (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K), written
// once for the CPU and the CUDA kernels. The math follows ggml-quants.c dequantize_row_* term for
// term (fp16 scales widened exactly, products in f32 in the same order), so with FMA contraction
// off the values are bit-identical to ggml's reference and gguf-py's numpy port.
#pragma once

#include <cstdint>

#include "kernels/common/dtype_math.h"

namespace fluxserve::ggml {

// ggml_type ids as stored in GGUF tensor infos (ggml.h). Ids of removed types are absent.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
  kMXFP4 = 39,
  kNVFP4 = 40,
  kQ1_0 = 41,
};

constexpr int kQK = 32;     // elements per block of the legacy formats (QK4_0 .. QK8_0)
constexpr int kQK_K = 256;  // elements per super-block of the K-quants

struct GgmlTypeInfo {
  const char* name;  // as ggml_type_name prints it
  int block_size;    // elements per block (1 for plain types); 0: unknown id
  int type_size;     // bytes per block
  bool decodable;    // dequantize_block handles it
};

// Geometry of a ggml type id (ggml.c type_traits); {"?", 0, 0, false} for an unknown id.
FLUX_HD constexpr GgmlTypeInfo ggml_type_info(uint32_t id) {
  switch (id) {
    case 0:
      return {"f32", 1, 4, true};
    case 1:
      return {"f16", 1, 2, true};
    case 2:
      return {"q4_0", 32, 18, true};
    case 3:
      return {"q4_1", 32, 20, true};
    case 6:
      return {"q5_0", 32, 22, true};
    case 7:
      return {"q5_1", 32, 24, true};
    case 8:
      return {"q8_0", 32, 34, true};
    case 9:
      return {"q8_1", 32, 36, false};
    case 10:
      return {"q2_K", 256, 84, true};
    case 11:
      return {"q3_K", 256, 110, true};
    case 12:
      return {"q4_K", 256, 144, true};
    case 13:
      return {"q5_K", 256, 176, true};
    case 14:
      return {"q6_K", 256, 210, true};
    case 15:
      return {"q8_K", 256, 292, false};
    case 16:
      return {"iq2_xxs", 256, 66, false};
    case 17:
      return {"iq2_xs", 256, 74, false};
    case 18:
      return {"iq3_xxs", 256, 98, false};
    case 19:
      return {"iq1_s", 256, 50, false};
    case 20:
      return {"iq4_nl", 32, 18, false};
    case 21:
      return {"iq3_s", 256, 110, false};
    case 22:
      return {"iq2_s", 256, 82, false};
    case 23:
      return {"iq4_xs", 256, 136, false};
    case 24:
      return {"i8", 1, 1, false};
    case 25:
      return {"i16", 1, 2, false};
    case 26:
      return {"i32", 1, 4, false};
    case 27:
      return {"i64", 1, 8, false};
    case 28:
      return {"f64", 1, 8, false};
    case 29:
      return {"iq1_m", 256, 56, false};
    case 30:
      return {"bf16", 1, 2, true};
    case 34:
      return {"tq1_0", 256, 54, false};
    case 35:
      return {"tq2_0", 256, 66, false};
    case 39:
      return {"mxfp4", 32, 17, false};
    case 40:
      return {"nvfp4", 64, 36, false};
    case 41:
      return {"q1_0", 128, 18, false};
    default:
      return {"?", 0, 0, false};
  }
}
FLUX_HD constexpr GgmlTypeInfo ggml_type_info(GgmlType t) {
  return ggml_type_info(static_cast<uint32_t>(t));
}

namespace detail {
FLUX_HD float f16_at(const uint8_t* p) {
  return dmath::f16_to_f32(static_cast<uint16_t>(p[0] | (p[1] << 8)));
}
// Q4_K / Q5_K 6-bit (scale, min) pair j of 8 (ggml-quants.c get_scale_min_k4).
FLUX_HD void scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
  }
}
}  // namespace detail

// ---- plain types: one element per "block" ---------------------------------------------------
FLUX_HD void dequant_f32(const uint8_t* b, float* y) {
  *y = dmath::bits_f32(static_cast<uint32_t>(b[0]) | (static_cast<uint32_t>(b[1]) << 8) |
                       (static_cast<uint32_t>(b[2]) << 16) | (static_cast<uint32_t>(b[3]) << 24));
}
FLUX_HD void dequant_f16(const uint8_t* b, float* y) { *y = detail::f16_at(b); }
FLUX_HD void dequant_bf16(const uint8_t* b, float* y) {
  *y = dmath::bf16_to_f32(static_cast<uint16_t>(b[0] | (b[1] << 8)));
}

// ---- legacy 32-element blocks ---------------------------------------------------------------
// Layouts (ggml-common.h): low nibble of qs[j] is element j, high nibble element j + 16.
// Q4_0 {f16 d; u8 qs[16]}: y = (q - 8) * d.
FLUX_HD void dequant_q4_0(const uint8_t* b, float* y) {
  const float d = detail::f16_at(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < kQK / 2; ++j) {
    const int x0 = (qs[j] & 0x0F) - 8;
    const int x1 = (qs[j] >> 4) - 8;
    y[j] = static_cast<float>(x0) * d;
    y[j + kQK / 2] = static_cast<float>(x1) * d;
  }
}

// Q4_1 {f16 d, m; u8 qs[16]}: y = q * d + m.
FLUX_HD void dequant_q4_1(const uint8_t* b, float* y) {
  const float d = detail::f16_at(b);
  const float m = detail::f16_at(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < kQK / 2; ++j) {
    const int x0 = qs[j] & 0x0F;
    const int x1 = qs[j] >> 4;
    y[j] = static_cast<float>(x0) * d + m;
    y[j + kQK / 2] = static_cast<float>(x1) * d + m;
  }
}

// Q5_0 {f16 d; u8 qh[4]; u8 qs[16]}: 5th bit of element e is bit e of qh (little-endian u32).
FLUX_HD void dequant_q5_0(const uint8_t* b, float* y) {
  const float d = detail::f16_at(b);
  const uint32_t qh = static_cast<uint32_t>(b[2]) | (static_cast<uint32_t>(b[3]) << 8) |
                      (static_cast<uint32_t>(b[4]) << 16) | (static_cast<uint32_t>(b[5]) << 24);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < kQK / 2; ++j) {
    const uint8_t xh0 = static_cast<uint8_t>(((qh >> (j + 0)) << 4) & 0x10);
    const uint8_t xh1 = static_cast<uint8_t>(((qh >> (j + 12))) & 0x10);
    const int x0 = ((qs[j] & 0x0F) | xh0) - 16;
    const int x1 = ((qs[j] >> 4) | xh1) - 16;
    y[j] = static_cast<float>(x0) * d;
    y[j + kQK / 2] = static_cast<float>(x1) * d;
  }
}

// Q5_1 {f16 d, m; u8 qh[4]; u8 qs[16]}: y = q * d + m.
FLUX_HD void dequant_q5_1(const uint8_t* b, float* y) {
  const float d = detail::f16_at(b);
  const float m = detail::f16_at(b + 2);
  const uint32_t qh = static_cast<uint32_t>(b[4]) | (static_cast<uint32_t>(b[5]) << 8) |
                      (static_cast<uint32_t>(b[6]) << 16) | (static_cast<uint32_t>(b[7]) << 24);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < kQK / 2; ++j) {
    const uint8_t xh0 = static_cast<uint8_t>(((qh >> (j + 0)) << 4) & 0x10);
    const uint8_t xh1 = static_cast<uint8_t>(((qh >> (j + 12))) & 0x10);
    const int x0 = (qs[j] & 0x0F) | xh0;
    const int x1 = (qs[j] >> 4) | xh1;
    y[j] = static_cast<float>(x0) * d + m;
    y[j + kQK / 2] = static_cast<float>(x1) * d + m;
  }
}

// Q8_0 {f16 d; i8 qs[32]}: y = q * d.
FLUX_HD void dequant_q8_0(const uint8_t* b, float* y) {
  const float d = detail::f16_at(b);
  for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(static_cast<int8_t>(b[2 + j])) * d;
}

// ---- K-quants: 256-element super-blocks -----------------------------------------------------
// Q2_K {u8 scales[16]; u8 qs[64]; f16 d, dmin}: 16 sub-blocks of 16, 4-bit scale and min each.
FLUX_HD void dequant_q2_k(const uint8_t* b, float* y) {
  const uint8_t* scales = b;
  const uint8_t* q = b + 16;
  const float d = detail::f16_at(b + 80);
  const float min = detail::f16_at(b + 82);
  int is = 0;
  for (int n = 0; n < kQK_K; n += 128) {
    int shift = 0;
    for (int j = 0; j < 4; ++j) {
      uint8_t sc = scales[is++];
      float dl = d * static_cast<float>(sc & 0xF);
      float ml = min * static_cast<float>(sc >> 4);
      for (int l = 0; l < 16; ++l) *y++ = dl * static_cast<float>((q[l] >> shift) & 3) - ml;
      sc = scales[is++];
      dl = d * static_cast<float>(sc & 0xF);
      ml = min * static_cast<float>(sc >> 4);
      for (int l = 0; l < 16; ++l) *y++ = dl * static_cast<float>((q[l + 16] >> shift) & 3) - ml;
      shift += 2;
    }
    q += 32;
  }
}

// Q3_K {u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d}: 16 signed 6-bit scales; the 3rd bit of
// each value is the hmask bit, and a clear bit subtracts 4.
FLUX_HD void dequant_q3_k(const uint8_t* b, float* y) {
  const uint8_t* hm = b;
  const uint8_t* q = b + 32;
  const uint8_t* sc12 = b + 96;
  const float d_all = detail::f16_at(b + 108);
  // Unpack the 16 scales as ggml does (4 little-endian u32 words and bit masks).
  uint32_t aux[4];
  for (int i = 0; i < 3; ++i) {
    aux[i] = static_cast<uint32_t>(sc12[4 * i]) | (static_cast<uint32_t>(sc12[4 * i + 1]) << 8) |
             (static_cast<uint32_t>(sc12[4 * i + 2]) << 16) |
             (static_cast<uint32_t>(sc12[4 * i + 3]) << 24);
  }
  constexpr uint32_t kmask1 = 0x03030303u;
  constexpr uint32_t kmask2 = 0x0f0f0f0fu;
  const uint32_t tmp = aux[2];
  aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
  aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
  aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
  aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
  int8_t scales[16];
  for (int i = 0; i < 16; ++i)
    scales[i] = static_cast<int8_t>((aux[i / 4] >> (8 * (i % 4))) & 0xFF);

  int is = 0;
  uint8_t m = 1;
  for (int n = 0; n < kQK_K; n += 128) {
    int shift = 0;
    for (int j = 0; j < 4; ++j) {
      float dl = d_all * static_cast<float>(scales[is++] - 32);
      for (int l = 0; l < 16; ++l) {
        const int v = static_cast<int8_t>((q[l + 0] >> shift) & 3) - ((hm[l + 0] & m) ? 0 : 4);
        *y++ = dl * static_cast<float>(v);
      }
      dl = d_all * static_cast<float>(scales[is++] - 32);
      for (int l = 0; l < 16; ++l) {
        const int v = static_cast<int8_t>((q[l + 16] >> shift) & 3) - ((hm[l + 16] & m) ? 0 : 4);
        *y++ = dl * static_cast<float>(v);
      }
      shift += 2;
      m = static_cast<uint8_t>(m << 1);
    }
    q += 32;
  }
}

// Q4_K {f16 d, dmin; u8 scales[12]; u8 qs[128]}: 8 sub-blocks of 32, 6-bit scale and min each.
FLUX_HD void dequant_q4_k(const uint8_t* b, float* y) {
  const float d = detail::f16_at(b);
  const float min = detail::f16_at(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* q = b + 16;
  int is = 0;
  for (int j = 0; j < kQK_K; j += 64) {
    uint8_t sc, m;
    detail::scale_min_k4(is + 0, scales, &sc, &m);
    const float d1 = d * static_cast<float>(sc);
    const float m1 = min * static_cast<float>(m);
    detail::scale_min_k4(is + 1, scales, &sc, &m);
    const float d2 = d * static_cast<float>(sc);
    const float m2 = min * static_cast<float>(m);
    for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    q += 32;
    is += 2;
  }
}

// Q5_K {f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}: Q4_K plus a 5th bit from qh.
FLUX_HD void dequant_q5_k(const uint8_t* b, float* y) {
  const float d = detail::f16_at(b);
  const float min = detail::f16_at(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* ql = b + 48;
  int is = 0;
  uint8_t u1 = 1, u2 = 2;
  for (int j = 0; j < kQK_K; j += 64) {
    uint8_t sc, m;
    detail::scale_min_k4(is + 0, scales, &sc, &m);
    const float d1 = d * static_cast<float>(sc);
    const float m1 = min * static_cast<float>(m);
    detail::scale_min_k4(is + 1, scales, &sc, &m);
    const float d2 = d * static_cast<float>(sc);
    const float m2 = min * static_cast<float>(m);
    for (int l = 0; l < 32; ++l) {
      *y++ = d1 * static_cast<float>((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
    }
    for (int l = 0; l < 32; ++l) {
      *y++ = d2 * static_cast<float>((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
    }
    ql += 32;
    is += 2;
    u1 = static_cast<uint8_t>(u1 << 2);
    u2 = static_cast<uint8_t>(u2 << 2);
  }
}

// Q6_K {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}: 6-bit values minus 32, 16 int8 scales.
FLUX_HD void dequant_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = detail::f16_at(b + 208);
  for (int n = 0; n < kQK_K; n += 128) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = static_cast<int8_t>((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = static_cast<int8_t>((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = static_cast<int8_t>((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = static_cast<int8_t>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l + 0] = d * static_cast<float>(sc[is + 0]) * static_cast<float>(q1);
      y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
      y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
      y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

// Dequantizes one block of `type` (block_size elements from type_size bytes) into y. Returns false
// (writing nothing) for a type that is not decodable.
FLUX_HD bool dequantize_block(GgmlType type, const uint8_t* b, float* y) {
  switch (type) {
    case GgmlType::kF32:
      dequant_f32(b, y);
      return true;
    case GgmlType::kF16:
      dequant_f16(b, y);
      return true;
    case GgmlType::kBF16:
      dequant_bf16(b, y);
      return true;
    case GgmlType::kQ4_0:
      dequant_q4_0(b, y);
      return true;
    case GgmlType::kQ4_1:
      dequant_q4_1(b, y);
      return true;
    case GgmlType::kQ5_0:
      dequant_q5_0(b, y);
      return true;
    case GgmlType::kQ5_1:
      dequant_q5_1(b, y);
      return true;
    case GgmlType::kQ8_0:
      dequant_q8_0(b, y);
      return true;
    case GgmlType::kQ2_K:
      dequant_q2_k(b, y);
      return true;
    case GgmlType::kQ3_K:
      dequant_q3_k(b, y);
      return true;
    case GgmlType::kQ4_K:
      dequant_q4_k(b, y);
      return true;
    case GgmlType::kQ5_K:
      dequant_q5_k(b, y);
      return true;
    case GgmlType::kQ6_K:
      dequant_q6_k(b, y);
      return true;
    default:
      return false;
  }
}

}  // namespace fluxserve::ggml
