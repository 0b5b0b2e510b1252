// libFuzzer target: the input is a whole safetensors file image. The 8-byte length prefix picks
// the header bytes (clipped to what is there) and the rest is the data section, so the fuzzer
// explores both the JSON grammar and the offset/shape arithmetic. Any input must give a value or
// an error, never a crash, leak or undefined behaviour.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "engine/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 8) return 0;
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
  const size_t available = size - 8;
  const size_t header_len = n < available ? static_cast<size_t>(n) : available;
  const std::string_view header(reinterpret_cast<const char*>(data + 8), header_len);
  auto h = fluxserve::parse_safetensors_header(header, available - header_len, "fuzz");
  if (h.ok()) {
    // Whatever was accepted must describe ranges inside the data section.
    for (const auto& e : h->entries) {
      if (e.begin > e.end || e.end > available - header_len) __builtin_trap();
    }
  }
  return 0;
}
