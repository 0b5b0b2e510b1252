#include "engine/io/safetensors_writer.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "engine/io/safetensors.h"
#include "nlohmann/json.hpp"

namespace fluxserve {
namespace {

std::string errno_str(int e) { return std::strerror(e); }

}  // namespace

absl::StatusOr<std::unique_ptr<SafetensorsStreamWriter>> SafetensorsStreamWriter::create(
    const std::string& path) {
  auto w = std::unique_ptr<SafetensorsStreamWriter>(new SafetensorsStreamWriter());
  w->path_ = path;
  w->scratch_path_ = path + ".data.tmp";
  w->scratch_ = std::fopen(w->scratch_path_.c_str(), "w+b");
  if (w->scratch_ == nullptr) {
    const int e = errno;
    return absl::UnavailableError(
        absl::StrCat(path, ": cannot create ", w->scratch_path_, ": ", errno_str(e)));
  }
  return w;
}

SafetensorsStreamWriter::~SafetensorsStreamWriter() {
  if (scratch_ != nullptr) std::fclose(scratch_);
  if (!finished_ && !scratch_path_.empty()) std::remove(scratch_path_.c_str());
}

absl::Status SafetensorsStreamWriter::add(const std::string& name, const Tensor& t) {
  auto bad = [&](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": ", parts...));
  };
  if (finished_ || scratch_ == nullptr) return absl::FailedPreconditionError(absl::StrCat(path_, ": already finished"));
  if (name == "__metadata__") return bad("tensor name '", name, "' is reserved");
  if (!safetensors_valid_utf8(name)) {
    return bad("tensor name '", absl::CHexEscape(name), "' is not valid UTF-8");
  }
  if (names_.contains(name)) return bad("duplicate tensor name '", name, "'");
  if (t.device().type != DeviceType::kCPU) {
    return bad("tensor '", name, "' is on ", t.device().str(), "; only CPU tensors can be written");
  }
  if (t.nbytes() > 0 && t.raw() == nullptr) return bad("tensor '", name, "' has no data");
  if (t.nbytes() > 0 && std::fwrite(t.raw(), 1, t.nbytes(), scratch_) != t.nbytes()) {
    const int e = errno;
    return absl::UnavailableError(
        absl::StrCat(path_, ": writing '", name, "' to ", scratch_path_, ": ", errno_str(e)));
  }
  names_.insert(name);
  entries_.push_back({name, t.dtype(), t.shape(), scratch_size_, t.nbytes()});
  scratch_size_ += t.nbytes();
  return absl::OkStatus();
}

absl::Status SafetensorsStreamWriter::finish(const std::map<std::string, std::string>& metadata) {
  if (finished_ || scratch_ == nullptr) return absl::FailedPreconditionError(absl::StrCat(path_, ": already finished"));
  for (const auto& [k, v] : metadata) {
    if (!safetensors_valid_utf8(k) || !safetensors_valid_utf8(v)) {
      return absl::InvalidArgumentError(absl::StrCat(path_, ": metadata entry '",
                                                     absl::CHexEscape(k), "' is not valid UTF-8"));
    }
  }
  std::vector<const Entry*> order;
  for (const Entry& e : entries_) order.push_back(&e);
  std::stable_sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    const size_t sa = dtype_size(a->dtype), sb = dtype_size(b->dtype);
    return sa != sb ? sa > sb : a->name < b->name;
  });
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json md = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) md[k] = v;
    header["__metadata__"] = std::move(md);
  }
  uint64_t offset = 0;
  for (const Entry* e : order) {
    nlohmann::ordered_json j = nlohmann::ordered_json::object();
    j["dtype"] = std::string(safetensors_dtype_name(e->dtype));
    j["shape"] = e->shape;
    j["data_offsets"] = {offset, offset + e->nbytes};
    header[e->name] = std::move(j);
    offset += e->nbytes;
  }
  std::string json = header.dump();
  json.append((8 - json.size() % 8) % 8, ' ');
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) {
    len[i] = static_cast<uint8_t>(static_cast<uint64_t>(json.size()) >> (8 * i));
  }

  const std::string tmp = path_ + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) {
    const int e = errno;
    return absl::UnavailableError(absl::StrCat(path_, ": cannot create ", tmp, ": ", errno_str(e)));
  }
  bool ok = std::fflush(scratch_) == 0 && std::fwrite(len, 1, 8, f) == 8 &&
            std::fwrite(json.data(), 1, json.size(), f) == json.size();
  std::vector<char> buf(size_t{8} << 20);
  for (size_t i = 0; ok && i < order.size(); ++i) {
    ok = std::fseek(scratch_, static_cast<long>(order[i]->offset), SEEK_SET) == 0;
    uint64_t left = order[i]->nbytes;
    while (ok && left > 0) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(left, buf.size()));
      ok = std::fread(buf.data(), 1, n, scratch_) == n && std::fwrite(buf.data(), 1, n, f) == n;
      left -= n;
    }
  }
  int write_errno = ok ? 0 : errno;
  if (std::fclose(f) != 0 && ok) {
    ok = false;
    write_errno = errno;
  }
  if (!ok) {
    std::remove(tmp.c_str());
    return absl::UnavailableError(
        absl::StrCat(path_, ": writing ", tmp, " failed: ", errno_str(write_errno)));
  }
  if (std::rename(tmp.c_str(), path_.c_str()) != 0) {
    const int e = errno;
    std::remove(tmp.c_str());
    return absl::UnavailableError(absl::StrCat(path_, ": rename from ", tmp, ": ", errno_str(e)));
  }
  std::fclose(scratch_);
  scratch_ = nullptr;
  std::remove(scratch_path_.c_str());
  finished_ = true;
  return absl::OkStatus();
}

}  // namespace fluxserve
