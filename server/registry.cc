#include "server/registry.h"

#include <omp.h>

#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/core/status.h"
#include "server/metrics.h"

namespace fluxserve::server {
namespace {

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

std::string gib(int64_t bytes) {
  return absl::StrFormat("%.2f GiB", static_cast<double>(bytes) / (1 << 30));
}

const char* state_name(v1::ModelState s) {
  switch (s) {
    case v1::MODEL_STATE_LOADING: return "LOADING";
    case v1::MODEL_STATE_READY: return "READY";
    case v1::MODEL_STATE_UNLOADING: return "UNLOADING";
    case v1::MODEL_STATE_FAILED: return "FAILED";
    default: return "UNSPECIFIED";
  }
}

}  // namespace

// Set by the deleter of a LoadedModel once it (and so its pipeline) is gone.
struct ModelRegistry::FreeSignal {
  std::mutex mu;
  std::condition_variable cv;
  bool freed = false;
};

struct ModelRegistry::Generation {
  std::shared_ptr<const LoadedModel> model;
  std::shared_ptr<FreeSignal> freed;
};

struct ModelRegistry::Entry {
  v1::ModelState state = v1::MODEL_STATE_LOADING;
  std::string reason;
  double state_since = 0;
  ResolvedSpec spec;  // the spec the name points at (or failed to load)
  Generation current;  // empty unless READY
  std::shared_ptr<std::atomic<int>> active = std::make_shared<std::atomic<int>>(0);
  bool busy = false;  // a load, unload or swap is in progress
};

ModelLease::ModelLease(std::shared_ptr<const LoadedModel> model,
                       std::shared_ptr<std::atomic<int>> active)
    : model_(std::move(model)), active_(std::move(active)) {
  active_->fetch_add(1);
}

ModelLease::~ModelLease() { active_->fetch_sub(1); }

ModelRegistry::ModelRegistry(Options options) : opts_(std::move(options)) {}

ModelRegistry::~ModelRegistry() { clear(); }

void ModelRegistry::changed() {
  cv_.notify_all();
  if (opts_.on_change) opts_.on_change();
}

void ModelRegistry::set_state_locked(Entry& e, v1::ModelState state, std::string reason) {
  e.state = state;
  e.reason = std::move(reason);
  e.state_since = unix_now();
}

void ModelRegistry::wait_freed(const std::shared_ptr<FreeSignal>& signal) {
  if (!signal) return;
  std::unique_lock<std::mutex> lock(signal->mu);
  signal->cv.wait(lock, [&] { return signal->freed; });
}

absl::StatusOr<ModelRegistry::Generation> ModelRegistry::load_generation(const ResolvedSpec& spec) {
  const std::string& name = spec.spec.name();
  // OpenMP's thread count is per thread: loading runs on whichever thread asked.
  if (opts_.compute_threads > 0) omp_set_num_threads(opts_.compute_threads);
  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<FluxPipeline>> pipe =
      FluxPipeline::load(spec.dir, spec.quant ? &*spec.quant : nullptr);
  const double seconds = seconds_since(t0);
  if (opts_.metrics != nullptr) opts_.metrics->model_load(name, pipe.ok(), seconds);
  if (!pipe.ok()) {
    // Whatever the failed load allocated is gone; give the pages back too.
    trim_heap();
    return absl::Status(pipe.status().code(), absl::StrCat("loading model '", name, "' from ",
                                                           spec.dir, ": ", pipe.status().message()));
  }
  auto* m = new LoadedModel;
  m->name = name;
  m->spec = spec;
  m->memory = (*pipe)->memory();
  for (const ComponentMemory& c : m->memory) m->total_bytes += c.bytes;
  m->pipeline = std::move(*pipe);
  m->load_seconds = seconds;
  Generation g;
  g.freed = std::make_shared<FreeSignal>();
  g.model = std::shared_ptr<const LoadedModel>(m, [signal = g.freed](const LoadedModel* p) {
    delete p;
    {
      std::lock_guard<std::mutex> lock(signal->mu);
      signal->freed = true;
    }
    signal->cv.notify_all();
  });
  return g;
}

absl::StatusOr<v1::ModelInfo> ModelRegistry::load(const v1::ModelSpec& spec, bool make_default) {
  FLUX_ASSIGN_OR_RETURN(ResolvedSpec resolved, resolve_spec(spec, opts_.model_root, "spec"));
  const std::string name = spec.name();
  const int64_t need = estimate_pipeline_bytes(resolved.dir, resolved.quant ? &*resolved.quant : nullptr);
  const int64_t avail = opts_.mem_available ? opts_.mem_available() : -1;
  if (avail >= 0 && need > avail) {
    return absl::ResourceExhaustedError(absl::StrCat("model '", name, "' needs about ", gib(need),
                                                     ", only ", gib(avail), " is available"));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(name);
    if (it != entries_.end() && (it->second.busy || it->second.state != v1::MODEL_STATE_FAILED)) {
      return absl::AlreadyExistsError(absl::StrCat(
          "spec.name: model '", name, "' is already ", state_name(it->second.state),
          "; use SwapModel to point it at a new spec, or UnloadModel first"));
    }
    Entry& e = entries_[name];
    e.busy = true;
    e.spec = resolved;
    set_state_locked(e, v1::MODEL_STATE_LOADING, "loading");
  }
  changed();
  absl::StatusOr<Generation> g = load_generation(resolved);
  v1::ModelInfo info;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Entry& e = entries_[name];
    e.busy = false;
    if (g.ok()) {
      e.current = std::move(*g);
      set_state_locked(e, v1::MODEL_STATE_READY, "");
      if (make_default || default_.empty()) default_ = name;
    } else {
      set_state_locked(e, v1::MODEL_STATE_FAILED, std::string(g.status().message()));
    }
    info = info_locked(name, e);
  }
  changed();
  if (!g.ok()) return g.status();
  return info;
}

