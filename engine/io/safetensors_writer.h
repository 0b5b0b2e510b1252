// A safetensors writer that streams: tensors are handed over one at a time and their bytes go
// straight to a scratch file, so writing a converted model (fluxserve quantize) holds one tensor
// in memory, never the model. finish() writes the header and copies the data after it in the
// order the reference implementation uses (larger dtype alignment first, then by name), so every
// tensor stays aligned for zero-copy mmap reads; the file appears under its name only when
// complete (written to <path>.tmp, then renamed). Costs the file's size twice on disk while
// finishing.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/core/tensor.h"

namespace fluxserve {

class SafetensorsStreamWriter {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsStreamWriter>> create(const std::string& path);
  ~SafetensorsStreamWriter();  // an unfinished writer removes its scratch files
  SafetensorsStreamWriter(const SafetensorsStreamWriter&) = delete;
  SafetensorsStreamWriter& operator=(const SafetensorsStreamWriter&) = delete;

  // Appends `t` (a CPU tensor of any dtype) under `name`: InvalidArgument for a duplicate,
  // reserved ("__metadata__") or non-UTF-8 name, Unavailable for an I/O error.
  absl::Status add(const std::string& name, const Tensor& t);
  // Writes the file with `metadata` (e.g. {"format": "pt"}) and removes the scratch file.
  absl::Status finish(const std::map<std::string, std::string>& metadata = {});

  int64_t data_bytes() const { return static_cast<int64_t>(scratch_size_); }
  const std::string& path() const { return path_; }

 private:
  SafetensorsStreamWriter() = default;
  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    uint64_t offset;  // in the scratch file
    uint64_t nbytes;
  };
  std::string path_, scratch_path_;
  std::FILE* scratch_ = nullptr;
  uint64_t scratch_size_ = 0;
  std::vector<Entry> entries_;
  std::set<std::string> names_;
  bool finished_ = false;
};

}  // namespace fluxserve
