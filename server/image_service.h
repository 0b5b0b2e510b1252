// ImageService.Generate: validate up front, take a lease on the model, queue the work on the
// device's worker, then stream Queued{position}, Progress per step (with optional latent
// previews) and the Result. The handler thread watches the call: a client that goes away or a
// deadline that passes takes a waiting request out of the queue, or sets the cancel flag the
// pipeline polls between denoising steps.
#pragma once

#include <cstdint>

#include "fluxserve/v1/image_service.grpc.pb.h"
#include "server/auth.h"
#include "server/metrics.h"
#include "server/queue.h"
#include "server/registry.h"
#include "server/request.h"

namespace fluxserve::server {

class ImageServiceImpl final : public v1::ImageService::Service {
 public:
  struct Options {
    RequestLimits limits;
    int64_t max_message_bytes = 64 << 20;
  };
  ImageServiceImpl(ModelRegistry& registry, WorkQueue& queue, const Authenticator& auth,
                   Metrics* metrics, Options options);

  grpc::Status Generate(grpc::ServerContext* ctx, const v1::GenerateRequest* req,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;

 private:
  ModelRegistry& registry_;
  WorkQueue& queue_;
  const Authenticator& auth_;
  Metrics* metrics_;
  const Options opts_;
};

}  // namespace fluxserve::server
