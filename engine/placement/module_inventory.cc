#include "engine/placement/module_inventory.h"

#include <algorithm>
#include <filesystem>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/core/status.h"
#include "engine/io/checkpoint.h"
#include "engine/models/clip_text.h"
#include "engine/models/component_quant.h"
#include "engine/models/t5_encoder.h"

namespace fluxserve {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Accumulates units in upstream order while the builders walk a model's modules.
class Builder {
 public:
  Builder(ComponentInventory inv, const StorageForm& form) : inv_(std::move(inv)), form_(form) {}

  absl::Status init(const UpstreamQuantTraits& traits) {
    if (!form_.quant) return absl::OkStatus();
    const ComponentQuantConfig& q = *form_.quant;
    if (q.backend != QuantBackend::kBitsAndBytes4bit &&
        q.backend != QuantBackend::kBitsAndBytes8bit) {
      return absl::UnimplementedError(absl::StrCat(
          inv_.component, ": planning from config.json sizes bitsandbytes 4/8-bit only; ",
          q.to_json().value("quant_method", "this backend"),
          " sizes need the loaded model (fluxserve inspect without --placement)"));
    }
    FLUX_ASSIGN_OR_RETURN(ComponentQuantizer qz,
                          ComponentQuantizer::create(q, traits, inv_.component));
    quantizer_.emplace(std::move(qz));
    inv_.bnb_fp32_cpu_offload = q.llm_int8_enable_fp32_cpu_offload;
    return absl::OkStatus();
  }

  // Opens a unit; every tensor until the next unit() belongs to it.
  void unit(std::string name, bool block = false) {
    ModuleUnit u;
    u.name = std::move(name);
    u.block = block;
    inv_.units.push_back(std::move(u));
    leaf_ = 0;
  }
  void tied(std::string name, std::string to) {
    ModuleUnit u;
    u.name = std::move(name);
    u.tied_to = std::move(to);
    inv_.units.push_back(std::move(u));
  }
  // Ends a leaf module inside a block (for the largest-leaf figure of leaf-level offload).
  void end_leaf() {
    ModuleUnit& u = inv_.units.back();
    u.largest_leaf = std::max(u.largest_leaf, leaf_);
    if (leaf_ > 0) {
      ++u.leaf_modules;
      u.leaf_bytes += leaf_;
    }
    leaf_ = 0;
  }

  // nn.Linear `name` [out, in] (+ bias), converted when upstream's quantizer converts it.
  void linear(const std::string& name, int64_t in, int64_t out, bool bias = true) {
    const int64_t n = in * out;
    const int64_t dense = n * static_cast<int64_t>(dtype_size(form_.weight));
    int64_t stored = dense;
    if (quantizer_ && quantizer_->converts(name)) {
      ++quantized_;
      if (form_.quant->backend == QuantBackend::kBitsAndBytes4bit) {
        // Params4bit: packed nibbles, one absmax per 64-element block (uint8 codes plus a float32
        // absmax per 256 of them with double quant), the 16-entry code table (+ the 256-entry
        // nested one): the tensors engine/quant/bnb_formats.h keeps.
        const int64_t blocks = ceil_div(n, 64);
        stored = (n + 1) / 2 + 16 * 4;
        stored += form_.quant->bnb_4bit_use_double_quant
                      ? blocks + ceil_div(blocks, 256) * 4 + 256 * 4
                      : blocks * 4;
      } else {
        stored = n + out * 4;  // Int8Params CB [out, in] int8 + SCB [out] float32
      }
      quant_bytes_ += stored;
    } else {
      dense_weight_bytes_ += dense;
    }
    add(stored, dense);
    if (bias) vec(out);
    end_leaf();
  }
  // A norm weight / bias vector (small dtype).
  void vec(int64_t n) {
    const int64_t b = n * static_cast<int64_t>(dtype_size(form_.small));
    add(b, b);
  }
  // A dense weight-like tensor (embedding table, conv kernel).
  void dense(int64_t n) {
    const int64_t b = n * static_cast<int64_t>(dtype_size(form_.weight));
    dense_weight_bytes_ += b;
    add(b, b);
  }
  // A buffer of the unit's own module, kept in its type (integer buffers are never cast); not
  // part of any leaf module.
  void buffer(int64_t bytes) {
    inv_.units.back().bytes += bytes;
    inv_.units.back().dense_bytes += bytes;
  }

  ComponentInventory finish() {
    inv_.quantized = quantized_ > 0;
    std::vector<std::pair<int64_t, std::string>> parts;
    if (quant_bytes_ > 0) parts.emplace_back(quant_bytes_, quant_name());
    if (dense_weight_bytes_ > 0) parts.emplace_back(dense_weight_bytes_, dtype_name(form_.weight));
    std::sort(parts.begin(), parts.end(), [](auto& a, auto& b) { return a.first > b.first; });
    std::vector<std::string> names;
    for (auto& p : parts) names.push_back(p.second);
    inv_.format = names.empty() ? "none" : absl::StrJoin(names, " + ");
    return std::move(inv_);
  }

