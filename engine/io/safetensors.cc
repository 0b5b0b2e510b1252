#include "engine/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "engine/core/check.h"
#include "engine/core/status.h"
#include "engine/io/json_util.h"
#include "nlohmann/json.hpp"

namespace fluxserve {

namespace {

// The reference implementation refuses headers above 100 MB; so do we, before parsing.
constexpr uint64_t kMaxHeaderSize = 100'000'000;
constexpr std::string_view kMetadataKey = "__metadata__";

std::string errno_str(int e) { return std::strerror(e); }

// Non-negative JSON integer -> uint64.
std::optional<uint64_t> as_u64(const nlohmann::json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0)
    return static_cast<uint64_t>(v.get<int64_t>());
  return std::nullopt;
}

absl::StatusOr<SafetensorsEntry> parse_entry(const std::string& name, const nlohmann::json& v,
                                             uint64_t data_size, const std::string& what) {
  auto bad = [&](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": tensor '", name, "': ", parts...));
  };
  if (!v.is_object()) return bad("entry must be an object, got ", json_type_name(v));
  const nlohmann::json* dtype = nullptr;
  const nlohmann::json* shape = nullptr;
  const nlohmann::json* offsets = nullptr;
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (it.key() == "dtype") {
      dtype = &it.value();
    } else if (it.key() == "shape") {
      shape = &it.value();
    } else if (it.key() == "data_offsets") {
      offsets = &it.value();
    } else {
      return bad("unknown field '", it.key(), "'");
    }
  }
  if (dtype == nullptr) return bad("missing field 'dtype'");
  if (shape == nullptr) return bad("missing field 'shape'");
  if (offsets == nullptr) return bad("missing field 'data_offsets'");

  SafetensorsEntry e;
  e.name = name;
  if (!dtype->is_string()) return bad("'dtype' must be a string, got ", json_type_name(*dtype));
  const std::string& dt = dtype->get_ref<const std::string&>();
  auto parsed_dt = dtype_from_safetensors(dt);
  if (!parsed_dt) return bad("unknown dtype '", dt, "'");
  e.dtype = *parsed_dt;

  if (!shape->is_array()) return bad("'shape' must be an array, got ", json_type_name(*shape));
  // Every prefix product must fit in int64 (Tensor multiplies dims in int64), as the reference
  // implementation's checked product does.
  uint64_t numel = 1;
  e.shape.reserve(shape->size());
  for (size_t i = 0; i < shape->size(); ++i) {
    const nlohmann::json& d = (*shape)[i];
    if (d.is_number_integer() && !d.is_number_unsigned() && d.get<int64_t>() < 0) {
      return bad("negative dimension ", d.get<int64_t>(), " at shape index ", i);
    }
    auto u = as_u64(d);
    if (!u) return bad("shape[", i, "] must be a non-negative integer, got ", json_type_name(d));
    if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
        __builtin_mul_overflow(numel, *u, &numel) ||
        numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return bad("shape is too large (element count overflows)");
    }
    e.shape.push_back(static_cast<int64_t>(*u));
  }
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(e.dtype)), &nbytes)) {
    return bad("shape is too large (byte size overflows)");
  }

  if (!offsets->is_array() || offsets->size() != 2) {
    return bad("'data_offsets' must be an array [begin, end]");
  }
  auto b = as_u64((*offsets)[0]);
  auto en = as_u64((*offsets)[1]);
  if (!b || !en) return bad("'data_offsets' must hold two non-negative integers");
  e.begin = *b;
  e.end = *en;
  if (e.begin > e.end) return bad("data_offsets begin ", e.begin, " > end ", e.end);
  if (e.end > data_size) {
    return bad("data_offsets end ", e.end, " is past the end of the data section (", data_size,
               " bytes)");
  }
  if (e.end - e.begin != nbytes) {
    return bad("data_offsets span ", e.end - e.begin, " bytes but shape ", shape_str(e.shape),
               " of ", std::string(safetensors_dtype_name(e.dtype)), " needs ", nbytes);
  }
  return e;
}

absl::StatusOr<std::map<std::string, std::string>> parse_metadata(const nlohmann::json& v,
                                                                  const std::string& what) {
  std::map<std::string, std::string> out;
  if (v.is_null()) return out;
  if (!v.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": '__metadata__' must be an object, got ", json_type_name(v)));
  }
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (!it.value().is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": '__metadata__' field '", it.key(),
                                                     "' must be a string, got ",
                                                     json_type_name(it.value())));
    }
    out.emplace(it.key(), it.value().get<std::string>());
  }
  return out;
}

