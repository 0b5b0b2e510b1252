#include "tools/fluxctl/flags.h"

#include <cerrno>
#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace fluxctl {

absl::StatusOr<Flags> Flags::parse(const std::vector<std::string>& args,
                                   const std::set<std::string>& valued,
                                   const std::set<std::string>& boolean) {
  Flags f;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.size() < 3 || arg.rfind("--", 0) != 0) {
      f.positional_.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2);
    std::optional<std::string> value;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
    }
    if (boolean.contains(name)) {
      if (value) return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value"));
      f.values_[name] = "true";
    } else if (valued.contains(name)) {
      if (!value) {
        if (i + 1 >= args.size()) {
          return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
        }
        value = args[++i];
      }
      f.values_[name] = *value;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
  }
  return f;
}

std::string Flags::str_or(const std::string& name, const std::string& def) const {
  auto it = values_.find(name);
  return it == values_.end() ? def : it->second;
}

absl::StatusOr<std::optional<int64_t>> Flags::int_opt(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::optional<int64_t>();
  int64_t v;
  if (!absl::SimpleAtoi(it->second, &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, ": '", it->second, "' is not an integer"));
  }
  return std::optional<int64_t>(v);
}

absl::StatusOr<std::optional<uint64_t>> Flags::uint_opt(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::optional<uint64_t>();
  uint64_t v;
  if (!absl::SimpleAtoi(it->second, &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, ": '", it->second, "' is not a non-negative integer"));
  }
  return std::optional<uint64_t>(v);
}

absl::StatusOr<std::optional<double>> Flags::double_opt(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::optional<double>();
  double v;
  if (!absl::SimpleAtod(it->second, &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, ": '", it->second, "' is not a number"));
  }
  return std::optional<double>(v);
}

}  // namespace fluxctl
