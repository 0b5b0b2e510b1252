#include "engine/models/flux_transformer.h"

#include <cmath>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "engine/core/status.h"
#include "engine/models/component_quant.h"
#include "kernels/ops.h"

namespace fluxserve {
namespace {

constexpr float kNormEps = 1e-6f;  // LayerNorm and QK RMSNorm eps in both block types
constexpr double kRopeTheta = 10000.0;
constexpr int64_t kTimeChannels = 256;

// Loads attention `p` of a block; `extra` (the single blocks' proj_mlp) is stacked after q, k, v.
absl::Status load_attention(WeightLoader& w, const std::string& p, int64_t dim, int64_t head_dim,
                            bool pre_only, const Linear* extra, FluxAttention* a) {
  FLUX_ASSIGN_OR_RETURN(Linear to_q, w.linear(p + ".to_q", dim, dim));
  FLUX_ASSIGN_OR_RETURN(Linear to_k, w.linear(p + ".to_k", dim, dim));
  FLUX_ASSIGN_OR_RETURN(Linear to_v, w.linear(p + ".to_v", dim, dim));
  std::vector<const Linear*> parts = {&to_q, &to_k, &to_v};
  if (extra != nullptr) parts.push_back(extra);
  a->to_qkv = stack_linears(parts);
  FLUX_ASSIGN_OR_RETURN(a->norm_q, w.take_f32(p + ".norm_q.weight", {head_dim}));
  FLUX_ASSIGN_OR_RETURN(a->norm_k, w.take_f32(p + ".norm_k.weight", {head_dim}));
  if (pre_only) return absl::OkStatus();
  FLUX_ASSIGN_OR_RETURN(Linear add_q, w.linear(p + ".add_q_proj", dim, dim));
  FLUX_ASSIGN_OR_RETURN(Linear add_k, w.linear(p + ".add_k_proj", dim, dim));
  FLUX_ASSIGN_OR_RETURN(Linear add_v, w.linear(p + ".add_v_proj", dim, dim));
  a->add_qkv_proj = stack_linears({&add_q, &add_k, &add_v});
  FLUX_ASSIGN_OR_RETURN(a->norm_added_q, w.take_f32(p + ".norm_added_q.weight", {head_dim}));
  FLUX_ASSIGN_OR_RETURN(a->norm_added_k, w.take_f32(p + ".norm_added_k.weight", {head_dim}));
  FLUX_ASSIGN_OR_RETURN(a->to_out_0, w.linear(p + ".to_out.0", dim, dim));
  FLUX_ASSIGN_OR_RETURN(a->to_add_out, w.linear(p + ".to_add_out", dim, dim));
  return absl::OkStatus();
}

absl::StatusOr<MlpEmbedder> load_mlp_embedder(WeightLoader& w, const std::string& p, int64_t in,
                                              int64_t dim) {
  MlpEmbedder e;
  FLUX_ASSIGN_OR_RETURN(e.linear_1, w.linear(p + ".linear_1", in, dim));
  FLUX_ASSIGN_OR_RETURN(e.linear_2, w.linear(p + ".linear_2", dim, dim));
  return e;
}

// [B, S, H*Dh] -> [B, S, H, Dh], with the per-head RMSNorm applied when `norm` is given.
Tensor to_heads(const Tensor& x, const Tensor* norm, int64_t heads, int64_t head_dim) {
  Tensor y = x.reshape({x.size(0), x.size(1), heads, head_dim});
  if (norm != nullptr) ops::rms_norm_(y, *norm, kNormEps);
  return y;
}

Tensor as_seq(const Tensor& heads) {  // [B, S, H, Dh] -> [B, S, H*Dh]
  return heads.reshape({heads.size(0), heads.size(1), heads.size(2) * heads.size(3)});
}
Tensor as_heads(const Tensor& seq, int64_t heads) {  // [B, S, D] -> [B, S, H, D/H]
  return seq.reshape({seq.size(0), seq.size(1), heads, seq.size(2) / heads});
}

// Broadcast a [1] tensor to [B]; accept [B] as is.
absl::StatusOr<Tensor> per_batch(const Tensor& t, int64_t batch, const char* name) {
  FLUX_ASSIGN_OR_RETURN(Tensor f, t.as_f32());
  if (f.numel() == batch && f.dim() <= 1) return f.clone().reshape({batch});  // caller's data stays
  if (f.numel() == 1) {
    Tensor out = Tensor::empty({batch});
    for (int64_t i = 0; i < batch; ++i) out.data<float>()[i] = f.data<float>()[0];
    return out;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("'", name, "' must have shape [", batch, "] (one per batch item), got ",
                   t.shape_str()));
}

absl::StatusOr<Tensor> ids_2d(const Tensor& ids, int64_t len, int64_t n_axes, const char* name) {
  Tensor t = ids;
  if (t.dim() == 3 && t.size(0) >= 1) {
    std::cerr << "warning: passing '" << name
              << "' as a 3d tensor is deprecated (diffusers); using its first entry\n";
    t = t.slice0(0, 1).reshape({t.size(1), t.size(2)});
  }
  if (t.dim() != 2 || t.size(0) != len || t.size(1) != n_axes) {
    return absl::InvalidArgumentError(absl::StrCat("'", name, "' must have shape [", len, ", ",
                                                   n_axes, "], got ", ids.shape_str()));
  }
  return t.as_f32();
}

absl::Status expect_shape(const Tensor& t, const Shape& shape, const char* name) {
  if (t.shape() != shape) {
    return absl::InvalidArgumentError(absl::StrCat("'", name, "' must have shape ",
                                                   shape_str(shape), ", got ", t.shape_str()));
  }
  if (!dtype_is_float(t.dtype())) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", name, "' must be a float tensor, got ", dtype_name(t.dtype())));
  }
  return absl::OkStatus();
}

}  // namespace

