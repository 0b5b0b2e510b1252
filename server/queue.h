// The execution queue of one device: a bounded priority queue (higher priority first, equal
// priorities in arrival order) drained by one worker thread, so a device runs one generation at
// a time. A full queue refuses at once with RESOURCE_EXHAUSTED carrying a retry hint, rather than
// letting work pile up; a waiting task can be withdrawn (cancelled requests leave the queue).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace fluxserve::server {

// Work for the queue. run() executes on the worker thread.
class Task {
 public:
  explicit Task(int priority) : priority_(priority) {}
  virtual ~Task() = default;
  virtual void run() = 0;
  int priority() const { return priority_; }

 private:
  friend class WorkQueue;
  const int priority_;
  uint64_t seq_ = 0;  // arrival order; set by the queue under its mutex
};

// The payload key of a RESOURCE_EXHAUSTED status from submit(): the suggested wait before
// retrying, in milliseconds (decimal text). The gRPC layer sends it as `retry-after-ms`.
inline constexpr const char* kRetryAfterPayload = "type.fluxserve/retry-after-ms";

class WorkQueue {
 public:
  struct Options {
    std::string device = "cpu";  // for messages
    int max_waiting = 16;        // tasks waiting (the running one not counted)
    // Called on the worker thread before the first task (per-thread setup such as OpenMP's
    // thread count, which is a per-thread setting).
    std::function<void()> on_worker_start;
    // Called with the number of waiting tasks whenever it changes.
    std::function<void(int)> on_depth;
  };
  explicit WorkQueue(Options options);
  ~WorkQueue();  // stop()
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  // Starts the worker thread.
  void start();
  // Queues `task`; returns how many tasks run before it (0 = next). RESOURCE_EXHAUSTED with a
  // kRetryAfterPayload payload when max_waiting tasks wait; UNAVAILABLE after stop().
  absl::StatusOr<int> submit(std::shared_ptr<Task> task);
  // Takes `task` out if it is still waiting; false when it already runs or ran.
  bool remove(const Task* task);
  // Tasks ahead of `task` (the running one included), or nullopt when it no longer waits.
  std::optional<int> position(const Task* task) const;
  int waiting() const;
  // Refuses new tasks, lets the running task finish, drops the waiting ones and joins the worker.
  void stop();
  // The suggested wait before retrying a refused submit: the recent average run time.
  std::chrono::milliseconds retry_after() const;

 private:
  struct Order {
    bool operator()(const std::shared_ptr<Task>& a, const std::shared_ptr<Task>& b) const {
      if (a->priority() != b->priority()) return a->priority() > b->priority();
      return a->seq_ < b->seq_;
    }
  };
  void worker();
  std::chrono::milliseconds retry_after_locked() const;

  const Options opts_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::set<std::shared_ptr<Task>, Order> waiting_;
  bool running_task_ = false;
  bool stopping_ = false;
  uint64_t next_seq_ = 0;
  double avg_run_s_ = 0;  // exponential moving average of run times; 0 before the first
  std::thread thread_;
};

}  // namespace fluxserve::server
