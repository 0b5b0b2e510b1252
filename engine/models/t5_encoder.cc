#include "engine/models/t5_encoder.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "engine/core/status.h"
#include "kernels/ops.h"

namespace fluxserve {
namespace {

Tensor as_heads(const Tensor& seq, int64_t heads) {  // [B, L, D] -> [B, L, H, D/H]
  return seq.reshape({seq.size(0), seq.size(1), heads, seq.size(2) / heads});
}

// T5LayerNorm on a copy: x * rsqrt(mean(x^2) + eps) * w.
Tensor t5_layer_norm(const Tensor& x, const Tensor& w, float eps) {
  Tensor y = x.clone();
  ops::rms_norm_(y, w, eps);
  return y;
}

}  // namespace

int64_t t5_relative_position_bucket(int64_t rel, int64_t num_buckets, int64_t max_distance) {
  const int64_t nb = num_buckets / 2;  // bidirectional: half the buckets per direction
  const int64_t bucket = rel > 0 ? nb : 0;
  const int64_t n = std::abs(rel);
  const int64_t max_exact = nb / 2;
  if (n < max_exact) return bucket + n;
  // torch: max_exact + (log(n.float() / max_exact) / math.log(max_distance / max_exact)
  //                      * (nb - max_exact)).to(long), all in float32; .to(long) truncates.
  const float ratio = static_cast<float>(n) / static_cast<float>(max_exact);
  const float denom = static_cast<float>(
      std::log(static_cast<double>(max_distance) / static_cast<double>(max_exact)));
  const float scaled = std::log(ratio) / denom * static_cast<float>(nb - max_exact);
  const int64_t large = max_exact + static_cast<int64_t>(scaled);
  return bucket + std::min(large, nb - 1);
}

Tensor t5_position_bias(const Tensor& table, int64_t len, int64_t max_distance) {
  const int64_t buckets = table.size(0), heads = table.size(1);
  // The bucket depends only on j - i: one lookup per distance.
  std::vector<int64_t> by_rel(static_cast<size_t>(2 * len - 1));
  for (int64_t r = -(len - 1); r <= len - 1; ++r) {
    by_rel[static_cast<size_t>(r + len - 1)] =
        t5_relative_position_bucket(r, buckets, max_distance);
  }
  Tensor bias = Tensor::empty({heads, len, len});
  const float* t = table.data<float>();
  float* out = bias.data<float>();
#pragma omp parallel for collapse(2) if (heads * len * len > (1 << 16))
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < len; ++i) {
      float* row = out + (h * len + i) * len;
      for (int64_t j = 0; j < len; ++j)
        row[j] = t[by_rel[static_cast<size_t>(j - i + len - 1)] * heads + h];
    }
  }
  return bias;
}

absl::StatusOr<std::unique_ptr<T5EncoderModel>> T5EncoderModel::load(const std::string& dir) {
  return load_component<T5EncoderModel, T5Config>(dir);
}

