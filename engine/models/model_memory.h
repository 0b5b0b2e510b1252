// Bytes a loaded model holds, walked tensor by tensor, for FluxPipeline::memory() and
// `fluxserve inspect`. Each model feeds its tensors (weights, biases, norms, quantized states) to
// a MemoryTally; a buffer seen twice (views of one allocation, one quantized weight shared by two
// layers) is counted once.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "engine/core/tensor.h"
#include "engine/models/weights.h"

namespace fluxserve {

struct ModelMemory {
  int64_t bytes = 0;         // every buffer the model's tensors hold, each counted once
  int quantized_layers = 0;  // upstream nn.Linear modules held in a quantized format
  int total_layers = 0;      // upstream nn.Linear modules (a stacked q|k|v counts 3)
  // What the weights are stored as, largest share first: "bf16", or
  // "bitsandbytes nf4 (double quant) + bf16" when mixed. Biases and norm vectors (f32 for
  // numerics, small) are counted in `bytes` but do not make a format.
  std::string format;
  std::map<std::string, int64_t> bytes_by_format;  // the weights' bytes per format
};

class MemoryTally {
 public:
  // A weight-like tensor (embedding table, conv kernel): counted and named in the format.
  void weight(const Tensor& t);
  // A bias or norm vector / small table: counted only.
  void aux(const Tensor& t);
  // A Linear standing for the upstream modules `modules` (its parts when stacked): its weight in
  // whatever form it has (dense, quantized, or parts of both) and its bias.
  void linear(const Linear& l, int modules);
  ModelMemory finish() const;

 private:
  // Adds the bytes of [p, p + n) not covered yet; returns how many were new.
  int64_t cover(const void* p, int64_t n);
  void add_quantized(const QuantizedLinearWeight* q);

  std::map<uintptr_t, uintptr_t> covered_;  // start -> end, disjoint
  std::set<const QuantizedLinearWeight*> quantized_seen_;
  ModelMemory m_;
};

// "f32", "bf16", "f16", or the dtype's full name for the rest.
std::string short_dtype_name(DType t);

}  // namespace fluxserve
