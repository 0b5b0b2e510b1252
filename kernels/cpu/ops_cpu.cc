#include "kernels/cpu/ops_cpu.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/core/check.h"
#include "kernels/cpu/vec_math.h"

namespace fluxserve::cpu {
namespace {

void require_f32(const Tensor& t, const char* op) {
  FLUX_CHECK(t.dtype() == DType::kF32) << op << ": expected float32, got " << dtype_name(t.dtype());
}

int64_t rows_of(const Tensor& x) { return x.dim() == 0 ? 1 : x.numel() / x.size(-1); }

// Minimum work per OpenMP chunk for elementwise loops, so tiny tensors stay single-threaded.
constexpr int64_t kParallelMin = 1 << 14;

}  // namespace

Tensor linear(const Tensor& x, const Tensor& w, const Tensor* b) {
  require_f32(x, "linear");
  FLUX_CHECK(w.dim() == 2 && x.size(-1) == w.size(1))
      << "linear: x " << x.shape_str() << " vs weight " << w.shape_str();
  const int64_t m = rows_of(x), k = w.size(1), n = w.size(0);
  Shape out_shape = x.shape();
  out_shape.back() = n;
  Tensor y = Tensor::empty(out_shape);
  absl::StatusOr<Tensor> w32 = w.as_f32();
  FLUX_CHECK(w32.ok()) << w32.status();
  float* yp = y.data<float>();
  if (m == 0 || n == 0) return y;
  // The bias is written first and the GEMM accumulates onto it (beta = 1): one pass over y
  // instead of OpenBLAS zeroing it (beta = 0) and a second pass adding the bias.
  float beta = 0.0f;
  if (b != nullptr) {
    FLUX_CHECK(b->numel() == n) << "linear: bias " << b->shape_str() << " for " << n << " outputs";
    absl::StatusOr<Tensor> b32 = b->as_f32();
    FLUX_CHECK(b32.ok()) << b32.status();
    const float* bp = b32->data<float>();
#pragma omp parallel for if (m * n > kParallelMin)
    for (int64_t i = 0; i < m; ++i) std::memcpy(yp + i * n, bp, static_cast<size_t>(n) * sizeof(float));
    beta = 1.0f;
  } else if (k == 0) {
    std::memset(yp, 0, y.nbytes());
  }
  if (k > 0) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(n),
                static_cast<int>(k), 1.0f, x.data<float>(), static_cast<int>(k), w32->data<float>(),
                static_cast<int>(k), beta, yp, static_cast<int>(n));
  }
  return y;
}

void silu_(Tensor& x) {
  require_f32(x, "silu");
  float* p = x.data<float>();
  const int64_t n = x.numel();
#pragma omp parallel for simd if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) p[i] = p[i] / (1.0f + vexp(-p[i]));
}

void gelu_tanh_(Tensor& x) {
  require_f32(x, "gelu_tanh");
  float* p = x.data<float>();
  const int64_t n = x.numel();
  constexpr float kC = 0.7978845608028654f;  // sqrt(2/pi)
#pragma omp parallel for simd if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const float v = p[i];
    p[i] = 0.5f * v * (1.0f + vtanh(kC * (v + 0.044715f * v * v * v)));
  }
}

void add_(Tensor& x, const Tensor& y) {
  require_f32(x, "add");
  FLUX_CHECK(x.numel() == y.numel()) << "add: " << x.shape_str() << " + " << y.shape_str();
  float* p = x.data<float>();
  const float* q = y.data<float>();
  const int64_t n = x.numel();
#pragma omp parallel for simd if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) p[i] += q[i];
}

namespace {

// Mean and 1/sqrt(var + eps) of one row, in double for the sums so long rows stay exact to f32.
inline void row_stats(const float* r, int64_t d, float eps, float* mean, float* rstd) {
  double s = 0;
  for (int64_t j = 0; j < d; ++j) s += r[j];
  const double mu = s / static_cast<double>(d);
  double v = 0;
  for (int64_t j = 0; j < d; ++j) {
    const double c = r[j] - mu;
    v += c * c;
  }
  v /= static_cast<double>(d);
  *mean = static_cast<float>(mu);
  *rstd = static_cast<float>(1.0 / std::sqrt(v + static_cast<double>(eps)));
}

}  // namespace