absl::StatusOr<UnloadResult> ModelRegistry::unload(const std::string& name) {
  Generation old;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(name);
    if (it == entries_.end()) {
      return absl::NotFoundError(absl::StrCat("name: no model named '", name, "'"));
    }
    Entry& e = it->second;
    if (e.busy) {
      return absl::FailedPreconditionError(
          absl::StrCat("name: model '", name, "' is busy (", state_name(e.state), ": ", e.reason,
                       "); try again when that finishes"));
    }
    if (!e.current.model) {  // FAILED: nothing is held
      entries_.erase(it);
    } else {
      e.busy = true;
      set_state_locked(e, v1::MODEL_STATE_UNLOADING,
                       absl::StrCat("waiting for ", e.active->load(), " request(s) to finish"));
      old = std::move(e.current);
      e.current = {};
    }
  }
  changed();
  UnloadResult r;
  if (!old.model) return r;
  const int64_t rss_before = process_rss_bytes();
  r.freed_bytes = old.model->total_bytes;
  old.model.reset();
  wait_freed(old.freed);
  trim_heap();
  r.rss_returned_bytes = rss_before - process_rss_bytes();
  {
    std::lock_guard<std::mutex> lock(mu_);
    entries_.erase(name);
  }
  changed();
  return r;
}

