// Minimal flag parsing for the `fluxserve` subcommands: `--name value` or `--name=value`, each
// subcommand declaring the flags it knows so a typo is an error, not a silently ignored option.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace fluxserve::cli {

class Args {
 public:
  // `known` lists flag names without dashes; `boolean` ones take no value.
  static absl::StatusOr<Args> parse(const std::vector<std::string>& argv,
                                    const std::set<std::string>& known,
                                    const std::set<std::string>& boolean = {});
  bool has(const std::string& name) const { return values_.contains(name); }
  absl::StatusOr<std::string> str(const std::string& name) const;  // required
  std::string str_or(const std::string& name, const std::string& def) const;
  absl::StatusOr<int64_t> int_or(const std::string& name, int64_t def) const;
  absl::StatusOr<double> double_or(const std::string& name, double def) const;
  absl::StatusOr<int64_t> required_int(const std::string& name) const;

 private:
  std::map<std::string, std::string> values_;
};

// Applies --threads (0 = all cores) to OpenMP and OpenBLAS; returns the count in use.
int set_threads(int64_t threads);

}  // namespace fluxserve::cli