 private:
  void add(int64_t stored, int64_t dense) {
    inv_.units.back().bytes += stored;
    inv_.units.back().dense_bytes += dense;
    leaf_ += stored;
  }
  std::string quant_name() const {
    const ComponentQuantConfig& q = *form_.quant;
    if (q.backend == QuantBackend::kBitsAndBytes8bit) return "bitsandbytes LLM.int8";
    return absl::StrCat("bitsandbytes ", q.bnb_4bit_quant_type,
                        q.bnb_4bit_use_double_quant ? " (double quant)" : "");
  }

  ComponentInventory inv_;
  const StorageForm& form_;
  std::optional<ComponentQuantizer> quantizer_;
  int64_t leaf_ = 0, quant_bytes_ = 0, dense_weight_bytes_ = 0;
  int quantized_ = 0;
};

ComponentInventory header(std::string component, std::string cls,
                          std::vector<std::string> no_split) {
  ComponentInventory inv;
  inv.component = std::move(component);
  inv.model_class = std::move(cls);
  inv.no_split_classes = std::move(no_split);
  return inv;
}

// A LayerNorm with affine weight and bias / an RMSNorm with a weight.
void layer_norm(Builder& b, int64_t n) {
  b.vec(2 * n);
  b.end_leaf();
}
void rms_norm(Builder& b, int64_t n) {
  b.vec(n);
  b.end_leaf();
}

}  // namespace

int64_t ComponentInventory::bytes() const { return bytes_under(""); }

int64_t ComponentInventory::bytes_under(const std::string& prefix) const {
  int64_t total = 0;
  for (const ModuleUnit& u : units) {
    if (prefix.empty() || u.name == prefix || u.name.starts_with(prefix + ".")) total += u.bytes;
  }
  return total;
}

const ModuleUnit* ComponentInventory::find(const std::string& name) const {
  for (const ModuleUnit& u : units) {
    if (u.name == name) return &u;
  }
  return nullptr;
}

absl::StatusOr<ComponentInventory> flux_transformer_inventory(const FluxTransformerConfig& c,
                                                              const StorageForm& form) {
  // diffusers transformer_flux.py: children in __init__ order; _no_split_modules.
  Builder b(header("transformer", "FluxTransformer2DModel",
                   {"FluxTransformerBlock", "FluxSingleTransformerBlock"}),
            form);
  FLUX_RETURN_IF_ERROR(b.init(UpstreamQuantTraits{}));
  const int64_t d = c.inner_dim(), hd = c.attention_head_dim;
  b.unit("pos_embed");  // FluxPosEmbed: no parameters
  // CombinedTimestepGuidanceTextProjEmbeddings (or CombinedTimestepTextProjEmbeddings).
  b.unit("time_text_embed.time_proj");  // Timesteps: no parameters
  std::vector<std::pair<std::string, int64_t>> embedders = {{"timestep_embedder", 256}};
  if (c.guidance_embeds) embedders.push_back({"guidance_embedder", 256});
  embedders.push_back({"text_embedder", c.pooled_projection_dim});
  for (const auto& [name, in] : embedders) {
    const std::string p = absl::StrCat("time_text_embed.", name, ".");
    const bool text = name == "text_embedder";  // PixArtAlphaTextProjection: act_1
    b.unit(p + "linear_1");
    b.linear(p + "linear_1", in, d);
    b.unit(p + (text ? "act_1" : "act"));
    b.unit(p + "linear_2");
    b.linear(p + "linear_2", d, d);
  }
  b.unit("context_embedder");
  b.linear("context_embedder", c.joint_attention_dim, d);
  b.unit("x_embedder");
  b.linear("x_embedder", c.in_channels, d);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = absl::StrCat("transformer_blocks.", i, ".");
    b.unit(absl::StrCat("transformer_blocks.", i), /*block=*/true);
    b.linear(p + "norm1.linear", d, 6 * d);
    b.linear(p + "norm1_context.linear", d, 6 * d);
    for (int k = 0; k < 4; ++k) rms_norm(b, hd);  // attn.norm_q, norm_k, norm_added_q, norm_added_k
    for (const char* n : {"to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                          "add_v_proj", "to_add_out"}) {
      b.linear(absl::StrCat(p, "attn.", n), d, d);
    }
    for (const char* ff : {"ff", "ff_context"}) {
      b.linear(absl::StrCat(p, ff, ".net.0.proj"), d, 4 * d);
      b.linear(absl::StrCat(p, ff, ".net.2"), 4 * d, d);
    }
  }
  for (int64_t i = 0; i < c.num_single_layers; ++i) {
    const std::string p = absl::StrCat("single_transformer_blocks.", i, ".");
    b.unit(absl::StrCat("single_transformer_blocks.", i), /*block=*/true);
    b.linear(p + "norm.linear", d, 3 * d);
    rms_norm(b, hd);
    rms_norm(b, hd);
    for (const char* n : {"to_q", "to_k", "to_v"}) b.linear(absl::StrCat(p, "attn.", n), d, d);
    b.linear(p + "proj_mlp", d, 4 * d);
    b.linear(p + "proj_out", 5 * d, d);
  }
  // AdaLayerNormContinuous: silu, linear, LayerNorm without affine parameters.
  b.unit("norm_out.silu");
  b.unit("norm_out.linear");
  b.linear("norm_out.linear", d, 2 * d);
  b.unit("norm_out.norm");
  b.unit("proj_out");
  b.linear("proj_out", d, c.out_features());
  return b.finish();
}