// Strict UTF-8 check (no overlong forms, no surrogates, nothing above U+10FFFF): the JSON writer
// refuses anything else, and by exception, so names are checked before they reach it.
bool valid_utf8(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c < 0x80) {
      ++i;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return false;
    }
    if (i + len > n) return false;
    const unsigned char c1 = static_cast<unsigned char>(s[i + 1]);
    if (c1 < lo || c1 > hi) return false;
    for (size_t k = 2; k < len; ++k) {
      const unsigned char ck = static_cast<unsigned char>(s[i + k]);
      if (ck < 0x80 || ck > 0xBF) return false;
    }
    i += len;
  }
  return true;
}

}  // namespace

absl::StatusOr<SafetensorsHeader> parse_safetensors_header(std::string_view json,
                                                           uint64_t data_size,
                                                           std::string_view what_view) {
  const std::string what(what_view);  // absl may not take std::string_view
  if (json.size() > kMaxHeaderSize) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": header of ", json.size(),
                                                   " bytes exceeds the limit of ", kMaxHeaderSize));
  }
  FLUX_ASSIGN_OR_RETURN(nlohmann::json j, parse_json(json, absl::StrCat(what, ": header")));
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": header must be a JSON object, got ", json_type_name(j)));
  }
  SafetensorsHeader h;
  h.entries.reserve(j.size());
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == kMetadataKey) {
      FLUX_ASSIGN_OR_RETURN(h.metadata, parse_metadata(it.value(), what));
      continue;
    }
    FLUX_ASSIGN_OR_RETURN(SafetensorsEntry e, parse_entry(it.key(), it.value(), data_size, what));
    h.entries.push_back(std::move(e));
  }

  // Overlap check on the byte ranges, in offset order.
  std::vector<const SafetensorsEntry*> by_offset;
  by_offset.reserve(h.entries.size());
  for (const auto& e : h.entries) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const auto* a, const auto* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  const SafetensorsEntry* furthest = nullptr;  // the range reaching furthest so far
  for (const SafetensorsEntry* e : by_offset) {
    if (furthest != nullptr && e->begin < furthest->end) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": tensor '", e->name, "' bytes [", e->begin, ", ", e->end, ") overlap tensor '",
          furthest->name, "' bytes [", furthest->begin, ", ", furthest->end, ")"));
    }
    if (furthest == nullptr || e->end > furthest->end) furthest = e;
  }

  // nlohmann objects iterate in key order already; sort anyway so the contract does not depend on
  // the JSON library's container.
  std::sort(h.entries.begin(), h.entries.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });
  return h;
}

// ---- SafetensorsFile ------------------------------------------------------------------------

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) munmap(const_cast<uint8_t*>(map_), map_size_);
}

absl::StatusOr<std::shared_ptr<const SafetensorsFile>> SafetensorsFile::open(
    const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int e = errno;
    std::string msg = absl::StrCat(path, ": cannot open: ", errno_str(e));
    if (e == ENOENT) return absl::NotFoundError(msg);
    if (e == EACCES) return absl::PermissionDeniedError(msg);
    return absl::UnavailableError(msg);
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    return absl::UnavailableError(absl::StrCat(path, ": cannot stat: ", errno_str(e)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": file of ", size, " bytes is too small for a safetensors header (needs 8)"));
  }
  void* m = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);
  if (m == MAP_FAILED) {
    return absl::UnavailableError(absl::StrCat(path, ": mmap failed: ", errno_str(map_errno)));
  }
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->map_ = static_cast<const uint8_t*>(m);
  f->map_size_ = size;
  f->self_ = f;

  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | f->map_[i];
  if (n > size - 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header length ", n, " past end of file (size ", size, ")"));
  }
  const std::string_view json(reinterpret_cast<const char*>(f->map_ + 8), n);
  FLUX_ASSIGN_OR_RETURN(f->header_, parse_safetensors_header(json, size - 8 - n, path));
  f->data_ = f->map_ + 8 + n;
  return std::shared_ptr<const SafetensorsFile>(std::move(f));
}

const SafetensorsEntry* SafetensorsFile::find(std::string_view name) const {
  auto it =
      std::lower_bound(header_.entries.begin(), header_.entries.end(), name,
                       [](const SafetensorsEntry& e, std::string_view n) { return e.name < n; });
  if (it == header_.entries.end() || it->name != name) return nullptr;
  return &*it;
}

