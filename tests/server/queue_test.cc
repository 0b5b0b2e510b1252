// server/queue: priority order (higher first, arrival order within a priority), the bound with
// its retry hint, withdrawal of waiting tasks, positions, and stop().
#include "server/queue.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <mutex>
#include <vector>

namespace fluxserve::server {
namespace {

// Records its id when run; the first one can hold the worker until released.
class RecordingTask : public Task {
 public:
  RecordingTask(int priority, int id, std::vector<int>* log, std::mutex* mu,
                std::shared_future<void> gate = {})
      : Task(priority), id_(id), log_(log), mu_(mu), gate_(std::move(gate)) {}
  void run() override {
    started.set_value();
    if (gate_.valid()) gate_.wait();
    std::lock_guard<std::mutex> lock(*mu_);
    log_->push_back(id_);
  }
  std::promise<void> started;

 private:
  int id_;
  std::vector<int>* log_;
  std::mutex* mu_;
  std::shared_future<void> gate_;
};

WorkQueue::Options opts(int max_waiting) {
  WorkQueue::Options o;
  o.max_waiting = max_waiting;
  return o;
}

struct Fixture {
  std::vector<int> log;
  std::mutex mu;
  std::promise<void> release;
  std::shared_future<void> gate = release.get_future().share();
  std::vector<int> ran() {
    std::lock_guard<std::mutex> lock(mu);
    return log;
  }
};

TEST(WorkQueue, RunsByPriorityThenArrival) {
  Fixture f;
  WorkQueue q(opts(16));
  q.start();
  // The blocker occupies the worker so everything after it queues.
  auto blocker = std::make_shared<RecordingTask>(0, 0, &f.log, &f.mu, f.gate);
  auto started = blocker->started.get_future();
  ASSERT_TRUE(q.submit(blocker).ok());
  started.wait();
  const std::vector<std::pair<int, int>> tasks = {{0, 1}, {5, 2}, {0, 3}, {5, 4}, {-1, 5}, {9, 6}};
  std::vector<int> positions;
  for (auto [priority, id] : tasks) {
    absl::StatusOr<int> pos = q.submit(std::make_shared<RecordingTask>(priority, id, &f.log, &f.mu));
    ASSERT_TRUE(pos.ok()) << pos.status();
    positions.push_back(*pos);
  }
  // Positions count the running task: 1 = next after it.
  EXPECT_EQ(positions, (std::vector<int>{1, 1, 3, 2, 5, 1}));
  EXPECT_EQ(q.waiting(), 6);
  f.release.set_value();
  q.stop();  // lets the running task finish; drops what still waits
  std::vector<int> ran = f.ran();
  ASSERT_FALSE(ran.empty());
  EXPECT_EQ(ran[0], 0);
  // Whatever ran after the blocker ran in priority order.
  const std::vector<int> order = {6, 2, 4, 1, 3, 5};
  for (size_t i = 1; i < ran.size(); ++i) EXPECT_EQ(ran[i], order[i - 1]);
}

TEST(WorkQueue, DrainsInPriorityOrder) {
  Fixture f;
  WorkQueue q(opts(16));
  q.start();
  auto blocker = std::make_shared<RecordingTask>(0, 0, &f.log, &f.mu, f.gate);
  auto started = blocker->started.get_future();
  ASSERT_TRUE(q.submit(blocker).ok());
  started.wait();
  std::vector<std::shared_ptr<RecordingTask>> tasks;
  for (auto [priority, id] : std::vector<std::pair<int, int>>{{1, 1}, {3, 2}, {1, 3}, {2, 4}}) {
    tasks.push_back(std::make_shared<RecordingTask>(priority, id, &f.log, &f.mu));
    ASSERT_TRUE(q.submit(tasks.back()).ok());
  }
  auto last_started = tasks[2]->started.get_future();  // id 3 runs last
  f.release.set_value();
  last_started.wait();
  q.stop();
  EXPECT_EQ(f.ran(), (std::vector<int>{0, 2, 4, 1, 3}));
}

TEST(WorkQueue, FullQueueRefusesWithRetryHint) {
  Fixture f;
  std::atomic<int> depth{-1};
  WorkQueue::Options o = opts(2);
  o.on_depth = [&](int d) { depth = d; };
  WorkQueue q(o);
  q.start();
  auto blocker = std::make_shared<RecordingTask>(0, 0, &f.log, &f.mu, f.gate);
  auto started = blocker->started.get_future();
  ASSERT_TRUE(q.submit(blocker).ok());
  started.wait();
  ASSERT_TRUE(q.submit(std::make_shared<RecordingTask>(0, 1, &f.log, &f.mu)).ok());
  ASSERT_TRUE(q.submit(std::make_shared<RecordingTask>(0, 2, &f.log, &f.mu)).ok());
  EXPECT_EQ(depth.load(), 2);
  absl::StatusOr<int> full = q.submit(std::make_shared<RecordingTask>(100, 3, &f.log, &f.mu));
  ASSERT_FALSE(full.ok());
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(full.status().message().find("--max-queue 2"), std::string::npos) << full.status();
  EXPECT_NE(full.status().message().find("retry in about"), std::string::npos) << full.status();
  auto hint = full.status().GetPayload(kRetryAfterPayload);
  ASSERT_TRUE(hint.has_value());
  EXPECT_GE(std::stoll(std::string(*hint)), 100);
  f.release.set_value();
  q.stop();
}

TEST(WorkQueue, RemoveWithdrawsAWaitingTaskOnly) {
  Fixture f;
  WorkQueue q(opts(4));
  q.start();
  auto blocker = std::make_shared<RecordingTask>(0, 0, &f.log, &f.mu, f.gate);
  auto started = blocker->started.get_future();
  ASSERT_TRUE(q.submit(blocker).ok());
  started.wait();
  auto a = std::make_shared<RecordingTask>(0, 1, &f.log, &f.mu);
  auto b = std::make_shared<RecordingTask>(0, 2, &f.log, &f.mu);
  ASSERT_TRUE(q.submit(a).ok());
  ASSERT_TRUE(q.submit(b).ok());
  EXPECT_EQ(q.position(b.get()), 2);
  EXPECT_FALSE(q.remove(blocker.get()));  // running: not removable
  EXPECT_TRUE(q.remove(a.get()));
  EXPECT_FALSE(q.remove(a.get()));
  EXPECT_EQ(q.position(a.get()), std::nullopt);
  EXPECT_EQ(q.position(b.get()), 1);  // moved up
  auto b_started = b->started.get_future();
  f.release.set_value();
  b_started.wait();
  q.stop();
  EXPECT_EQ(f.ran(), (std::vector<int>{0, 2}));
}

TEST(WorkQueue, StopRefusesNewWork) {
  WorkQueue q(opts(4));
  q.start();
  q.stop();
  std::vector<int> log;
  std::mutex mu;
  absl::StatusOr<int> r = q.submit(std::make_shared<RecordingTask>(0, 1, &log, &mu));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
}

TEST(WorkQueue, WorkerStartHookRunsOnTheWorker) {
  std::promise<std::thread::id> id;
  WorkQueue::Options o = opts(1);
  o.on_worker_start = [&] { id.set_value(std::this_thread::get_id()); };
  WorkQueue q(o);
  q.start();
  EXPECT_NE(id.get_future().get(), std::this_thread::get_id());
  q.stop();
}

}  // namespace
}  // namespace fluxserve::server
