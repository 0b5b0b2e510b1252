// PNG output through libpng: 8-bit RGB images with tEXt chunks carrying the generation parameters
// (prompt, seed, steps, ...), so an image remembers how it was made.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fluxserve {

struct Image {
  int64_t width = 0, height = 0;
  std::vector<uint8_t> rgb;  // height * width * 3, row-major, HWC
};

using PngText = std::vector<std::pair<std::string, std::string>>;

// Encodes to PNG bytes (for files and for the server's responses).
absl::StatusOr<std::string> encode_png(const Image& image, const PngText& text = {});
// Writes `path` (via a temporary file renamed into place); errors name the path.
absl::Status write_png(const std::string& path, const Image& image, const PngText& text = {});
// Decodes an 8-bit RGB/RGBA/gray PNG into RGB (tests and tools); text chunks into `text`.
absl::StatusOr<Image> decode_png(const std::string& bytes, PngText* text = nullptr);

}  // namespace fluxserve
