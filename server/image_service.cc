#include "server/image_service.h"

#include <chrono>
#include <string>

#include "absl/strings/str_cat.h"
#include "server/generation_job.h"
#include "server/grpc_status.h"

namespace fluxserve::server {
namespace {

using Clock = std::chrono::steady_clock;

// Label for requests whose model is unknown: not a valid model name, so it cannot collide, and
// arbitrary client strings do not become label values.
constexpr const char* kUnknownModel = "(unknown)";

struct Outcome {
  const char* outcome;
  const char* reason;  // nullptr for success
};

Outcome classify(const absl::Status& st, bool queue_full) {
  switch (st.code()) {
    case absl::StatusCode::kOk: return {"ok", nullptr};
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange: return {"invalid", "invalid_argument"};
    case absl::StatusCode::kNotFound: return {"invalid", "unknown_model"};
    case absl::StatusCode::kCancelled: return {"cancelled", "cancelled"};
    case absl::StatusCode::kDeadlineExceeded: return {"deadline_exceeded", "deadline_exceeded"};
    case absl::StatusCode::kUnauthenticated: return {"rejected", "unauthenticated"};
    case absl::StatusCode::kResourceExhausted:
      return queue_full ? Outcome{"rejected", "queue_full"} : Outcome{"rejected", "resource_exhausted"};
    default: return {"error", "internal"};
  }
}

// A client's own timer ends its call a little before the server's copy of the deadline does:
// the server counts the timeout from when the request arrived. A cancellation seen this close
// to the server's deadline is that timer, and is reported as the deadline it is.
constexpr std::chrono::milliseconds kDeadlineSlack{500};

// Why the call should stop, if it should: the deadline passed, or the client cancelled or went
// away (`client_gone`: a write to it failed).
absl::Status call_stopped(const grpc::ServerContext& ctx, bool client_gone = false) {
  const auto now = std::chrono::system_clock::now();
  const auto deadline = ctx.deadline();
  if (now >= deadline) return absl::DeadlineExceededError("the request's deadline passed");
  if (!client_gone && !ctx.IsCancelled()) return absl::OkStatus();
  if (deadline - now <= kDeadlineSlack) {
    return absl::DeadlineExceededError("the request's deadline passed (the client's timer ended it)");
  }
  return absl::CancelledError(client_gone ? "the client went away"
                                          : "the client cancelled the request");
}

}  // namespace

ImageServiceImpl::ImageServiceImpl(ModelRegistry& registry, WorkQueue& queue,
                                   const Authenticator& auth, Metrics* metrics, Options options)
    : registry_(registry), queue_(queue), auth_(auth), metrics_(metrics), opts_(options) {}

grpc::Status ImageServiceImpl::Generate(grpc::ServerContext* ctx, const v1::GenerateRequest* req,
                                        grpc::ServerWriter<v1::GenerateResponse>* writer) {
  const auto t0 = Clock::now();
  std::string model = kUnknownModel;
  bool queue_full = false;
  auto finish = [&](const absl::Status& st) {
    if (metrics_ != nullptr) {
      const Outcome o = classify(st, queue_full);
      metrics_->request_done(model, o.outcome,
                             std::chrono::duration<double>(Clock::now() - t0).count());
      if (o.reason != nullptr) metrics_->request_failed(model, o.reason);
    }
    return to_grpc(st);
  };

  if (absl::Status st = auth_.check(*ctx, Authenticator::Scope::kImage); !st.ok()) return finish(st);
  if (absl::Status st = check_request_fields(*req, opts_.limits); !st.ok()) return finish(st);
  if (!registry_.contains(req->model())) {
    return finish(absl::NotFoundError(
        req->model().empty() ? std::string("model: the server has no default model")
                             : absl::StrCat("model: no model named '", req->model(), "'")));
  }
  // Waits while the model (re)loads; the call's own cancellation and deadline bound the wait.
  absl::StatusOr<std::shared_ptr<ModelLease>> lease =
      registry_.acquire(req->model(), [ctx] { return call_stopped(*ctx); });
  if (!lease.ok()) return finish(lease.status());
  const LoadedModel& m = (*lease)->model();
  model = m.name;

  absl::StatusOr<GenerateRequest> engine_req =
      to_engine_request(*req, m.spec.spec.defaults(), opts_.limits, random_seed());
  if (!engine_req.ok()) return finish(engine_req.status());

  auto job = std::make_shared<GenerationJob>(req->priority(), std::move(*lease),
                                             std::move(*engine_req), req->preview_every_n_steps(),
                                             metrics_);
  absl::StatusOr<int> position = queue_.submit(job);
  if (!position.ok()) {
    if (position.status().code() == absl::StatusCode::kResourceExhausted) {
      queue_full = true;
      if (auto ms = position.status().GetPayload(kRetryAfterPayload)) {
        ctx->AddTrailingMetadata("retry-after-ms", std::string(*ms));
      }
    }
    return finish(position.status());
  }
  if (metrics_ != nullptr) metrics_->in_flight_add(1);
  struct InFlight {
    Metrics* m;
    ~InFlight() {
      if (m != nullptr) m->in_flight_add(-1);
    }
  } in_flight{metrics_};

  bool client_gone = false;
  auto write = [&](const v1::GenerateResponse& r) {
    if (!client_gone && !writer->Write(r)) client_gone = true;
  };
  {
    v1::GenerateResponse r;
    r.mutable_queued()->set_position(*position);
    write(r);
  }
  int last_position = *position;
  absl::Status stop;  // why the call ended early, once it has
  for (;;) {
    GenerationJob::Drained d = job->drain(std::chrono::milliseconds(50));
    for (v1::Progress& p : d.progress) {
      v1::GenerateResponse r;
      *r.mutable_progress() = std::move(p);
      write(r);
    }
    if (d.done) break;
    if (stop.ok()) {
      stop = call_stopped(*ctx, client_gone);
      if (!stop.ok()) {
        // Still waiting: leave the queue and end now. Running: the pipeline stops at the next
        // step; wait for it so the model lease and buffers are released before returning.
        if (queue_.remove(job.get())) return finish(stop);
        job->cancel.store(true);
      }
    }
    if (!d.started && stop.ok()) {
      if (std::optional<int> pos = queue_.position(job.get()); pos && *pos != last_position) {
        last_position = *pos;
        v1::GenerateResponse r;
        r.mutable_queued()->set_position(*pos);
        write(r);
      }
    }
  }
  if (!stop.ok()) return finish(stop);
  const absl::StatusOr<GenerateResult>& res = job->result();
  if (!res.ok()) return finish(res.status());

  ResultContext rc;
  rc.model = m.name;
  rc.quantization = m.pipeline->quantization();
  rc.queue_seconds = job->queue_seconds();
  rc.total_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  absl::StatusOr<v1::Result> result = build_result(*req, job->request(), *res, rc);
  if (!result.ok()) return finish(result.status());
  for (const std::string& w : m.spec.warnings) result->add_warnings(w);
  v1::GenerateResponse r;
  *r.mutable_result() = std::move(*result);
  const size_t bytes = r.ByteSizeLong();
  if (static_cast<int64_t>(bytes) > opts_.max_message_bytes) {
    return finish(absl::ResourceExhaustedError(absl::StrCat(
        "the result is ", bytes, " bytes, more than --max-message-bytes ", opts_.max_message_bytes,
        "; ask for fewer images (num_images) or no latents (return_latents)")));
  }
  const int n = r.result().images_size();
  write(r);
  if (client_gone) return finish(call_stopped(*ctx, /*client_gone=*/true));
  if (metrics_ != nullptr) metrics_->images_generated(m.name, n);
  return finish(absl::OkStatus());
}

}  // namespace fluxserve::server
