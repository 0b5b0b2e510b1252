// QuantizedLinearWeight implementations holding bitsandbytes weights as a checkpoint stores them
// (4-bit Params4bit + QuantState, 8-bit Int8Params + SCB), for pre-quantized loading: the stored
// bytes are used as they are, never dequantized and requantized.
#pragma once

#include <memory>

#include "engine/quant/bnb_formats.h"
#include "engine/quant/quantized_linear.h"

namespace fluxserve {

// 4-bit: forward = bnb4_linear (dequantize tiles, then sgemm), as bnb.matmul_4bit on the CPU.
std::shared_ptr<const QuantizedLinearWeight> make_bnb4_linear(Bnb4Weight w);
// LLM.int8: forward = bnb8_linear with the checkpoint config's llm_int8_threshold.
std::shared_ptr<const QuantizedLinearWeight> make_bnb8_linear(Bnb8Weight w, float threshold);

}  // namespace fluxserve
