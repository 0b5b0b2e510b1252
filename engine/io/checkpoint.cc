#include "engine/io/checkpoint.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/core/status.h"
#include "engine/io/json_util.h"

namespace fluxserve {

namespace fs = std::filesystem;

namespace {

// Weight file names in the order they are looked for: diffusers first, then transformers.
constexpr const char* kIndexNames[] = {"diffusion_pytorch_model.safetensors.index.json",
                                       "model.safetensors.index.json"};
constexpr const char* kSingleNames[] = {"diffusion_pytorch_model.safetensors", "model.safetensors"};

absl::Status open_error(const std::string& path, int e) {
  std::string msg = absl::StrCat(path, ": cannot open: ", std::strerror(e));
  if (e == ENOENT || e == ENOTDIR) return absl::NotFoundError(msg);
  if (e == EACCES) return absl::PermissionDeniedError(msg);
  return absl::UnavailableError(msg);
}

absl::StatusOr<std::string> read_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return open_error(path, errno);
  std::string out;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  const bool failed = std::ferror(f) != 0;
  const int e = errno;
  std::fclose(f);
  if (failed)
    return absl::UnavailableError(absl::StrCat(path, ": read failed: ", std::strerror(e)));
  return out;
}

bool is_regular_file(const std::string& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec);
}

// A shard named by an index must stay inside the component folder.
bool safe_relative_name(const std::string& name) {
  if (name.empty()) return false;
  fs::path p(name);
  if (p.is_absolute()) return false;
  for (const auto& part : p) {
    if (part == "..") return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<nlohmann::json> read_json_file(const std::string& path) {
  FLUX_ASSIGN_OR_RETURN(std::string text, read_file(path));
  return parse_json(text, path);
}

absl::StatusOr<ModelIndex> read_model_index(const std::string& root_dir) {
  const std::string path = (fs::path(root_dir) / "model_index.json").string();
  FLUX_ASSIGN_OR_RETURN(nlohmann::json j, read_json_file(path));
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": must be a JSON object, got ", json_type_name(j)));
  }
  ModelIndex index;
  auto cls = j.find("_class_name");
  if (cls == j.end() || cls->is_null()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": missing required field '_class_name'"));
  }
  if (!cls->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": field '_class_name' must be a string, got ", json_type_name(*cls)));
  }
  index.class_name = cls->get<std::string>();
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    // "_diffusers_version", "_name_or_path", ...: bookkeeping, not components.
    if (!name.empty() && name[0] == '_') continue;
    // Pipelines also register plain options here (e.g. "requires_safety_checker": true).
    if (v.is_null() || v.is_boolean() || v.is_number()) continue;
    if (v.is_array() && v.size() == 2 && v[0].is_null() && v[1].is_null()) continue;
    if (!v.is_array() || v.size() != 2 || !v[0].is_string() || !v[1].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": component '", name, "' must be [library, class] or [null, null], got ",
          v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)));
    }
    index.components.emplace(name,
                             std::make_pair(v[0].get<std::string>(), v[1].get<std::string>()));
  }
  return index;
}

// ---- WeightStore ----------------------------------------------------------------------------

