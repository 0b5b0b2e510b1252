#include "cli/args.h"

#include <omp.h>

#include <charconv>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace fluxserve::cli {

absl::StatusOr<Args> Args::parse(const std::vector<std::string>& argv,
                                 const std::set<std::string>& known,
                                 const std::set<std::string>& boolean) {
  Args a;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'"));
    }
    std::string name = arg.substr(2), value;
    const size_t eq = name.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (!known.contains(name) && !boolean.contains(name)) {
      std::vector<std::string> all(known.begin(), known.end());
      all.insert(all.end(), boolean.begin(), boolean.end());
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name, " (known: --",
                                                     absl::StrJoin(all, ", --"), ")"));
    }
    if (boolean.contains(name)) {
      if (inline_value && value != "true" && value != "false") {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value"));
      }
      a.values_[name] = inline_value ? value : "true";
      continue;
    }
    if (!inline_value) {
      if (i + 1 >= argv.size()) {
        return absl::InvalidArgumentError(absl::StrCat("flag --", name, " needs a value"));
      }
      value = argv[++i];
    }
    a.values_[name] = value;
  }
  return a;
}

absl::StatusOr<std::string> Args::str(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return absl::InvalidArgumentError(absl::StrCat("--", name, " is required"));
  return it->second;
}

std::string Args::str_or(const std::string& name, const std::string& def) const {
  auto it = values_.find(name);
  return it == values_.end() ? def : it->second;
}

absl::StatusOr<int64_t> Args::int_or(const std::string& name, int64_t def) const {
  auto it = values_.find(name);
  if (it == values_.end()) return def;
  int64_t v = 0;
  const std::string& s = it->second;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " must be an integer, got '", s, "'"));
  }
  return v;
}

absl::StatusOr<int64_t> Args::required_int(const std::string& name) const {
  if (!has(name)) return absl::InvalidArgumentError(absl::StrCat("--", name, " is required"));
  return int_or(name, 0);
}

absl::StatusOr<double> Args::double_or(const std::string& name, double def) const {
  auto it = values_.find(name);
  if (it == values_.end()) return def;
  const std::string& s = it->second;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size()) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " must be a number, got '", s, "'"));
  }
  return v;
}

int set_threads(int64_t threads) {
  if (threads > 0) omp_set_num_threads(static_cast<int>(threads));
  return omp_get_max_threads();
}

}  // namespace fluxserve::cli