Tensor MlpEmbedder::operator()(const Tensor& x) const {
  Tensor h = linear_1(x);
  ops::silu_(h);
  return linear_2(h);
}

Tensor FeedForward::operator()(const Tensor& x) const {
  Tensor h = net_0_proj(x);
  ops::gelu_tanh_(h);
  return net_2(h);
}

Tensor timestep_sinusoid(const Tensor& t, int64_t channels) {
  // Mirrors get_timestep_embedding's float32 arithmetic: exponent = -ln(10000) * k / half.
  const int64_t half = channels / 2, batch = t.numel();
  const float neg_log_period = static_cast<float>(-std::log(10000.0));
  std::vector<float> freq(static_cast<size_t>(half));
  for (int64_t k = 0; k < half; ++k) {
    freq[k] = std::exp(neg_log_period * static_cast<float>(k) / static_cast<float>(half));
  }
  Tensor out = Tensor::empty({batch, channels});
  for (int64_t b = 0; b < batch; ++b) {
    float* row = out.data<float>() + b * channels;
    for (int64_t k = 0; k < half; ++k) {
      const float a = t.data<float>()[b] * freq[k];
      row[k] = std::cos(a);  // flip_sin_to_cos: cos first
      row[half + k] = std::sin(a);
    }
  }
  return out;
}

void flux_rope_tables(const Tensor& ids, const std::vector<int64_t>& axes_dims, double theta,
                      Tensor* cos, Tensor* sin) {
  const int64_t s = ids.size(0), n_axes = ids.size(1);
  int64_t dh = 0;
  for (int64_t d : axes_dims) dh += d;
  *cos = Tensor::empty({s, dh});
  *sin = Tensor::empty({s, dh});
  int64_t off = 0;
  for (int64_t a = 0; a < n_axes; ++a) {
    const int64_t d = axes_dims[a];
    for (int64_t k = 0; k < d / 2; ++k) {
      const double freq = 1.0 / std::pow(theta, static_cast<double>(2 * k) / static_cast<double>(d));
      for (int64_t i = 0; i < s; ++i) {
        const double angle = static_cast<double>(ids.data<float>()[i * n_axes + a]) * freq;
        const float c = static_cast<float>(std::cos(angle)), sn = static_cast<float>(std::sin(angle));
        float* cr = cos->data<float>() + i * dh + off + 2 * k;
        float* sr = sin->data<float>() + i * dh + off + 2 * k;
        cr[0] = cr[1] = c;  // repeat_interleave(2)
        sr[0] = sr[1] = sn;
      }
    }
    off += d;
  }
}

