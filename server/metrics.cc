#include "server/metrics.h"

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <exception>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "server/memory.h"
#include "server/metrics_http.h"

namespace fluxserve::server {
namespace {

// 1 ms to 30 minutes: a tiny-model step and a 4-megapixel generation on a CPU both land inside.
const prometheus::Histogram::BucketBoundaries& buckets() {
  static const prometheus::Histogram::BucketBoundaries b = {
      0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,    2.5,
      5,     10,     25,    50,   100,   250,  500, 1000, 1800};
  return b;
}

prometheus::ClientMetric gauge_sample(std::vector<prometheus::ClientMetric::Label> labels,
                                      double value) {
  prometheus::ClientMetric m;
  m.label = std::move(labels);
  m.gauge.value = value;
  return m;
}

const char* state_label(v1::ModelState s) {
  switch (s) {
    case v1::MODEL_STATE_LOADING: return "loading";
    case v1::MODEL_STATE_READY: return "ready";
    case v1::MODEL_STATE_UNLOADING: return "unloading";
    case v1::MODEL_STATE_FAILED: return "failed";
    default: return "";
  }
}

// Values that change with every model operation or allocation, read when Prometheus scrapes.
class ScrapeTimeCollectable : public prometheus::Collectable {
 public:
  explicit ScrapeTimeCollectable(std::function<std::vector<v1::ModelInfo>()> models)
      : models_(std::move(models)) {}

  std::vector<prometheus::MetricFamily> Collect() const override {
    prometheus::MetricFamily state{"fluxserve_model_state",
                                   "1 for the state each model is in, 0 for the others",
                                   prometheus::MetricType::Gauge,
                                   {}};
    prometheus::MetricFamily memory{"fluxserve_model_memory_bytes",
                                    "Bytes each loaded model holds, by component and device",
                                    prometheus::MetricType::Gauge,
                                    {}};
    for (const v1::ModelInfo& m : models_ ? models_() : std::vector<v1::ModelInfo>{}) {
      for (v1::ModelState s : {v1::MODEL_STATE_LOADING, v1::MODEL_STATE_READY,
                               v1::MODEL_STATE_UNLOADING, v1::MODEL_STATE_FAILED}) {
        state.metric.push_back(gauge_sample({{"model", m.name()}, {"state", state_label(s)}},
                                            m.state() == s ? 1.0 : 0.0));
      }
      for (const v1::ComponentMemory& c : m.memory()) {
        memory.metric.push_back(gauge_sample(
            {{"component", c.component()}, {"device", c.device()}, {"model", m.name()}},
            static_cast<double>(c.bytes())));
      }
    }
    prometheus::MetricFamily rss{"process_resident_memory_bytes", "Resident memory size in bytes",
                                 prometheus::MetricType::Gauge,
                                 {gauge_sample({}, static_cast<double>(process_rss_bytes()))}};
    std::vector<prometheus::MetricFamily> out;
    out.push_back(std::move(state));
    out.push_back(std::move(memory));
    out.push_back(std::move(rss));
    const std::vector<GpuMemory> gpus = gpu_memory();
    if (!gpus.empty()) {
      prometheus::MetricFamily used{"fluxserve_gpu_memory_used_bytes",
                                    "GPU memory in use on the device (every process), from NVML",
                                    prometheus::MetricType::Gauge,
                                    {}};
      prometheus::MetricFamily total{"fluxserve_gpu_memory_total_bytes",
                                     "GPU memory of the device, from NVML",
                                     prometheus::MetricType::Gauge,
                                     {}};
      for (const GpuMemory& g : gpus) {
        const std::string device = absl::StrCat("cuda:", g.index);
        used.metric.push_back(gauge_sample({{"device", device}}, static_cast<double>(g.used)));
        total.metric.push_back(gauge_sample({{"device", device}}, static_cast<double>(g.total)));
      }
      out.push_back(std::move(used));
      out.push_back(std::move(total));
    }
    return out;
  }

