#include "engine/quant/flux_gguf_names.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "engine/core/status.h"
#include "engine/quant/ggml_formats.h"

namespace fluxserve {

namespace {

constexpr std::string_view kPrefix = "model.diffusion_model.";

std::string strip_prefix(const std::string& name) {
  if (name.compare(0, kPrefix.size(), kPrefix) == 0) return name.substr(kPrefix.size());
  return name;
}

// Block index N of "<kind>.N.<rest>", or -1.
int block_index(const std::string& name, std::string_view kind) {
  if (name.compare(0, kind.size(), kind) != 0 || name.size() <= kind.size() ||
      name[kind.size()] != '.') {
    return -1;
  }
  size_t i = kind.size() + 1;
  int64_t n = 0;
  size_t digits = 0;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9' && digits < 6) {
    n = n * 10 + (name[i] - '0');
    ++i;
    ++digits;
  }
  if (digits == 0 || i >= name.size() || name[i] != '.') return -1;
  return static_cast<int>(n);
}

class Mapper {
 public:
  Mapper(const std::vector<GgufTensorInfo>& tensors, std::string what) : what_(std::move(what)) {
    for (const auto& t : tensors) by_bfl_.emplace(strip_prefix(t.name), &t);
  }

  const GgufTensorInfo* find(const std::string& bfl) const {
    auto it = by_bfl_.find(bfl);
    return it == by_bfl_.end() ? nullptr : it->second;
  }

  absl::StatusOr<const GgufTensorInfo*> need(const std::string& bfl) {
    const GgufTensorInfo* t = find(bfl);
    if (t == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(what_, ": FLUX GGUF tensor '", bfl, "' is missing"));
    }
    used_.insert(t);
    return t;
  }

