// FluxTransformer2DModel from a GGUF file in BFL naming, as diffusers loads one with
// FluxTransformer2DModel.from_single_file(path, quantization_config=GGUFQuantizationConfig(...),
// config=<diffusers config>):
//   - load_gguf_checkpoint: F32/F16 tensors are plain tensors, every other supported type a
//     GGUFParameter (ggml blocks); other types are refused.
//   - convert_flux_transformer_checkpoint_to_diffusers: BFL -> diffusers keys, fused qkv / linear1
//     split by rows, final-layer halves swapped (engine/quant/flux_gguf_names.h); row ranges of a
//     quantized weight are byte ranges, so the pieces stay quantized.
//   - GGUFQuantizer: an nn.Linear whose weight is a GGUFParameter becomes a GGUFLinear (dequantize
//     then F.linear, engine/quant/ggml_linear.h); plain weights are cast to the compute dtype.
// Our stacked projections (q|k|v, q|k|v|proj_mlp) are exactly the rows of the fused BFL tensors,
// so they are taken as one zero-copy range of the mmapped file.
#include <algorithm>
#include <filesystem>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/core/status.h"
#include "engine/models/flux_transformer.h"
#include "engine/quant/flux_gguf_names.h"
#include "engine/quant/ggml_linear.h"

namespace fluxserve {
namespace {

constexpr int64_t kTimeChannels = 256;

class GgufLoader {
 public:
  GgufLoader(std::shared_ptr<const GgufFile> file, const FluxGgufMapping& map, std::string config)
      : file_(std::move(file)), map_(map), config_(std::move(config)) {}

  // The diffusers layers `prefixes` (each [outs[i], in]) stacked row-wise into one Linear.
  absl::StatusOr<Linear> linear(const std::vector<std::string>& prefixes, int64_t in,
                                const std::vector<int64_t>& outs, bool bias = true) {
    std::vector<Piece> pieces;
    int64_t total = 0;
    for (size_t i = 0; i < prefixes.size(); ++i) {
      FLUX_ASSIGN_OR_RETURN(const FluxGgufSource* s, source(prefixes[i] + ".weight", {outs[i], in}));
      for (const RowRange& r : s->rows) pieces.push_back({s->info, r});
      total += outs[i];
    }
    Linear l;
    FLUX_RETURN_IF_ERROR(weight(pieces, total, in, &l));
    if (bias) {
      l.bias = Tensor::empty({total});
      float* dst = l.bias.data<float>();
      for (size_t i = 0; i < prefixes.size(); ++i) {
        FLUX_ASSIGN_OR_RETURN(Tensor b, vector_f32(prefixes[i] + ".bias", outs[i]));
        std::copy(b.data<float>(), b.data<float>() + outs[i], dst);
        dst += outs[i];
      }
      l.has_bias = true;
    }
    return l;
  }
  absl::StatusOr<Linear> linear(const std::string& prefix, int64_t in, int64_t out) {
    return linear(std::vector<std::string>{prefix}, in, {out});
  }

  // A 1-D tensor as f32 (norm scales, biases), dequantized with diffusers' numerics.
  absl::StatusOr<Tensor> vector_f32(const std::string& key, int64_t n) {
    FLUX_ASSIGN_OR_RETURN(const FluxGgufSource* s, source(key, {n}));
    Tensor out = Tensor::empty({n});
    float* dst = out.data<float>();
    const GgufTensorView v = file_->view(*s->info);
    for (const RowRange& r : s->rows) {
      FLUX_ASSIGN_OR_RETURN(ByteRange b, gguf_row_bytes(*s->info, r));
      FLUX_RETURN_IF_ERROR(at(s->info, ggml_dequantize_diffusers(s->info->type, v.data + b.offset,
                                                                 r.count, dst)));
      dst += r.count;
    }
    return out;
  }

 private:
  struct Piece {
    const GgufTensorInfo* info;
    RowRange rows;
  };

  absl::Status at(const GgufTensorInfo* info, const absl::Status& s) const {
    if (s.ok()) return s;
    return absl::Status(s.code(), absl::StrCat(file_->path(), ": tensor '", info->name, "': ",
                                               s.message()));
  }

