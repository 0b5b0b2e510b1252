// safetensors files: a validating, mmap-backed reader and a writer.
// Format: 8-byte little-endian header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the data.
// Every header is validated in full before any tensor is handed out, so a corrupt or truncated
// file is an error naming the file and the tensor, never a crash.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/core/tensor.h"

namespace fluxserve {

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  uint64_t begin = 0;  // byte offsets relative to the start of the data section
  uint64_t end = 0;
};

struct SafetensorsHeader {
  std::vector<SafetensorsEntry> entries;  // sorted by name
  std::map<std::string, std::string> metadata;
};

// Validates a header's JSON against a data section of `data_size` bytes: JSON object, known
// dtypes, non-negative shapes, data_offsets inside the data section, (end - begin) equal to
// numel × dtype size, no two tensors overlapping. `what` names the file in error messages.
// Pure function of its inputs (the fuzz target drives it).
absl::StatusOr<SafetensorsHeader> parse_safetensors_header(std::string_view json, uint64_t data_size,
                                                          std::string_view what);

class SafetensorsFile {
 public:
  // mmaps `path` read-only and validates its header (length prefix within the file, header JSON,
  // every entry as in parse_safetensors_header).
  static absl::StatusOr<std::shared_ptr<const SafetensorsFile>> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<SafetensorsEntry>& entries() const { return header_.entries; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  const SafetensorsEntry* find(std::string_view name) const;
  // A zero-copy view of the tensor's bytes (kept alive with the mapping); a copy when the bytes are
  // not aligned to the dtype's size. NotFound (naming file and key) when absent.
  absl::StatusOr<Tensor> get(std::string_view name) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  SafetensorsHeader header_;
  const uint8_t* map_ = nullptr;
  size_t map_size_ = 0;
  const uint8_t* data_ = nullptr;  // start of the data section
  std::weak_ptr<const SafetensorsFile> self_;
};

// Writes tensors (CPU, any dtype) in the given order with optional string metadata. The header is
// padded with spaces to a multiple of 8 bytes, as the reference implementation does. Writes to a
// temporary file and renames it into place.
absl::Status write_safetensors(const std::string& path,
                               const std::vector<std::pair<std::string, Tensor>>& tensors,
                               const std::map<std::string, std::string>& metadata = {});

// Strict UTF-8 (what the header JSON may hold); writers check names before serializing.
bool safetensors_valid_utf8(std::string_view s);

}  // namespace fluxserve