absl::StatusOr<SwapResult> ModelRegistry::swap(const std::string& name, const v1::ModelSpec& spec) {
  const auto t0 = std::chrono::steady_clock::now();
  if (!spec.name().empty() && spec.name() != name) {
    return absl::InvalidArgumentError(absl::StrCat("spec.name: '", spec.name(),
                                                   "' differs from name '", name, "'"));
  }
  FLUX_RETURN_IF_ERROR(validate_model_name(name, "name"));
  v1::ModelSpec named = spec;
  named.set_name(name);
  FLUX_ASSIGN_OR_RETURN(ResolvedSpec resolved, resolve_spec(named, opts_.model_root, "spec"));
  ResolvedSpec old_spec;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(name);
    if (it == entries_.end()) {
      return absl::NotFoundError(
          absl::StrCat("name: no model named '", name, "' (use LoadModel for a new name)"));
    }
    Entry& e = it->second;
    if (e.busy || e.state != v1::MODEL_STATE_READY) {
      return absl::FailedPreconditionError(absl::StrCat(
          "name: model '", name, "' is ", state_name(e.state), e.reason.empty() ? "" : ": ",
          e.reason, e.busy ? "; try again when that finishes" : "; LoadModel it instead"));
    }
    e.busy = true;
    old_spec = e.spec;
  }

  const int64_t need = estimate_pipeline_bytes(resolved.dir, resolved.quant ? &*resolved.quant : nullptr);
  const int64_t avail = opts_.mem_available ? opts_.mem_available() : -1;
  // Headroom for the request activations that keep running on the old model meanwhile.
  const bool beside = avail < 0 || static_cast<double>(need) <= 0.9 * static_cast<double>(avail);
  const std::string numbers =
      avail < 0 ? absl::StrCat("the new spec needs about ", gib(need))
                : absl::StrCat("the new spec needs about ", gib(need), ", ", gib(avail), " available");
  SwapResult r;
  r.loaded_beside = beside;
  const char* mode = beside ? "beside" : "reload";
  auto finish = [&](bool ok) {
    if (opts_.metrics != nullptr) opts_.metrics->model_swap(name, ok, mode);
  };

  Generation old;
  if (beside) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      entries_[name].reason = absl::StrCat("swapping: loading the new spec beside this one (", numbers, ")");
    }
    changed();
    absl::StatusOr<Generation> g = load_generation(resolved);
    {
      std::lock_guard<std::mutex> lock(mu_);
      Entry& e = entries_[name];
      e.busy = false;
      if (g.ok()) {
        old = std::move(e.current);
        e.current = std::move(*g);
        e.spec = resolved;
        set_state_locked(e, v1::MODEL_STATE_READY, "");
      } else {
        e.reason = "";
      }
    }
    changed();
    if (!g.ok()) {
      finish(false);
      return absl::Status(g.status().code(),
                          absl::StrCat("swap of '", name, "' failed; the old model keeps serving: ",
                                       g.status().message()));
    }
  } else {
    {
      std::lock_guard<std::mutex> lock(mu_);
      Entry& e = entries_[name];
      set_state_locked(e, v1::MODEL_STATE_LOADING,
                       absl::StrCat("swapping: draining and reloading because both models would "
                                    "not fit (", numbers, "); requests wait"));
      old = std::move(e.current);
      e.current = {};
    }
    changed();
  }

  // The old generation goes when its last in-flight request ends.
  r.old_model_freed_bytes = old.model ? old.model->total_bytes : 0;
  const int64_t rss_before = process_rss_bytes();
  old.model.reset();
  wait_freed(old.freed);
  trim_heap();
  const int64_t returned = rss_before - process_rss_bytes();

  if (!beside) {
    absl::StatusOr<Generation> g = load_generation(resolved);
    absl::Status restore_error;
    if (!g.ok()) {
      absl::StatusOr<Generation> back = load_generation(old_spec);
      std::lock_guard<std::mutex> lock(mu_);
      Entry& e = entries_[name];
      e.busy = false;
      if (back.ok()) {
        e.current = std::move(*back);
        set_state_locked(e, v1::MODEL_STATE_READY, "");
      } else {
        restore_error = back.status();
        set_state_locked(e, v1::MODEL_STATE_FAILED,
                         absl::StrCat("swap failed: ", g.status().message(),
                                      "; reloading the old spec failed too: ", back.status().message()));
      }
    } else {
      std::lock_guard<std::mutex> lock(mu_);
      Entry& e = entries_[name];
      e.busy = false;
      e.current = std::move(*g);
      e.spec = resolved;
      set_state_locked(e, v1::MODEL_STATE_READY, "");
    }
    changed();
    if (!g.ok()) {
      finish(false);
      return absl::Status(
          g.status().code(),
          absl::StrCat("swap of '", name, "' failed: ", g.status().message(),
                       restore_error.ok() ? "; the old spec was loaded again and serves"
                                          : "; the old spec could not be loaded again either"));
    }
  }
  finish(true);
  {
    std::lock_guard<std::mutex> lock(mu_);
    r.model = info_locked(name, entries_[name]);
  }
  r.swap_seconds = seconds_since(t0);
  r.message = absl::StrCat(
      beside ? "loaded beside the old model" : "drained and reloaded", " (", numbers,
      "); the old model was freed after its last request, the process gave back ",
      absl::StrFormat("%.1f MiB", static_cast<double>(returned) / (1 << 20)));
  return r;
}

