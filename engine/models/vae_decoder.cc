#include "engine/models/vae_decoder.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/core/status.h"
#include "engine/io/json_util.h"
#include "kernels/ops.h"

namespace fluxserve {
namespace {

constexpr float kNormEps = 1e-6f;  // every GroupNorm of the decoder (resnet_eps)
constexpr int64_t kMaxUpBlocks = 8;

// [B, C, S] <-> [B, S, C], in 32x32 tiles so both sides stay in cache. The attention works on
// tokens (rows of C channels); the convolutions on planes.
Tensor transpose_last2(const Tensor& x, int64_t rows, int64_t cols) {
  const int64_t bsz = x.numel() / (rows * cols);
  Tensor y = Tensor::empty({bsz, cols, rows});
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  constexpr int64_t kTile = 32;
  const int64_t tr = (rows + kTile - 1) / kTile, tc = (cols + kTile - 1) / kTile;
#pragma omp parallel for collapse(3) if (x.numel() > (1 << 16))
  for (int64_t b = 0; b < bsz; ++b) {
    for (int64_t i = 0; i < tr; ++i) {
      for (int64_t j = 0; j < tc; ++j) {
        const float* src = xp + b * rows * cols;
        float* dst = yp + b * rows * cols;
        const int64_t r1 = std::min(rows, (i + 1) * kTile), c1 = std::min(cols, (j + 1) * kTile);
        for (int64_t r = i * kTile; r < r1; ++r) {
          for (int64_t c = j * kTile; c < c1; ++c) dst[c * rows + r] = src[r * cols + c];
        }
      }
    }
  }
  return y;
}

absl::StatusOr<Conv2d> load_conv(WeightLoader& w, const std::string& p, int64_t in, int64_t out,
                                 int64_t k) {
  Conv2d c;
  FLUX_ASSIGN_OR_RETURN(c.weight, w.take(p + ".weight", {out, in, k, k}));
  if (c.weight.dtype() != DType::kF32 && c.weight.dtype() != DType::kBF16 &&
      c.weight.dtype() != DType::kF16) {
    FLUX_ASSIGN_OR_RETURN(c.weight, c.weight.as_f32());  // fp8 etc.: once, at load
  }
  FLUX_ASSIGN_OR_RETURN(c.bias, w.take_f32(p + ".bias", {out}));
  c.padding = static_cast<int>(k / 2);
  return c;
}

absl::StatusOr<GroupNorm> load_group_norm(WeightLoader& w, const std::string& p, int64_t channels,
                                          int64_t groups) {
  GroupNorm g;
  FLUX_ASSIGN_OR_RETURN(g.weight, w.take_f32(p + ".weight", {channels}));
  FLUX_ASSIGN_OR_RETURN(g.bias, w.take_f32(p + ".bias", {channels}));
  g.num_groups = static_cast<int>(groups);
  g.eps = kNormEps;
  return g;
}

absl::StatusOr<ResnetBlock2D> load_resnet(WeightLoader& w, const std::string& p, int64_t in,
                                          int64_t out, int64_t groups) {
  ResnetBlock2D r;
  FLUX_ASSIGN_OR_RETURN(r.norm1, load_group_norm(w, p + ".norm1", in, groups));
  FLUX_ASSIGN_OR_RETURN(r.conv1, load_conv(w, p + ".conv1", in, out, 3));
  FLUX_ASSIGN_OR_RETURN(r.norm2, load_group_norm(w, p + ".norm2", out, groups));
  FLUX_ASSIGN_OR_RETURN(r.conv2, load_conv(w, p + ".conv2", out, out, 3));
  if (in != out) {
    FLUX_ASSIGN_OR_RETURN(r.conv_shortcut, load_conv(w, p + ".conv_shortcut", in, out, 1));
  }
  return r;
}

absl::StatusOr<VaeAttention> load_attention(WeightLoader& w, const std::string& p, int64_t c,
                                            int64_t groups) {
  VaeAttention a;
  FLUX_ASSIGN_OR_RETURN(a.group_norm, load_group_norm(w, p + ".group_norm", c, groups));
  FLUX_ASSIGN_OR_RETURN(Linear to_q, w.linear(p + ".to_q", c, c));
  FLUX_ASSIGN_OR_RETURN(Linear to_k, w.linear(p + ".to_k", c, c));
  FLUX_ASSIGN_OR_RETURN(Linear to_v, w.linear(p + ".to_v", c, c));
  a.to_qkv = stack_linears({&to_q, &to_k, &to_v});
  FLUX_ASSIGN_OR_RETURN(a.to_out_0, w.linear(p + ".to_out.0", c, c));
  return a;
}

absl::Status require_positive(const std::string& what, const char* name, int64_t v) {
  if (v <= 0)
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", name, " must be > 0, got ", v));
  return absl::OkStatus();
}

}  // namespace

// ---- config --------------------------------------------------------------------------------

absl::StatusOr<AutoencoderKLConfig> AutoencoderKLConfig::from_json(const nlohmann::json& j,
                                                                   const std::string& what) {
  if (!j.is_object()) return absl::InvalidArgumentError(what + ": config is not a JSON object");
  ConfigReader r(j, what);
  AutoencoderKLConfig c;
  if (r.has("_class_name")) {
    FLUX_ASSIGN_OR_RETURN(std::string cls, r.get_string("_class_name"));
    if (cls != "AutoencoderKL") {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": _class_name is '", cls, "', expected 'AutoencoderKL'"));
    }
  }
  FLUX_ASSIGN_OR_RETURN(c.in_channels, r.get_int("in_channels", c.in_channels));
  FLUX_ASSIGN_OR_RETURN(c.out_channels, r.get_int("out_channels", c.out_channels));
  FLUX_ASSIGN_OR_RETURN(c.latent_channels, r.get_int("latent_channels", c.latent_channels));
  FLUX_ASSIGN_OR_RETURN(c.block_out_channels,
                        r.get_int_list("block_out_channels", c.block_out_channels));
  FLUX_ASSIGN_OR_RETURN(c.layers_per_block, r.get_int("layers_per_block", c.layers_per_block));
  FLUX_ASSIGN_OR_RETURN(c.norm_num_groups, r.get_int("norm_num_groups", c.norm_num_groups));
  FLUX_ASSIGN_OR_RETURN(c.act_fn, r.get_string("act_fn", c.act_fn));
  FLUX_ASSIGN_OR_RETURN(c.mid_block_add_attention,
                        r.get_bool("mid_block_add_attention", c.mid_block_add_attention));
  FLUX_ASSIGN_OR_RETURN(c.use_post_quant_conv,
                        r.get_bool("use_post_quant_conv", c.use_post_quant_conv));
  FLUX_ASSIGN_OR_RETURN(c.scaling_factor, r.get_double("scaling_factor", c.scaling_factor));
  FLUX_ASSIGN_OR_RETURN(c.shift_factor, r.get_double("shift_factor", c.shift_factor));
  if (r.has("up_block_types")) {
    const nlohmann::json& u = j.at("up_block_types");
    if (!u.is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": up_block_types must be an array, got ", json_type_name(u)));
    }
    c.up_block_types.clear();
    for (const nlohmann::json& e : u) {
      if (!e.is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(
            what, ": up_block_types entries must be strings, got ", json_type_name(e)));
      }
      c.up_block_types.push_back(e.get<std::string>());
    }
  }

  FLUX_RETURN_IF_ERROR(require_positive(what, "out_channels", c.out_channels));
  FLUX_RETURN_IF_ERROR(require_positive(what, "latent_channels", c.latent_channels));
  FLUX_RETURN_IF_ERROR(require_positive(what, "norm_num_groups", c.norm_num_groups));
  if (c.layers_per_block < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": layers_per_block must be >= 0, got ", c.layers_per_block));
  }
  if (c.act_fn != "silu" && c.act_fn != "swish") {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": act_fn '", c.act_fn, "' is not supported (the decoder implements silu)"));
  }
  const int64_t n_blocks = static_cast<int64_t>(c.block_out_channels.size());
  if (n_blocks == 0 || n_blocks > kMaxUpBlocks) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": block_out_channels must have 1 to ",
                                                   kMaxUpBlocks, " entries, got ", n_blocks));
  }
  for (int64_t ch : c.block_out_channels) {
    if (ch <= 0 || ch % c.norm_num_groups != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": block_out_channels [", absl::StrJoin(c.block_out_channels, ", "),
                       "] must be positive multiples of norm_num_groups ", c.norm_num_groups));
    }
  }
  if (static_cast<int64_t>(c.up_block_types.size()) != n_blocks) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": up_block_types has ",
                                                   c.up_block_types.size(),
                                                   " entries but block_out_channels ", n_blocks));
  }
  for (const std::string& t : c.up_block_types) {
    if (t != "UpDecoderBlock2D") {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": up block type '", t, "' is not supported (only UpDecoderBlock2D)"));
    }
  }
  if (!std::isfinite(c.scaling_factor) || c.scaling_factor == 0.0 ||
      !std::isfinite(c.shift_factor)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": scaling_factor ", c.scaling_factor,
                                                   " / shift_factor ", c.shift_factor,
                                                   " must be finite, scaling_factor non-zero"));
  }
  return c;
}