 private:
  std::function<std::vector<v1::ModelInfo>()> models_;
};

}  // namespace

Metrics::Metrics(std::function<std::vector<v1::ModelInfo>()> models)
    : registry_(std::make_shared<prometheus::Registry>()),
      scrape_time_(std::make_shared<ScrapeTimeCollectable>(std::move(models))) {
  auto& r = *registry_;
  requests_ = &prometheus::BuildCounter()
                   .Name("fluxserve_requests_total")
                   .Help("Generate requests by model and outcome")
                   .Register(r);
  failures_ = &prometheus::BuildCounter()
                   .Name("fluxserve_request_failures_total")
                   .Help("Generate requests that failed, by reason")
                   .Register(r);
  images_ = &prometheus::BuildCounter()
                 .Name("fluxserve_images_generated_total")
                 .Help("Images generated")
                 .Register(r);
  request_duration_ = &prometheus::BuildHistogram()
                           .Name("fluxserve_request_duration_seconds")
                           .Help("Generate requests from arrival to the last message, queue included")
                           .Register(r);
  queue_wait_ = &prometheus::BuildHistogram()
                     .Name("fluxserve_queue_wait_seconds")
                     .Help("Time requests waited in the queue before running")
                     .Register(r);
  stage_duration_ = &prometheus::BuildHistogram()
                         .Name("fluxserve_stage_duration_seconds")
                         .Help("Time of the pipeline stages: text_encode, denoise, decode")
                         .Register(r);
  step_duration_ = &prometheus::BuildHistogram()
                        .Name("fluxserve_step_duration_seconds")
                        .Help("Time of one denoising step")
                        .Register(r);
  queue_depth_ = &prometheus::BuildGauge()
                      .Name("fluxserve_queue_depth")
                      .Help("Requests waiting in the queue")
                      .Register(r)
                      .Add({});
  in_flight_ = &prometheus::BuildGauge()
                    .Name("fluxserve_in_flight_requests")
                    .Help("Generate requests accepted and not finished (queued or running)")
                    .Register(r)
                    .Add({});
  load_duration_ = &prometheus::BuildHistogram()
                        .Name("fluxserve_model_load_duration_seconds")
                        .Help("Time to load a model")
                        .Register(r);
  loads_ = &prometheus::BuildCounter()
                .Name("fluxserve_model_loads_total")
                .Help("Model loads by outcome")
                .Register(r);
  swaps_ = &prometheus::BuildCounter()
                .Name("fluxserve_model_swaps_total")
                .Help("Model swaps by outcome and mode (beside: no pause; reload: drained first)")
                .Register(r);
}

Metrics::~Metrics() = default;

absl::StatusOr<int> Metrics::serve(const std::string& listen) {
  // Not prometheus::Exposer: see metrics_http.h for why the endpoint is ours.
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> http =
      MetricsHttpServer::start(listen, [this] { return text(); });
  if (!http.ok()) return http.status();
  http_ = std::move(*http);
  return http_->port();
}

std::string Metrics::text() const {
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  for (auto& f : scrape_time_->Collect()) families.push_back(std::move(f));
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

void Metrics::request_done(const std::string& model, const std::string& outcome, double seconds) {
  requests_->Add({{"model", model}, {"outcome", outcome}}).Increment();
  request_duration_->Add({{"model", model}, {"outcome", outcome}}, buckets()).Observe(seconds);
}

void Metrics::request_failed(const std::string& model, const std::string& reason) {
  failures_->Add({{"model", model}, {"reason", reason}}).Increment();
}

void Metrics::images_generated(const std::string& model, int n) {
  images_->Add({{"model", model}}).Increment(n);
}

void Metrics::queue_wait(const std::string& model, double seconds) {
  queue_wait_->Add({{"model", model}}, buckets()).Observe(seconds);
}

void Metrics::stage(const std::string& model, const std::string& stage, double seconds) {
  stage_duration_->Add({{"model", model}, {"stage", stage}}, buckets()).Observe(seconds);
}

void Metrics::step(const std::string& model, double seconds) {
  step_duration_->Add({{"model", model}}, buckets()).Observe(seconds);
}

void Metrics::set_queue_depth(int depth) { queue_depth_->Set(depth); }

void Metrics::in_flight_add(int delta) { in_flight_->Increment(delta); }

void Metrics::model_load(const std::string& model, bool ok, double seconds) {
  loads_->Add({{"model", model}, {"outcome", ok ? "ok" : "error"}}).Increment();
  if (ok) load_duration_->Add({{"model", model}}, buckets()).Observe(seconds);
}

void Metrics::model_swap(const std::string& model, bool ok, const std::string& mode) {
  swaps_->Add({{"model", model}, {"outcome", ok ? "ok" : "error"}, {"mode", mode}}).Increment();
}

}  // namespace fluxserve::server