absl::StatusOr<std::unique_ptr<FluxTransformer2DModel>> FluxTransformer2DModel::load(
    const std::string& dir) {
  return load_component<FluxTransformer2DModel, FluxTransformerConfig>(dir);
}

absl::StatusOr<std::unique_ptr<FluxTransformer2DModel>> FluxTransformer2DModel::from_store(
    const FluxTransformerConfig& config, const WeightStore& store) {
  auto m = std::unique_ptr<FluxTransformer2DModel>(new FluxTransformer2DModel());
  m->config_ = config;
  const int64_t d = config.inner_dim(), hd = config.attention_head_dim, mlp = 4 * d;
  WeightLoader w(store);
  FLUX_ASSIGN_OR_RETURN(m->x_embedder, w.linear("x_embedder", config.in_channels, d));
  FLUX_ASSIGN_OR_RETURN(m->context_embedder,
                        w.linear("context_embedder", config.joint_attention_dim, d));
  FLUX_ASSIGN_OR_RETURN(m->timestep_embedder,
                        load_mlp_embedder(w, "time_text_embed.timestep_embedder", kTimeChannels, d));
  if (config.guidance_embeds) {
    FLUX_ASSIGN_OR_RETURN(m->guidance_embedder, load_mlp_embedder(w, "time_text_embed.guidance_embedder",
                                                                  kTimeChannels, d));
  }
  FLUX_ASSIGN_OR_RETURN(m->text_embedder, load_mlp_embedder(w, "time_text_embed.text_embedder",
                                                            config.pooled_projection_dim, d));
  m->transformer_blocks.resize(static_cast<size_t>(config.num_layers));
  for (int64_t i = 0; i < config.num_layers; ++i) {
    const std::string p = absl::StrCat("transformer_blocks.", i);
    FluxTransformerBlock& b = m->transformer_blocks[i];
    FLUX_ASSIGN_OR_RETURN(b.norm1_linear, w.linear(p + ".norm1.linear", d, 6 * d));
    FLUX_ASSIGN_OR_RETURN(b.norm1_context_linear, w.linear(p + ".norm1_context.linear", d, 6 * d));
    FLUX_RETURN_IF_ERROR(
        load_attention(w, p + ".attn", d, hd, /*pre_only=*/false, /*extra=*/nullptr, &b.attn));
    FLUX_ASSIGN_OR_RETURN(b.ff.net_0_proj, w.linear(p + ".ff.net.0.proj", d, mlp));
    FLUX_ASSIGN_OR_RETURN(b.ff.net_2, w.linear(p + ".ff.net.2", mlp, d));
    FLUX_ASSIGN_OR_RETURN(b.ff_context.net_0_proj, w.linear(p + ".ff_context.net.0.proj", d, mlp));
    FLUX_ASSIGN_OR_RETURN(b.ff_context.net_2, w.linear(p + ".ff_context.net.2", mlp, d));
  }
  m->single_transformer_blocks.resize(static_cast<size_t>(config.num_single_layers));
  for (int64_t i = 0; i < config.num_single_layers; ++i) {
    const std::string p = absl::StrCat("single_transformer_blocks.", i);
    FluxSingleTransformerBlock& b = m->single_transformer_blocks[i];
    FLUX_ASSIGN_OR_RETURN(b.norm_linear, w.linear(p + ".norm.linear", d, 3 * d));
    FLUX_ASSIGN_OR_RETURN(Linear proj_mlp, w.linear(p + ".proj_mlp", d, mlp));
    FLUX_RETURN_IF_ERROR(load_attention(w, p + ".attn", d, hd, /*pre_only=*/true, &proj_mlp, &b.attn));
    FLUX_ASSIGN_OR_RETURN(b.proj_out, w.linear(p + ".proj_out", d + mlp, d));
  }
  FLUX_ASSIGN_OR_RETURN(m->norm_out_linear, w.linear("norm_out.linear", d, 2 * d));
  FLUX_ASSIGN_OR_RETURN(m->proj_out, w.linear("proj_out", d, config.out_features()));
  m->unused_keys_ = w.unused_keys();
  return m;
}