Tensor layer_norm_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale, float eps) {
  require_f32(x, "layer_norm_modulate");
  FLUX_CHECK(x.dim() == 3 && shift.numel() == x.size(0) * x.size(2) &&
             scale.numel() == shift.numel())
      << "layer_norm_modulate: x " << x.shape_str() << " shift " << shift.shape_str();
  const int64_t bsz = x.size(0), s = x.size(1), d = x.size(2);
  Tensor y = Tensor::empty(x.shape());
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
#pragma omp parallel for collapse(2) if (x.numel() > kParallelMin)
  for (int64_t b = 0; b < bsz; ++b) {
    for (int64_t i = 0; i < s; ++i) {
      const float* sh = shift.data<float>() + b * d;
      const float* sc = scale.data<float>() + b * d;
      const float* r = xp + (b * s + i) * d;
      float* o = yp + (b * s + i) * d;
      float mu, rstd;
      row_stats(r, d, eps, &mu, &rstd);
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) o[j] = (r[j] - mu) * rstd * (1.0f + sc[j]) + sh[j];
    }
  }
  return y;
}

Tensor layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps) {
  require_f32(x, "layer_norm");
  const int64_t d = x.size(-1), rows = rows_of(x);
  Tensor y = Tensor::empty(x.shape());
  const float* wp = w ? w->data<float>() : nullptr;
  const float* bp = b ? b->data<float>() : nullptr;
#pragma omp parallel for if (x.numel() > kParallelMin)
  for (int64_t i = 0; i < rows; ++i) {
    const float* r = x.data<float>() + i * d;
    float* o = y.data<float>() + i * d;
    float mu, rstd;
    row_stats(r, d, eps, &mu, &rstd);
    for (int64_t j = 0; j < d; ++j) {
      float v = (r[j] - mu) * rstd;
      if (wp) v *= wp[j];
      if (bp) v += bp[j];
      o[j] = v;
    }
  }
  return y;
}

void rms_norm_(Tensor& x, const Tensor& w, float eps) {
  require_f32(x, "rms_norm");
  const int64_t d = x.size(-1), rows = rows_of(x);
  FLUX_CHECK(w.numel() == d) << "rms_norm: weight " << w.shape_str() << " for dim " << d;
  const float* wp = w.data<float>();
  float* xp = x.data<float>();
#pragma omp parallel for if (x.numel() > kParallelMin)
  for (int64_t i = 0; i < rows; ++i) {
    float* r = xp + i * d;
    double ss = 0;
    for (int64_t j = 0; j < d; ++j) ss += static_cast<double>(r[j]) * r[j];
    const float inv =
        static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(d) + static_cast<double>(eps)));
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) r[j] = r[j] * inv * wp[j];
  }
}

void gated_add_(Tensor& x, const Tensor& gate, const Tensor& y) {
  require_f32(x, "gated_add");
  FLUX_CHECK(x.dim() == 3 && x.numel() == y.numel() && gate.numel() == x.size(0) * x.size(2))
      << "gated_add: x " << x.shape_str() << " gate " << gate.shape_str() << " y "
      << y.shape_str();
  const int64_t bsz = x.size(0), s = x.size(1), d = x.size(2);
  float* xp = x.data<float>();
  const float* yp = y.data<float>();
#pragma omp parallel for collapse(2) if (x.numel() > kParallelMin)
  for (int64_t b = 0; b < bsz; ++b) {
    for (int64_t i = 0; i < s; ++i) {
      const float* g = gate.data<float>() + b * d;
      float* o = xp + (b * s + i) * d;
      const float* r = yp + (b * s + i) * d;
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) o[j] += g[j] * r[j];
    }
  }
}

void rope_(Tensor& x, const Tensor& cos, const Tensor& sin) {
  require_f32(x, "rope");
  FLUX_CHECK(x.dim() == 4 && cos.dim() == 2 && cos.size(0) == x.size(1) &&
             cos.size(1) == x.size(3) && sin.shape() == cos.shape() && x.size(3) % 2 == 0)
      << "rope: x " << x.shape_str() << " cos " << cos.shape_str();
  const int64_t bsz = x.size(0), s = x.size(1), h = x.size(2), dh = x.size(3);
  float* xp = x.data<float>();
#pragma omp parallel for collapse(2) if (x.numel() > kParallelMin)
  for (int64_t b = 0; b < bsz; ++b) {
    for (int64_t i = 0; i < s; ++i) {
      const float* c = cos.data<float>() + i * dh;
      const float* sn = sin.data<float>() + i * dh;
      for (int64_t hh = 0; hh < h; ++hh) {
        float* v = xp + ((b * s + i) * h + hh) * dh;
        for (int64_t k = 0; k < dh; k += 2) {
          const float x0 = v[k], x1 = v[k + 1];
          v[k] = x0 * c[k] - x1 * sn[k];
          v[k + 1] = x1 * c[k + 1] + x0 * sn[k + 1];
        }
      }
    }
  }
}

