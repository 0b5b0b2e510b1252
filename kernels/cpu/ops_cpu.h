// CPU backend of kernels/ops.h: f32 compute, OpenMP across rows/heads, OpenBLAS sgemm for the
// matrix products. This is the reference every other backend is compared against.
#pragma once

#include <vector>

#include "engine/core/tensor.h"

namespace fluxserve::cpu {

Tensor linear(const Tensor& x, const Tensor& w, const Tensor* b);
void silu_(Tensor& x);
void gelu_tanh_(Tensor& x);
void add_(Tensor& x, const Tensor& y);
Tensor layer_norm_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale, float eps);
Tensor layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps);
void rms_norm_(Tensor& x, const Tensor& w, float eps);
void gated_add_(Tensor& x, const Tensor& gate, const Tensor& y);
void rope_(Tensor& x, const Tensor& cos, const Tensor& sin);
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale);
Tensor cat_seq(const Tensor& a, const Tensor& b);
Tensor slice_seq(const Tensor& x, int64_t start, int64_t len);
Tensor cat_last(const Tensor& a, const Tensor& b);
std::vector<Tensor> split_last(const Tensor& x, const std::vector<int64_t>& widths);

// Text encoders: kernels/cpu/ops_text.cc (attention_ex lives in ops_cpu.cc beside attention).
Tensor attention_ex(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                    const Tensor* bias, bool causal);
void quick_gelu_(Tensor& x);
void mul_(Tensor& x, const Tensor& y);
Tensor embedding(const Tensor& table, const Tensor& ids);

// Image decoder: kernels/cpu/ops_image.cc.
Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor* b, int stride, int padding);
Tensor group_norm(const Tensor& x, int groups, const Tensor& w, const Tensor& b, float eps);
Tensor upsample_nearest2x(const Tensor& x);

}  // namespace fluxserve::cpu