absl::StatusOr<ComponentInventory> t5_encoder_inventory(const T5Config& c,
                                                        const StorageForm& form) {
  // transformers T5EncoderModel: shared, encoder{embed_tokens (tied to shared), block,
  // final_layer_norm, dropout}; _no_split_modules = ["T5Block"].
  Builder b(header("text_encoder_2", "T5EncoderModel", {"T5Block"}), form);
  FLUX_RETURN_IF_ERROR(b.init(T5EncoderModel::quant_traits()));
  b.unit("shared");
  b.dense(c.vocab_size * c.d_model);
  b.end_leaf();
  b.tied("encoder.embed_tokens", "shared");
  const int64_t inner = c.inner_dim();
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = absl::StrCat("encoder.block.", i, ".layer.");
    b.unit(absl::StrCat("encoder.block.", i), /*block=*/true);
    for (const char* n : {"q", "k", "v"})
      b.linear(absl::StrCat(p, "0.SelfAttention.", n), c.d_model, inner, false);
    b.linear(p + "0.SelfAttention.o", inner, c.d_model, false);
    if (i == 0) {  // only the first block has the relative position table (an nn.Embedding)
      b.dense(c.relative_attention_num_buckets * c.num_heads);
      b.end_leaf();
    }
    rms_norm(b, c.d_model);
    const std::string ff = p + "1.DenseReluDense.";
    if (c.is_gated_act) {
      b.linear(ff + "wi_0", c.d_model, c.d_ff, false);
      b.linear(ff + "wi_1", c.d_model, c.d_ff, false);
    } else {
      b.linear(ff + "wi", c.d_model, c.d_ff, false);
    }
    b.linear(ff + "wo", c.d_ff, c.d_model, false);
    rms_norm(b, c.d_model);
  }
  b.unit("encoder.final_layer_norm");
  rms_norm(b, c.d_model);
  b.unit("encoder.dropout");
  return b.finish();
}

absl::StatusOr<ComponentInventory> clip_text_inventory(const CLIPTextConfig& c,
                                                       const StorageForm& form) {
  // transformers 5 CLIPTextModel: embeddings, encoder.layers, final_layer_norm. CLIPTextEmbeddings
  // is a no-split class, so the embeddings move as one unit (with their int64 position_ids buffer).
  Builder b(header("text_encoder", "CLIPTextModel", {"CLIPEncoderLayer", "CLIPTextEmbeddings"}),
            form);
  FLUX_RETURN_IF_ERROR(b.init(CLIPTextModel::quant_traits()));
  const int64_t d = c.hidden_size;
  b.unit("embeddings", /*block=*/true);
  b.dense(c.vocab_size * d);
  b.end_leaf();
  b.dense(c.max_position_embeddings * d);
  b.end_leaf();
  b.buffer(c.max_position_embeddings * 8);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = absl::StrCat("encoder.layers.", i, ".");
    b.unit(absl::StrCat("encoder.layers.", i), /*block=*/true);
    for (const char* n : {"q_proj", "k_proj", "v_proj", "out_proj"}) {
      b.linear(absl::StrCat(p, "self_attn.", n), d, d);
    }
    layer_norm(b, d);
    b.linear(p + "mlp.fc1", d, c.intermediate_size);
    b.linear(p + "mlp.fc2", c.intermediate_size, d);
    layer_norm(b, d);
  }
  b.unit("final_layer_norm");
  layer_norm(b, d);
  return b.finish();
}

