#include "tools/fluxctl/client.h"

#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace fluxctl {

absl::StatusOr<std::string> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<Connection> connection_from_flags(const Flags& flags) {
  Connection c;
  c.server = flags.str_or("server", c.server);
  if (flags.has("token") && flags.has("token-file")) {
    return absl::InvalidArgumentError("give --token or --token-file, not both");
  }
  c.token = flags.str_or("token", "");
  if (flags.has("token-file")) {
    auto t = read_file(flags.str_or("token-file", ""));
    if (!t.ok()) return t.status();
    // Token files usually end with a newline; the server compares the token itself.
    c.token = std::string(absl::StripAsciiWhitespace(*t));
    if (c.token.empty()) return absl::InvalidArgumentError("--token-file: the file is empty");
  }
  if (flags.has("tls-ca")) {
    auto pem = read_file(flags.str_or("tls-ca", ""));
    if (!pem.ok()) return pem.status();
    c.tls_ca = *pem;
  }
  return c;
}

Client::Client(const Connection& conn) : conn_(conn) {
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (conn_.tls_ca.empty()) {
    creds = grpc::InsecureChannelCredentials();
  } else {
    grpc::SslCredentialsOptions opts;
    opts.pem_root_certs = conn_.tls_ca;
    creds = grpc::SslCredentials(opts);
  }
  grpc::ChannelArguments args;
  // Images can be large (several 1024² PNGs); the server's default limit is 64 MiB.
  args.SetMaxReceiveMessageSize(64 << 20);
  channel_ = grpc::CreateCustomChannel(conn_.server, creds, args);
}

void Client::prepare(grpc::ClientContext& ctx, double timeout_s) const {
  // Plain metadata rather than call credentials: gRPC refuses call credentials on plaintext
  // channels, and a token over loopback without TLS is a legitimate setup.
  if (!conn_.token.empty()) ctx.AddMetadata("authorization", "Bearer " + conn_.token);
  if (timeout_s > 0) {
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::microseconds(static_cast<int64_t>(timeout_s * 1e6)));
  }
}

const char* code_name(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "UNKNOWN_CODE";
  }
}

int report(const std::string& what, const grpc::Status& status) {
  std::cerr << "fluxctl: " << what << ": " << code_name(status.error_code()) << ": "
            << status.error_message() << "\n";
  return kExitRpc;
}

}  // namespace fluxctl