absl::StatusOr<Tensor> FluxTransformer2DModel::forward(const FluxTransformerInputs& in) const {
  const FluxTransformerConfig& c = config_;
  const int64_t heads = c.num_attention_heads, hd = c.attention_head_dim;
  const int64_t d = c.inner_dim(), mlp_dim = 4 * d;
  // ---- input validation: every shape a caller can get wrong is named here ----
  if (in.hidden_states.dim() != 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'hidden_states' must be [batch, image_tokens, ", c.in_channels, "], got ",
        in.hidden_states.shape_str()));
  }
  const int64_t batch = in.hidden_states.size(0), li = in.hidden_states.size(1);
  if (in.encoder_hidden_states.dim() != 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'encoder_hidden_states' must be [batch, text_tokens, ", c.joint_attention_dim,
        "], got ", in.encoder_hidden_states.shape_str()));
  }
  const int64_t lt = in.encoder_hidden_states.size(1);
  FLUX_RETURN_IF_ERROR(expect_shape(in.hidden_states, {batch, li, c.in_channels}, "hidden_states"));
  FLUX_RETURN_IF_ERROR(expect_shape(in.encoder_hidden_states, {batch, lt, c.joint_attention_dim},
                                    "encoder_hidden_states"));
  FLUX_RETURN_IF_ERROR(
      expect_shape(in.pooled_projections, {batch, c.pooled_projection_dim}, "pooled_projections"));
  if (batch == 0 || li == 0) {
    return absl::InvalidArgumentError("'hidden_states' has no batch items or no image tokens");
  }
  const int64_t n_axes = static_cast<int64_t>(c.axes_dims_rope.size());
  FLUX_ASSIGN_OR_RETURN(Tensor img_ids, ids_2d(in.img_ids, li, n_axes, "img_ids"));
  FLUX_ASSIGN_OR_RETURN(Tensor txt_ids, ids_2d(in.txt_ids, lt, n_axes, "txt_ids"));
  FLUX_ASSIGN_OR_RETURN(Tensor timestep, per_batch(in.timestep, batch, "timestep"));
  if (c.guidance_embeds && !in.guidance.has_value()) {
    return absl::InvalidArgumentError(
        "this transformer has guidance_embeds=true (FLUX.1-dev style): 'guidance' is required");
  }
  if (!c.guidance_embeds && in.guidance.has_value()) {
    return absl::InvalidArgumentError(
        "this transformer has guidance_embeds=false (FLUX.1-schnell style): it takes no "
        "'guidance'");
  }
  FLUX_ASSIGN_OR_RETURN(Tensor hidden, in.hidden_states.as_f32());
  FLUX_ASSIGN_OR_RETURN(Tensor context_in, in.encoder_hidden_states.as_f32());
  FLUX_ASSIGN_OR_RETURN(Tensor pooled, in.pooled_projections.as_f32());

  // ---- embeddings ----
  Tensor x = x_embedder(hidden);  // x: [B, Li, D]
  for (int64_t b = 0; b < batch; ++b) timestep.data<float>()[b] *= 1000.0f;
  Tensor temb = timestep_embedder(timestep_sinusoid(timestep, kTimeChannels));  // [B, D]
  if (guidance_embedder) {
    FLUX_ASSIGN_OR_RETURN(Tensor g, per_batch(*in.guidance, batch, "guidance"));
    for (int64_t b = 0; b < batch; ++b) g.data<float>()[b] *= 1000.0f;
    ops::add_(temb, (*guidance_embedder)(timestep_sinusoid(g, kTimeChannels)));
  }
  ops::add_(temb, text_embedder(pooled));
  const Tensor temb_silu = ops::silu(temb);  // every AdaLN takes linear(silu(temb))
  Tensor ctx = context_embedder(context_in);  // ctx: [B, Lt, D]

  Tensor rope_cos, rope_sin;  // [Lt + Li, Dh], text first
  flux_rope_tables(ops::cat_seq(txt_ids.reshape({1, lt, n_axes}), img_ids.reshape({1, li, n_axes}))
                       .reshape({lt + li, n_axes}),
                   c.axes_dims_rope, kRopeTheta, &rope_cos, &rope_sin);
  const float attn_scale = 1.0f / std::sqrt(static_cast<float>(hd));

  // ---- double-stream blocks ----
  for (const FluxTransformerBlock& blk : transformer_blocks) {
    // shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp
    std::vector<Tensor> m = ops::chunk_last(blk.norm1_linear(temb_silu), 6);
    std::vector<Tensor> mc = ops::chunk_last(blk.norm1_context_linear(temb_silu), 6);
    const Tensor nx = ops::layer_norm_modulate(x, m[0], m[1], kNormEps);
    const Tensor nc = ops::layer_norm_modulate(ctx, mc[0], mc[1], kNormEps);
    const FluxAttention& a = blk.attn;
    std::vector<Tensor> xq = ops::split_last(a.to_qkv(nx), {d, d, d});         // image q, k, v
    std::vector<Tensor> cq = ops::split_last(a.add_qkv_proj(nc), {d, d, d});  // text q, k, v
    Tensor q = ops::cat_seq(as_seq(to_heads(cq[0], &a.norm_added_q, heads, hd)),
                            as_seq(to_heads(xq[0], &a.norm_q, heads, hd)));
    Tensor k = ops::cat_seq(as_seq(to_heads(cq[1], &a.norm_added_k, heads, hd)),
                            as_seq(to_heads(xq[1], &a.norm_k, heads, hd)));
    const Tensor v = ops::cat_seq(cq[2], xq[2]);
    Tensor qh = as_heads(q, heads), kh = as_heads(k, heads);
    ops::rope_(qh, rope_cos, rope_sin);
    ops::rope_(kh, rope_cos, rope_sin);
    const Tensor o = ops::attention(qh, kh, as_heads(v, heads), attn_scale);  // [B, Lt+Li, D]
    ops::gated_add_(x, m[2], a.to_out_0(ops::slice_seq(o, lt, li)));
    ops::gated_add_(x, m[5], blk.ff(ops::layer_norm_modulate(x, m[3], m[4], kNormEps)));
    ops::gated_add_(ctx, mc[2], a.to_add_out(ops::slice_seq(o, 0, lt)));
    ops::gated_add_(ctx, mc[5],
                    blk.ff_context(ops::layer_norm_modulate(ctx, mc[3], mc[4], kNormEps)));
  }

  // ---- single-stream blocks on [text; image] ----
  Tensor h = ops::cat_seq(ctx, x);  // [B, Lt+Li, D]
  for (const FluxSingleTransformerBlock& blk : single_transformer_blocks) {
    std::vector<Tensor> m = ops::chunk_last(blk.norm_linear(temb_silu), 3);  // shift, scale, gate
    const Tensor n = ops::layer_norm_modulate(h, m[0], m[1], kNormEps);
    const FluxAttention& a = blk.attn;
    std::vector<Tensor> p = ops::split_last(a.to_qkv(n), {d, d, d, mlp_dim});  // q, k, v, mlp
    Tensor& mlp = p[3];
    ops::gelu_tanh_(mlp);
    Tensor qh = to_heads(p[0], &a.norm_q, heads, hd);
    Tensor kh = to_heads(p[1], &a.norm_k, heads, hd);
    ops::rope_(qh, rope_cos, rope_sin);
    ops::rope_(kh, rope_cos, rope_sin);
    const Tensor attn = ops::attention(qh, kh, to_heads(p[2], nullptr, heads, hd), attn_scale);
    ops::gated_add_(h, m[2], blk.proj_out(ops::cat_last(attn, mlp)));  // [attn | mlp]
  }
  x = ops::slice_seq(h, lt, li);

  // ---- output: AdaLayerNormContinuous, chunks in the order scale, shift ----
  std::vector<Tensor> so = ops::chunk_last(norm_out_linear(temb_silu), 2);
  return proj_out(ops::layer_norm_modulate(x, so[1], so[0], kNormEps));
}

