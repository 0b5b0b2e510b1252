// The backend-neutral op set the models call. Every op takes and returns contiguous tensors and
// dispatches on the device of its inputs; the CPU backend (kernels/cpu) is the reference.
// Shapes are the caller's responsibility: models validate weights at load and inputs at entry,
// so a mismatch here is a programming error (FLUX_CHECK), never a user-visible condition.
// Activations are f32 on the CPU; weights of `linear` may be f32, bf16 or f16.
#pragma once

#include <vector>

#include "engine/core/tensor.h"

namespace fluxserve::ops {

// y[..., N] = x[..., K] · w[N, K]^T (+ b[N]).
Tensor linear(const Tensor& x, const Tensor& w, const Tensor* b);

// Elementwise activations, in place.
void silu_(Tensor& x);
void gelu_tanh_(Tensor& x);        // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
Tensor silu(const Tensor& x);      // copy

// x += y (same shape).
void add_(Tensor& x, const Tensor& y);

// LayerNorm over the last dim without affine parameters, then adaptive modulation:
// y[b, s, :] = LN(x[b, s, :]) * (1 + scale[b, :]) + shift[b, :].   x: [B, S, D]; shift/scale: [B, D]
Tensor layer_norm_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale, float eps);

// Affine LayerNorm over the last dim (w, b may be null).
Tensor layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps);

// RMSNorm over the last dim with weight, in place: x * rsqrt(mean(x^2) + eps) * w.  x: [..., D]
void rms_norm_(Tensor& x, const Tensor& w, float eps);

// x[b, s, :] += gate[b, :] * y[b, s, :].   x, y: [B, S, D]; gate: [B, D]
void gated_add_(Tensor& x, const Tensor& gate, const Tensor& y);

// Interleaved-pair rotary embedding, in place, on x: [B, S, H, Dh] with cos/sin: [S, Dh]:
// out[2k] = x[2k] cos - x[2k+1] sin;  out[2k+1] = x[2k+1] cos + x[2k] sin.
void rope_(Tensor& x, const Tensor& cos, const Tensor& sin);

// Softmax attention without mask. q, k, v: [B, S, H, Dh] -> [B, S, H * Dh].
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale);

// Concatenation along dim 1 of [B, S_i, D] tensors, and the inverse split.
Tensor cat_seq(const Tensor& a, const Tensor& b);
Tensor slice_seq(const Tensor& x, int64_t start, int64_t len);
// Concatenation along the last dim of [..., Da] and [..., Db].
Tensor cat_last(const Tensor& a, const Tensor& b);
// n equal chunks along the last dim (copies).
std::vector<Tensor> chunk_last(const Tensor& x, int n);
// Pieces of the given widths along the last dim (copies); the widths must sum to size(-1).
std::vector<Tensor> split_last(const Tensor& x, const std::vector<int64_t>& widths);

// ---- text encoders (CLIP, T5) ----
// attention() with an additive bias [H, S, S] broadcast over the batch (T5's relative position
// bias; may be null) and an optional causal mask (CLIP: key j > query i is masked out).
Tensor attention_ex(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                    const Tensor* bias, bool causal);
// x * sigmoid(1.702 x), in place (CLIP's quick_gelu).
void quick_gelu_(Tensor& x);
// x *= y elementwise (same shape).
void mul_(Tensor& x, const Tensor& y);
// Rows of `table` [V, D] (any float dtype) picked by integer `ids` (i32/i64, any shape) ->
// [*ids.shape, D] f32. Ids must be in [0, V): callers validate user-supplied ids first.
Tensor embedding(const Tensor& table, const Tensor& ids);

// ---- image decoder (VAE) ----
// 2-d convolution, NCHW. x: [B, C, H, W], w: [O, C, kh, kw] (any float dtype), b: [O] or null.
Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor* b, int stride, int padding);
// GroupNorm over [B, C, H, W] with affine w, b: [C].
Tensor group_norm(const Tensor& x, int groups, const Tensor& w, const Tensor& b, float eps);
// Nearest-neighbour 2x upsampling: [B, C, H, W] -> [B, C, 2H, 2W].
Tensor upsample_nearest2x(const Tensor& x);

}  // namespace fluxserve::ops
