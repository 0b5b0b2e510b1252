// Typed access to a JSON config object (config.json, scheduler_config.json) with errors that name
// the file and field. Unknown fields are ignored (configs written by newer diffusers versions carry
// extra keys); a missing required field or a field of the wrong type is an error.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace fluxserve {

// Parses JSON text without throwing; InvalidArgument naming `what` and the byte position of the
// first error.
absl::StatusOr<nlohmann::json> parse_json(std::string_view text, std::string_view what);

// "integer", "float", "string", "boolean", "array", "object" or "null", for error messages.
const char* json_type_name(const nlohmann::json& j);

class ConfigReader {
 public:
  ConfigReader(const nlohmann::json& j, std::string what) : j_(j), what_(std::move(what)) {}

  // Required when `def` is nullopt. A JSON null counts as absent.
  absl::StatusOr<int64_t> get_int(const std::string& key, std::optional<int64_t> def = {}) const;
  absl::StatusOr<double> get_double(const std::string& key, std::optional<double> def = {}) const;
  absl::StatusOr<bool> get_bool(const std::string& key, std::optional<bool> def = {}) const;
  absl::StatusOr<std::string> get_string(const std::string& key,
                                         std::optional<std::string> def = {}) const;
  absl::StatusOr<std::vector<int64_t>> get_int_list(
      const std::string& key, std::optional<std::vector<int64_t>> def = {}) const;
  bool has(const std::string& key) const;
  const std::string& what() const { return what_; }

 private:
  const nlohmann::json* find(const std::string& key) const;
  const nlohmann::json& j_;
  std::string what_;
};

}  // namespace fluxserve
