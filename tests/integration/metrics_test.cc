// /metrics over HTTP after known traffic: `promtool check metrics` accepts the page, every family
// the server README documents is there with its type, and the counts match what was sent.
#include "tests/integration/fixture.h"

namespace fluxserve::integration {
namespace {

using MetricsTest = ServerTest;

TEST_F(MetricsTest, PromtoolAcceptsThePageAndCountsMatchTheTraffic) {
  constexpr int kSteps = 2;
  // Known traffic: two good requests (three images), one invalid, one for an unknown model.
  pb::GenerateRequest two = SmallRequest(1, kSteps);
  two.set_num_images(2);
  ASSERT_TRUE(Generate(channel_, two).status.ok());
  ASSERT_TRUE(Generate(channel_, SmallRequest(2, kSteps)).status.ok());
  pb::GenerateRequest bad = SmallRequest(3, kSteps);
  bad.set_num_inference_steps(0);
  EXPECT_EQ(Generate(channel_, bad).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  pb::GenerateRequest unknown = SmallRequest(4, kSteps);
  unknown.set_model("no-such-model");
  EXPECT_EQ(Generate(channel_, unknown).status.error_code(), grpc::StatusCode::NOT_FOUND);

  auto body = HttpGet(server_->metrics_port(), "/metrics");
  ASSERT_TRUE(body.ok()) << body.status();
  const std::string page = server_->dir() + "/metrics.txt";
  WriteFile(page, *body);
  CommandResult promtool = RunCommand(std::string(PROMTOOL_BIN) + " check metrics < " + page);
  EXPECT_EQ(promtool.exit_code, 0) << promtool.output << "\n" << *body;

  // Counters are updated as a request ends, possibly just after its status reached the client.
  const int port = server_->metrics_port();
  const std::map<std::string, std::string> ok = {{"model", "tiny-flux"}, {"outcome", "ok"}};
  EXPECT_EQ(WaitForMetric(port, "fluxserve_requests_total", ok, 2), 2);
  EXPECT_EQ(WaitForMetric(port, "fluxserve_requests_total", {{"outcome", "invalid"}}, 2), 2);
  auto m = Scrape(port);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->Sum("fluxserve_requests_total", {{"outcome", "error"}}), 0);
  EXPECT_EQ(m->Sum("fluxserve_requests_total", {{"outcome", "cancelled"}}), 0);
  EXPECT_EQ(m->Sum("fluxserve_request_failures_total", {{"reason", "invalid_argument"}}), 1);
  EXPECT_EQ(m->Sum("fluxserve_request_failures_total", {{"reason", "unknown_model"}}), 1);
  EXPECT_EQ(m->Sum("fluxserve_images_generated_total", {{"model", "tiny-flux"}}), 3);
  EXPECT_EQ(m->Sum("fluxserve_request_duration_seconds_count", ok), 2);
  EXPECT_GT(m->Sum("fluxserve_request_duration_seconds_sum", ok), 0);
  EXPECT_EQ(m->Sum("fluxserve_queue_wait_seconds_count", {{"model", "tiny-flux"}}), 2);
  for (const char* stage : {"text_encode", "denoise", "decode"}) {
    EXPECT_EQ(m->Sum("fluxserve_stage_duration_seconds_count",
                     {{"model", "tiny-flux"}, {"stage", stage}}),
              2)
        << stage;
  }
  EXPECT_EQ(m->Sum("fluxserve_step_duration_seconds_count", {{"model", "tiny-flux"}}),
            2 * kSteps);
  // The +Inf bucket of a histogram equals its count; buckets reach 30 minutes.
  EXPECT_EQ(m->Sum("fluxserve_request_duration_seconds_bucket",
                   {{"model", "tiny-flux"}, {"outcome", "ok"}, {"le", "+Inf"}}),
            2);
  EXPECT_TRUE(m->Has("fluxserve_request_duration_seconds_bucket", {{"le", "1800"}}) ||
              m->Has("fluxserve_request_duration_seconds_bucket", {{"le", "1800.0"}}))
      << *body;

  EXPECT_EQ(m->Sum("fluxserve_queue_depth"), 0);
  EXPECT_EQ(m->Sum("fluxserve_in_flight_requests"), 0);
  EXPECT_EQ(m->Sum("fluxserve_model_loads_total", {{"model", "tiny-flux"}, {"outcome", "ok"}}), 1);
  EXPECT_EQ(m->Sum("fluxserve_model_load_duration_seconds_count", {{"model", "tiny-flux"}}), 1);
  EXPECT_EQ(m->Sum("fluxserve_model_state", {{"model", "tiny-flux"}, {"state", "ready"}}), 1);
  EXPECT_EQ(m->Sum("fluxserve_model_state", {{"model", "tiny-flux"}}), 1)
      << "exactly one state is 1";
  // The tiny model's weights are ~2.7 MB of bf16 on the CPU.
  EXPECT_GT(m->Sum("fluxserve_model_memory_bytes", {{"model", "tiny-flux"}, {"device", "cpu"}}),
            1e6);
  EXPECT_GT(m->Sum("process_resident_memory_bytes"), 1e6);

  // fluxserve_model_swaps_total has no series before the first swap, and prometheus-cpp prints
  // no TYPE line for an empty family; SwapTest checks it.
  const std::map<std::string, std::string> types = {
      {"fluxserve_requests_total", "counter"},
      {"fluxserve_request_failures_total", "counter"},
      {"fluxserve_images_generated_total", "counter"},
      {"fluxserve_request_duration_seconds", "histogram"},
      {"fluxserve_queue_wait_seconds", "histogram"},
      {"fluxserve_stage_duration_seconds", "histogram"},
      {"fluxserve_step_duration_seconds", "histogram"},
      {"fluxserve_queue_depth", "gauge"},
      {"fluxserve_in_flight_requests", "gauge"},
      {"fluxserve_model_load_duration_seconds", "histogram"},
      {"fluxserve_model_loads_total", "counter"},
      {"fluxserve_model_state", "gauge"},
      {"fluxserve_model_memory_bytes", "gauge"},
      {"process_resident_memory_bytes", "gauge"},
  };
  for (const auto& [family, type] : types) EXPECT_EQ(m->Type(family), type) << family;
}

}  // namespace
}  // namespace fluxserve::integration