  absl::StatusOr<const FluxGgufSource*> source(const std::string& key, const Shape& want) {
    auto it = map_.tensors.find(key);
    if (it == map_.tensors.end()) {
      return absl::InvalidArgumentError(absl::StrCat(file_->path(), ": no tensor for '", key,
                                                     "', which ", config_, " requires"));
    }
    const FluxGgufSource& s = it->second;
    if (s.shape != want) {
      return absl::InvalidArgumentError(absl::StrCat(
          file_->path(), ": tensor '", s.gguf_name, "' gives '", key, "' the shape ",
          shape_str(s.shape), ", but ", config_, " needs ", shape_str(want)));
    }
    if (!ggml_linear_supports(s.info->type)) {
      return absl::InvalidArgumentError(absl::StrCat(
          file_->path(), ": tensor '", s.gguf_name, "' has ggml type ",
          ggml::ggml_type_info(s.info->type).name,
          ", which is not supported (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K .. Q6_K)"));
    }
    return &s;
  }

  // Rows `pieces` (in order) as the layer's weight [n, k].
  absl::Status weight(const std::vector<Piece>& pieces, int64_t n, int64_t k, Linear* l) {
    const GgufTensorInfo* info = pieces[0].info;
    bool contiguous = true, same_type = true;
    for (size_t i = 1; i < pieces.size(); ++i) {
      contiguous = contiguous && pieces[i].info == info &&
                   pieces[i].rows.begin == pieces[i - 1].rows.begin + pieces[i - 1].rows.count;
      same_type = same_type && pieces[i].info->type == info->type;
    }
    const GgmlType type = info->type;
    const uint8_t* data = nullptr;
    uint64_t nbytes = 0;
    std::shared_ptr<const void> owner;
    if (contiguous) {  // the usual case: a zero-copy range of the mapping
      FLUX_ASSIGN_OR_RETURN(ByteRange b, gguf_row_bytes(*info, {pieces[0].rows.begin, n}));
      data = file_->view(*info).data + b.offset;
      nbytes = b.size;
      owner = file_;
    } else if (same_type) {  // e.g. the final layer's swapped halves: copy the blocks
      auto buf = std::make_shared<std::vector<uint8_t>>();
      for (const Piece& p : pieces) {
        FLUX_ASSIGN_OR_RETURN(ByteRange b, gguf_row_bytes(*p.info, p.rows));
        const uint8_t* src = file_->view(*p.info).data + b.offset;
        buf->insert(buf->end(), src, src + b.size);
      }
      data = buf->data();
      nbytes = buf->size();
      owner = buf;
    } else {  // parts of different types: dequantize them into one f32 weight
      l->weight = Tensor::empty({n, k});
      float* dst = l->weight.data<float>();
      for (const Piece& p : pieces) {
        FLUX_ASSIGN_OR_RETURN(ByteRange b, gguf_row_bytes(*p.info, p.rows));
        FLUX_RETURN_IF_ERROR(at(p.info, ggml_dequantize_diffusers(
                                            p.info->type, file_->view(*p.info).data + b.offset,
                                            p.rows.count * k, dst)));
        dst += p.rows.count * k;
      }
      return absl::OkStatus();
    }
    // F32 / F16 / BF16 stay plain (diffusers: an nn.Linear, or a GGUFLinear whose BF16 dequant is
    // exact); ops::linear widens them per call.
    if (type == GgmlType::kF32 || type == GgmlType::kF16 || type == GgmlType::kBF16) {
      const DType dt = type == GgmlType::kF32 ? DType::kF32
                       : type == GgmlType::kF16 ? DType::kF16 : DType::kBF16;
      l->weight = Tensor::view_of(data, {n, k}, dt, owner);
      return absl::OkStatus();
    }
    auto q = make_ggml_linear(type, n, k, data, nbytes, owner);
    if (!q.ok()) return at(info, q.status());
    l->quantized = *std::move(q);
    return absl::OkStatus();
  }