// ---- layers --------------------------------------------------------------------------------

Tensor Conv2d::operator()(const Tensor& x) const {
  return ops::conv2d(x, weight, &bias, /*stride=*/1, padding);
}

Tensor GroupNorm::operator()(const Tensor& x) const {
  return ops::group_norm(x, num_groups, weight, bias, eps);
}

Tensor ResnetBlock2D::operator()(const Tensor& x) const {
  // x: [B, in, H, W]
  Tensor h = norm1(x);
  ops::silu_(h);
  h = conv1(h);  // [B, out, H, W]
  h = norm2(h);
  ops::silu_(h);
  h = conv2(h);
  ops::add_(h, conv_shortcut ? (*conv_shortcut)(x) : x);  // output_scale_factor 1
  return h;
}

Tensor VaeAttention::operator()(const Tensor& x) const {
  // x: [B, C, h, w] -> tokens [B, h*w, C]
  const int64_t bsz = x.size(0), c = x.size(1), s = x.size(2) * x.size(3);
  const Tensor tokens = transpose_last2(group_norm(x), c, s);
  std::vector<Tensor> qkv = ops::split_last(to_qkv(tokens), {c, c, c});  // 3 x [B, S, C]
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c)));
  const Tensor o = ops::attention(qkv[0].reshape({bsz, s, 1, c}), qkv[1].reshape({bsz, s, 1, c}),
                                  qkv[2].reshape({bsz, s, 1, c}), scale);  // [B, S, C]
  Tensor out = transpose_last2(to_out_0(o), s, c).reshape(x.shape());      // [B, C, h, w]
  ops::add_(out, x);  // residual_connection, rescale_output_factor 1
  return out;
}

