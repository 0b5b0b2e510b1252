// What every fluxctl command shares: the connection flags (--server, --token/--token-file,
// --tls-ca), the channel built from them, per-call metadata and deadlines, and how a failed RPC
// is reported (gRPC code name and the server's message, non-zero exit).
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "tools/fluxctl/flags.h"

namespace fluxctl {

// Exit codes: 0 success, 1 the server said no (or is not SERVING), 2 bad usage or local error.
inline constexpr int kExitOk = 0;
inline constexpr int kExitRpc = 1;
inline constexpr int kExitUsage = 2;

// Flags every command accepts, wherever they appear on the line.
inline constexpr const char* kConnectionFlags[] = {"server", "token", "token-file", "tls-ca"};

struct Connection {
  std::string server = "127.0.0.1:50051";
  std::string token;   // sent as `authorization: Bearer <token>` when set
  std::string tls_ca;  // PEM roots; empty = plaintext
};

absl::StatusOr<Connection> connection_from_flags(const Flags& flags);
absl::StatusOr<std::string> read_file(const std::string& path);

class Client {
 public:
  explicit Client(const Connection& conn);
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }
  // Adds the bearer token and, when timeout_s > 0, a deadline.
  void prepare(grpc::ClientContext& ctx, double timeout_s) const;

 private:
  Connection conn_;
  std::shared_ptr<grpc::Channel> channel_;
};

const char* code_name(grpc::StatusCode code);
// Prints "fluxctl: <what>: <CODE>: <message>" to stderr and returns kExitRpc.
int report(const std::string& what, const grpc::Status& status);

}  // namespace fluxctl
