// FLUX transformer GGUF files (city96 and friends) keep the original BFL tensor names
// (`double_blocks.N.img_attn.qkv.weight`, `single_blocks.N.linear1.weight`, ...). This maps them to
// the diffusers FluxTransformer2DModel keys exactly as diffusers'
// convert_flux_transformer_checkpoint_to_diffusers (loaders/single_file_utils.py) does: renames,
// the fused qkv chunked in 3 along dim 0, linear1 split (D, D, D, mlp) along dim 0, and
// final_layer.adaLN_modulation.1 with its two halves swapped ([shift; scale] -> [scale; shift]).
//
// Every split is along dim 0 in torch order, i.e. along ne[1] of a 2-D weight: whole rows, each an
// independent run of ne[0] / block_size blocks, so a row range of a quantized weight is a plain
// byte range (rows × row_bytes) and stays quantized. 1-D tensors (biases) are split along ne[0];
// that is a byte range only for plain types or at block boundaries (checked: city96 files store
// them as F32).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/core/tensor.h"
#include "engine/io/gguf.h"

namespace fluxserve {

struct RowRange {
  int64_t begin = 0;
  int64_t count = 0;
};

// Where one diffusers tensor comes from: rows of one GGUF tensor, concatenated in `rows` order.
struct FluxGgufSource {
  std::string gguf_name;                 // the tensor's name in the file (prefix included, if any)
  const GgufTensorInfo* info = nullptr;  // into the tensor list given to map_flux_gguf
  std::vector<RowRange> rows;  // along dim 0 (torch order); one range unless halves are swapped
  Shape shape;                 // the diffusers tensor's shape (torch order)
};

struct FluxGgufMapping {
  std::map<std::string, FluxGgufSource> tensors;  // by diffusers key
  int num_layers = 0;                             // double blocks
  int num_single_layers = 0;
  int64_t inner_dim = 0;            // D (3072 for FLUX.1; inferred from img_in.weight)
  int64_t mlp_hidden_dim = 0;       // linear1 rows - 3D (12288 for FLUX.1)
  bool has_guidance = false;        // guidance_in.* present (dev) or not (schnell)
  std::vector<std::string> unused;  // GGUF tensors no diffusers key reads
};

// Maps a FLUX transformer's GGUF tensors (BFL names, optionally prefixed "model.diffusion_model.")
// to diffusers keys. Errors name `what` and the missing or misshapen tensor. `tensors` must
// outlive the result (FluxGgufSource::info points into it).
absl::StatusOr<FluxGgufMapping> map_flux_gguf(const std::vector<GgufTensorInfo>& tensors,
                                              std::string_view what);

// The raw bytes of rows [r.begin, r.begin + r.count) of a GGUF tensor (see the header comment).
struct ByteRange {
  uint64_t offset = 0;  // relative to the tensor's first byte
  uint64_t size = 0;
};
absl::StatusOr<ByteRange> gguf_row_bytes(const GgufTensorInfo& info, RowRange r);

// Dequantizes one mapped tensor from `file` to f32 in its diffusers shape.
absl::StatusOr<Tensor> dequantize_flux_gguf_tensor(const GgufFile& file, const FluxGgufSource& src);

}  // namespace fluxserve