absl::StatusOr<Tensor> SafetensorsFile::get(std::string_view name) const {
  const SafetensorsEntry* e = find(name);
  if (e == nullptr) {
    return absl::NotFoundError(absl::StrCat(path_, ": no tensor '", std::string(name), "'"));
  }
  const uint8_t* p = data_ + e->begin;
  if (reinterpret_cast<uintptr_t>(p) % dtype_size(e->dtype) == 0) {
    std::shared_ptr<const SafetensorsFile> self = self_.lock();
    FLUX_CHECK(self != nullptr) << "SafetensorsFile not owned by a shared_ptr";
    // Aliasing constructor: the tensor's owner keeps the whole mapping alive.
    return Tensor::view_of(p, e->shape, e->dtype, std::shared_ptr<const void>(self, p));
  }
  Tensor t = Tensor::empty(e->shape, e->dtype);
  if (e->end > e->begin) std::memcpy(t.raw(), p, e->end - e->begin);
  return t;
}

// ---- writer ---------------------------------------------------------------------------------

absl::Status write_safetensors(const std::string& path,
                               const std::vector<std::pair<std::string, Tensor>>& tensors,
                               const std::map<std::string, std::string>& metadata) {
  auto bad = [&](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("write_safetensors ", path, ": ", parts...));
  };
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json md = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) {
      if (!valid_utf8(k) || !valid_utf8(v)) {
        return bad("metadata entry '", absl::CHexEscape(k), "' is not valid UTF-8");
      }
      md[k] = v;
    }
    header[std::string(kMetadataKey)] = std::move(md);
  }
  std::set<std::string_view> seen;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name == kMetadataKey) return bad("tensor name '", name, "' is reserved");
    if (!seen.insert(name).second) return bad("duplicate tensor name '", name, "'");
    if (!valid_utf8(name)) {
      return bad("tensor name '", absl::CHexEscape(name), "' is not valid UTF-8");
    }
    if (t.device().type != DeviceType::kCPU) {
      return bad("tensor '", name, "' is on ", t.device().str(),
                 "; only CPU tensors can be written");
    }
    if (t.nbytes() > 0 && t.raw() == nullptr) return bad("tensor '", name, "' has no data");
    for (int64_t d : t.shape()) {
      if (d < 0) return bad("tensor '", name, "' has negative shape ", t.shape_str());
    }
    nlohmann::ordered_json e = nlohmann::ordered_json::object();
    e["dtype"] = std::string(safetensors_dtype_name(t.dtype()));
    e["shape"] = t.shape();
    e["data_offsets"] = {offset, offset + t.nbytes()};
    header[name] = std::move(e);
    offset += t.nbytes();
  }
  std::string json = header.dump();
  json.append((8 - json.size() % 8) % 8, ' ');
  uint8_t len[8];
  for (int i = 0; i < 8; ++i)
    len[i] = static_cast<uint8_t>(static_cast<uint64_t>(json.size()) >> (8 * i));

  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) {
    const int e = errno;
    return absl::UnavailableError(
        absl::StrCat("write_safetensors ", path, ": cannot create ", tmp, ": ", errno_str(e)));
  }
  bool ok =
      std::fwrite(len, 1, 8, f) == 8 && std::fwrite(json.data(), 1, json.size(), f) == json.size();
  for (size_t i = 0; ok && i < tensors.size(); ++i) {
    const Tensor& t = tensors[i].second;
    if (t.nbytes() > 0) ok = std::fwrite(t.raw(), 1, t.nbytes(), f) == t.nbytes();
  }
  int write_errno = ok ? 0 : errno;
  if (std::fclose(f) != 0 && ok) {
    ok = false;
    write_errno = errno;
  }
  if (!ok) {
    std::remove(tmp.c_str());
    return absl::UnavailableError(absl::StrCat("write_safetensors ", path, ": write to ", tmp,
                                               " failed: ", errno_str(write_errno)));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    std::remove(tmp.c_str());
    return absl::UnavailableError(
        absl::StrCat("write_safetensors ", path, ": rename from ", tmp, " failed: ", errno_str(e)));
  }
  return absl::OkStatus();
}

bool safetensors_valid_utf8(std::string_view s) { return valid_utf8(s); }

}  // namespace fluxserve
