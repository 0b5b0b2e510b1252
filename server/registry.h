// The model registry: name -> loaded FLUX pipeline, with its state (LOADING, READY, UNLOADING,
// FAILED + reason), memory by component and load time. Requests take a lease (a shared_ptr to
// the model generation they start on), so in-flight work finishes on that model whatever
// happens to the name. Swap loads the new spec beside the old one when memory allows, else
// drains the name and reloads; the name flips atomically; the old pipeline is freed when its
// last lease ends, after which the heap is trimmed and the memory that came back is measured.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/pipeline/flux_pipeline.h"
#include "fluxserve/v1/model_service.pb.h"
#include "server/config.h"
#include "server/memory.h"

namespace fluxserve::server {

class Metrics;

// One loaded generation of a name; immutable once published.
struct LoadedModel {
  std::string name;
  ResolvedSpec spec;
  std::unique_ptr<const FluxPipeline> pipeline;
  std::vector<ComponentMemory> memory;  // FluxPipeline::memory()
  int64_t total_bytes = 0;
  double load_seconds = 0;
};

// A request's hold on a model generation: keeps it alive and counted as active.
class ModelLease {
 public:
  ModelLease(std::shared_ptr<const LoadedModel> model, std::shared_ptr<std::atomic<int>> active);
  ~ModelLease();
  ModelLease(const ModelLease&) = delete;
  ModelLease& operator=(const ModelLease&) = delete;
  const LoadedModel& model() const { return *model_; }

 private:
  std::shared_ptr<const LoadedModel> model_;
  std::shared_ptr<std::atomic<int>> active_;
};

struct UnloadResult {
  int64_t freed_bytes = 0;         // what the model held
  int64_t rss_returned_bytes = 0;  // resident set before - after (trim included)
};

struct SwapResult {
  v1::ModelInfo model;
  bool loaded_beside = false;
  std::string message;
  double swap_seconds = 0;
  int64_t old_model_freed_bytes = 0;
};

class ModelRegistry {
 public:
  struct Options {
    std::string model_root;
    int compute_threads = 0;  // OpenMP threads for loading (quantize-on-load); 0 = default
    Metrics* metrics = nullptr;
    // Called (without registry locks held) after any state change: health follows readiness.
    std::function<void()> on_change;
    // MemAvailable source; tests replace it to force a swap to drain and reload.
    std::function<int64_t()> mem_available = mem_available_bytes;
  };
  explicit ModelRegistry(Options options);
  ~ModelRegistry();

  // Loads spec.name and returns once it is READY. ALREADY_EXISTS when the name is taken (unless
  // its last load FAILED); RESOURCE_EXHAUSTED when the estimate exceeds MemAvailable; the load's
  // error otherwise (the name is then FAILED with the reason).
  absl::StatusOr<v1::ModelInfo> load(const v1::ModelSpec& spec, bool make_default);
  // Stops handing out leases for `name`, waits for the in-flight ones, frees the pipeline.
  absl::StatusOr<UnloadResult> unload(const std::string& name);
  // Points `name` at `spec` (spec.name empty or equal). A failed load leaves the old model
  // serving (after a drain-and-reload, the old spec is loaded again).
  absl::StatusOr<SwapResult> swap(const std::string& name, const v1::ModelSpec& spec);

  // The model a request runs on; "" = the default. Waits while the name is LOADING (a swap that
  // drains and reloads, or the first load), polling `stop` every few milliseconds, whose
  // non-OK status is returned. NOT_FOUND for unknown names and names being unloaded, UNAVAILABLE
  // when FAILED.
  absl::StatusOr<std::shared_ptr<ModelLease>> acquire(const std::string& name,
                                                      const std::function<absl::Status()>& stop);
  // Whether `name` ("" = the default) is known, without waiting (request validation).
  bool contains(const std::string& name) const;

  std::vector<v1::ModelInfo> list() const;
  absl::StatusOr<v1::ModelInfo> get(const std::string& name) const;
  std::string default_model() const;
  void set_default_model(const std::string& name);
  // The default model exists and is READY (readiness).
  bool default_ready() const;
  // Drops every model (shutdown); in-flight leases keep theirs alive until they end.
  void clear();

 private:
  struct FreeSignal;
  struct Entry;
  struct Generation;
  // Loads `spec` outside any lock; records the load in the metrics.
  absl::StatusOr<Generation> load_generation(const ResolvedSpec& spec);
  static void wait_freed(const std::shared_ptr<FreeSignal>& signal);
  v1::ModelInfo info_locked(const std::string& name, const Entry& e) const;
  void set_state_locked(Entry& e, v1::ModelState state, std::string reason);
  void changed();

  const Options opts_;
  mutable std::mutex mu_;
  std::condition_variable cv_;  // state changes (acquire waits on LOADING)
  std::map<std::string, Entry> entries_;
  std::string default_;
};

}  // namespace fluxserve::server