// ---- model ---------------------------------------------------------------------------------

template <class Self, class F>
void AutoencoderKL::for_each_linear(Self& self, F&& f) {
  const int64_t c = self.config_.block_out_channels.back();
  auto& attns = self.decoder.mid_block.attentions;
  for (size_t i = 0; i < attns.size(); ++i) {
    const std::string p = absl::StrCat("decoder.mid_block.attentions.", i, ".");
    f(attns[i].to_qkv, std::vector<LinearPart>{{p + "to_q", c}, {p + "to_k", c}, {p + "to_v", c}});
    f(attns[i].to_out_0, std::vector<LinearPart>{{p + "to_out.0", c}});
  }
}

UpstreamQuantTraits AutoencoderKL::quant_traits() { return {QuantLibrary::kDiffusers, {}, {}}; }

absl::StatusOr<std::vector<std::string>> AutoencoderKL::quantize(const ComponentQuantConfig& cfg) {
  FLUX_ASSIGN_OR_RETURN(ComponentQuantizer q, ComponentQuantizer::create(cfg, quant_traits(), "vae"));
  absl::Status status;
  for_each_linear(*this, [&](Linear& l, const std::vector<LinearPart>& parts) {
    if (status.ok()) status = q.quantize(l, parts);
  });
  FLUX_RETURN_IF_ERROR(status);
  return q.converted();
}

namespace {

void tally_conv(MemoryTally& t, const Conv2d& c) {
  t.weight(c.weight);
  t.aux(c.bias);
}

void tally_norm(MemoryTally& t, const GroupNorm& n) {
  t.aux(n.weight);
  t.aux(n.bias);
}

void tally_resnet(MemoryTally& t, const ResnetBlock2D& r) {
  tally_norm(t, r.norm1);
  tally_conv(t, r.conv1);
  tally_norm(t, r.norm2);
  tally_conv(t, r.conv2);
  if (r.conv_shortcut) tally_conv(t, *r.conv_shortcut);
}

}  // namespace

ModelMemory AutoencoderKL::memory() const {
  MemoryTally t;
  if (post_quant_conv) tally_conv(t, *post_quant_conv);
  tally_conv(t, decoder.conv_in);
  for (const ResnetBlock2D& r : decoder.mid_block.resnets) tally_resnet(t, r);
  for (const VaeAttention& a : decoder.mid_block.attentions) tally_norm(t, a.group_norm);
  for (const UpDecoderBlock2D& b : decoder.up_blocks) {
    for (const ResnetBlock2D& r : b.resnets) tally_resnet(t, r);
    for (const Upsample2D& u : b.upsamplers) tally_conv(t, u.conv);
  }
  tally_norm(t, decoder.conv_norm_out);
  tally_conv(t, decoder.conv_out);
  for_each_linear(*this, [&](const Linear& l, const std::vector<LinearPart>& parts) {
    t.linear(l, static_cast<int>(parts.size()));
  });
  return t.finish();
}