  // diffusers `key` = rows `ranges` of BFL tensor `bfl` (whole tensor when ranges is empty).
  absl::Status add(const std::string& key, const std::string& bfl,
                   std::vector<RowRange> ranges = {}) {
    auto t = need(bfl);
    if (!t.ok()) return t.status();
    const GgufTensorInfo& info = **t;
    FluxGgufSource src;
    src.gguf_name = info.name;
    src.info = &info;
    src.shape = info.shape();
    if (src.shape.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(what_, ": FLUX GGUF tensor '", info.name, "' is a scalar"));
    }
    const int64_t rows = src.shape[0];
    if (ranges.empty()) ranges.push_back({0, rows});
    int64_t total = 0;
    for (const RowRange& r : ranges) {
      if (r.begin < 0 || r.count < 0 || r.begin + r.count > rows) {
        return absl::InvalidArgumentError(
            absl::StrCat(what_, ": FLUX GGUF tensor '", info.name, "' has ", rows, " rows; '", key,
                         "' needs rows [", r.begin, ", ", r.begin + r.count, ")"));
      }
      auto bytes = gguf_row_bytes(info, r);
      if (!bytes.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(what_, ": '", key, "': ", bytes.status().message()));
      }
      total += r.count;
    }
    src.shape[0] = total;
    src.rows = std::move(ranges);
    out_.tensors.emplace(key, std::move(src));
    return absl::OkStatus();
  }

  // weight + bias pair with the same rows.
  absl::Status add_wb(const std::string& key, const std::string& bfl,
                      std::vector<RowRange> ranges = {}) {
    if (absl::Status s = add(key + ".weight", bfl + ".weight", ranges); !s.ok()) return s;
    return add(key + ".bias", bfl + ".bias", ranges);
  }

  absl::StatusOr<FluxGgufMapping> run() {
    // Block counts: largest index + 1, as diffusers counts them.
    for (const auto& [name, t] : by_bfl_) {
      out_.num_layers = std::max(out_.num_layers, block_index(name, "double_blocks") + 1);
      out_.num_single_layers =
          std::max(out_.num_single_layers, block_index(name, "single_blocks") + 1);
      if (name.find("guidance") != std::string::npos) out_.has_guidance = true;
    }
    auto img_in = need("img_in.weight");
    if (!img_in.ok()) return img_in.status();
    out_.inner_dim = (*img_in)->shape()[0];
    const int64_t D = out_.inner_dim;

    FLUX_RETURN_IF_ERROR(add_wb("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer"));
    FLUX_RETURN_IF_ERROR(add_wb("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer"));
    FLUX_RETURN_IF_ERROR(add_wb("time_text_embed.text_embedder.linear_1", "vector_in.in_layer"));
    FLUX_RETURN_IF_ERROR(add_wb("time_text_embed.text_embedder.linear_2", "vector_in.out_layer"));
    if (out_.has_guidance) {
      FLUX_RETURN_IF_ERROR(
          add_wb("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer"));
      FLUX_RETURN_IF_ERROR(
          add_wb("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer"));
    }
    FLUX_RETURN_IF_ERROR(add_wb("context_embedder", "txt_in"));
    FLUX_RETURN_IF_ERROR(add_wb("x_embedder", "img_in"));

    const std::vector<RowRange> q{{0, D}}, k{{D, D}}, v{{2 * D, D}};
    for (int i = 0; i < out_.num_layers; ++i) {
      const std::string p = absl::StrCat("transformer_blocks.", i, ".");
      const std::string b = absl::StrCat("double_blocks.", i, ".");
      FLUX_RETURN_IF_ERROR(add_wb(p + "norm1.linear", b + "img_mod.lin"));
      FLUX_RETURN_IF_ERROR(add_wb(p + "norm1_context.linear", b + "txt_mod.lin"));
      FLUX_RETURN_IF_ERROR(check_rows(b + "img_attn.qkv.weight", 3 * D));
      FLUX_RETURN_IF_ERROR(check_rows(b + "txt_attn.qkv.weight", 3 * D));
      FLUX_RETURN_IF_ERROR(add_wb(p + "attn.to_q", b + "img_attn.qkv", q));
      FLUX_RETURN_IF_ERROR(add_wb(p + "attn.to_k", b + "img_attn.qkv", k));
      FLUX_RETURN_IF_ERROR(add_wb(p + "attn.to_v", b + "img_attn.qkv", v));
      FLUX_RETURN_IF_ERROR(add_wb(p + "attn.add_q_proj", b + "txt_attn.qkv", q));
      FLUX_RETURN_IF_ERROR(add_wb(p + "attn.add_k_proj", b + "txt_attn.qkv", k));
      FLUX_RETURN_IF_ERROR(add_wb(p + "attn.add_v_proj", b + "txt_attn.qkv", v));
      FLUX_RETURN_IF_ERROR(add(p + "attn.norm_q.weight", b + "img_attn.norm.query_norm.scale"));
      FLUX_RETURN_IF_ERROR(add(p + "attn.norm_k.weight", b + "img_attn.norm.key_norm.scale"));
      FLUX_RETURN_IF_ERROR(
          add(p + "attn.norm_added_q.weight", b + "txt_attn.norm.query_norm.scale"));
      FLUX_RETURN_IF_ERROR(add(p + "attn.norm_added_k.weight", b + "txt_attn.norm.key_norm.scale"));
      FLUX_RETURN_IF_ERROR(add_wb(p + "ff.net.0.proj", b + "img_mlp.0"));
      FLUX_RETURN_IF_ERROR(add_wb(p + "ff.net.2", b + "img_mlp.2"));
      FLUX_RETURN_IF_ERROR(add_wb(p + "ff_context.net.0.proj", b + "txt_mlp.0"));
      FLUX_RETURN_IF_ERROR(add_wb(p + "ff_context.net.2", b + "txt_mlp.2"));
      FLUX_RETURN_IF_ERROR(add_wb(p + "attn.to_out.0", b + "img_attn.proj"));
      FLUX_RETURN_IF_ERROR(add_wb(p + "attn.to_add_out", b + "txt_attn.proj"));
    }
    for (int i = 0; i < out_.num_single_layers; ++i) {
      const std::string p = absl::StrCat("single_transformer_blocks.", i, ".");
      const std::string b = absl::StrCat("single_blocks.", i, ".");
      FLUX_RETURN_IF_ERROR(add_wb(p + "norm.linear", b + "modulation.lin"));
      auto l1 = need(b + "linear1.weight");
      if (!l1.ok()) return l1.status();
      const int64_t rows = (*l1)->shape().empty() ? 0 : (*l1)->shape()[0];
      if (rows <= 3 * D) {
        return absl::InvalidArgumentError(absl::StrCat(what_, ": FLUX GGUF tensor '", (*l1)->name,
                                                       "' has ", rows, " rows; expected 3 × ", D,
                                                       " (q, k, v) plus the MLP rows"));
      }
      const int64_t mlp = rows - 3 * D;
      if (i == 0) out_.mlp_hidden_dim = mlp;
      if (mlp != out_.mlp_hidden_dim) {
        return absl::InvalidArgumentError(absl::StrCat(what_, ": FLUX GGUF tensor '", (*l1)->name,
                                                       "' has ", rows, " rows; block 0 has ",
                                                       3 * D + out_.mlp_hidden_dim));
      }
      FLUX_RETURN_IF_ERROR(add_wb(p + "attn.to_q", b + "linear1", q));
      FLUX_RETURN_IF_ERROR(add_wb(p + "attn.to_k", b + "linear1", k));
      FLUX_RETURN_IF_ERROR(add_wb(p + "attn.to_v", b + "linear1", v));
      FLUX_RETURN_IF_ERROR(add_wb(p + "proj_mlp", b + "linear1", {{3 * D, mlp}}));
      FLUX_RETURN_IF_ERROR(add(p + "attn.norm_q.weight", b + "norm.query_norm.scale"));
      FLUX_RETURN_IF_ERROR(add(p + "attn.norm_k.weight", b + "norm.key_norm.scale"));
      FLUX_RETURN_IF_ERROR(add_wb(p + "proj_out", b + "linear2"));
    }
    FLUX_RETURN_IF_ERROR(add_wb("proj_out", "final_layer.linear"));
    // AdaLayerNormContinuous: BFL chunks (shift, scale), diffusers (scale, shift).
    auto ada = need("final_layer.adaLN_modulation.1.weight");
    if (!ada.ok()) return ada.status();
    const int64_t ada_rows = (*ada)->shape().empty() ? 0 : (*ada)->shape()[0];
    if (ada_rows != 2 * D) {
      return absl::InvalidArgumentError(absl::StrCat(what_, ": FLUX GGUF tensor '", (*ada)->name,
                                                     "' has ", ada_rows, " rows; expected 2 × ",
                                                     D));
    }
    FLUX_RETURN_IF_ERROR(
        add_wb("norm_out.linear", "final_layer.adaLN_modulation.1", {{D, D}, {0, D}}));

    for (const auto& [name, t] : by_bfl_) {
      if (used_.count(t) == 0) out_.unused.push_back(t->name);
    }
    return std::move(out_);
  }

 private:
  absl::Status check_rows(const std::string& bfl, int64_t want) {
    auto t = need(bfl);
    if (!t.ok()) return t.status();
    const Shape s = (*t)->shape();
    if (s.empty() || s[0] != want) {
      return absl::InvalidArgumentError(absl::StrCat(what_, ": FLUX GGUF tensor '", (*t)->name,
                                                     "' has shape ", shape_str(s), "; expected ",
                                                     want, " rows (3 × ", want / 3, ")"));
    }
    return absl::OkStatus();
  }

  std::string what_;
  std::map<std::string, const GgufTensorInfo*> by_bfl_;
  std::set<const GgufTensorInfo*> used_;
  FluxGgufMapping out_;
};

}  // namespace