absl::StatusOr<WeightStore> WeightStore::open_dir(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat(dir, ": not a directory (looking for weights)"));
  }
  for (const char* index_name : kIndexNames) {
    const std::string index_path = (fs::path(dir) / index_name).string();
    if (!is_regular_file(index_path)) continue;

    FLUX_ASSIGN_OR_RETURN(nlohmann::json j, read_json_file(index_path));
    if (!j.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": must be a JSON object, got ", json_type_name(j)));
    }
    auto wm = j.find("weight_map");
    if (wm == j.end()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": missing field 'weight_map'"));
    }
    if (!wm->is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(
          index_path, ": field 'weight_map' must be an object, got ", json_type_name(*wm)));
    }
    if (wm->empty()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": 'weight_map' is empty"));
    }
    WeightStore store;
    store.source_ = dir;
    std::map<std::string, size_t> shard_index;  // shard file name -> index in files_
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      const std::string& key = it.key();
      if (!it.value().is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map entry '", key,
                                                       "' must be a file name, got ",
                                                       json_type_name(it.value())));
      }
      const std::string& shard = it.value().get_ref<const std::string&>();
      if (!safe_relative_name(shard)) {
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map entry '", key,
                                                       "' names shard '", shard,
                                                       "' outside the folder"));
      }
      auto [sit, inserted] = shard_index.emplace(shard, store.files_.size());
      if (inserted) {
        const std::string shard_path = (fs::path(dir) / shard).string();
        if (!is_regular_file(shard_path)) {
          return absl::NotFoundError(absl::StrCat("missing shard ", shard_path, " referenced by ",
                                                  index_path, " for key '", key, "'"));
        }
        FLUX_ASSIGN_OR_RETURN(auto file, SafetensorsFile::open(shard_path));
        store.files_.push_back(std::move(file));
      }
      const SafetensorsFile& file = *store.files_[sit->second];
      if (file.find(key) == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": key '", key,
                                                       "' is assigned to shard ", file.path(),
                                                       ", which does not contain it"));
      }
      store.key_to_file_.emplace(key, sit->second);
    }
    return store;
  }
  for (const char* single : kSingleNames) {
    const std::string path = (fs::path(dir) / single).string();
    if (is_regular_file(path)) {
      FLUX_ASSIGN_OR_RETURN(WeightStore store, open_files({path}));
      store.source_ = dir;
      return store;
    }
  }
  // Say what is there instead (typically a variant such as *.fp16.safetensors).
  std::vector<std::string> present;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json")) {
      present.push_back(name);
    }
  }
  std::sort(present.begin(), present.end());
  return absl::NotFoundError(absl::StrCat(
      dir, ": no safetensors weights found (looked for ", kIndexNames[0], ", ", kIndexNames[1],
      ", ", kSingleNames[0], ", ", kSingleNames[1], ")",
      present.empty() ? "" : absl::StrCat("; present: ", absl::StrJoin(present, ", "))));
}

absl::StatusOr<WeightStore> WeightStore::open_files(const std::vector<std::string>& files) {
  if (files.empty()) return absl::InvalidArgumentError("WeightStore::open_files: no files given");
  WeightStore store;
  store.source_ = absl::StrJoin(files, ", ");
  for (const std::string& path : files) {
    FLUX_ASSIGN_OR_RETURN(auto file, SafetensorsFile::open(path));
    const size_t idx = store.files_.size();
    for (const SafetensorsEntry& e : file->entries()) {
      auto [it, inserted] = store.key_to_file_.emplace(e.name, idx);
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor '", e.name, "' is in both ", store.files_[it->second]->path(), " and ", path));
      }
    }
    store.files_.push_back(std::move(file));
  }
  return store;
}

bool WeightStore::contains(std::string_view key) const {
  return key_to_file_.find(key) != key_to_file_.end();
}

absl::StatusOr<Tensor> WeightStore::get(std::string_view key) const {
  auto it = key_to_file_.find(key);
  if (it == key_to_file_.end()) {
    return absl::NotFoundError(
        absl::StrCat("tensor '", std::string(key), "' not found in ", source_));
  }
  return files_[it->second]->get(key);
}

absl::StatusOr<Tensor> WeightStore::get(std::string_view key, const Shape& expected_shape) const {
  auto it = key_to_file_.find(key);
  if (it == key_to_file_.end()) {
    return absl::NotFoundError(
        absl::StrCat("tensor '", std::string(key), "' not found in ", source_));
  }
  const SafetensorsFile& file = *files_[it->second];
  const SafetensorsEntry* e = file.find(key);
  if (e != nullptr && e->shape != expected_shape) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", std::string(key), "' in ", file.path(), ": expected shape ",
                     shape_str(expected_shape), ", got ", shape_str(e->shape)));
  }
  return file.get(key);
}

std::vector<std::string> WeightStore::keys() const {
  std::vector<std::string> out;
  out.reserve(key_to_file_.size());
  for (const auto& [k, idx] : key_to_file_) out.push_back(k);
  return out;
}

std::string WeightStore::file_of(std::string_view key) const {
  auto it = key_to_file_.find(key);
  return it == key_to_file_.end() ? std::string() : files_[it->second]->path();
}

}  // namespace fluxserve