namespace {

// The blocked kernel behind attention and attention_ex. Query blocks are independent: each thread
// computes a [block, kv] score tile with one sgemm (OpenBLAS runs single-threaded inside a
// parallel region), adds the bias, normalises it, and multiplies by V. With `causal`, a block only
// needs the keys up to its last query (kv = q0 + nq) and keys past each row's own position get
// exactly zero weight (torch adds finfo.min there, whose exp underflows to 0). 256-row blocks
// amortize the packing of K and V that every sgemm call repeats.
Tensor attention_blocked(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                         const Tensor* bias, bool causal, const char* op_name) {
  require_f32(q, op_name);
  FLUX_CHECK(q.dim() == 4 && k.shape() == q.shape() && v.shape() == q.shape())
      << op_name << ": q " << q.shape_str() << " k " << k.shape_str() << " v " << v.shape_str();
  const int64_t bsz = q.size(0), s = q.size(1), h = q.size(2), dh = q.size(3);
  if (bias != nullptr) {
    require_f32(*bias, op_name);
    FLUX_CHECK(bias->numel() == h * s * s)
        << op_name << ": bias " << bias->shape_str() << " for " << h << " heads x " << s << "^2";
  }
  const int64_t ld = h * dh;
  Tensor out = Tensor::empty({bsz, s, ld});
  if (out.numel() == 0) return out;
  constexpr int64_t kBlock = 256;
  const int64_t nblocks = (s + kBlock - 1) / kBlock;
  const float* qp = q.data<float>();
  const float* kp = k.data<float>();
  const float* vp = v.data<float>();
  const float* bp = bias != nullptr ? bias->data<float>() : nullptr;
  float* op = out.data<float>();
#pragma omp parallel
  {
    std::vector<float> scores(static_cast<size_t>(kBlock * s));
#pragma omp for collapse(3) schedule(dynamic)
    for (int64_t b = 0; b < bsz; ++b) {
      for (int64_t hh = 0; hh < h; ++hh) {
        for (int64_t blk = 0; blk < nblocks; ++blk) {
          const int64_t q0 = blk * kBlock, nq = std::min(kBlock, s - q0);
          const int64_t kv = causal ? q0 + nq : s;  // keys any row of this block may see
          const float* qb = qp + ((b * s + q0) * h + hh) * dh;
          const float* kb = kp + (b * s * h + hh) * dh;
          const float* vb = vp + (b * s * h + hh) * dh;
          float* ob = op + ((b * s + q0) * h + hh) * dh;
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(nq),
                      static_cast<int>(kv), static_cast<int>(dh), scale, qb, static_cast<int>(ld),
                      kb, static_cast<int>(ld), 0.0f, scores.data(), static_cast<int>(kv));
          for (int64_t r = 0; r < nq; ++r) {
            float* row = scores.data() + r * kv;
            const int64_t n = causal ? q0 + r + 1 : kv;  // unmasked keys [0, n)
            if (bp != nullptr) {
              const float* br = bp + (hh * s + q0 + r) * s;
#pragma omp simd
              for (int64_t j = 0; j < n; ++j) row[j] += br[j];
            }
            float mx = -INFINITY;
            for (int64_t j = 0; j < n; ++j) mx = std::max(mx, row[j]);
            float sum = 0.f;
#pragma omp simd reduction(+ : sum)
            for (int64_t j = 0; j < n; ++j) {
              row[j] = vexp(row[j] - mx);
              sum += row[j];
            }
            const float inv = 1.0f / sum;
#pragma omp simd
            for (int64_t j = 0; j < n; ++j) row[j] *= inv;
            for (int64_t j = n; j < kv; ++j) row[j] = 0.0f;
          }
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(nq),
                      static_cast<int>(dh), static_cast<int>(kv), 1.0f, scores.data(),
                      static_cast<int>(kv), vb, static_cast<int>(ld), 0.0f, ob,
                      static_cast<int>(ld));
        }
      }
    }
  }
  return out;
}

}  // namespace

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale) {
  return attention_blocked(q, k, v, scale, /*bias=*/nullptr, /*causal=*/false, "attention");
}

