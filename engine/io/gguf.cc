#include "engine/io/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace fluxserve {

namespace {

constexpr uint32_t kDefaultAlignment = 32;
constexpr std::string_view kAlignmentKey = "general.alignment";
// Smallest encodings, used to refuse counts the remaining bytes cannot hold before allocating.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;              // empty key, type, 1-byte value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 4 + 8;  // empty name, n_dims 0, type, offset

// Printable form of a name read from a file (may hold any bytes).
std::string printable(std::string_view s) {
  constexpr size_t kMax = 200;
  std::string out = absl::CHexEscape(std::string(s.substr(0, kMax)));
  if (s.size() > kMax) out += "...";
  return out;
}

// Bounds-checked little-endian reader over the file image.
class Cursor {
 public:
  Cursor(const uint8_t* p, size_t n, const std::string& what) : p_(p), n_(n), what_(what) {}
  size_t pos() const { return pos_; }
  size_t remaining() const { return n_ - pos_; }

  // `ctx` says what was being read (for the error message).
  template <class T>
  absl::Status read(T* out, const std::string& ctx) {
    static_assert(std::is_trivially_copyable_v<T>);
    if (remaining() < sizeof(T)) return truncated(sizeof(T), ctx);
    std::memcpy(out, p_ + pos_, sizeof(T));  // the host is little-endian (x86-64, aarch64)
    pos_ += sizeof(T);
    return absl::OkStatus();
  }

  absl::Status read_string(std::string* out, const std::string& ctx) {
    uint64_t len = 0;
    if (absl::Status s = read(&len, absl::StrCat(ctx, " (string length)")); !s.ok()) return s;
    if (len > remaining()) {
      return absl::InvalidArgumentError(absl::StrCat(what_, ": ", ctx, ": string length ", len,
                                                     " at byte ", pos_ - 8,
                                                     " is past the end of "
                                                     "the file (",
                                                     remaining(), " bytes left)"));
    }
    out->assign(reinterpret_cast<const char*>(p_ + pos_), static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    return absl::OkStatus();
  }

  absl::Status truncated(size_t need, const std::string& ctx) const {
    return absl::InvalidArgumentError(absl::StrCat(what_, ": truncated at byte ", pos_, " reading ",
                                                   ctx, " (needs ", need, " bytes, ", remaining(),
                                                   " left)"));
  }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
  const std::string& what_;
};

bool valid_value_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::kF64); }

// Encoded size of a fixed-size value type; 0 for string and array.
uint64_t fixed_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::kU8:
    case GgufValueType::kI8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kU16:
    case GgufValueType::kI16:
      return 2;
    case GgufValueType::kU32:
    case GgufValueType::kI32:
    case GgufValueType::kF32:
      return 4;
    case GgufValueType::kU64:
    case GgufValueType::kI64:
    case GgufValueType::kF64:
      return 8;
    case GgufValueType::kString:
    case GgufValueType::kArray:
      return 0;
  }
  return 0;
}

absl::Status read_scalar(Cursor& c, GgufValueType t, GgufScalar* out, const std::string& ctx) {
  auto get = [&](auto zero) -> absl::Status {
    decltype(zero) v{};
    if (absl::Status s = c.read(&v, ctx); !s.ok()) return s;
    *out = v;
    return absl::OkStatus();
  };
  switch (t) {
    case GgufValueType::kU8:
      return get(uint8_t{});
    case GgufValueType::kI8:
      return get(int8_t{});
    case GgufValueType::kU16:
      return get(uint16_t{});
    case GgufValueType::kI16:
      return get(int16_t{});
    case GgufValueType::kU32:
      return get(uint32_t{});
    case GgufValueType::kI32:
      return get(int32_t{});
    case GgufValueType::kF32:
      return get(float{});
    case GgufValueType::kU64:
      return get(uint64_t{});
    case GgufValueType::kI64:
      return get(int64_t{});
    case GgufValueType::kF64:
      return get(double{});
    case GgufValueType::kBool: {
      uint8_t b = 0;
      if (absl::Status s = c.read(&b, ctx); !s.ok()) return s;
      *out = b != 0;
      return absl::OkStatus();
    }
    case GgufValueType::kString: {
      std::string str;
      if (absl::Status s = c.read_string(&str, ctx); !s.ok()) return s;
      *out = std::move(str);
      return absl::OkStatus();
    }
    case GgufValueType::kArray:
      break;
  }
  return absl::InternalError(absl::StrCat(ctx, ": not a scalar type"));
}