template <class F>
void FluxTransformer2DModel::for_each_linear(F&& f) {
  using Parts = std::vector<LinearPart>;
  // One upstream nn.Linear per Linear, except the stacked projections (q|k|v, and the single
  // blocks' q|k|v|proj_mlp), which list their parts with their rows.
  auto one = [](Linear& l, std::string name) { return Parts{{std::move(name), l.out_features()}}; };
  const int64_t d = config_.inner_dim();
  f(x_embedder, one(x_embedder, "x_embedder"));
  f(context_embedder, one(context_embedder, "context_embedder"));
  for (auto [emb, name] : {std::pair{&timestep_embedder, "timestep_embedder"},
                           std::pair{&text_embedder, "text_embedder"}}) {
    f(emb->linear_1, one(emb->linear_1, absl::StrCat("time_text_embed.", name, ".linear_1")));
    f(emb->linear_2, one(emb->linear_2, absl::StrCat("time_text_embed.", name, ".linear_2")));
  }
  if (guidance_embedder) {
    f(guidance_embedder->linear_1,
      one(guidance_embedder->linear_1, "time_text_embed.guidance_embedder.linear_1"));
    f(guidance_embedder->linear_2,
      one(guidance_embedder->linear_2, "time_text_embed.guidance_embedder.linear_2"));
  }
  for (size_t i = 0; i < transformer_blocks.size(); ++i) {
    FluxTransformerBlock& b = transformer_blocks[i];
    const std::string p = absl::StrCat("transformer_blocks.", i, ".");
    f(b.norm1_linear, one(b.norm1_linear, p + "norm1.linear"));
    f(b.norm1_context_linear, one(b.norm1_context_linear, p + "norm1_context.linear"));
    f(b.attn.to_qkv, Parts{{p + "attn.to_q", d}, {p + "attn.to_k", d}, {p + "attn.to_v", d}});
    f(b.attn.add_qkv_proj,
      Parts{{p + "attn.add_q_proj", d}, {p + "attn.add_k_proj", d}, {p + "attn.add_v_proj", d}});
    f(b.attn.to_out_0, one(b.attn.to_out_0, p + "attn.to_out.0"));
    f(b.attn.to_add_out, one(b.attn.to_add_out, p + "attn.to_add_out"));
    f(b.ff.net_0_proj, one(b.ff.net_0_proj, p + "ff.net.0.proj"));
    f(b.ff.net_2, one(b.ff.net_2, p + "ff.net.2"));
    f(b.ff_context.net_0_proj, one(b.ff_context.net_0_proj, p + "ff_context.net.0.proj"));
    f(b.ff_context.net_2, one(b.ff_context.net_2, p + "ff_context.net.2"));
  }
  for (size_t i = 0; i < single_transformer_blocks.size(); ++i) {
    FluxSingleTransformerBlock& b = single_transformer_blocks[i];
    const std::string p = absl::StrCat("single_transformer_blocks.", i, ".");
    f(b.norm_linear, one(b.norm_linear, p + "norm.linear"));
    f(b.attn.to_qkv, Parts{{p + "attn.to_q", d},
                           {p + "attn.to_k", d},
                           {p + "attn.to_v", d},
                           {p + "proj_mlp", b.attn.to_qkv.out_features() - 3 * d}});
    f(b.proj_out, one(b.proj_out, p + "proj_out"));
  }
  f(norm_out_linear, one(norm_out_linear, "norm_out.linear"));
  f(proj_out, one(proj_out, "proj_out"));
}

