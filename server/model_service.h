// ModelService: list, inspect, load, unload and swap models through the registry, behind the
// admin token when one is configured.
#pragma once

#include "fluxserve/v1/model_service.grpc.pb.h"
#include "server/auth.h"
#include "server/registry.h"

namespace fluxserve::server {

class ModelServiceImpl final : public v1::ModelService::Service {
 public:
  ModelServiceImpl(ModelRegistry& registry, const Authenticator& auth);

  grpc::Status ListModels(grpc::ServerContext* ctx, const v1::ListModelsRequest* req,
                          v1::ListModelsResponse* resp) override;
  grpc::Status GetModel(grpc::ServerContext* ctx, const v1::GetModelRequest* req,
                        v1::ModelInfo* resp) override;
  grpc::Status LoadModel(grpc::ServerContext* ctx, const v1::LoadModelRequest* req,
                         v1::ModelInfo* resp) override;
  grpc::Status UnloadModel(grpc::ServerContext* ctx, const v1::UnloadModelRequest* req,
                           v1::UnloadModelResponse* resp) override;
  grpc::Status SwapModel(grpc::ServerContext* ctx, const v1::SwapModelRequest* req,
                         v1::SwapModelResponse* resp) override;

 private:
  ModelRegistry& registry_;
  const Authenticator& auth_;
};

}  // namespace fluxserve::server
