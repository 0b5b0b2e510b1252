// grpc.health.v1 on the real server: the per-service statuses, Watch seeing readiness follow the
// default model (unload → NOT_SERVING, load → SERVING), and a SIGTERM drain: NOT_SERVING, the
// request in flight finishes, new work is refused, the process exits 0.
#include <mutex>
#include <thread>

#include "absl/synchronization/notification.h"
#include "tests/integration/fixture.h"

namespace fluxserve::integration {
namespace {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// Collects a Watch stream's statuses on a thread.
class Watcher {
 public:
  Watcher(const std::shared_ptr<grpc::Channel>& ch, const std::string& service) {
    thread_ = std::thread([this, ch, service] {
      auto stub = grpc::health::v1::Health::NewStub(ch);
      HealthCheckRequest req;
      req.set_service(service);
      SetTimeout(ctx_, 300);
      auto reader = stub->Watch(&ctx_, req);
      HealthCheckResponse resp;
      while (reader->Read(&resp)) {
        std::lock_guard<std::mutex> lock(mu_);
        seen_.push_back(resp.status());
      }
      reader->Finish();
    });
  }
  ~Watcher() {
    ctx_.TryCancel();
    thread_.join();
  }
  std::vector<HealthStatus> seen() {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_;
  }
  // Waits until `want` has been seen as the latest status.
  bool WaitFor(HealthStatus want, double timeout_s) {
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1e3));
    while (std::chrono::steady_clock::now() < deadline) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!seen_.empty() && seen_.back() == want) return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

 private:
  grpc::ClientContext ctx_;
  std::thread thread_;
  std::mutex mu_;
  std::vector<HealthStatus> seen_;
};

using HealthTest = ServerTest;

TEST_F(HealthTest, EveryDocumentedServiceIsServingAndUnknownOnesAreNotFound) {
  for (const char* service : {"", "readiness", "liveness", "fluxserve.v1.ImageService",
                              "fluxserve.v1.ModelService"}) {
    auto s = CheckHealth(channel_, service);
    ASSERT_TRUE(s.ok()) << "'" << service << "': " << s.status();
    EXPECT_EQ(*s, kServing) << "'" << service << "'";
  }
  auto unknown = CheckHealth(channel_, "no.such.Service");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound) << unknown.status();
}

TEST_F(HealthTest, ReadinessWatchFollowsTheDefaultModel) {
  Watcher ready(channel_, "readiness");
  Watcher all(channel_, "");
  ASSERT_TRUE(ready.WaitFor(kServing, 30));
  ASSERT_TRUE(all.WaitFor(kServing, 30));

  auto stub = pb::ModelService::NewStub(channel_);
  {
    grpc::ClientContext ctx;
    SetTimeout(ctx, 60);
    pb::UnloadModelRequest req;
    req.set_name("tiny-flux");
    pb::UnloadModelResponse resp;
    grpc::Status s = stub->UnloadModel(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  EXPECT_TRUE(ready.WaitFor(kNotServing, 30));
  EXPECT_TRUE(all.WaitFor(kNotServing, 30));
  // Liveness does not depend on a model.
  EXPECT_EQ(CheckHealth(channel_, "liveness").value_or(kNotServing), kServing);
  {
    grpc::ClientContext ctx;
    SetTimeout(ctx, 60);
    pb::LoadModelRequest req;
    req.mutable_spec()->set_name("tiny-flux");
    req.mutable_spec()->set_path("tiny-flux");
    req.set_make_default(true);
    pb::ModelInfo info;
    grpc::Status s = stub->LoadModel(&ctx, req, &info);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(info.state(), pb::MODEL_STATE_READY);
    EXPECT_TRUE(info.is_default());
  }
  EXPECT_TRUE(ready.WaitFor(kServing, 30));
  EXPECT_TRUE(all.WaitFor(kServing, 30));
  // The stream showed each transition in order.
  std::vector<HealthStatus> seen = ready.seen();
  std::vector<HealthStatus> collapsed;
  for (HealthStatus s : seen) {
    if (collapsed.empty() || collapsed.back() != s) collapsed.push_back(s);
  }
  EXPECT_EQ(collapsed, (std::vector<HealthStatus>{kServing, kNotServing, kServing}));
}

TEST_F(HealthTest, SigtermDrainsFinishesInFlightWorkAndExitsZero) {
  Watcher watch(channel_, "");
  ASSERT_TRUE(watch.WaitFor(kServing, 30));
  absl::Notification running;
  GenerateOutcome inflight;
  // ~1 s of work on one core: SIGTERM arrives while it runs.
  std::thread t([&] {
    inflight = Generate(channel_, SmallRequest(9, 30, 128), {.timeout_s = 300,
                                                           .on_event = [&](const auto& ev, auto&) {
                                                             if (ev.has_progress() &&
                                                                 !running.HasBeenNotified()) {
                                                               running.Notify();
                                                             }
                                                           }});
    if (!running.HasBeenNotified()) running.Notify();
  });
  ASSERT_TRUE(running.WaitForNotificationWithTimeout(absl::Seconds(60)));
  ASSERT_EQ(kill(server_->pid(), SIGTERM), 0);
  EXPECT_TRUE(watch.WaitFor(kNotServing, 30)) << "Watch never saw NOT_SERVING";
  // New work is refused while draining (the listener may already be closed: UNAVAILABLE).
  if (watch.seen().back() == kNotServing) {
    GenerateOutcome late = Generate(server_->channel(), SmallRequest(1), {.timeout_s = 10});
    EXPECT_FALSE(late.status.ok());
    EXPECT_EQ(late.status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << late.status.error_message();
  }
  t.join();
  EXPECT_TRUE(inflight.status.ok()) << "in-flight request: " << inflight.status.error_message();
  EXPECT_TRUE(inflight.result.has_value());
  auto code = server_->Wait(120);
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0);
  MarkStopped();
}

}  // namespace
}  // namespace fluxserve::integration
