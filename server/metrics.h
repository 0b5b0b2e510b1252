// Prometheus metrics of the server (prometheus-cpp registry and text format): the names, types and labels server/README.md
// lists, nothing else. Counters and histograms are recorded as requests and loads happen; model
// state, model memory and the process's resident set are read at scrape time (a Collectable), so
// an unloaded model's series disappear instead of going stale.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "fluxserve/v1/model_service.pb.h"

namespace prometheus {
class Registry;
class Collectable;
class Gauge;
template <typename T>
class Family;
class Counter;
class Histogram;
}  // namespace prometheus

namespace fluxserve::server {

class MetricsHttpServer;

class Metrics {
 public:
  // `models` is called at every scrape for fluxserve_model_state / fluxserve_model_memory_bytes.
  explicit Metrics(std::function<std::vector<v1::ModelInfo>()> models);
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // Serves /metrics on `listen` (HOST:PORT, port 0 picks one); returns the bound port.
  absl::StatusOr<int> serve(const std::string& listen);
  // The text exposition of everything, as a scrape would return it (tests, debugging).
  std::string text() const;

  // outcome: ok, cancelled, deadline_exceeded, rejected, invalid, error.
  void request_done(const std::string& model, const std::string& outcome, double seconds);
  // reason: queue_full, invalid_argument, unknown_model, cancelled, deadline_exceeded,
  // unauthenticated, resource_exhausted, internal.
  void request_failed(const std::string& model, const std::string& reason);
  void images_generated(const std::string& model, int n);
  void queue_wait(const std::string& model, double seconds);
  // stage: text_encode, denoise, decode.
  void stage(const std::string& model, const std::string& stage, double seconds);
  void step(const std::string& model, double seconds);
  void set_queue_depth(int depth);
  void in_flight_add(int delta);
  void model_load(const std::string& model, bool ok, double seconds);
  // mode: beside, reload.
  void model_swap(const std::string& model, bool ok, const std::string& mode);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<prometheus::Collectable> scrape_time_;
  std::unique_ptr<MetricsHttpServer> http_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Counter>* failures_;
  prometheus::Family<prometheus::Counter>* images_;
  prometheus::Family<prometheus::Histogram>* request_duration_;
  prometheus::Family<prometheus::Histogram>* queue_wait_;
  prometheus::Family<prometheus::Histogram>* stage_duration_;
  prometheus::Family<prometheus::Histogram>* step_duration_;
  prometheus::Gauge* queue_depth_;
  prometheus::Gauge* in_flight_;
  prometheus::Family<prometheus::Histogram>* load_duration_;
  prometheus::Family<prometheus::Counter>* loads_;
  prometheus::Family<prometheus::Counter>* swaps_;
};

}  // namespace fluxserve::server