absl::StatusOr<int> FluxTransformer2DModel::quantize(const ComponentQuantConfig& cfg) {
  int count = 0;
  if (cfg.backend == QuantBackend::kGguf) {
    // GGUFQuantizer only takes pre-quantized GGUF weights; it never quantizes a checkpoint.
    if (gguf_file_.empty()) {
      return absl::FailedPreconditionError(
          "quant_backend 'gguf' needs the transformer's weights in a .gguf file (see "
          "FluxTransformer2DModel::load_gguf); this model was loaded from safetensors");
    }
    for_each_linear([&](Linear& l, const std::vector<LinearPart>&) { count += l.quantized != nullptr; });
    return count;
  }
  // A diffusers model: diffusers' quantizers pick the layers (FluxTransformer2DModel keeps no
  // modules in fp32), each upstream nn.Linear on its own, so a stacked q|k|v is quantized part by
  // part exactly as the separate modules are.
  FLUX_ASSIGN_OR_RETURN(ComponentQuantizer quantizer,
                        ComponentQuantizer::create(cfg, UpstreamQuantTraits{}, "transformer"));
  absl::Status status;
  for_each_linear([&](Linear& l, const std::vector<LinearPart>& parts) {
    if (status.ok()) status = quantizer.quantize(l, parts);
  });
  FLUX_RETURN_IF_ERROR(status);
  return static_cast<int>(quantizer.converted().size());
}