absl::StatusOr<std::unique_ptr<T5EncoderModel>> T5EncoderModel::from_store(
    const T5Config& config, const WeightStore& store) {
  auto m = std::unique_ptr<T5EncoderModel>(new T5EncoderModel());
  m->config_ = config;
  const int64_t d = config.d_model, inner = config.inner_dim(), ff = config.d_ff;
  WeightLoader w(store);
  const Shape emb_shape = {config.vocab_size, d};
  if (!store.contains("shared.weight") && !store.contains("encoder.embed_tokens.weight")) {
    return absl::NotFoundError(
        absl::StrCat(store.source(),
                     ": the token embedding is missing (looked for 'shared.weight' and "
                     "'encoder.embed_tokens.weight')"));
  }
  for (const char* key : {"encoder.embed_tokens.weight", "shared.weight"}) {
    if (!store.contains(key)) continue;
    FLUX_ASSIGN_OR_RETURN(m->shared, w.take(key, emb_shape));  // the last found (shared) wins
  }
  if (m->shared.dtype() != DType::kF32 && m->shared.dtype() != DType::kBF16 &&
      m->shared.dtype() != DType::kF16) {
    FLUX_ASSIGN_OR_RETURN(m->shared, m->shared.as_f32());
  }
  FLUX_ASSIGN_OR_RETURN(
      m->relative_attention_bias,
      w.take_f32("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                 {config.relative_attention_num_buckets, config.num_heads}));
  m->encoder_block.resize(static_cast<size_t>(config.num_layers));
  for (int64_t i = 0; i < config.num_layers; ++i) {
    const std::string p = absl::StrCat("encoder.block.", i, ".layer.");
    T5Block& b = m->encoder_block[i];
    const std::string sa = p + "0.SelfAttention.";
    FLUX_ASSIGN_OR_RETURN(Linear q, w.linear(sa + "q", d, inner, /*bias=*/false));
    FLUX_ASSIGN_OR_RETURN(Linear k, w.linear(sa + "k", d, inner, /*bias=*/false));
    FLUX_ASSIGN_OR_RETURN(Linear v, w.linear(sa + "v", d, inner, /*bias=*/false));
    b.layer_0.qkv = stack_linears({&q, &k, &v});
    FLUX_ASSIGN_OR_RETURN(b.layer_0.o, w.linear(sa + "o", inner, d, /*bias=*/false));
    FLUX_ASSIGN_OR_RETURN(b.layer_0.layer_norm, w.take_f32(p + "0.layer_norm.weight", {d}));
    const std::string dd = p + "1.DenseReluDense.";
    if (config.is_gated_act) {
      FLUX_ASSIGN_OR_RETURN(Linear wi_0, w.linear(dd + "wi_0", d, ff, /*bias=*/false));
      FLUX_ASSIGN_OR_RETURN(Linear wi_1, w.linear(dd + "wi_1", d, ff, /*bias=*/false));
      b.layer_1.wi = stack_linears({&wi_0, &wi_1});
    } else {
      FLUX_ASSIGN_OR_RETURN(b.layer_1.wi, w.linear(dd + "wi", d, ff, /*bias=*/false));
    }
    FLUX_ASSIGN_OR_RETURN(b.layer_1.wo, w.linear(dd + "wo", ff, d, /*bias=*/false));
    if (b.layer_1.wo.weight.dtype() == DType::kF16) {
      // _keep_in_fp32_modules: transformers upcasts `wo` to float32 when it loads T5 in float16
      // (T5's activations overflow float16 there); bf16 and f32 loads keep their dtype.
      FLUX_ASSIGN_OR_RETURN(b.layer_1.wo.weight, b.layer_1.wo.weight.as_f32());
    }
    FLUX_ASSIGN_OR_RETURN(b.layer_1.layer_norm, w.take_f32(p + "1.layer_norm.weight", {d}));
  }
  FLUX_ASSIGN_OR_RETURN(m->final_layer_norm, w.take_f32("encoder.final_layer_norm.weight", {d}));
  m->unused_keys_ = w.unused_keys();
  return m;
}

template <class Self, class F>
void T5EncoderModel::for_each_linear(Self& self, F&& f) {
  const int64_t d = self.config_.d_model, inner = self.config_.inner_dim(), ff = self.config_.d_ff;
  for (size_t i = 0; i < self.encoder_block.size(); ++i) {
    auto& b = self.encoder_block[i];
    const std::string sa = absl::StrCat("encoder.block.", i, ".layer.0.SelfAttention.");
    const std::string dd = absl::StrCat("encoder.block.", i, ".layer.1.DenseReluDense.");
    f(b.layer_0.qkv, std::vector<LinearPart>{{sa + "q", inner}, {sa + "k", inner}, {sa + "v", inner}});
    f(b.layer_0.o, std::vector<LinearPart>{{sa + "o", d}});
    if (self.config_.is_gated_act) {
      f(b.layer_1.wi, std::vector<LinearPart>{{dd + "wi_0", ff}, {dd + "wi_1", ff}});
    } else {
      f(b.layer_1.wi, std::vector<LinearPart>{{dd + "wi", ff}});
    }
    f(b.layer_1.wo, std::vector<LinearPart>{{dd + "wo", d}});
  }
}

UpstreamQuantTraits T5EncoderModel::quant_traits() {
  // all_tied_weights_keys {"encoder.embed_tokens.weight": "shared.weight"} and the last
  // parameter "encoder.final_layer_norm.weight", each without ".weight".
  return {QuantLibrary::kTransformers,
          {"encoder.embed_tokens", "shared", "encoder.final_layer_norm"},
          {"wo"}};
}

absl::StatusOr<std::vector<std::string>> T5EncoderModel::quantize(const ComponentQuantConfig& cfg) {
  FLUX_ASSIGN_OR_RETURN(ComponentQuantizer q,
                        ComponentQuantizer::create(cfg, quant_traits(), "text_encoder_2"));
  absl::Status status;
  for_each_linear(*this, [&](Linear& l, const std::vector<LinearPart>& parts) {
    if (status.ok()) status = q.quantize(l, parts);
  });
  FLUX_RETURN_IF_ERROR(status);
  return q.converted();
}

ModelMemory T5EncoderModel::memory() const {
  MemoryTally t;
  t.weight(shared);
  t.aux(relative_attention_bias);
  for (const T5Block& b : encoder_block) {
    t.aux(b.layer_0.layer_norm);
    t.aux(b.layer_1.layer_norm);
  }
  t.aux(final_layer_norm);
  for_each_linear(*this, [&](const Linear& l, const std::vector<LinearPart>& parts) {
    t.linear(l, static_cast<int>(parts.size()));
  });
  return t.finish();
}

absl::StatusOr<Tensor> T5EncoderModel::forward(const Tensor& input_ids) const {
  const T5Config& c = config_;
  FLUX_ASSIGN_OR_RETURN(
      Tensor ids, validate_input_ids(input_ids, c.vocab_size, /*max_len=*/0, "T5EncoderModel"));
  const int64_t len = ids.size(1), inner = c.inner_dim(), ff = c.d_ff;
  const float eps = static_cast<float>(c.layer_norm_epsilon);

  Tensor x = ops::embedding(shared, ids);  // x: [B, L, d_model]
  // position_bias [H, L, L]: computed once (block 0's table) and shared by every block.
  const Tensor bias =
      t5_position_bias(relative_attention_bias, len, c.relative_attention_max_distance);
  for (const T5Block& b : encoder_block) {
    std::vector<Tensor> qkv = ops::split_last(
        b.layer_0.qkv(t5_layer_norm(x, b.layer_0.layer_norm, eps)), {inner, inner, inner});
    const Tensor o = ops::attention_ex(as_heads(qkv[0], c.num_heads), as_heads(qkv[1], c.num_heads),
                                       as_heads(qkv[2], c.num_heads), /*scale=*/1.0f, &bias,
                                       /*causal=*/false);  // [B, L, inner]; T5 does not scale
    ops::add_(x, b.layer_0.o(o));
    const Tensor n = t5_layer_norm(x, b.layer_1.layer_norm, eps);
    Tensor h;  // [B, L, d_ff]
    if (c.is_gated_act) {
      std::vector<Tensor> g = ops::split_last(b.layer_1.wi(n), {ff, ff});  // wi_0 x, wi_1 x
      apply_activation_(g[0], c.act);
      ops::mul_(g[0], g[1]);
      h = std::move(g[0]);
    } else {
      h = b.layer_1.wi(n);
      apply_activation_(h, c.act);
    }
    ops::add_(x, b.layer_1.wo(h));
  }
  ops::rms_norm_(x, final_layer_norm, eps);
  return x;
}

}  // namespace fluxserve
