// ImageService.Generate against the real server: the order of the streamed events, what the
// result carries, seeds, cancellation, deadlines and the bounded queue.
#include <atomic>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "tests/integration/fixture.h"

namespace fluxserve::integration {
namespace {

// Long enough (~30 s on one core at 128x128) that the test always acts while it runs.
pb::GenerateRequest LongRequest() { return SmallRequest(1, 1000, 128); }

std::string ModelQuantization(const std::shared_ptr<grpc::Channel>& ch, const std::string& name) {
  auto stub = pb::ModelService::NewStub(ch);
  grpc::ClientContext ctx;
  SetTimeout(ctx, 10);
  pb::GetModelRequest req;
  req.set_name(name);
  pb::ModelInfo info;
  grpc::Status s = stub->GetModel(&ctx, req, &info);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return info.quantization();
}

// The request counters as the server reports them, for failure messages.
std::string RequestsTotal(int metrics_port) {
  auto body = HttpGet(metrics_port, "/metrics");
  if (!body.ok()) return std::string(body.status().message());
  std::string out;
  for (absl::string_view line : absl::StrSplit(*body, '\n')) {
    if (absl::StartsWith(line, "fluxserve_request")) absl::StrAppend(&out, line, "\n");
  }
  return out;
}

using GenerateTest = ServerTest;

TEST_F(GenerateTest, StreamsQueuedThenEveryStepThenResult) {
  constexpr int kSteps = 3;
  GenerateOutcome g = Generate(channel_, SmallRequest(7, kSteps));
  ASSERT_TRUE(g.status.ok()) << g.status.error_message();
  // queued, progress 0 (prompts encoded), 1..N, result.
  ASSERT_EQ(g.events.size(), 1u + (kSteps + 1) + 1);
  EXPECT_TRUE(g.events.front().has_queued());
  EXPECT_EQ(g.events.front().queued().position(), 0);
  double last_elapsed = 0;
  for (int i = 0; i <= kSteps; ++i) {
    const auto& ev = g.events[1 + i];
    ASSERT_TRUE(ev.has_progress()) << "event " << 1 + i;
    EXPECT_EQ(ev.progress().step(), i);
    EXPECT_EQ(ev.progress().total(), kSteps);
    EXPECT_GE(ev.progress().elapsed_seconds(), last_elapsed);
    last_elapsed = ev.progress().elapsed_seconds();
  }
  ASSERT_TRUE(g.events.back().has_result());

  const pb::Result& r = *g.result;
  EXPECT_EQ(r.seed(), 7u);
  EXPECT_EQ(r.model(), "tiny-flux");
  EXPECT_EQ(r.quantization(), ModelQuantization(channel_, "tiny-flux"));
  EXPECT_EQ(r.width(), 64);
  EXPECT_EQ(r.height(), 64);
  ASSERT_EQ(r.images_size(), 1);
  EXPECT_TRUE(IsPng(r.images(0).data()));
  EXPECT_EQ(r.images(0).mime_type(), "image/png");
  EXPECT_EQ(r.images(0).seed(), 7u);
  EXPECT_EQ(r.images(0).index(), 0);
  EXPECT_EQ(r.images(0).width(), 64);
  EXPECT_EQ(r.images(0).height(), 64);
  EXPECT_GT(r.timings().denoise_seconds(), 0);
  EXPECT_GT(r.timings().total_seconds(), 0);
  EXPECT_LE(r.timings().total_seconds(), g.client_seconds);
}

TEST_F(GenerateTest, SameSeedGivesIdenticalPngBytes) {
  GenerateOutcome a = Generate(channel_, SmallRequest(42));
  GenerateOutcome b = Generate(channel_, SmallRequest(42));
  GenerateOutcome c = Generate(channel_, SmallRequest(43));
  ASSERT_TRUE(a.result && b.result && c.result) << a.status.error_message();
  EXPECT_EQ(a.result->images(0).data(), b.result->images(0).data());
  EXPECT_NE(a.result->images(0).data(), c.result->images(0).data());
}

TEST_F(GenerateTest, AbsentSeedIsReturnedAndReproducesTheImage) {
  GenerateOutcome a = Generate(channel_, SmallRequest(std::nullopt));
  GenerateOutcome b = Generate(channel_, SmallRequest(std::nullopt));
  ASSERT_TRUE(a.result && b.result) << a.status.error_message();
  EXPECT_NE(a.result->seed(), b.result->seed()) << "two random seeds should differ";
  GenerateOutcome again = Generate(channel_, SmallRequest(a.result->seed()));
  ASSERT_TRUE(again.result) << again.status.error_message();
  EXPECT_EQ(again.result->seed(), a.result->seed());
  EXPECT_EQ(again.result->images(0).data(), a.result->images(0).data());
}

TEST_F(GenerateTest, NumImagesReturnsEachIndexOfTheBatch) {
  pb::GenerateRequest req = SmallRequest(5);
  req.set_num_images(2);
  GenerateOutcome g = Generate(channel_, req);
  ASSERT_TRUE(g.result) << g.status.error_message();
  ASSERT_EQ(g.result->images_size(), 2);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(g.result->images(i).index(), i);
    EXPECT_EQ(g.result->images(i).seed(), 5u);
    EXPECT_TRUE(IsPng(g.result->images(i).data()));
  }
  EXPECT_NE(g.result->images(0).data(), g.result->images(1).data());
}

TEST_F(GenerateTest, CancelMidRunFreesTheWorkerAndIsCounted) {
  const auto before = Scrape(server_->metrics_port());
  ASSERT_TRUE(before.ok()) << before.status();
  const double cancelled0 =
      before->Sum("fluxserve_requests_total", {{"outcome", "cancelled"}});

  int last_step = -1;
  GenerateOutcome a = Generate(channel_, LongRequest(),
                               {.timeout_s = 300, .on_event = [&](const auto& ev, auto& ctx) {
                                  if (ev.has_progress()) last_step = ev.progress().step();
                                  if (last_step >= 2) ctx.TryCancel();
                                }});
  EXPECT_EQ(a.status.error_code(), grpc::StatusCode::CANCELLED) << a.status.error_message();
  EXPECT_FALSE(a.result.has_value());
  EXPECT_GE(last_step, 2);

  // The worker stops between steps: the next request runs at once, not after ~1000 steps.
  GenerateOutcome b = Generate(channel_, SmallRequest(1), {.timeout_s = 60});
  ASSERT_TRUE(b.status.ok()) << b.status.error_message();
  EXPECT_LT(b.result->timings().queue_seconds(), 10.0);

  EXPECT_EQ(WaitForMetric(server_->metrics_port(), "fluxserve_requests_total",
                          {{"model", "tiny-flux"}, {"outcome", "cancelled"}}, cancelled0 + 1),
            cancelled0 + 1);
  EXPECT_EQ(WaitForMetric(server_->metrics_port(), "fluxserve_request_failures_total",
                          {{"reason", "cancelled"}}, 1),
            1);
}

TEST_F(GenerateTest, DeadlineExpiryEndsTheRequestWithDeadlineExceeded) {
  GenerateOutcome a = Generate(channel_, LongRequest(), {.timeout_s = 1.5});
  EXPECT_EQ(a.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << a.status.error_message();
  EXPECT_FALSE(a.result.has_value());
  // The server noticed too: it stopped the run, so the next request does not wait ~1000 steps.
  GenerateOutcome b = Generate(channel_, SmallRequest(1), {.timeout_s = 60});
  ASSERT_TRUE(b.status.ok()) << b.status.error_message();
  EXPECT_LT(b.result->timings().queue_seconds(), 10.0);
}

// The client's timer ends the call a little before the server's copy of the deadline (counted
// from the request's arrival); the server still counts it as a deadline, not a cancellation.
TEST_F(GenerateTest, DeadlineExpiryIsCountedAsDeadlineExceeded) {
  GenerateOutcome a = Generate(channel_, LongRequest(), {.timeout_s = 1.5});
  EXPECT_EQ(a.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(WaitForMetric(server_->metrics_port(), "fluxserve_requests_total",
                          {{"outcome", "deadline_exceeded"}}, 1),
            1)
      << RequestsTotal(server_->metrics_port());
}

class QueueFullTest : public ServerTest {
 protected:
  ServerOptions Options() override {
    ServerOptions o;
    o.extra_args = {"--max-queue", "1"};
    return o;
  }
};

TEST_F(QueueFullTest, ARequestBeyondTheQueueIsRejectedWithARetryHint) {
  absl::Notification a_running, b_queued, release;
  GenerateOutcome a, b;
  // A runs; B waits in the one queue slot; each blocks its reader until released, then cancels.
  std::thread ta([&] {
    a = Generate(channel_, LongRequest(), {.timeout_s = 300, .on_event = [&](const auto& ev, auto& ctx) {
                   if (ev.has_progress() && !a_running.HasBeenNotified()) {
                     a_running.Notify();
                     release.WaitForNotificationWithTimeout(absl::Seconds(120));
                     ctx.TryCancel();
                   }
                 }});
    if (!a_running.HasBeenNotified()) a_running.Notify();
  });
  ASSERT_TRUE(a_running.WaitForNotificationWithTimeout(absl::Seconds(60)));
  std::thread tb([&] {
    b = Generate(channel_, LongRequest(), {.timeout_s = 300, .on_event = [&](const auto& ev, auto& ctx) {
                   if (ev.has_queued() && !b_queued.HasBeenNotified()) {
                     b_queued.Notify();
                     release.WaitForNotificationWithTimeout(absl::Seconds(120));
                     ctx.TryCancel();
                   }
                 }});
    if (!b_queued.HasBeenNotified()) b_queued.Notify();
  });
  ASSERT_TRUE(b_queued.WaitForNotificationWithTimeout(absl::Seconds(60)));

  GenerateOutcome c = Generate(channel_, SmallRequest(3), {.timeout_s = 30});
  release.Notify();
  ta.join();
  tb.join();
  EXPECT_EQ(c.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << c.status.error_message();
  // The hint is in the message for people ...
  const std::string msg = absl::AsciiStrToLower(c.status.error_message());
  EXPECT_NE(msg.find("retry"), std::string::npos) << c.status.error_message();
  EXPECT_NE(msg.find("queue"), std::string::npos) << c.status.error_message();
  // ... and as a number for programs: the `retry-after-ms` trailer.
  auto hint = c.trailers.find("retry-after-ms");
  ASSERT_NE(hint, c.trailers.end()) << "no retry-after-ms trailer";
  int64_t ms = 0;
  EXPECT_TRUE(absl::SimpleAtoi(hint->second, &ms)) << hint->second;
  EXPECT_GT(ms, 0);
  EXPECT_EQ(a.status.error_code(), grpc::StatusCode::CANCELLED) << a.status.error_message();
  EXPECT_EQ(b.status.error_code(), grpc::StatusCode::CANCELLED) << b.status.error_message();

  EXPECT_EQ(WaitForMetric(server_->metrics_port(), "fluxserve_request_failures_total",
                          {{"reason", "queue_full"}}, 1),
            1);
  // Both slots are free again once the server has seen both cancellations.
  EXPECT_EQ(WaitForMetric(server_->metrics_port(), "fluxserve_in_flight_requests", {}, 0), 0);
  EXPECT_EQ(WaitForMetric(server_->metrics_port(), "fluxserve_queue_depth", {}, 0), 0);
  GenerateOutcome d = Generate(channel_, SmallRequest(4), {.timeout_s = 60});
  EXPECT_TRUE(d.status.ok()) << d.status.error_message();
}

}  // namespace
}  // namespace fluxserve::integration
