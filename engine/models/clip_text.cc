#include "engine/models/clip_text.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/core/status.h"
#include "kernels/ops.h"

namespace fluxserve {
namespace {

// Embedding tables stay in their stored dtype when ops::embedding reads it directly.
absl::StatusOr<Tensor> take_table(WeightLoader& w, const std::string& key, const Shape& shape) {
  FLUX_ASSIGN_OR_RETURN(Tensor t, w.take(key, shape));
  if (t.dtype() == DType::kF32 || t.dtype() == DType::kBF16 || t.dtype() == DType::kF16) return t;
  return t.as_f32();
}

absl::StatusOr<ClipLayerNorm> load_layer_norm(WeightLoader& w, const std::string& p, int64_t d) {
  ClipLayerNorm n;
  FLUX_ASSIGN_OR_RETURN(n.weight, w.take_f32(p + ".weight", {d}));
  FLUX_ASSIGN_OR_RETURN(n.bias, w.take_f32(p + ".bias", {d}));
  return n;
}

Tensor as_heads(const Tensor& seq, int64_t heads) {  // [B, L, D] -> [B, L, H, D/H]
  return seq.reshape({seq.size(0), seq.size(1), heads, seq.size(2) / heads});
}

}  // namespace

Tensor ClipLayerNorm::operator()(const Tensor& x, float eps) const {
  return ops::layer_norm(x, &weight, &bias, eps);
}

int64_t clip_pooled_position(const int64_t* ids, int64_t len, int64_t eos_token_id) {
  int64_t best = 0;
  if (eos_token_id == 2) {
    // input_ids.to(torch.int).argmax(-1): the first position of the maximum.
    for (int64_t i = 1; i < len; ++i) {
      if (static_cast<int32_t>(ids[i]) > static_cast<int32_t>(ids[best])) best = i;
    }
    return best;
  }
  // (input_ids == eos_token_id).int().argmax(-1): first match, 0 when there is none.
  for (int64_t i = 0; i < len; ++i) {
    if (ids[i] == eos_token_id) return i;
  }
  return 0;
}

absl::StatusOr<std::unique_ptr<CLIPTextModel>> CLIPTextModel::load(const std::string& dir) {
  return load_component<CLIPTextModel, CLIPTextConfig>(dir);
}

absl::StatusOr<std::unique_ptr<CLIPTextModel>> CLIPTextModel::from_store(
    const CLIPTextConfig& config, const WeightStore& store) {
  auto m = std::unique_ptr<CLIPTextModel>(new CLIPTextModel());
  m->config_ = config;
  const int64_t d = config.hidden_size, ff = config.intermediate_size;
  // transformers < 5 wrote everything under `text_model.`; transformers 5 writes the keys bare.
  const std::string root = store.contains("embeddings.token_embedding.weight") ? "" : "text_model.";
  WeightLoader w(store);
  FLUX_ASSIGN_OR_RETURN(
      m->embeddings.token_embedding,
      take_table(w, root + "embeddings.token_embedding.weight", {config.vocab_size, d}));
  FLUX_ASSIGN_OR_RETURN(m->embeddings.position_embedding,
                        take_table(w, root + "embeddings.position_embedding.weight",
                                   {config.max_position_embeddings, d}));
  m->encoder_layers.resize(static_cast<size_t>(config.num_hidden_layers));
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    const std::string p = absl::StrCat(root, "encoder.layers.", i);
    ClipEncoderLayer& l = m->encoder_layers[i];
    FLUX_ASSIGN_OR_RETURN(l.layer_norm1, load_layer_norm(w, p + ".layer_norm1", d));
    FLUX_ASSIGN_OR_RETURN(Linear q, w.linear(p + ".self_attn.q_proj", d, d));
    FLUX_ASSIGN_OR_RETURN(Linear k, w.linear(p + ".self_attn.k_proj", d, d));
    FLUX_ASSIGN_OR_RETURN(Linear v, w.linear(p + ".self_attn.v_proj", d, d));
    l.self_attn.qkv_proj = stack_linears({&q, &k, &v});
    FLUX_ASSIGN_OR_RETURN(l.self_attn.out_proj, w.linear(p + ".self_attn.out_proj", d, d));
    FLUX_ASSIGN_OR_RETURN(l.layer_norm2, load_layer_norm(w, p + ".layer_norm2", d));
    FLUX_ASSIGN_OR_RETURN(l.mlp.fc1, w.linear(p + ".mlp.fc1", d, ff));
    FLUX_ASSIGN_OR_RETURN(l.mlp.fc2, w.linear(p + ".mlp.fc2", ff, d));
  }
  FLUX_ASSIGN_OR_RETURN(m->final_layer_norm, load_layer_norm(w, root + "final_layer_norm", d));
  for (std::string& k : w.unused_keys()) {
    // A non-persistent buffer that older checkpoints still carry (arange, not a weight).
    if (k == root + "embeddings.position_ids") continue;
    m->unused_keys_.push_back(std::move(k));
  }
  return m;
}