absl::StatusOr<std::unique_ptr<AutoencoderKL>> AutoencoderKL::load(const std::string& dir) {
  return load_component<AutoencoderKL, AutoencoderKLConfig>(dir);
}

absl::StatusOr<std::unique_ptr<AutoencoderKL>> AutoencoderKL::from_store(
    const AutoencoderKLConfig& config, const WeightStore& store) {
  auto m = std::unique_ptr<AutoencoderKL>(new AutoencoderKL());
  m->config_ = config;
  const int64_t g = config.norm_num_groups, lc = config.latent_channels;
  const std::vector<int64_t>& boc = config.block_out_channels;
  const int64_t top = boc.back();
  WeightLoader w(store);
  if (config.use_post_quant_conv) {
    FLUX_ASSIGN_OR_RETURN(m->post_quant_conv, load_conv(w, "post_quant_conv", lc, lc, 1));
  }
  VaeDecoder& d = m->decoder;
  FLUX_ASSIGN_OR_RETURN(d.conv_in, load_conv(w, "decoder.conv_in", lc, top, 3));
  for (int i = 0; i < 2; ++i) {
    FLUX_ASSIGN_OR_RETURN(
        ResnetBlock2D r,
        load_resnet(w, absl::StrCat("decoder.mid_block.resnets.", i), top, top, g));
    d.mid_block.resnets.push_back(std::move(r));
  }
  if (config.mid_block_add_attention) {
    FLUX_ASSIGN_OR_RETURN(VaeAttention a,
                          load_attention(w, "decoder.mid_block.attentions.0", top, g));
    d.mid_block.attentions.push_back(std::move(a));
  }
  const int64_t n_blocks = static_cast<int64_t>(boc.size());
  int64_t prev = top;
  for (int64_t i = 0; i < n_blocks; ++i) {
    const int64_t out = boc[static_cast<size_t>(n_blocks - 1 - i)];  // reversed
    const std::string p = absl::StrCat("decoder.up_blocks.", i);
    UpDecoderBlock2D blk;
    for (int64_t j = 0; j <= config.layers_per_block; ++j) {
      FLUX_ASSIGN_OR_RETURN(ResnetBlock2D r, load_resnet(w, absl::StrCat(p, ".resnets.", j),
                                                         j == 0 ? prev : out, out, g));
      blk.resnets.push_back(std::move(r));
    }
    if (i + 1 < n_blocks) {
      FLUX_ASSIGN_OR_RETURN(Conv2d conv, load_conv(w, p + ".upsamplers.0.conv", out, out, 3));
      blk.upsamplers.push_back(Upsample2D{std::move(conv)});
    }
    d.up_blocks.push_back(std::move(blk));
    prev = out;
  }
  FLUX_ASSIGN_OR_RETURN(d.conv_norm_out, load_group_norm(w, "decoder.conv_norm_out", boc[0], g));
  FLUX_ASSIGN_OR_RETURN(d.conv_out,
                        load_conv(w, "decoder.conv_out", boc[0], config.out_channels, 3));
  for (const std::string& k : w.unused_keys()) {
    if (!absl::StartsWith(k, "encoder.") && !absl::StartsWith(k, "quant_conv.")) {
      m->unused_keys_.push_back(k);
    }
  }
  return m;
}

absl::StatusOr<Tensor> AutoencoderKL::scale_latents(const Tensor& latents) const {
  if (!dtype_is_float(latents.dtype())) {
    return absl::InvalidArgumentError(
        absl::StrCat("'latents' must be a float tensor, got ", dtype_name(latents.dtype())));
  }
  FLUX_ASSIGN_OR_RETURN(Tensor x, latents.to(DType::kF32));  // a copy: the caller's data stays
  // torch divides (no reciprocal multiply) by the f32-rounded scalar, then adds.
  const float sf = static_cast<float>(config_.scaling_factor);
  const float shift = static_cast<float>(config_.shift_factor);
  float* p = x.data<float>();
  const int64_t n = x.numel();
#pragma omp parallel for simd if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) p[i] = p[i] / sf + shift;
  return x;
}

