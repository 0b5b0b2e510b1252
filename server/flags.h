// `fluxserve serve` flags (server/README.md is the contract): `--name value` or `--name=value`,
// unknown flags are errors naming the known ones, numbers are range-checked.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace fluxserve::server {

struct ServeFlags {
  std::string config;      // empty: the embedded default model
  std::string model_root;  // resolved default: $FLUXSERVE_MODEL_ROOT, else the default model's parent
  std::string listen = "0.0.0.0:50051";
  std::string port_file;
  std::string metrics_listen = "0.0.0.0:9090";  // empty: no /metrics
  std::string metrics_port_file;
  int max_queue = 16;
  double drain_timeout_s = 60;
  std::string auth_token_file, admin_token_file;
  std::string tls_cert, tls_key, tls_client_ca;
  int64_t max_message_bytes = 64 << 20;
  int64_t max_prompt_bytes = 16384;
  int threads = 0;  // 0: all cores
};

extern const char* const kServeUsage;

// `default_model_dir` is the embedded model's folder (its parent is the default --model-root).
absl::StatusOr<ServeFlags> parse_serve_flags(const std::vector<std::string>& args,
                                             const std::string& default_model_dir);

}  // namespace fluxserve::server
