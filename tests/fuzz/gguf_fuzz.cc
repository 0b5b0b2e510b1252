// libFuzzer target: the input is a whole GGUF file image, parsed and validated by parse_gguf (the
// function GgufFile::open runs on the mapping). Any input must give a header or an error, never a
// crash, leak or undefined behaviour; an accepted header must only describe bytes inside the input,
// and every decodable tensor it describes must dequantize without touching anything else.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "engine/io/gguf.h"
#include "kernels/common/ggml_decode.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto h = fluxserve::parse_gguf(data, size, "fuzz");
  if (!h.ok()) return 0;
  if (h->data_offset % h->alignment != 0) __builtin_trap();
  std::vector<float> block(256);
  for (const auto& t : h->tensors) {
    if (t.nbytes == 0) continue;
    if (h->data_offset > size || t.offset > size - h->data_offset ||
        t.nbytes > size - h->data_offset - t.offset) {
      __builtin_trap();
    }
    const auto ti = fluxserve::ggml::ggml_type_info(t.type);
    if (!ti.decodable || ti.block_size > 256) continue;
    // Decode at most a few blocks per tensor to keep the fuzzer fast.
    const uint8_t* p = data + h->data_offset + t.offset;
    const uint64_t nblocks = t.nbytes / static_cast<uint64_t>(ti.type_size);
    for (uint64_t b = 0; b < nblocks && b < 4; ++b) {
      fluxserve::ggml::dequantize_block(t.type, p + b * ti.type_size, block.data());
    }
  }
  return 0;
}
