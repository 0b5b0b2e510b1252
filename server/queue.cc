#include "server/queue.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"

namespace fluxserve::server {

WorkQueue::WorkQueue(Options options) : opts_(std::move(options)) {}

WorkQueue::~WorkQueue() { stop(); }

void WorkQueue::start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (thread_.joinable() || stopping_) return;
  thread_ = std::thread([this] { worker(); });
}

std::chrono::milliseconds WorkQueue::retry_after_locked() const {
  // A slot frees when the running task ends; before any task has finished, guess a second.
  const double s = avg_run_s_ > 0 ? avg_run_s_ : 1.0;
  return std::chrono::milliseconds(std::max<int64_t>(100, std::llround(s * 1000)));
}

std::chrono::milliseconds WorkQueue::retry_after() const {
  std::lock_guard<std::mutex> lock(mu_);
  return retry_after_locked();
}

absl::StatusOr<int> WorkQueue::submit(std::shared_ptr<Task> task) {
  int position = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      return absl::UnavailableError(absl::StrCat("the ", opts_.device, " queue is shutting down"));
    }
    if (static_cast<int>(waiting_.size()) >= opts_.max_waiting) {
      const int64_t ms = retry_after_locked().count();
      absl::Status st = absl::ResourceExhaustedError(absl::StrCat(
          "the ", opts_.device, " queue is full (", waiting_.size(), " requests waiting, --max-queue ",
          opts_.max_waiting, "); retry in about ", ms, " ms"));
      st.SetPayload(kRetryAfterPayload, absl::Cord(absl::StrCat(ms)));
      return st;
    }
    task->seq_ = next_seq_++;
    auto it = waiting_.insert(std::move(task)).first;
    position = static_cast<int>(std::distance(waiting_.begin(), it)) + (running_task_ ? 1 : 0);
    // Reported under the lock so the gauge sees the changes in order.
    if (opts_.on_depth) opts_.on_depth(static_cast<int>(waiting_.size()));
  }
  cv_.notify_one();
  return position;
}

bool WorkQueue::remove(const Task* task) {
  std::shared_ptr<Task> removed;  // destroyed after the lock is released
  std::lock_guard<std::mutex> lock(mu_);
  auto it = std::find_if(waiting_.begin(), waiting_.end(),
                         [&](const std::shared_ptr<Task>& t) { return t.get() == task; });
  if (it == waiting_.end()) return false;
  removed = *it;
  waiting_.erase(it);
  if (opts_.on_depth) opts_.on_depth(static_cast<int>(waiting_.size()));
  return true;
}

std::optional<int> WorkQueue::position(const Task* task) const {
  std::lock_guard<std::mutex> lock(mu_);
  int i = running_task_ ? 1 : 0;
  for (const std::shared_ptr<Task>& t : waiting_) {
    if (t.get() == task) return i;
    ++i;
  }
  return std::nullopt;
}

int WorkQueue::waiting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(waiting_.size());
}

void WorkQueue::stop() {
  std::set<std::shared_ptr<Task>, Order> dropped;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    dropped.swap(waiting_);
    if (!dropped.empty() && opts_.on_depth) opts_.on_depth(0);
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  // `dropped` is destroyed here, outside the lock: a task's destructor may take other locks.
}

void WorkQueue::worker() {
  if (opts_.on_worker_start) opts_.on_worker_start();
  for (;;) {
    std::shared_ptr<Task> task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !waiting_.empty(); });
      if (stopping_) return;
      task = *waiting_.begin();
      waiting_.erase(waiting_.begin());
      running_task_ = true;
      if (opts_.on_depth) opts_.on_depth(static_cast<int>(waiting_.size()));
    }
    const auto t0 = std::chrono::steady_clock::now();
    task->run();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    task.reset();  // release what the task holds (its model lease) before taking the next
    std::lock_guard<std::mutex> lock(mu_);
    running_task_ = false;
    avg_run_s_ = avg_run_s_ == 0 ? s : 0.8 * avg_run_s_ + 0.2 * s;
  }
}

}  // namespace fluxserve::server