absl::StatusOr<GgufValue> read_value(Cursor& c, const std::string& what, const std::string& key) {
  const std::string ctx = absl::StrCat("key '", key, "'");
  auto bad = [&](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", ctx, ": ", parts...));
  };
  uint32_t type = 0;
  if (absl::Status s = c.read(&type, absl::StrCat(ctx, " (value type)")); !s.ok()) return s;
  if (!valid_value_type(type)) return bad("unknown value type ", type);
  GgufValue v;
  v.type = static_cast<GgufValueType>(type);
  if (v.type != GgufValueType::kArray) {
    if (absl::Status s = read_scalar(c, v.type, &v.scalar, ctx); !s.ok()) return s;
    return v;
  }
  uint32_t elem = 0;
  uint64_t count = 0;
  if (absl::Status s = c.read(&elem, absl::StrCat(ctx, " (array element type)")); !s.ok()) return s;
  if (!valid_value_type(elem)) return bad("unknown array element type ", elem);
  if (elem == static_cast<uint32_t>(GgufValueType::kArray))
    return bad("nested arrays are not supported");
  if (absl::Status s = c.read(&count, absl::StrCat(ctx, " (array length)")); !s.ok()) return s;
  v.array_type = static_cast<GgufValueType>(elem);
  const uint64_t min_elem = v.array_type == GgufValueType::kString ? 8 : fixed_size(v.array_type);
  if (count > c.remaining() / min_elem) {
    return bad("array of ", count, " ", gguf_value_type_name(v.array_type),
               " elements is past the end of the file (", c.remaining(), " bytes left)");
  }
  v.array.reserve(static_cast<size_t>(count));
  for (uint64_t i = 0; i < count; ++i) {
    GgufScalar e;
    if (absl::Status s = read_scalar(c, v.array_type, &e, absl::StrCat(ctx, "[", i, "]"));
        !s.ok()) {
      return s;
    }
    v.array.push_back(std::move(e));
  }
  return v;
}

}  // namespace

const char* gguf_value_type_name(GgufValueType t) {
  switch (t) {
    case GgufValueType::kU8:
      return "u8";
    case GgufValueType::kI8:
      return "i8";
    case GgufValueType::kU16:
      return "u16";
    case GgufValueType::kI16:
      return "i16";
    case GgufValueType::kU32:
      return "u32";
    case GgufValueType::kI32:
      return "i32";
    case GgufValueType::kF32:
      return "f32";
    case GgufValueType::kBool:
      return "bool";
    case GgufValueType::kString:
      return "string";
    case GgufValueType::kArray:
      return "array";
    case GgufValueType::kU64:
      return "u64";
    case GgufValueType::kI64:
      return "i64";
    case GgufValueType::kF64:
      return "f64";
  }
  return "?";
}

// ---- GgufValue ------------------------------------------------------------------------------

std::optional<int64_t> GgufValue::as_int() const {
  if (type == GgufValueType::kArray) return std::nullopt;
  return std::visit(
      [](const auto& x) -> std::optional<int64_t> {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, bool>) {
          return x ? 1 : 0;
        } else if constexpr (std::is_same_v<T, uint64_t>) {
          if (x > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
          return static_cast<int64_t>(x);
        } else if constexpr (std::is_integral_v<T>) {
          return static_cast<int64_t>(x);
        } else {
          return std::nullopt;
        }
      },
      scalar);
}

std::optional<double> GgufValue::as_double() const {
  if (type == GgufValueType::kArray) return std::nullopt;
  return std::visit(
      [](const auto& x) -> std::optional<double> {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) {
          return static_cast<double>(x);
        } else {
          return std::nullopt;
        }
      },
      scalar);
}

const std::string* GgufValue::as_string() const {
  if (type != GgufValueType::kString) return nullptr;
  return std::get_if<std::string>(&scalar);
}

// ---- GgufTensorInfo / GgufHeader ------------------------------------------------------------

Shape GgufTensorInfo::shape() const {
  Shape s;
  for (int i = n_dims - 1; i >= 0; --i) s.push_back(ne[static_cast<size_t>(i)]);
  return s;
}

int64_t GgufTensorInfo::numel() const { return ne[0] * ne[1] * ne[2] * ne[3]; }

uint64_t GgufTensorInfo::row_bytes() const {
  const ggml::GgmlTypeInfo ti = ggml::ggml_type_info(type);
  return static_cast<uint64_t>(ne[0]) / static_cast<uint64_t>(ti.block_size) *
         static_cast<uint64_t>(ti.type_size);
}

const GgufValue* GgufHeader::find_kv(std::string_view key) const {
  for (const auto& [k, v] : metadata) {
    if (k == key) return &v;
  }
  return nullptr;
}

const GgufTensorInfo* GgufHeader::find_tensor(std::string_view name) const {
  auto it = tensor_index.find(name);
  return it == tensor_index.end() ? nullptr : &tensors[it->second];
}

