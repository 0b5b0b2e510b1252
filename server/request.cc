#include "server/request.h"

#include <cmath>
#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"
#include "engine/core/status.h"
#include "engine/pipeline/png.h"
#include "server/config.h"

namespace fluxserve::server {
namespace {

absl::Status bad(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

absl::Status check_range(const char* field, int64_t v, int64_t lo, int64_t hi) {
  if (v < lo || v > hi) {
    return bad(field, absl::StrCat("must be between ", lo, " and ", hi, ", got ", v));
  }
  return absl::OkStatus();
}

absl::Status check_scale(const char* field, float v) {
  if (!std::isfinite(v) || v < 0 || v > 1000) {
    return bad(field, absl::StrCat("must be a finite number between 0 and 1000, got ", v));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status check_request_fields(const v1::GenerateRequest& r, const RequestLimits& limits) {
  auto prompt = [&](const char* field, const std::string& s) {
    if (static_cast<int64_t>(s.size()) > limits.max_prompt_bytes) {
      return bad(field, absl::StrCat("is ", s.size(), " bytes; the limit is ",
                                     limits.max_prompt_bytes, " (--max-prompt-bytes)"));
    }
    return absl::OkStatus();
  };
  FLUX_RETURN_IF_ERROR(prompt("prompt", r.prompt()));
  if (r.has_prompt_2()) FLUX_RETURN_IF_ERROR(prompt("prompt_2", r.prompt_2()));
  if (r.has_negative_prompt()) FLUX_RETURN_IF_ERROR(prompt("negative_prompt", r.negative_prompt()));
  if (r.has_negative_prompt_2()) {
    FLUX_RETURN_IF_ERROR(prompt("negative_prompt_2", r.negative_prompt_2()));
  }
  if (r.has_width()) FLUX_RETURN_IF_ERROR(check_range("width", r.width(), 16, kMaxImageSide));
  if (r.has_height()) FLUX_RETURN_IF_ERROR(check_range("height", r.height(), 16, kMaxImageSide));
  if (r.has_num_inference_steps()) {
    FLUX_RETURN_IF_ERROR(check_range("num_inference_steps", r.num_inference_steps(), 1, kMaxSteps));
  }
  if (r.has_guidance_scale()) FLUX_RETURN_IF_ERROR(check_scale("guidance_scale", r.guidance_scale()));
  if (r.has_true_cfg_scale()) FLUX_RETURN_IF_ERROR(check_scale("true_cfg_scale", r.true_cfg_scale()));
  if (r.has_max_sequence_length()) {
    FLUX_RETURN_IF_ERROR(
        check_range("max_sequence_length", r.max_sequence_length(), 1, kMaxSequenceLength));
  }
  FLUX_RETURN_IF_ERROR(check_range("num_images", r.num_images(), 0, kMaxImagesPerRequest));
  if (r.output_format() != v1::IMAGE_FORMAT_PNG) {
    return bad("output_format", absl::StrCat("unknown format ", static_cast<int>(r.output_format()),
                                             "; only IMAGE_FORMAT_PNG is served"));
  }
  FLUX_RETURN_IF_ERROR(check_range("preview_every_n_steps", r.preview_every_n_steps(), 0, kMaxSteps));
  FLUX_RETURN_IF_ERROR(check_range("priority", r.priority(), -1000, 1000));
  return absl::OkStatus();
}

absl::StatusOr<GenerateRequest> to_engine_request(const v1::GenerateRequest& r,
                                                  const v1::GenerationDefaults& d,
                                                  const RequestLimits& limits, uint64_t seed) {
  FLUX_RETURN_IF_ERROR(check_request_fields(r, limits));
  GenerateRequest g;
  g.prompt = r.prompt();
  if (r.has_prompt_2()) g.prompt_2 = r.prompt_2();
  if (r.has_negative_prompt()) g.negative_prompt = r.negative_prompt();
  if (r.has_negative_prompt_2()) g.negative_prompt_2 = r.negative_prompt_2();
  // Request, then the model's defaults, then diffusers' (already in GenerateRequest).
  if (r.has_width()) g.width = r.width(); else if (d.has_width()) g.width = d.width();
  if (r.has_height()) g.height = r.height(); else if (d.has_height()) g.height = d.height();
  if (r.has_num_inference_steps()) {
    g.num_inference_steps = r.num_inference_steps();
  } else if (d.has_num_inference_steps()) {
    g.num_inference_steps = d.num_inference_steps();
  }
  if (r.has_guidance_scale()) {
    g.guidance_scale = r.guidance_scale();
  } else if (d.has_guidance_scale()) {
    g.guidance_scale = d.guidance_scale();
  }
  if (r.has_true_cfg_scale()) {
    g.true_cfg_scale = r.true_cfg_scale();
  } else if (d.has_true_cfg_scale()) {
    g.true_cfg_scale = d.true_cfg_scale();
  }
  if (r.has_max_sequence_length()) {
    g.max_sequence_length = r.max_sequence_length();
  } else if (d.has_max_sequence_length()) {
    g.max_sequence_length = d.max_sequence_length();
  }
  g.num_images_per_prompt = r.num_images() == 0 ? 1 : r.num_images();
  g.seed = r.has_seed() ? r.seed() : seed;
  return g;
}

uint64_t random_seed() {
  // random_device reads the kernel's entropy source; a fresh one per call keeps this
  // thread-safe without a shared engine.
  std::random_device rd;
  return rd();
}

absl::StatusOr<v1::Result> build_result(const v1::GenerateRequest& wire, const GenerateRequest& req,
                                        const GenerateResult& res, const ResultContext& ctx) {
  v1::Result out;
  PngText text = {{"Software", "fluxserve"},
                  {"prompt", req.prompt},
                  {"seed", absl::StrCat(req.seed)},
                  {"steps", absl::StrCat(req.num_inference_steps)},
                  {"guidance_scale", absl::StrCat(req.guidance_scale)},
                  {"size", absl::StrCat(res.width, "x", res.height)},
                  {"model", ctx.model},
                  {"quantization", ctx.quantization}};
  if (req.prompt_2) text.emplace_back("prompt_2", *req.prompt_2);
  if (req.negative_prompt) {
    text.emplace_back("negative_prompt", *req.negative_prompt);
    text.emplace_back("true_cfg_scale", absl::StrCat(req.true_cfg_scale));
  }
  for (size_t i = 0; i < res.images.size(); ++i) {
    FLUX_ASSIGN_OR_RETURN(std::string png, encode_png(res.images[i], text));
    v1::Image* img = out.add_images();
    img->set_data(std::move(png));
    img->set_mime_type("image/png");
    img->set_width(static_cast<int32_t>(res.images[i].width));
    img->set_height(static_cast<int32_t>(res.images[i].height));
    img->set_seed(req.seed);
    img->set_index(static_cast<int32_t>(i));
  }
  out.set_seed(req.seed);
  out.set_width(static_cast<int32_t>(res.width));
  out.set_height(static_cast<int32_t>(res.height));
  v1::Timings* t = out.mutable_timings();
  t->set_queue_seconds(ctx.queue_seconds);
  t->set_text_encode_seconds(res.encode_s);
  t->set_denoise_seconds(res.denoise_s);
  t->set_decode_seconds(res.decode_s);
  t->set_total_seconds(ctx.total_seconds);
  out.set_model(ctx.model);
  out.set_quantization(ctx.quantization);
  if (wire.return_latents() && res.latents.defined()) {
    FLUX_ASSIGN_OR_RETURN(Tensor f32, res.latents.as_f32());
    v1::Latents* l = out.mutable_latents();
    for (int64_t s : f32.shape()) l->add_shape(s);
    // The host is little endian (x86-64, aarch64), as the field's contract says.
    l->set_data(std::string(static_cast<const char*>(f32.raw()), f32.nbytes()));
  }
  for (const std::string& w : res.warnings) out.add_warnings(w);
  return out;
}

}  // namespace fluxserve::server
