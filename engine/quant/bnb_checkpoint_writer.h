// Writes a model component in the bitsandbytes serialization that diffusers'
// save_pretrained produces for a model loaded with BitsAndBytesConfig (see bnb_checkpoint.h for the
// layout): the same keys, dtypes, shapes and bytes, and config.json with the
// quantization_config BitsAndBytesConfig.to_dict() gives. Streams tensor by tensor from the mapped
// source (one quantized layer in memory at a time). `fluxserve quantize` is built on it.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "engine/quant/quant_config.h"

namespace fluxserve {

struct BnbWriteStats {
  int quantized_layers = 0;
  int64_t source_bytes = 0;  // tensor bytes read
  int64_t output_bytes = 0;  // tensor bytes written
};

// Quantizes the FluxTransformer2DModel in `src_dir` (config.json + safetensors, single or sharded)
// into `dst_dir` (created; must not hold a config.json yet) as from_pretrained(src,
// quantization_config=cfg, torch_dtype=<the stored dtype>).save_pretrained(dst) does: every
// nn.Linear weight (the 2-D `.weight` tensors: FLUX has no other 2-D weights) that
// llm_int8_skip_modules does not exempt is quantized; every other tensor is copied as stored.
// `cfg` must be a bitsandbytes config; a source that is already quantized is FailedPrecondition.
absl::StatusOr<BnbWriteStats> write_bnb_transformer(const std::string& src_dir,
                                                    const std::string& dst_dir,
                                                    const ComponentQuantConfig& cfg);

}  // namespace fluxserve