  std::shared_ptr<const GgufFile> file_;
  const FluxGgufMapping& map_;
  std::string config_;
};

absl::StatusOr<MlpEmbedder> mlp_embedder(GgufLoader& g, const std::string& p, int64_t in,
                                         int64_t dim) {
  MlpEmbedder e;
  FLUX_ASSIGN_OR_RETURN(e.linear_1, g.linear(p + ".linear_1", in, dim));
  FLUX_ASSIGN_OR_RETURN(e.linear_2, g.linear(p + ".linear_2", dim, dim));
  return e;
}

}  // namespace

absl::StatusOr<std::unique_ptr<FluxTransformer2DModel>> FluxTransformer2DModel::from_gguf(
    const FluxTransformerConfig& config, const std::string& gguf_path,
    const std::string& config_path) {
  FLUX_ASSIGN_OR_RETURN(std::shared_ptr<const GgufFile> file, GgufFile::open(gguf_path));
  FLUX_ASSIGN_OR_RETURN(FluxGgufMapping map, map_flux_gguf(file->tensors(), gguf_path));
  const int64_t d = config.inner_dim(), hd = config.attention_head_dim, mlp = 4 * d;
  // Counts and widths first, so a mismatched file fails with the number at fault.
  auto mismatch = [&](const std::string& what, int64_t want, const std::string& has, int64_t got) {
    return absl::InvalidArgumentError(absl::StrCat(gguf_path, " does not match ", config_path,
                                                   ": ", what, " = ", want, ", but the file has ",
                                                   has, " = ", got));
  };
  if (map.inner_dim != d) {
    return mismatch("num_attention_heads x attention_head_dim", d, "img_in.weight rows",
                    map.inner_dim);
  }
  if (map.num_layers != config.num_layers) {
    return mismatch("num_layers", config.num_layers, "double_blocks", map.num_layers);
  }
  if (map.num_single_layers != config.num_single_layers) {
    return mismatch("num_single_layers", config.num_single_layers, "single_blocks",
                    map.num_single_layers);
  }
  if (config.guidance_embeds && !map.has_guidance) {
    return absl::InvalidArgumentError(absl::StrCat(
        gguf_path, " has no guidance_in tensors (a FLUX.1-schnell-style file), but ", config_path,
        " says guidance_embeds = true"));
  }
  auto m = std::unique_ptr<FluxTransformer2DModel>(new FluxTransformer2DModel());
  m->config_ = config;
  m->gguf_file_ = gguf_path;
  GgufLoader g(file, map, config_path);
  FLUX_ASSIGN_OR_RETURN(m->x_embedder, g.linear("x_embedder", config.in_channels, d));
  FLUX_ASSIGN_OR_RETURN(m->context_embedder,
                        g.linear("context_embedder", config.joint_attention_dim, d));
  FLUX_ASSIGN_OR_RETURN(m->timestep_embedder,
                        mlp_embedder(g, "time_text_embed.timestep_embedder", kTimeChannels, d));
  if (config.guidance_embeds) {
    FLUX_ASSIGN_OR_RETURN(m->guidance_embedder,
                          mlp_embedder(g, "time_text_embed.guidance_embedder", kTimeChannels, d));
  }
  FLUX_ASSIGN_OR_RETURN(m->text_embedder, mlp_embedder(g, "time_text_embed.text_embedder",
                                                       config.pooled_projection_dim, d));
  m->transformer_blocks.resize(static_cast<size_t>(config.num_layers));
  for (int64_t i = 0; i < config.num_layers; ++i) {
    const std::string p = absl::StrCat("transformer_blocks.", i);
    FluxTransformerBlock& b = m->transformer_blocks[i];
    FLUX_ASSIGN_OR_RETURN(b.norm1_linear, g.linear(p + ".norm1.linear", d, 6 * d));
    FLUX_ASSIGN_OR_RETURN(b.norm1_context_linear, g.linear(p + ".norm1_context.linear", d, 6 * d));
    FluxAttention& a = b.attn;
    const std::string at = p + ".attn.";
    FLUX_ASSIGN_OR_RETURN(a.to_qkv, g.linear({at + "to_q", at + "to_k", at + "to_v"}, d, {d, d, d}));
    FLUX_ASSIGN_OR_RETURN(a.add_qkv_proj, g.linear({at + "add_q_proj", at + "add_k_proj",
                                                    at + "add_v_proj"}, d, {d, d, d}));
    FLUX_ASSIGN_OR_RETURN(a.norm_q, g.vector_f32(at + "norm_q.weight", hd));
    FLUX_ASSIGN_OR_RETURN(a.norm_k, g.vector_f32(at + "norm_k.weight", hd));
    FLUX_ASSIGN_OR_RETURN(a.norm_added_q, g.vector_f32(at + "norm_added_q.weight", hd));
    FLUX_ASSIGN_OR_RETURN(a.norm_added_k, g.vector_f32(at + "norm_added_k.weight", hd));
    FLUX_ASSIGN_OR_RETURN(a.to_out_0, g.linear(at + "to_out.0", d, d));
    FLUX_ASSIGN_OR_RETURN(a.to_add_out, g.linear(at + "to_add_out", d, d));
    FLUX_ASSIGN_OR_RETURN(b.ff.net_0_proj, g.linear(p + ".ff.net.0.proj", d, mlp));
    FLUX_ASSIGN_OR_RETURN(b.ff.net_2, g.linear(p + ".ff.net.2", mlp, d));
    FLUX_ASSIGN_OR_RETURN(b.ff_context.net_0_proj, g.linear(p + ".ff_context.net.0.proj", d, mlp));
    FLUX_ASSIGN_OR_RETURN(b.ff_context.net_2, g.linear(p + ".ff_context.net.2", mlp, d));
  }
  m->single_transformer_blocks.resize(static_cast<size_t>(config.num_single_layers));
  for (int64_t i = 0; i < config.num_single_layers; ++i) {
    const std::string p = absl::StrCat("single_transformer_blocks.", i);
    FluxSingleTransformerBlock& b = m->single_transformer_blocks[i];
    FLUX_ASSIGN_OR_RETURN(b.norm_linear, g.linear(p + ".norm.linear", d, 3 * d));
    const std::string at = p + ".attn.";
    FLUX_ASSIGN_OR_RETURN(b.attn.to_qkv, g.linear({at + "to_q", at + "to_k", at + "to_v",
                                                   p + ".proj_mlp"}, d, {d, d, d, mlp}));
    FLUX_ASSIGN_OR_RETURN(b.attn.norm_q, g.vector_f32(at + "norm_q.weight", hd));
    FLUX_ASSIGN_OR_RETURN(b.attn.norm_k, g.vector_f32(at + "norm_k.weight", hd));
    FLUX_ASSIGN_OR_RETURN(b.proj_out, g.linear(p + ".proj_out", d + mlp, d));
  }
  FLUX_ASSIGN_OR_RETURN(m->norm_out_linear, g.linear("norm_out.linear", d, 2 * d));
  FLUX_ASSIGN_OR_RETURN(m->proj_out, g.linear("proj_out", d, config.out_features()));
  // diffusers warns about checkpoint tensors no parameter takes (e.g. guidance_in with a
  // guidance_embeds = false config); so do we, by listing them.
  m->unused_keys_ = map.unused;
  if (!config.guidance_embeds) {
    for (const auto& [key, src] : map.tensors) {
      if (key.rfind("time_text_embed.guidance_embedder.", 0) == 0) m->unused_keys_.push_back(src.gguf_name);
    }
  }
  return m;
}

absl::StatusOr<std::unique_ptr<FluxTransformer2DModel>> FluxTransformer2DModel::load_gguf(
    const std::string& dir) {
  // diffusers has no folder convention for GGUF (from_single_file takes a file path and
  // config=<diffusers repo>); ours is the component folder: config.json beside exactly one .gguf.
  std::error_code ec;
  std::vector<std::string> found;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (e.path().extension() == ".gguf" && e.is_regular_file(ec)) found.push_back(e.path().string());
  }
  if (ec) {
    return absl::NotFoundError(absl::StrCat(dir, ": cannot list the folder: ", ec.message()));
  }
  if (found.empty()) {
    return absl::NotFoundError(absl::StrCat(
        dir, ": quant_backend 'gguf' needs the transformer as a .gguf file in this folder "
             "(beside config.json); none found"));
  }
  if (found.size() > 1) {
    std::sort(found.begin(), found.end());
    return absl::InvalidArgumentError(absl::StrCat(
        dir, ": ", found.size(), " .gguf files (", absl::StrJoin(found, ", "),
        "); keep exactly one transformer .gguf in the folder"));
  }
  const std::string config_path = dir + "/config.json";
  FLUX_ASSIGN_OR_RETURN(nlohmann::json j, read_json_file(config_path));
  FLUX_ASSIGN_OR_RETURN(FluxTransformerConfig config,
                        FluxTransformerConfig::from_json(j, config_path));
  return from_gguf(config, found[0], config_path);
}

}  // namespace fluxserve
