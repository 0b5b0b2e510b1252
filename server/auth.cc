#include "server/auth.h"

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace fluxserve::server {

absl::StatusOr<std::vector<std::string>> read_token_file(const std::string& path,
                                                         const std::string& flag) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return absl::NotFoundError(absl::StrCat("--", flag, ": cannot read '", path, "'"));
  std::ostringstream ss;
  ss << f.rdbuf();
  std::vector<std::string> tokens;
  for (absl::string_view line : absl::StrSplit(ss.str(), '\n')) {
    absl::string_view t = absl::StripAsciiWhitespace(line);
    if (!t.empty()) tokens.emplace_back(t);
  }
  if (tokens.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": '", path, "' holds no token"));
  }
  return tokens;
}

bool constant_time_equal(const std::string& a, const std::string& b) {
  const size_t n = std::max(a.size(), b.size());
  // Every byte position up to the longer length is visited; the length difference is folded in.
  volatile unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff = diff | static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

Authenticator::Authenticator(std::vector<std::string> user, std::vector<std::string> admin)
    : user_(std::move(user)), admin_(std::move(admin)) {}

absl::Status Authenticator::check(const grpc::ServerContext& ctx, Scope scope) const {
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return check_header(nullptr, scope);
  const std::string value(it->second.data(), it->second.size());
  return check_header(&value, scope);
}

absl::Status Authenticator::check_header(const std::string* authorization, Scope scope) const {
  const std::vector<std::string>& tokens =
      scope == Scope::kModel && !admin_.empty() ? admin_ : user_;
  // With an admin token only, ImageService is open; with a user token only, it guards both.
  if (scope == Scope::kImage && user_.empty()) return absl::OkStatus();
  if (tokens.empty()) return absl::OkStatus();
  const char* which = scope == Scope::kModel && !admin_.empty() ? "the admin token" : "a token";
  if (authorization == nullptr) {
    return absl::UnauthenticatedError(
        absl::StrCat("missing `authorization: Bearer <token>` metadata; this service needs ", which));
  }
  constexpr absl::string_view kBearer = "Bearer ";
  if (authorization->size() < kBearer.size() ||
      !absl::EqualsIgnoreCase(absl::string_view(*authorization).substr(0, kBearer.size()), kBearer)) {
    return absl::UnauthenticatedError("authorization metadata must be `Bearer <token>`");
  }
  const std::string presented(absl::StripAsciiWhitespace(
      absl::string_view(*authorization).substr(kBearer.size())));
  bool ok = false;
  for (const std::string& t : tokens) ok = constant_time_equal(presented, t) || ok;
  if (!ok) return absl::UnauthenticatedError(absl::StrCat("the bearer token is not ", which));
  return absl::OkStatus();
}

}  // namespace fluxserve::server