// ---- parser ---------------------------------------------------------------------------------

absl::StatusOr<GgufHeader> parse_gguf(const uint8_t* bytes, size_t size,
                                      std::string_view what_view) {
  const std::string what(what_view);
  auto bad = [&](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", parts...));
  };
  Cursor c(bytes, size, what);
  GgufHeader h;

  if (size < 4 || std::memcmp(bytes, "GGUF", 4) != 0) {
    return bad("not a GGUF file (bad magic ",
               printable(std::string_view(reinterpret_cast<const char*>(bytes),
                                          std::min<size_t>(size, 4))),
               ", expected \"GGUF\")");
  }
  uint32_t magic = 0;
  if (absl::Status s = c.read(&magic, "magic"); !s.ok()) return s;
  if (absl::Status s = c.read(&h.version, "version"); !s.ok()) return s;
  if (h.version != 0 && (h.version & 0xFFFFu) == 0) {
    return bad("GGUF version ", h.version,
               " looks byte-swapped (big-endian file); only "
               "little-endian files are supported");
  }
  if (h.version == 1) return bad("GGUF version 1 is not supported (only versions 2 and 3)");
  if (h.version < 2 || h.version > 3) {
    return bad("unsupported GGUF version ", h.version, " (only versions 2 and 3)");
  }
  uint64_t n_tensors = 0, n_kv = 0;
  if (absl::Status s = c.read(&n_tensors, "tensor count"); !s.ok()) return s;
  if (absl::Status s = c.read(&n_kv, "metadata count"); !s.ok()) return s;
  if (n_kv > c.remaining() / kMinKvBytes) {
    return bad("metadata count ", n_kv, " is more than the file's ", c.remaining(),
               " remaining bytes can hold");
  }
  if (n_tensors > c.remaining() / kMinTensorInfoBytes) {
    return bad("tensor count ", n_tensors, " is more than the file's ", c.remaining(),
               " remaining bytes can hold");
  }

  // ---- metadata
  h.metadata.reserve(static_cast<size_t>(n_kv));
  std::map<std::string, size_t, std::less<>> kv_index;
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key;
    if (absl::Status s = c.read_string(&key, absl::StrCat("metadata key #", i)); !s.ok()) return s;
    const std::string pkey = printable(key);
    auto v = read_value(c, what, pkey);
    if (!v.ok()) return v.status();
    if (!kv_index.emplace(key, h.metadata.size()).second) {
      return bad("duplicate metadata key '", pkey, "'");
    }
    h.metadata.emplace_back(std::move(key), std::move(*v));
  }
  if (const GgufValue* a = h.find_kv(kAlignmentKey); a != nullptr) {
    if (a->type != GgufValueType::kU32) {
      return bad("key '", std::string(kAlignmentKey), "' must be u32, got ",
                 gguf_value_type_name(a->type));
    }
    const uint32_t al = std::get<uint32_t>(a->scalar);
    if (al == 0 || (al & (al - 1)) != 0) {
      return bad("key '", std::string(kAlignmentKey), "' = ", al, " is not a power of two");
    }
    h.alignment = al;
  } else {
    h.alignment = kDefaultAlignment;
  }

  // ---- tensor infos
  h.tensors.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    if (absl::Status s = c.read_string(&t.name, absl::StrCat("tensor info #", i, " name"));
        !s.ok()) {
      return s;
    }
    const std::string pname = printable(t.name);
    const std::string ctx = absl::StrCat("tensor '", pname, "'");
    auto tbad = [&](auto&&... parts) { return bad(ctx, ": ", parts...); };
    uint32_t n_dims = 0;
    if (absl::Status s = c.read(&n_dims, absl::StrCat(ctx, " n_dims")); !s.ok()) return s;
    if (n_dims > 4) return tbad("n_dims ", n_dims, " exceeds the maximum of 4");
    t.n_dims = static_cast<int>(n_dims);
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t ne = 0;
      if (absl::Status s = c.read(&ne, absl::StrCat(ctx, " ne[", d, "]")); !s.ok()) return s;
      if (ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return tbad("ne[", d, "] = ", static_cast<int64_t>(ne), " is negative");
      }
      t.ne[d] = static_cast<int64_t>(ne);
    }
    uint32_t type = 0;
    if (absl::Status s = c.read(&type, absl::StrCat(ctx, " type")); !s.ok()) return s;
    if (absl::Status s = c.read(&t.offset, absl::StrCat(ctx, " offset")); !s.ok()) return s;
    const ggml::GgmlTypeInfo ti = ggml::ggml_type_info(type);
    if (ti.block_size == 0) return tbad("unknown ggml type ", type);
    t.type = static_cast<GgmlType>(type);
    // Element count and byte size, overflow-checked (ggml requires ∏ne to fit in int64).
    int64_t numel = 1;
    for (int d = 0; d < 4; ++d) {
      if (__builtin_mul_overflow(numel, t.ne[d], &numel)) {
        return tbad("shape is too large (element count overflows)");
      }
    }
    if (t.ne[0] % ti.block_size != 0) {
      return tbad("ne[0] = ", t.ne[0], " is not a multiple of the ", ti.name, " block size ",
                  ti.block_size);
    }
    const uint64_t blocks = static_cast<uint64_t>(numel) / static_cast<uint64_t>(ti.block_size);
    if (__builtin_mul_overflow(blocks, static_cast<uint64_t>(ti.type_size), &t.nbytes)) {
      return tbad("shape is too large (byte size overflows)");
    }
    if (!h.tensor_index.emplace(t.name, h.tensors.size()).second) {
      return bad("duplicate tensor name '", pname, "'");
    }
    h.tensors.push_back(std::move(t));
  }

  // ---- data section
  const uint64_t pos = c.pos();
  h.data_offset = (pos + h.alignment - 1) / h.alignment * h.alignment;
  const uint64_t data_size = h.data_offset <= size ? size - h.data_offset : 0;
  for (const GgufTensorInfo& t : h.tensors) {
    const std::string ctx = absl::StrCat("tensor '", printable(t.name), "'");
    if (t.offset % h.alignment != 0) {
      return bad(ctx, ": offset ", t.offset, " is not a multiple of the alignment ", h.alignment);
    }
    if (t.offset > data_size || t.nbytes > data_size - t.offset) {
      return bad(ctx, ": data [", t.offset, ", ", t.offset, " + ", t.nbytes,
                 ") is past the end of the data section (", data_size, " bytes at file offset ",
                 h.data_offset, ", file size ", size, ")");
    }
  }
  std::vector<const GgufTensorInfo*> by_offset;
  by_offset.reserve(h.tensors.size());
  for (const auto& t : h.tensors) {
    if (t.nbytes > 0) by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(), [](const auto* a, const auto* b) {
    return a->offset != b->offset ? a->offset < b->offset : a->nbytes < b->nbytes;
  });
  const GgufTensorInfo* furthest = nullptr;
  for (const GgufTensorInfo* t : by_offset) {
    if (furthest != nullptr && t->offset < furthest->offset + furthest->nbytes) {
      return bad("tensor '", printable(t->name), "' bytes [", t->offset, ", ",
                 t->offset + t->nbytes, ") overlap tensor '", printable(furthest->name),
                 "' bytes [", furthest->offset, ", ", furthest->offset + furthest->nbytes, ")");
    }
    if (furthest == nullptr || t->offset + t->nbytes > furthest->offset + furthest->nbytes) {
      furthest = t;
    }
  }
  return h;
}

