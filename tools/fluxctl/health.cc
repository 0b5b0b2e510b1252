// fluxctl health: grpc.health.v1 Check (or Watch). Exit 0 when SERVING, 1 otherwise, so it can
// serve as a Docker HEALTHCHECK or an exec probe.
#include <iostream>

#include "grpc/health/v1/health.grpc.pb.h"
#include "tools/fluxctl/commands.h"

namespace fluxctl {
namespace {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

constexpr const char* kHealthUsage = R"(usage: fluxctl health [--service S] [--watch] [--timeout S]

  --service S   "" (the server, default), readiness, liveness, fluxserve.v1.ImageService,
                fluxserve.v1.ModelService
  --watch       print every status change until the server ends the stream (or --timeout);
                the exit code follows the last status seen
  --timeout S   deadline in seconds (default: 5 for a check, none for --watch)

Exit 0 when SERVING, 1 otherwise (NOT_SERVING, unknown service, unreachable server).
)";

const char* status_name(HealthCheckResponse::ServingStatus s) {
  switch (s) {
    case HealthCheckResponse::SERVING: return "SERVING";
    case HealthCheckResponse::NOT_SERVING: return "NOT_SERVING";
    case HealthCheckResponse::SERVICE_UNKNOWN: return "SERVICE_UNKNOWN";
    default: return "UNKNOWN";
  }
}

}  // namespace

int health_main(const Connection& conn, const std::vector<std::string>& args) {
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      std::cout << kHealthUsage;
      return kExitOk;
    }
  }
  auto flags = Flags::parse(args, {"service", "timeout"}, {"watch"});
  if (!flags.ok()) return usage_error("health", std::string(flags.status().message()));
  if (!flags->positional().empty()) {
    return usage_error("health", "unexpected argument '" + flags->positional()[0] + "'");
  }
  auto timeout = flags->double_opt("timeout");
  if (!timeout.ok()) return usage_error("health", std::string(timeout.status().message()));
  const bool watch = flags->has("watch");
  HealthCheckRequest req;
  req.set_service(flags->str_or("service", ""));

  Client client(conn);
  auto stub = grpc::health::v1::Health::NewStub(client.channel());
  grpc::ClientContext ctx;
  client.prepare(ctx, timeout->value_or(watch ? 0.0 : 5.0));
  if (!watch) {
    HealthCheckResponse resp;
    grpc::Status s = stub->Check(&ctx, req, &resp);
    if (!s.ok()) return report("health", s);
    std::cout << status_name(resp.status()) << "\n";
    return resp.status() == HealthCheckResponse::SERVING ? kExitOk : kExitRpc;
  }
  auto reader = stub->Watch(&ctx, req);
  HealthCheckResponse resp;
  HealthCheckResponse::ServingStatus last = HealthCheckResponse::UNKNOWN;
  while (reader->Read(&resp)) {
    last = resp.status();
    std::cout << status_name(last) << std::endl;  // flushed: a reader may be waiting per line
  }
  grpc::Status s = reader->Finish();
  // A watch that ends at its own deadline is the normal way to stop it; report other endings.
  if (!s.ok() && s.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) report("health", s);
  return last == HealthCheckResponse::SERVING ? kExitOk : kExitRpc;
}

}  // namespace fluxctl