absl::StatusOr<ComponentInventory> vae_decoder_inventory(const AutoencoderKLConfig& c,
                                                         const StorageForm& form) {
  Builder b(header("vae", "AutoencoderKL", {"BasicTransformerBlock", "ResnetBlock2D"}), form);
  FLUX_RETURN_IF_ERROR(b.init(AutoencoderKL::quant_traits()));
  auto conv = [&](int64_t cin, int64_t cout, int64_t k) {
    b.dense(cout * cin * k * k);
    b.vec(cout);
    b.end_leaf();
  };
  auto group_norm = [&](int64_t ch) { layer_norm(b, ch); };
  auto resnet = [&](int64_t cin, int64_t cout) {
    group_norm(cin);
    conv(cin, cout, 3);
    group_norm(cout);
    conv(cout, cout, 3);
    if (cin != cout) conv(cin, cout, 1);
  };
  if (c.use_post_quant_conv) {
    b.unit("post_quant_conv");
    conv(c.latent_channels, c.latent_channels, 1);
  }
  // Decoder: conv_in, up_blocks (channels reversed), mid_block, conv_norm_out, conv_out. The
  // planner keeps it whole: our decoder runs as one unit (upstream would split it at
  // ResnetBlock2D boundaries, which no FLUX budget needs for ~100 MB).
  b.unit("decoder", /*block=*/true);
  const std::vector<int64_t>& ch = c.block_out_channels;
  const int64_t top = ch.back();
  conv(c.latent_channels, top, 3);
  int64_t prev = top;
  for (size_t i = 0; i < ch.size(); ++i) {
    const int64_t out = ch[ch.size() - 1 - i];
    for (int64_t r = 0; r <= c.layers_per_block; ++r) resnet(r == 0 ? prev : out, out);
    if (i + 1 < ch.size()) conv(out, out, 3);  // Upsample2D
    prev = out;
  }
  resnet(top, top);
  if (c.mid_block_add_attention) {
    group_norm(top);
    for (const char* n : {"to_q", "to_k", "to_v", "to_out.0"}) {
      b.linear(absl::StrCat("decoder.mid_block.attentions.0.", n), top, top);
    }
  }
  resnet(top, top);
  group_norm(ch.front());
  conv(ch.front(), c.out_channels, 3);
  return b.finish();
}

absl::StatusOr<std::vector<ComponentInventory>> pipeline_inventory(const std::string& dir,
                                                                   const PipelineQuantConfig* quant,
                                                                   DType weight, DType small) {
  namespace fs = std::filesystem;
  std::vector<ComponentInventory> out;
  for (const char* component : {"text_encoder", "text_encoder_2", "transformer", "vae"}) {
    const std::string path = absl::StrCat(dir, "/", component, "/config.json");
    if (!fs::exists(path)) continue;  // a pipeline folder may leave components out
    FLUX_ASSIGN_OR_RETURN(nlohmann::json j, read_json_file(path));
    StorageForm form{weight, small, quant ? quant->resolve(component) : std::nullopt};
    const std::string name = component;
    if (name == "transformer") {
      FLUX_ASSIGN_OR_RETURN(auto cfg, FluxTransformerConfig::from_json(j, path));
      FLUX_ASSIGN_OR_RETURN(auto inv, flux_transformer_inventory(cfg, form));
      out.push_back(std::move(inv));
    } else if (name == "text_encoder_2") {
      FLUX_ASSIGN_OR_RETURN(auto cfg, T5Config::from_json(j, path));
      FLUX_ASSIGN_OR_RETURN(auto inv, t5_encoder_inventory(cfg, form));
      out.push_back(std::move(inv));
    } else if (name == "text_encoder") {
      FLUX_ASSIGN_OR_RETURN(auto cfg, CLIPTextConfig::from_json(j, path));
      FLUX_ASSIGN_OR_RETURN(auto inv, clip_text_inventory(cfg, form));
      out.push_back(std::move(inv));
    } else {
      FLUX_ASSIGN_OR_RETURN(auto cfg, AutoencoderKLConfig::from_json(j, path));
      FLUX_ASSIGN_OR_RETURN(auto inv, vae_decoder_inventory(cfg, form));
      out.push_back(std::move(inv));
    }
  }
  if (out.empty()) {
    return absl::NotFoundError(absl::StrCat(dir,
                                            ": no transformer/, text_encoder/, text_encoder_2/ "
                                            "or vae/ folder with a config.json"));
  }
  return out;
}

std::string format_bytes(int64_t b) {
  const double v = static_cast<double>(b);
  if (b >= (int64_t{1} << 30)) return absl::StrFormat("%.2f GiB", v / (1 << 30));
  if (b >= (int64_t{1} << 20)) return absl::StrFormat("%.2f MiB", v / (1 << 20));
  if (b >= 1024) return absl::StrFormat("%.1f KiB", v / 1024);
  return absl::StrCat(b, " B");
}

}  // namespace fluxserve
