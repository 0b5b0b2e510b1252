#include "engine/io/json_util.h"

#include <cstdint>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace fluxserve {

namespace {

// Records the first syntax error of a SAX pass; every other event is accepted and dropped. Used
// only after the DOM parse has failed, to recover the position the non-throwing parse hides.
class ErrorSax : public nlohmann::json_sax<nlohmann::json> {
 public:
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return true; }
  bool key(string_t&) override { return true; }
  bool end_object() override { return true; }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception& ex) override {
    position_ = position;
    message_ = ex.what();
    // Drop the "[json.exception.parse_error.101] " prefix: it means nothing to a user.
    if (auto p = message_.find("] ");
        !message_.empty() && message_[0] == '[' && p != std::string::npos) {
      message_ = message_.substr(p + 2);
    }
    // The "last read" excerpt may hold arbitrary bytes; keep messages printable ASCII.
    std::string clean;
    for (unsigned char c : message_) {
      if (c >= 0x20 && c < 0x7f) {
        clean += static_cast<char>(c);
      } else {
        clean += absl::StrFormat("\\x%02x", c);
      }
    }
    message_ = std::move(clean);
    return false;
  }

  size_t position_ = 0;
  std::string message_;
};

absl::Status wrong_type(const std::string& what, const std::string& key, const char* want,
                        const nlohmann::json& got) {
  return absl::InvalidArgumentError(
      absl::StrCat(what, ": field '", key, "' must be ", want, ", got ", json_type_name(got)));
}

absl::Status missing(const nlohmann::json& j, const std::string& what, const std::string& key) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": expected a JSON object, got ",
                                                   json_type_name(j), " (looking for field '", key,
                                                   "')"));
  }
  return absl::InvalidArgumentError(absl::StrCat(what, ": missing required field '", key, "'"));
}

// JSON integer -> int64 (unsigned values above INT64_MAX do not fit).
std::optional<int64_t> as_int64(const nlohmann::json& v) {
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  return std::nullopt;
}

}  // namespace

absl::StatusOr<nlohmann::json> parse_json(std::string_view text, std::string_view what) {
  nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(), nullptr,
                                           /*allow_exceptions=*/false);
  if (!j.is_discarded()) return j;
  const std::string w(what);  // absl may not take std::string_view
  ErrorSax sax;
  nlohmann::json::sax_parse(text.begin(), text.end(), &sax);
  if (sax.message_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(w, ": invalid JSON"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(w, ": invalid JSON at byte ", sax.position_, ": ", sax.message_));
}

const char* json_type_name(const nlohmann::json& j) {
  if (j.is_number_integer()) return "integer";
  if (j.is_number_float()) return "float";
  if (j.is_string()) return "string";
  if (j.is_boolean()) return "boolean";
  if (j.is_array()) return "array";
  if (j.is_object()) return "object";
  if (j.is_null()) return "null";
  return j.type_name();
}

const nlohmann::json* ConfigReader::find(const std::string& key) const {
  if (!j_.is_object()) return nullptr;
  auto it = j_.find(key);
  if (it == j_.end() || it->is_null()) return nullptr;
  return &*it;
}

bool ConfigReader::has(const std::string& key) const { return find(key) != nullptr; }

absl::StatusOr<int64_t> ConfigReader::get_int(const std::string& key,
                                              std::optional<int64_t> def) const {
  const nlohmann::json* v = find(key);
  if (v == nullptr) {
    if (def) return *def;
    return missing(j_, what_, key);
  }
  if (auto i = as_int64(*v)) return *i;
  if (v->is_number_unsigned()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what_, ": field '", key, "' is out of range for a 64-bit integer"));
  }
  return wrong_type(what_, key, "an integer", *v);
}

absl::StatusOr<double> ConfigReader::get_double(const std::string& key,
                                                std::optional<double> def) const {
  const nlohmann::json* v = find(key);
  if (v == nullptr) {
    if (def) return *def;
    return missing(j_, what_, key);
  }
  if (v->is_number()) return v->get<double>();
  return wrong_type(what_, key, "a number", *v);
}

absl::StatusOr<bool> ConfigReader::get_bool(const std::string& key, std::optional<bool> def) const {
  const nlohmann::json* v = find(key);
  if (v == nullptr) {
    if (def) return *def;
    return missing(j_, what_, key);
  }
  if (v->is_boolean()) return v->get<bool>();
  return wrong_type(what_, key, "a boolean", *v);
}

absl::StatusOr<std::string> ConfigReader::get_string(const std::string& key,
                                                     std::optional<std::string> def) const {
  const nlohmann::json* v = find(key);
  if (v == nullptr) {
    if (def) return *std::move(def);
    return missing(j_, what_, key);
  }
  if (v->is_string()) return v->get<std::string>();
  return wrong_type(what_, key, "a string", *v);
}

absl::StatusOr<std::vector<int64_t>> ConfigReader::get_int_list(
    const std::string& key, std::optional<std::vector<int64_t>> def) const {
  const nlohmann::json* v = find(key);
  if (v == nullptr) {
    if (def) return *std::move(def);
    return missing(j_, what_, key);
  }
  if (!v->is_array()) return wrong_type(what_, key, "a list of integers", *v);
  std::vector<int64_t> out;
  out.reserve(v->size());
  for (size_t i = 0; i < v->size(); ++i) {
    const nlohmann::json& e = (*v)[i];
    auto x = as_int64(e);
    if (!x) {
      return absl::InvalidArgumentError(absl::StrCat(what_, ": field '", key, "' element ", i,
                                                     " must be an integer, got ",
                                                     json_type_name(e)));
    }
    out.push_back(*x);
  }
  return out;
}

}  // namespace fluxserve