absl::StatusOr<Tensor> AutoencoderKL::decode(const Tensor& z) const {
  const AutoencoderKLConfig& c = config_;
  if (z.dim() != 4 || z.size(1) != c.latent_channels || z.size(0) == 0 || z.size(2) == 0 ||
      z.size(3) == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'latents' must have shape [batch, ", c.latent_channels,
        ", height, width] (latent_channels of this VAE) with non-zero sizes, got ", z.shape_str()));
  }
  if (!dtype_is_float(z.dtype())) {
    return absl::InvalidArgumentError(
        absl::StrCat("'latents' must be a float tensor, got ", dtype_name(z.dtype())));
  }
  FLUX_ASSIGN_OR_RETURN(Tensor x, z.as_f32());  // x: [B, latent_channels, h, w]
  if (post_quant_conv) x = (*post_quant_conv)(x);
  const VaeDecoder& d = decoder;
  x = d.conv_in(x);  // [B, top, h, w]
  x = d.mid_block.resnets[0](x);
  for (const VaeAttention& a : d.mid_block.attentions) x = a(x);
  x = d.mid_block.resnets[1](x);
  for (const UpDecoderBlock2D& blk : d.up_blocks) {
    for (const ResnetBlock2D& r : blk.resnets) x = r(x);
    for (const Upsample2D& u : blk.upsamplers) x = u.conv(ops::upsample_nearest2x(x));  // 2x
  }
  x = d.conv_norm_out(x);
  ops::silu_(x);
  return d.conv_out(x);  // [B, out_channels, f*h, f*w]
}

double AutoencoderKL::flops(int64_t h, int64_t w) const {
  const AutoencoderKLConfig& c = config_;
  double hw = static_cast<double>(h * w);
  auto conv = [&](double in, double out, double k) { return 2 * in * out * k * k * hw; };
  auto resnet = [&](double in, double out) {
    return conv(in, out, 3) + conv(out, out, 3) + (in != out ? conv(in, out, 1) : 0.0);
  };
  const double lc = static_cast<double>(c.latent_channels);
  const double top = static_cast<double>(c.block_out_channels.back());
  double f = (c.use_post_quant_conv ? conv(lc, lc, 1) : 0.0) + conv(lc, top, 3);
  f += 2 * resnet(top, top);
  if (c.mid_block_add_attention) f += 2 * hw * top * top * 4 + 2 * 2 * hw * hw * top;
  double prev = top;
  const size_t n = c.block_out_channels.size();
  for (size_t i = 0; i < n; ++i) {
    const double out = static_cast<double>(c.block_out_channels[n - 1 - i]);
    for (int64_t j = 0; j <= c.layers_per_block; ++j) f += resnet(j == 0 ? prev : out, out);
    if (i + 1 < n) {
      hw *= 4;
      f += conv(out, out, 3);
    }
    prev = out;
  }
  return f +
         conv(static_cast<double>(c.block_out_channels[0]), static_cast<double>(c.out_channels), 3);
}

absl::StatusOr<Tensor> postprocess_to_uint8(const Tensor& sample) {
  if (sample.dim() != 4 || !dtype_is_float(sample.dtype())) {
    return absl::InvalidArgumentError(
        absl::StrCat("postprocess: expected a float image [batch, channels, height, width], got ",
                     sample.shape_str(), " ", dtype_name(sample.dtype())));
  }
  FLUX_ASSIGN_OR_RETURN(Tensor x, sample.as_f32());
  const int64_t bsz = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
  Tensor out = Tensor::empty({bsz, x.size(2), x.size(3), c}, DType::kU8);
  const float* xp = x.data<float>();
  uint8_t* op = out.data<uint8_t>();
#pragma omp parallel for collapse(2) if (x.numel() > (1 << 16))
  for (int64_t b = 0; b < bsz; ++b) {
    for (int64_t ch = 0; ch < c; ++ch) {
      const float* src = xp + (b * c + ch) * hw;
      uint8_t* dst = op + b * hw * c + ch;
      for (int64_t i = 0; i < hw; ++i) {
        // denormalize: (x * 0.5 + 0.5).clamp(0, 1); written so NaN lands on 0
        float v = src[i] * 0.5f + 0.5f;
        v = v > 0.0f ? v : 0.0f;
        v = v < 1.0f ? v : 1.0f;
        // numpy: (images * 255).round() -> half to even, which nearbyint does in the default
        // rounding mode.
        dst[i * c] = static_cast<uint8_t>(std::nearbyint(v * 255.0f));
      }
    }
  }
  return out;
}

}  // namespace fluxserve