Tensor attention_ex(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                    const Tensor* bias, bool causal) {
  return attention_blocked(q, k, v, scale, bias, causal, "attention_ex");
}

Tensor cat_seq(const Tensor& a, const Tensor& b) {
  FLUX_CHECK(a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0) && a.size(2) == b.size(2) &&
             a.dtype() == b.dtype())
      << "cat_seq: " << a.shape_str() << " + " << b.shape_str();
  const int64_t bsz = a.size(0), sa = a.size(1), sb = b.size(1), d = a.size(2);
  const size_t es = dtype_size(a.dtype());
  Tensor y = Tensor::empty({bsz, sa + sb, d}, a.dtype());
  for (int64_t i = 0; i < bsz; ++i) {
    char* dst = static_cast<char*>(y.raw()) + static_cast<size_t>(i * (sa + sb) * d) * es;
    std::memcpy(dst, static_cast<const char*>(a.raw()) + static_cast<size_t>(i * sa * d) * es,
                static_cast<size_t>(sa * d) * es);
    std::memcpy(dst + static_cast<size_t>(sa * d) * es,
                static_cast<const char*>(b.raw()) + static_cast<size_t>(i * sb * d) * es,
                static_cast<size_t>(sb * d) * es);
  }
  return y;
}

Tensor slice_seq(const Tensor& x, int64_t start, int64_t len) {
  FLUX_CHECK(x.dim() == 3 && start >= 0 && len >= 0 && start + len <= x.size(1))
      << "slice_seq(" << start << ", " << len << ") of " << x.shape_str();
  const int64_t bsz = x.size(0), s = x.size(1), d = x.size(2);
  const size_t es = dtype_size(x.dtype());
  if (bsz == 1) return x.reshape({s, d}).slice0(start, len).reshape({1, len, d});
  Tensor y = Tensor::empty({bsz, len, d}, x.dtype());
  for (int64_t i = 0; i < bsz; ++i) {
    std::memcpy(static_cast<char*>(y.raw()) + static_cast<size_t>(i * len * d) * es,
                static_cast<const char*>(x.raw()) + static_cast<size_t>((i * s + start) * d) * es,
                static_cast<size_t>(len * d) * es);
  }
  return y;
}

Tensor cat_last(const Tensor& a, const Tensor& b) {
  FLUX_CHECK(a.dim() == b.dim() && rows_of(a) == rows_of(b) && a.dtype() == b.dtype())
      << "cat_last: " << a.shape_str() << " + " << b.shape_str();
  const int64_t rows = rows_of(a), da = a.size(-1), db = b.size(-1);
  const size_t es = dtype_size(a.dtype());
  Shape shape = a.shape();
  shape.back() = da + db;
  Tensor y = Tensor::empty(shape, a.dtype());
#pragma omp parallel for if (y.numel() > kParallelMin)
  for (int64_t i = 0; i < rows; ++i) {
    char* dst = static_cast<char*>(y.raw()) + static_cast<size_t>(i * (da + db)) * es;
    std::memcpy(dst, static_cast<const char*>(a.raw()) + static_cast<size_t>(i * da) * es,
                static_cast<size_t>(da) * es);
    std::memcpy(dst + static_cast<size_t>(da) * es,
                static_cast<const char*>(b.raw()) + static_cast<size_t>(i * db) * es,
                static_cast<size_t>(db) * es);
  }
  return y;
}

std::vector<Tensor> split_last(const Tensor& x, const std::vector<int64_t>& widths) {
  int64_t total = 0;
  for (int64_t w : widths) total += w;
  FLUX_CHECK(total == x.size(-1)) << "split_last: widths sum to " << total << " for "
                                  << x.shape_str();
  const int64_t rows = rows_of(x), d = x.size(-1);
  const size_t es = dtype_size(x.dtype());
  std::vector<Tensor> out;
  int64_t off = 0;
  for (int64_t c : widths) {
    Shape shape = x.shape();
    shape.back() = c;
    Tensor t = Tensor::empty(shape, x.dtype());
#pragma omp parallel for if (rows * c > kParallelMin)
    for (int64_t i = 0; i < rows; ++i) {
      std::memcpy(static_cast<char*>(t.raw()) + static_cast<size_t>(i * c) * es,
                  static_cast<const char*>(x.raw()) + static_cast<size_t>(i * d + off) * es,
                  static_cast<size_t>(c) * es);
    }
    off += c;
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace fluxserve::cpu
