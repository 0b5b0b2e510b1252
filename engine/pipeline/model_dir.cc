#include "engine/pipeline/model_dir.h"

#include <algorithm>
#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/core/status.h"
#include "engine/io/checkpoint.h"

namespace fluxserve {

absl::StatusOr<std::string> find_component_dir(const std::string& model_dir,
                                               const std::string& component,
                                               const std::string& config_name,
                                               const std::string& expected_class) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(model_dir, ec)) {
    return absl::NotFoundError(absl::StrCat("model directory '", model_dir, "' does not exist"));
  }
  if (fs::exists(fs::path(model_dir) / "model_index.json", ec)) {
    FLUX_ASSIGN_OR_RETURN(ModelIndex index, read_model_index(model_dir));
    auto it = index.components.find(component);
    const std::vector<std::string> allowed = absl::StrSplit(expected_class, '|');
    if (it != index.components.end() &&
        std::find(allowed.begin(), allowed.end(), it->second.second) == allowed.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          model_dir, "/model_index.json: component '", component, "' is ", it->second.first, ".",
          it->second.second, ", expected ", expected_class));
    }
  }
  const fs::path sub = fs::path(model_dir) / component;
  if (fs::exists(sub / config_name, ec)) return sub.string();
  if (fs::exists(fs::path(model_dir) / config_name, ec)) return model_dir;
  return absl::NotFoundError(absl::StrCat("no ", component, " in '", model_dir, "': looked for ",
                                          (sub / config_name).string(), " and ",
                                          (fs::path(model_dir) / config_name).string()));
}

}  // namespace fluxserve
