// Bearer-token authentication for the fluxserve services. Tokens come from files (one per line,
// so a rotation can list the old and the new); ImageService takes the user token, ModelService
// the admin token when one is configured. Health and reflection stay open for probes.
// Comparisons run in constant time so response timing does not reveal a token's prefix.
#pragma once

#include <string>
#include <vector>

#include <grpcpp/server_context.h>

#include "absl/status/statusor.h"

namespace fluxserve::server {

// Reads the tokens of `path` (one per line, surrounding whitespace and blank lines ignored).
// `flag` names the flag in messages. InvalidArgument for an empty file.
absl::StatusOr<std::vector<std::string>> read_token_file(const std::string& path,
                                                         const std::string& flag);

// Whether `a` equals `b`, in time that depends only on their lengths' maximum.
bool constant_time_equal(const std::string& a, const std::string& b);

class Authenticator {
 public:
  enum class Scope { kImage, kModel };
  // No tokens at all: everything is open.
  Authenticator() = default;
  // `user` guards ImageService (and ModelService when `admin` is empty); `admin` guards
  // ModelService. Either may be empty.
  Authenticator(std::vector<std::string> user, std::vector<std::string> admin);

  // OK, or UNAUTHENTICATED naming what is missing (never echoing the presented token).
  absl::Status check(const grpc::ServerContext& ctx, Scope scope) const;
  // Same, on the raw `authorization` metadata value (tests).
  absl::Status check_header(const std::string* authorization, Scope scope) const;

 private:
  std::vector<std::string> user_, admin_;
};

}  // namespace fluxserve::server
