// Device dispatch for kernels/ops.h. Only the CPU backend exists for these ops today; the CUDA
// backend (kernels/cuda) plugs in here as it grows.
#include "kernels/ops.h"

#include "engine/core/check.h"
#include "kernels/cpu/ops_cpu.h"

namespace fluxserve::ops {
namespace {
void require_cpu(const Tensor& t, const char* op) {
  FLUX_CHECK(t.device().type == DeviceType::kCPU)
      << op << ": no " << t.device().str() << " implementation in this build";
}
}  // namespace

Tensor linear(const Tensor& x, const Tensor& w, const Tensor* b) {
  require_cpu(x, "linear");
  return cpu::linear(x, w, b);
}
void silu_(Tensor& x) {
  require_cpu(x, "silu");
  cpu::silu_(x);
}
Tensor silu(const Tensor& x) {
  Tensor y = x.clone();
  silu_(y);
  return y;
}
void gelu_tanh_(Tensor& x) {
  require_cpu(x, "gelu_tanh");
  cpu::gelu_tanh_(x);
}
void add_(Tensor& x, const Tensor& y) {
  require_cpu(x, "add");
  cpu::add_(x, y);
}
Tensor layer_norm_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale, float eps) {
  require_cpu(x, "layer_norm_modulate");
  return cpu::layer_norm_modulate(x, shift, scale, eps);
}
Tensor layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps) {
  require_cpu(x, "layer_norm");
  return cpu::layer_norm(x, w, b, eps);
}
void rms_norm_(Tensor& x, const Tensor& w, float eps) {
  require_cpu(x, "rms_norm");
  cpu::rms_norm_(x, w, eps);
}
void gated_add_(Tensor& x, const Tensor& gate, const Tensor& y) {
  require_cpu(x, "gated_add");
  cpu::gated_add_(x, gate, y);
}
void rope_(Tensor& x, const Tensor& cos, const Tensor& sin) {
  require_cpu(x, "rope");
  cpu::rope_(x, cos, sin);
}
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale) {
  require_cpu(q, "attention");
  return cpu::attention(q, k, v, scale);
}
Tensor cat_seq(const Tensor& a, const Tensor& b) {
  require_cpu(a, "cat_seq");
  return cpu::cat_seq(a, b);
}
Tensor slice_seq(const Tensor& x, int64_t start, int64_t len) {
  require_cpu(x, "slice_seq");
  return cpu::slice_seq(x, start, len);
}
Tensor cat_last(const Tensor& a, const Tensor& b) {
  require_cpu(a, "cat_last");
  return cpu::cat_last(a, b);
}
std::vector<Tensor> chunk_last(const Tensor& x, int n) {
  require_cpu(x, "chunk_last");
  FLUX_CHECK(n > 0 && x.size(-1) % n == 0) << "chunk_last(" << n << ") of " << x.shape_str();
  return cpu::split_last(x, std::vector<int64_t>(static_cast<size_t>(n), x.size(-1) / n));
}
std::vector<Tensor> split_last(const Tensor& x, const std::vector<int64_t>& widths) {
  require_cpu(x, "split_last");
  return cpu::split_last(x, widths);
}

Tensor attention_ex(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                    const Tensor* bias, bool causal) {
  require_cpu(q, "attention_ex");
  return cpu::attention_ex(q, k, v, scale, bias, causal);
}
void quick_gelu_(Tensor& x) {
  require_cpu(x, "quick_gelu");
  cpu::quick_gelu_(x);
}
void mul_(Tensor& x, const Tensor& y) {
  require_cpu(x, "mul");
  cpu::mul_(x, y);
}
Tensor embedding(const Tensor& table, const Tensor& ids) {
  require_cpu(table, "embedding");
  return cpu::embedding(table, ids);
}
Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor* b, int stride, int padding) {
  require_cpu(x, "conv2d");
  return cpu::conv2d(x, w, b, stride, padding);
}
Tensor group_norm(const Tensor& x, int groups, const Tensor& w, const Tensor& b, float eps) {
  require_cpu(x, "group_norm");
  return cpu::group_norm(x, groups, w, b, eps);
}
Tensor upsample_nearest2x(const Tensor& x) {
  require_cpu(x, "upsample_nearest2x");
  return cpu::upsample_nearest2x(x);
}

}  // namespace fluxserve::ops
