// ImageService requests and results in engine terms: a GenerateRequest checked field by field
// (INVALID_ARGUMENT naming the field) and merged with the model's GenerationDefaults and then
// diffusers' defaults; a finished generation turned into the Result message (PNG images with
// their parameters in text chunks, timings, optional latents).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "engine/pipeline/flux_pipeline.h"
#include "fluxserve/v1/image_service.pb.h"
#include "fluxserve/v1/model_spec.pb.h"

namespace fluxserve::server {

struct RequestLimits {
  int64_t max_prompt_bytes = 16384;
};

// The checks that need no model: prompt sizes, ranges, enums.
absl::Status check_request_fields(const v1::GenerateRequest& req, const RequestLimits& limits);

// check_request_fields, then the request with `defaults` and diffusers' defaults filled in.
// `seed` is used when the request has none.
absl::StatusOr<GenerateRequest> to_engine_request(const v1::GenerateRequest& req,
                                                  const v1::GenerationDefaults& defaults,
                                                  const RequestLimits& limits, uint64_t seed);

// A seed from the system's random source: 32 bits, the range torch's CPU generator uses.
uint64_t random_seed();

struct ResultContext {
  std::string model;
  std::string quantization;
  double queue_seconds = 0;
  double total_seconds = 0;
};

// The Result message. PNGs carry prompt, seed, steps, guidance, size, model and quantization.
absl::StatusOr<v1::Result> build_result(const v1::GenerateRequest& wire, const GenerateRequest& req,
                                        const GenerateResult& res, const ResultContext& ctx);

}  // namespace fluxserve::server