int64_t FluxTransformer2DModel::weight_bytes() const {
  int64_t total = 0;
  const_cast<FluxTransformer2DModel*>(this)->for_each_linear(
      [&](Linear& l, const std::vector<LinearPart>&) { total += l.nbytes(); });
  return total;
}

ModelMemory FluxTransformer2DModel::memory() const {
  MemoryTally t;
  const_cast<FluxTransformer2DModel*>(this)->for_each_linear(
      [&](Linear& l, const std::vector<LinearPart>& parts) {
        t.linear(l, static_cast<int>(parts.size()));
      });
  for (const FluxTransformerBlock& b : transformer_blocks) {
    for (const Tensor* n : {&b.attn.norm_q, &b.attn.norm_k, &b.attn.norm_added_q, &b.attn.norm_added_k})
      t.aux(*n);
  }
  for (const FluxSingleTransformerBlock& b : single_transformer_blocks) {
    t.aux(b.attn.norm_q);
    t.aux(b.attn.norm_k);
  }
  return t.finish();
}

double FluxTransformer2DModel::flops(int64_t li, int64_t lt) const {
  const double d = static_cast<double>(config_.inner_dim()), s = static_cast<double>(li + lt);
  const double img = static_cast<double>(li), txt = static_cast<double>(lt);
  // 2 flops per multiply-add; linears over tokens plus the two attention matmuls.
  double f = 2 * img * config_.in_channels * d + 2 * txt * config_.joint_attention_dim * d;
  const double double_block = 2 * s * d * d * 4 /*qkv+out*/ + 2 * s * d * 4 * d * 2 /*ff*/ +
                              2 * 2 * s * s * d /*attention*/;
  const double single_block =
      2 * s * d * d * 3 + 2 * s * d * 4 * d + 2 * s * 5 * d * d + 2 * 2 * s * s * d;
  f += static_cast<double>(config_.num_layers) * double_block +
       static_cast<double>(config_.num_single_layers) * single_block;
  f += 2 * img * d * static_cast<double>(config_.out_features());
  return f;
}

}  // namespace fluxserve