absl::StatusOr<ByteRange> gguf_row_bytes(const GgufTensorInfo& info, RowRange r) {
  const ggml::GgmlTypeInfo ti = ggml::ggml_type_info(info.type);
  if (info.n_dims <= 1) {
    // Rows are elements of ne[0]: whole blocks only.
    if (r.begin % ti.block_size != 0 || r.count % ti.block_size != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", info.name, "': elements [", r.begin, ", ", r.begin + r.count, ") of a 1-D ",
          ti.name, " tensor are not whole ", ti.block_size, "-element blocks"));
    }
    return ByteRange{static_cast<uint64_t>(r.begin / ti.block_size) * ti.type_size,
                     static_cast<uint64_t>(r.count / ti.block_size) * ti.type_size};
  }
  // Dim 0 in torch order is ne[n_dims-1]; everything below it is one "row".
  const uint64_t row =
      info.nbytes / static_cast<uint64_t>(info.shape()[0] == 0 ? 1 : info.shape()[0]);
  return ByteRange{static_cast<uint64_t>(r.begin) * row, static_cast<uint64_t>(r.count) * row};
}

absl::StatusOr<FluxGgufMapping> map_flux_gguf(const std::vector<GgufTensorInfo>& tensors,
                                              std::string_view what) {
  return Mapper(tensors, std::string(what)).run();
}

absl::StatusOr<Tensor> dequantize_flux_gguf_tensor(const GgufFile& file,
                                                   const FluxGgufSource& src) {
  if (src.info == nullptr) return absl::InvalidArgumentError("FluxGgufSource without a tensor");
  const GgufTensorView v = file.view(*src.info);
  Tensor out = Tensor::empty(src.shape, DType::kF32);
  const int64_t full_rows = src.info->shape()[0];
  const int64_t per_row = full_rows == 0 ? 0 : src.info->numel() / full_rows;
  float* dst = out.data<float>();
  for (const RowRange& r : src.rows) {
    auto bytes = gguf_row_bytes(*src.info, r);
    if (!bytes.ok()) return bytes.status();
    absl::Status s = ggml_dequantize(src.info->type, v.data + bytes->offset, bytes->size,
                                     r.count * per_row, dst);
    if (!s.ok()) {
      return absl::Status(
          s.code(), absl::StrCat(file.path(), ": tensor '", src.gguf_name, "': ", s.message()));
    }
    dst += r.count * per_row;
  }
  return out;
}

}  // namespace fluxserve
