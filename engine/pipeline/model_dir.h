// Finding a component inside a diffusers pipeline folder. `--model` may name the pipeline root
// (with model_index.json and component subfolders) or a component folder itself.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace fluxserve {

// Returns <model_dir>/<component> when it holds `config_name`, else `model_dir` itself when it
// does; otherwise NotFound naming both places. When model_index.json is present and lists the
// component with a class other than `expected_class` (alternatives separated by '|'), that is an
// error too.
absl::StatusOr<std::string> find_component_dir(const std::string& model_dir,
                                               const std::string& component,
                                               const std::string& config_name,
                                               const std::string& expected_class);

}  // namespace fluxserve
