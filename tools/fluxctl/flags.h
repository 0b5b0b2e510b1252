// Flag parsing for fluxctl: `--name value` or `--name=value`, each command declaring the flags it
// knows so a typo is an error rather than a silently ignored option. Positional arguments (the
// subcommand, a model name) are kept in order.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace fluxctl {

class Flags {
 public:
  // `valued` flags take a value; `boolean` ones do not. Names are given without dashes.
  static absl::StatusOr<Flags> parse(const std::vector<std::string>& args,
                                     const std::set<std::string>& valued,
                                     const std::set<std::string>& boolean = {});

  const std::vector<std::string>& positional() const { return positional_; }
  bool has(const std::string& name) const { return values_.contains(name); }
  std::string str_or(const std::string& name, const std::string& def) const;
  // Present flags parsed as numbers; absent ones give nullopt. Errors name the flag.
  absl::StatusOr<std::optional<int64_t>> int_opt(const std::string& name) const;
  absl::StatusOr<std::optional<uint64_t>> uint_opt(const std::string& name) const;
  absl::StatusOr<std::optional<double>> double_opt(const std::string& name) const;

 private:
  std::vector<std::string> positional_;
  std::map<std::string, std::string> values_;
};

}  // namespace fluxctl
