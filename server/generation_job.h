// One Generate request's work on the device worker: runs the pipeline on the leased model and
// hands progress events and the outcome to the gRPC handler thread through a small mailbox.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>

#include "engine/pipeline/flux_pipeline.h"
#include "fluxserve/v1/image_service.pb.h"
#include "server/metrics.h"
#include "server/queue.h"
#include "server/registry.h"

namespace fluxserve::server {

class GenerationJob : public Task {
 public:
  GenerationJob(int priority, std::shared_ptr<ModelLease> lease, GenerateRequest req,
                int preview_every_n_steps, Metrics* metrics);
  void run() override;

  const LoadedModel& model() const { return lease_->model(); }
  const GenerateRequest& request() const { return req_; }
  // Set by the handler; polled by the pipeline between steps (and before starting).
  std::atomic<bool> cancel{false};

  // What the handler takes from the mailbox: progress since the last call, and whether the
  // job finished (then `result` holds the outcome). Waits up to `wait` for something new.
  struct Drained {
    std::deque<v1::Progress> progress;
    bool done = false;
    bool started = false;
  };
  Drained drain(std::chrono::milliseconds wait);
  // Valid once drain() reported done.
  const absl::StatusOr<GenerateResult>& result() const { return result_; }
  double queue_seconds() const { return queue_seconds_; }

 private:
  void on_progress(const GenerateProgress& p);

  std::shared_ptr<ModelLease> lease_;
  const GenerateRequest req_;
  const int preview_every_;
  Metrics* metrics_;
  const std::chrono::steady_clock::time_point enqueued_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point last_step_;  // worker thread only

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<v1::Progress> progress_;
  bool started_ = false;
  bool done_ = false;
  absl::StatusOr<GenerateResult> result_;  // written before done_, read after it
  double queue_seconds_ = 0;               // same
};

}  // namespace fluxserve::server