// ---- GgufFile -------------------------------------------------------------------------------

GgufFile::~GgufFile() {
  if (map_ != nullptr) munmap(const_cast<uint8_t*>(map_), map_size_);
}

absl::StatusOr<std::shared_ptr<const GgufFile>> GgufFile::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int e = errno;
    std::string msg = absl::StrCat(path, ": cannot open: ", std::strerror(e));
    if (e == ENOENT) return absl::NotFoundError(msg);
    if (e == EACCES) return absl::PermissionDeniedError(msg);
    return absl::UnavailableError(msg);
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    return absl::UnavailableError(absl::StrCat(path, ": cannot stat: ", std::strerror(e)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < 24) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": file of ", size, " bytes is too small for a GGUF header (needs 24)"));
  }
  void* m = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);
  if (m == MAP_FAILED) {
    return absl::UnavailableError(absl::StrCat(path, ": mmap failed: ", std::strerror(map_errno)));
  }
  std::shared_ptr<GgufFile> f(new GgufFile());
  f->path_ = path;
  f->map_ = static_cast<const uint8_t*>(m);
  f->map_size_ = size;
  auto h = parse_gguf(f->map_, size, path);
  if (!h.ok()) return h.status();
  f->header_ = std::move(*h);
  return std::shared_ptr<const GgufFile>(std::move(f));
}

GgufTensorView GgufFile::view(const GgufTensorInfo& info) const {
  return GgufTensorView{&info, map_ + header_.data_offset + info.offset, info.nbytes};
}

absl::StatusOr<GgufTensorView> GgufFile::tensor(std::string_view name) const {
  const GgufTensorInfo* t = header_.find_tensor(name);
  if (t == nullptr) {
    return absl::NotFoundError(absl::StrCat(path_, ": no tensor '", std::string(name), "'"));
  }
  return view(*t);
}

}  // namespace fluxserve
