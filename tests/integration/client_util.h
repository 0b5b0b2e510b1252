// Client-side helpers of the integration tests: one Generate call collected into its events and
// final status, health checks, and the Prometheus text format read back into numbers.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "fluxserve/v1/image_service.grpc.pb.h"
#include "fluxserve/v1/model_service.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace fluxserve::integration {

namespace pb = ::fluxserve::v1;
using HealthStatus = ::grpc::health::v1::HealthCheckResponse::ServingStatus;

// A request small enough to take well under a second on the tiny model.
pb::GenerateRequest SmallRequest(std::optional<uint64_t> seed, int steps = 2, int size = 64);

struct CallOptions {
  double timeout_s = 60;
  std::string token;  // sent as `authorization: Bearer <token>` when set
  // Called for each streamed event with the call's context (e.g. to TryCancel at some point).
  std::function<void(const pb::GenerateResponse&, grpc::ClientContext&)> on_event;
};

struct GenerateOutcome {
  grpc::Status status;
  std::vector<pb::GenerateResponse> events;
  std::optional<pb::Result> result;
  double client_seconds = 0;
  std::multimap<std::string, std::string> trailers;  // trailing metadata
};

GenerateOutcome Generate(const std::shared_ptr<grpc::Channel>& ch, const pb::GenerateRequest& req,
                         const CallOptions& opts = {});

// Health.Check of `service`; an error status when the RPC itself failed.
absl::StatusOr<HealthStatus> CheckHealth(const std::shared_ptr<grpc::Channel>& ch,
                                         const std::string& service = "");
// Polls Check until `want` or timeout; true when reached.
bool WaitForHealth(const std::shared_ptr<grpc::Channel>& ch, HealthStatus want,
                   double timeout_s = 60, const std::string& service = "");

void AddToken(grpc::ClientContext& ctx, const std::string& token);
void SetTimeout(grpc::ClientContext& ctx, double seconds);

// The Prometheus text exposition format, parsed: one sample per series.
class MetricsText {
 public:
  static absl::StatusOr<MetricsText> Parse(const std::string& text);
  // The sum of samples named `name` whose labels include every pair of `labels` (0 when none).
  double Sum(const std::string& name, const std::map<std::string, std::string>& labels = {}) const;
  // Whether any sample of that name with those labels exists.
  bool Has(const std::string& name, const std::map<std::string, std::string>& labels = {}) const;
  // `# TYPE` of a family, "" when not declared.
  std::string Type(const std::string& family) const;

 private:
  struct Sample {
    std::string name;
    std::map<std::string, std::string> labels;
    double value;
  };
  std::vector<Sample> samples_;
  std::map<std::string, std::string> types_;
};

// Scrapes /metrics from the server's metrics port.
absl::StatusOr<MetricsText> Scrape(int metrics_port);
// Scrapes until Sum(name, labels) == want (counters are updated as a request ends, which may be
// just after the client saw the status); returns the last value seen.
double WaitForMetric(int metrics_port, const std::string& name,
                     const std::map<std::string, std::string>& labels, double want,
                     double timeout_s = 20);

}  // namespace fluxserve::integration