absl::StatusOr<std::shared_ptr<ModelLease>> ModelRegistry::acquire(
    const std::string& requested, const std::function<absl::Status()>& stop) {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    const std::string name = requested.empty() ? default_ : requested;
    auto it = entries_.find(name);
    if (it == entries_.end()) {
      std::vector<std::string> names;
      for (const auto& [n, e] : entries_) names.push_back(n);
      if (name.empty()) return absl::NotFoundError("model: the server has no default model");
      return absl::NotFoundError(absl::StrCat("model: no model named '", name, "' (loaded: ",
                                              names.empty() ? "none" : absl::StrJoin(names, ", "), ")"));
    }
    Entry& e = it->second;
    switch (e.state) {
      case v1::MODEL_STATE_READY:
        return std::make_shared<ModelLease>(e.current.model, e.active);
      case v1::MODEL_STATE_LOADING: {
        cv_.wait_for(lock, std::chrono::milliseconds(20));
        lock.unlock();
        absl::Status st = stop ? stop() : absl::OkStatus();
        lock.lock();
        if (!st.ok()) return st;
        continue;
      }
      case v1::MODEL_STATE_UNLOADING:
        // UnloadModel took the name out of routing at once; only its running requests finish.
        // Not UNAVAILABLE: retrying would not bring it back.
        return absl::NotFoundError(absl::StrCat(
            "model: '", name, "' is being unloaded and takes no new requests"));
      default:
        return absl::UnavailableError(
            absl::StrCat("model '", name, "' is not available: ", e.reason));
    }
  }
}

bool ModelRegistry::contains(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.contains(name.empty() ? default_ : name);
}

v1::ModelInfo ModelRegistry::info_locked(const std::string& name, const Entry& e) const {
  v1::ModelInfo info;
  info.set_name(name);
  info.set_state(e.state);
  info.set_reason(e.reason);
  *info.mutable_spec() = e.spec.spec;
  info.set_is_default(name == default_);
  info.set_active_requests(e.active->load());
  info.set_state_since_unix(e.state_since);
  info.set_quantization("none");
  if (const LoadedModel* m = e.current.model.get()) {
    for (const ComponentMemory& c : m->memory) {
      v1::ComponentMemory* cm = info.add_memory();
      cm->set_component(c.component);
      cm->set_device(c.device);
      cm->set_bytes(c.bytes);
      cm->set_format(c.format);
      cm->set_quantized_layers(c.quantized_layers);
      cm->set_total_layers(c.total_layers);
    }
    info.set_total_bytes(m->total_bytes);
    info.set_load_seconds(m->load_seconds);
    info.set_quantization(m->pipeline->quantization());
  }
  return info;
}

std::vector<v1::ModelInfo> ModelRegistry::list() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<v1::ModelInfo> out;
  for (const auto& [name, e] : entries_) out.push_back(info_locked(name, e));
  return out;
}

absl::StatusOr<v1::ModelInfo> ModelRegistry::get(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(name);
  if (it == entries_.end()) return absl::NotFoundError(absl::StrCat("name: no model named '", name, "'"));
  return info_locked(name, it->second);
}

std::string ModelRegistry::default_model() const {
  std::lock_guard<std::mutex> lock(mu_);
  return default_;
}

void ModelRegistry::set_default_model(const std::string& name) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    default_ = name;
  }
  changed();
}

bool ModelRegistry::default_ready() const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(default_);
  return it != entries_.end() && it->second.state == v1::MODEL_STATE_READY;
}

void ModelRegistry::clear() {
  std::map<std::string, Entry> gone;
  {
    std::lock_guard<std::mutex> lock(mu_);
    gone.swap(entries_);
  }
  // Destroyed here, outside the lock; leases still running keep their generation alive.
}

}  // namespace fluxserve::server
