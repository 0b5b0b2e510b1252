#include "server/generation_job.h"

#include "engine/pipeline/png.h"
#include "server/preview.h"

namespace fluxserve::server {
namespace {

double seconds_between(std::chrono::steady_clock::time_point a,
                       std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Progress the client has not read yet beyond this is coalesced (the oldest previews-free
// messages dropped): a slow reader must not grow the server's memory.
constexpr size_t kMaxPendingProgress = 16;

}  // namespace

GenerationJob::GenerationJob(int priority, std::shared_ptr<ModelLease> lease, GenerateRequest req,
                             int preview_every_n_steps, Metrics* metrics)
    : Task(priority),
      lease_(std::move(lease)),
      req_(std::move(req)),
      preview_every_(preview_every_n_steps),
      metrics_(metrics) {}

void GenerationJob::on_progress(const GenerateProgress& p) {
  const auto now = std::chrono::steady_clock::now();
  const std::string& name = lease_->model().name;
  if (p.step > 0 && metrics_ != nullptr) metrics_->step(name, seconds_between(last_step_, now));
  last_step_ = now;
  v1::Progress msg;
  msg.set_step(static_cast<int32_t>(p.step));
  msg.set_total(static_cast<int32_t>(p.total));
  msg.set_elapsed_seconds(p.elapsed_s);
  if (preview_every_ > 0 && p.step > 0 && p.latents != nullptr &&
      (p.step % preview_every_ == 0 || p.step == p.total)) {
    // A preview that cannot be made (a model with other than 16 latent channels) is skipped.
    absl::StatusOr<Image> img = latent_preview(*p.latents, p.latent_height, p.latent_width);
    if (img.ok()) {
      absl::StatusOr<std::string> png = encode_png(*img);
      if (png.ok()) {
        v1::Image* pv = msg.mutable_preview();
        pv->set_data(std::move(*png));
        pv->set_mime_type("image/png");
        pv->set_width(static_cast<int32_t>(img->width));
        pv->set_height(static_cast<int32_t>(img->height));
        pv->set_seed(req_.seed);
      }
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (progress_.size() >= kMaxPendingProgress) {
      for (auto it = progress_.begin(); it != progress_.end(); ++it) {
        if (!it->has_preview()) {
          progress_.erase(it);
          break;
        }
      }
      if (progress_.size() >= kMaxPendingProgress) progress_.pop_front();
    }
    progress_.push_back(std::move(msg));
  }
  cv_.notify_all();
}

void GenerationJob::run() {
  const auto start = std::chrono::steady_clock::now();
  last_step_ = start;
  const double waited = seconds_between(enqueued_, start);
  {
    std::lock_guard<std::mutex> lock(mu_);
    started_ = true;
    queue_seconds_ = waited;
  }
  cv_.notify_all();
  const LoadedModel& m = lease_->model();
  if (metrics_ != nullptr) metrics_->queue_wait(m.name, waited);
  absl::StatusOr<GenerateResult> r =
      cancel.load() ? absl::CancelledError("cancelled before it started")
                    : m.pipeline->generate(req_, [this](const GenerateProgress& p) { on_progress(p); },
                                           &cancel);
  if (r.ok() && metrics_ != nullptr) {
    metrics_->stage(m.name, "text_encode", r->encode_s);
    metrics_->stage(m.name, "denoise", r->denoise_s);
    metrics_->stage(m.name, "decode", r->decode_s);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    result_ = std::move(r);
    done_ = true;
  }
  cv_.notify_all();
}

GenerationJob::Drained GenerationJob::drain(std::chrono::milliseconds wait) {
  Drained d;
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, wait, [&] { return done_ || !progress_.empty(); });
  d.progress.swap(progress_);
  d.done = done_;
  d.started = started_;
  return d;
}

}  // namespace fluxserve::server
