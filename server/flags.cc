#include "server/flags.h"

#include <charconv>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/core/status.h"

namespace fluxserve::server {

const char* const kServeUsage = R"(usage: fluxserve serve [--config FILE] [--model-root DIR]
    [--listen HOST:PORT] [--port-file FILE] [--metrics-listen HOST:PORT] [--metrics-port-file FILE]
    [--max-queue N] [--drain-timeout SECONDS] [--auth-token-file FILE] [--admin-token-file FILE]
    [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]] [--max-message-bytes N]
    [--max-prompt-bytes N] [--threads N]
Serves fluxserve.v1.ImageService, fluxserve.v1.ModelService, grpc.health.v1.Health and server
reflection over gRPC, and Prometheus metrics on /metrics. Without --config the embedded tiny
model is served as `tiny-flux`. --config is the protobuf-JSON form of fluxserve.v1.ServerConfig
(proto/fluxserve/v1/model_spec.proto); model paths resolve inside --model-root.
Defaults: --listen 0.0.0.0:50051, --metrics-listen 0.0.0.0:9090 (empty: off), --max-queue 16,
--drain-timeout 60, --max-message-bytes 67108864, --max-prompt-bytes 16384, --threads 0 (all
cores). SIGTERM/SIGINT: health NOT_SERVING, stop accepting, finish in-flight requests for up to
--drain-timeout seconds, exit 0. server/README.md describes every flag, health and metric.
)";

namespace {

absl::StatusOr<int64_t> parse_int(const std::string& flag, const std::string& s, int64_t lo,
                                  int64_t hi) {
  int64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, " must be an integer, got '", s, "'"));
  }
  if (v < lo || v > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, " must be between ", lo, " and ", hi, ", got ", v));
  }
  return v;
}

}  // namespace

absl::StatusOr<ServeFlags> parse_serve_flags(const std::vector<std::string>& args,
                                             const std::string& default_model_dir) {
  static const std::set<std::string> kKnown = {
      "config",           "model-root",        "listen",           "port-file",
      "metrics-listen",   "metrics-port-file", "max-queue",        "drain-timeout",
      "auth-token-file",  "admin-token-file",  "tls-cert",         "tls-key",
      "tls-client-ca",    "max-message-bytes", "max-prompt-bytes", "threads"};
  std::map<std::string, std::string> v;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'"));
    }
    std::string name = arg.substr(2), value;
    const size_t eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else if (kKnown.contains(name)) {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat("flag --", name, " needs a value"));
      }
      value = args[++i];
    }
    if (!kKnown.contains(name)) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name, " (known: --",
                                                     absl::StrJoin(kKnown, ", --"), ")"));
    }
    v[name] = value;
  }
  ServeFlags f;
  auto str = [&](const char* name, std::string* out) {
    if (auto it = v.find(name); it != v.end()) *out = it->second;
  };
  str("config", &f.config);
  str("listen", &f.listen);
  str("port-file", &f.port_file);
  str("metrics-listen", &f.metrics_listen);
  str("metrics-port-file", &f.metrics_port_file);
  str("auth-token-file", &f.auth_token_file);
  str("admin-token-file", &f.admin_token_file);
  str("tls-cert", &f.tls_cert);
  str("tls-key", &f.tls_key);
  str("tls-client-ca", &f.tls_client_ca);
  if (auto it = v.find("model-root"); it != v.end()) {
    f.model_root = it->second;
  } else if (const char* env = std::getenv("FLUXSERVE_MODEL_ROOT"); env != nullptr && *env) {
    f.model_root = env;
  } else {
    f.model_root = std::filesystem::path(default_model_dir).parent_path().string();
  }
  if (auto it = v.find("max-queue"); it != v.end()) {
    FLUX_ASSIGN_OR_RETURN(int64_t n, parse_int("max-queue", it->second, 1, 100000));
    f.max_queue = static_cast<int>(n);
  }
  if (auto it = v.find("drain-timeout"); it != v.end()) {
    char* end = nullptr;
    const double d = std::strtod(it->second.c_str(), &end);
    if (it->second.empty() || end != it->second.c_str() + it->second.size() || !(d >= 0) ||
        d > 86400) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--drain-timeout must be a number of seconds between 0 and 86400, got '", it->second, "'"));
    }
    f.drain_timeout_s = d;
  }
  if (auto it = v.find("max-message-bytes"); it != v.end()) {
    FLUX_ASSIGN_OR_RETURN(f.max_message_bytes,
                          parse_int("max-message-bytes", it->second, 4096, int64_t{2047} << 20));
  }
  if (auto it = v.find("max-prompt-bytes"); it != v.end()) {
    FLUX_ASSIGN_OR_RETURN(f.max_prompt_bytes,
                          parse_int("max-prompt-bytes", it->second, 1, int64_t{1} << 24));
  }
  if (auto it = v.find("threads"); it != v.end()) {
    FLUX_ASSIGN_OR_RETURN(int64_t n, parse_int("threads", it->second, 0, 4096));
    f.threads = static_cast<int>(n);
  }
  if (f.tls_cert.empty() != f.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (!f.tls_client_ca.empty() && f.tls_cert.empty()) {
    return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key");
  }
  if (f.listen.empty()) return absl::InvalidArgumentError("--listen must not be empty");
  return f;
}

}  // namespace fluxserve::server
