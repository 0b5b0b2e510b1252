// GGUF files (ggml's container, as city96's FLUX GGUF checkpoints use): a validating, mmap-backed
// reader of versions 2 and 3. Layout: "GGUF", u32 version, u64 n_tensors, u64 n_kv, n_kv metadata
// key/values, n_tensors tensor infos {name, n_dims, ne[n_dims], ggml type, offset}, padding to
// general.alignment (default 32), then the data section. Everything is validated before a tensor
// is handed out (counts and lengths against the bytes present, overflow-safe sizes, known ggml
// types, whole blocks along ne[0], data inside the file, no duplicates, no overlaps); a bad file is
// an error naming the file and the key or tensor, never a crash.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/core/tensor.h"
#include "kernels/common/ggml_decode.h"

namespace fluxserve {

using ggml::GgmlType;

enum class GgufValueType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};
const char* gguf_value_type_name(GgufValueType t);

// One scalar of any GGUF value type (the alternative matches the type; bool is stored as a byte,
// nonzero meaning true, as ggml reads it).
using GgufScalar = std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float, bool,
                                std::string, uint64_t, int64_t, double>;

struct GgufValue {
  GgufValueType type = GgufValueType::kU8;
  GgufScalar scalar;                              // when type != kArray
  GgufValueType array_type = GgufValueType::kU8;  // when type == kArray (never kArray: ggml
  std::vector<GgufScalar> array;                  // refuses nested arrays, and so do we)

  // Integer value of an integer-typed (or bool) scalar; nullopt otherwise or when it does not fit.
  std::optional<int64_t> as_int() const;
  // Any numeric scalar as a double; nullopt otherwise.
  std::optional<double> as_double() const;
  // The string of a string scalar; nullptr otherwise.
  const std::string* as_string() const;
};

struct GgufTensorInfo {
  std::string name;
  GgmlType type = GgmlType::kF32;
  int n_dims = 0;
  std::array<int64_t, 4> ne{1, 1, 1, 1};  // ggml order: ne[0] is the contiguous dimension
  uint64_t offset = 0;                    // relative to the data section
  uint64_t nbytes = 0;                    // ∏ne / block_size × type_size
  // Torch order: reversed ne[0..n_dims), e.g. a Linear weight ne = {K, N} -> [N, K].
  Shape shape() const;
  int64_t numel() const;
  // Bytes of one row of ne[0] elements (row r of a [.., N, K] tensor starts at r × row_bytes()).
  uint64_t row_bytes() const;
};

struct GgufHeader {
  uint32_t version = 3;
  uint32_t alignment = 32;
  uint64_t data_offset = 0;  // file offset of the data section (a multiple of alignment)
  std::vector<std::pair<std::string, GgufValue>> metadata;  // file order
  std::vector<GgufTensorInfo> tensors;                      // file order
  std::map<std::string, size_t, std::less<>> tensor_index;  // name -> position in `tensors`

  const GgufValue* find_kv(std::string_view key) const;
  const GgufTensorInfo* find_tensor(std::string_view name) const;
};

// Parses and validates the header of a whole GGUF file image `bytes` (the data section included:
// every tensor must lie inside it). `what` names the file in error messages. Pure function of its
// inputs (the fuzz target drives it).
absl::StatusOr<GgufHeader> parse_gguf(const uint8_t* bytes, size_t size, std::string_view what);

// A tensor's raw bytes inside the mapping (alive as long as the GgufFile is).
struct GgufTensorView {
  const GgufTensorInfo* info = nullptr;
  const uint8_t* data = nullptr;
  uint64_t nbytes = 0;
  GgmlType type() const { return info->type; }
  Shape shape() const { return info->shape(); }
  const std::string& name() const { return info->name; }
};

class GgufFile {
 public:
  // mmaps `path` read-only and validates it with parse_gguf.
  static absl::StatusOr<std::shared_ptr<const GgufFile>> open(const std::string& path);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  const GgufHeader& header() const { return header_; }
  const std::vector<GgufTensorInfo>& tensors() const { return header_.tensors; }
  const GgufValue* find_kv(std::string_view key) const { return header_.find_kv(key); }
  // Zero-copy view; NotFound (naming file and tensor) when absent.
  absl::StatusOr<GgufTensorView> tensor(std::string_view name) const;
  GgufTensorView view(const GgufTensorInfo& info) const;

 private:
  GgufFile() = default;
  std::string path_;
  GgufHeader header_;
  const uint8_t* map_ = nullptr;
  size_t map_size_ = 0;
};

}  // namespace fluxserve