template <class Self, class F>
void CLIPTextModel::for_each_linear(Self& self, F&& f) {
  const int64_t d = self.config_.hidden_size, ff = self.config_.intermediate_size;
  for (size_t i = 0; i < self.encoder_layers.size(); ++i) {
    auto& l = self.encoder_layers[i];
    const std::string p = absl::StrCat("encoder.layers.", i, ".");
    f(l.self_attn.qkv_proj, std::vector<LinearPart>{{p + "self_attn.q_proj", d},
                                                    {p + "self_attn.k_proj", d},
                                                    {p + "self_attn.v_proj", d}});
    f(l.self_attn.out_proj, std::vector<LinearPart>{{p + "self_attn.out_proj", d}});
    f(l.mlp.fc1, std::vector<LinearPart>{{p + "mlp.fc1", ff}});
    f(l.mlp.fc2, std::vector<LinearPart>{{p + "mlp.fc2", d}});
  }
}

UpstreamQuantTraits CLIPTextModel::quant_traits() {
  return {QuantLibrary::kTransformers, {"final_layer_norm.bias"}, {}};
}

absl::StatusOr<std::vector<std::string>> CLIPTextModel::quantize(const ComponentQuantConfig& cfg) {
  FLUX_ASSIGN_OR_RETURN(ComponentQuantizer q,
                        ComponentQuantizer::create(cfg, quant_traits(), "text_encoder"));
  absl::Status status;
  for_each_linear(*this, [&](Linear& l, const std::vector<LinearPart>& parts) {
    if (status.ok()) status = q.quantize(l, parts);
  });
  FLUX_RETURN_IF_ERROR(status);
  return q.converted();
}

ModelMemory CLIPTextModel::memory() const {
  MemoryTally t;
  t.weight(embeddings.token_embedding);
  t.weight(embeddings.position_embedding);
  for (const ClipEncoderLayer& l : encoder_layers) {
    for (const ClipLayerNorm* n : {&l.layer_norm1, &l.layer_norm2}) {
      t.aux(n->weight);
      t.aux(n->bias);
    }
  }
  t.aux(final_layer_norm.weight);
  t.aux(final_layer_norm.bias);
  for_each_linear(*this, [&](const Linear& l, const std::vector<LinearPart>& parts) {
    t.linear(l, static_cast<int>(parts.size()));
  });
  return t.finish();
}

absl::StatusOr<CLIPTextOutput> CLIPTextModel::forward(const Tensor& input_ids) const {
  const CLIPTextConfig& c = config_;
  FLUX_ASSIGN_OR_RETURN(Tensor ids, validate_input_ids(input_ids, c.vocab_size,
                                                       c.max_position_embeddings, "CLIPTextModel"));
  const int64_t batch = ids.size(0), len = ids.size(1), d = c.hidden_size;
  const int64_t heads = c.num_attention_heads;
  const float eps = static_cast<float>(c.layer_norm_eps);
  // head_dim**-0.5 in Python (double), applied to float32 scores.
  const float scale = static_cast<float>(std::pow(static_cast<double>(c.head_dim()), -0.5));

  // ---- embeddings: token + position (positions 0..L-1 for every row) ----
  Tensor pos_ids = Tensor::empty({batch, len}, DType::kI64);
  for (int64_t i = 0; i < batch * len; ++i) pos_ids.data<int64_t>()[i] = i % len;
  Tensor h = ops::embedding(embeddings.token_embedding, ids);  // h: [B, L, D]
  ops::add_(h, ops::embedding(embeddings.position_embedding, pos_ids));

  // ---- pre-LN encoder layers with a causal mask ----
  for (const ClipEncoderLayer& l : encoder_layers) {
    const Tensor n1 = l.layer_norm1(h, eps);
    std::vector<Tensor> qkv = ops::split_last(l.self_attn.qkv_proj(n1), {d, d, d});
    const Tensor o = ops::attention_ex(as_heads(qkv[0], heads), as_heads(qkv[1], heads),
                                       as_heads(qkv[2], heads), scale, /*bias=*/nullptr,
                                       /*causal=*/true);  // [B, L, D]
    ops::add_(h, l.self_attn.out_proj(o));
    Tensor m = l.mlp.fc1(l.layer_norm2(h, eps));  // [B, L, intermediate]
    apply_activation_(m, c.act);
    ops::add_(h, l.mlp.fc2(m));
  }
  CLIPTextOutput out;
  out.last_hidden_state = final_layer_norm(h, eps);

  // ---- pooled: one row of last_hidden_state per batch item ----
  out.pooler_output = Tensor::empty({batch, d});
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t pos = clip_pooled_position(ids.data<int64_t>() + b * len, len, c.eos_token_id);
    std::memcpy(out.pooler_output.data<float>() + b * d,
                out.last_hidden_state.data<float>() + (b * len + pos) * d,
                static_cast<size_t>(d) * sizeof(float));
  }
  return out;
}

}  // namespace fluxserve
