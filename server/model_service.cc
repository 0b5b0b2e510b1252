#include "server/model_service.h"

#include "server/grpc_status.h"

namespace fluxserve::server {

ModelServiceImpl::ModelServiceImpl(ModelRegistry& registry, const Authenticator& auth)
    : registry_(registry), auth_(auth) {}

grpc::Status ModelServiceImpl::ListModels(grpc::ServerContext* ctx, const v1::ListModelsRequest*,
                                          v1::ListModelsResponse* resp) {
  if (absl::Status st = auth_.check(*ctx, Authenticator::Scope::kModel); !st.ok()) return to_grpc(st);
  for (v1::ModelInfo& m : registry_.list()) *resp->add_models() = std::move(m);
  return grpc::Status::OK;
}

grpc::Status ModelServiceImpl::GetModel(grpc::ServerContext* ctx, const v1::GetModelRequest* req,
                                        v1::ModelInfo* resp) {
  if (absl::Status st = auth_.check(*ctx, Authenticator::Scope::kModel); !st.ok()) return to_grpc(st);
  absl::StatusOr<v1::ModelInfo> info = registry_.get(req->name());
  if (!info.ok()) return to_grpc(info.status());
  *resp = std::move(*info);
  return grpc::Status::OK;
}

grpc::Status ModelServiceImpl::LoadModel(grpc::ServerContext* ctx, const v1::LoadModelRequest* req,
                                         v1::ModelInfo* resp) {
  if (absl::Status st = auth_.check(*ctx, Authenticator::Scope::kModel); !st.ok()) return to_grpc(st);
  absl::StatusOr<v1::ModelInfo> info = registry_.load(req->spec(), req->make_default());
  if (!info.ok()) return to_grpc(info.status());
  *resp = std::move(*info);
  return grpc::Status::OK;
}

grpc::Status ModelServiceImpl::UnloadModel(grpc::ServerContext* ctx,
                                           const v1::UnloadModelRequest* req,
                                           v1::UnloadModelResponse* resp) {
  if (absl::Status st = auth_.check(*ctx, Authenticator::Scope::kModel); !st.ok()) return to_grpc(st);
  absl::StatusOr<UnloadResult> r = registry_.unload(req->name());
  if (!r.ok()) return to_grpc(r.status());
  resp->set_freed_bytes(r->freed_bytes);
  resp->set_rss_returned_bytes(r->rss_returned_bytes);
  return grpc::Status::OK;
}

grpc::Status ModelServiceImpl::SwapModel(grpc::ServerContext* ctx, const v1::SwapModelRequest* req,
                                         v1::SwapModelResponse* resp) {
  if (absl::Status st = auth_.check(*ctx, Authenticator::Scope::kModel); !st.ok()) return to_grpc(st);
  absl::StatusOr<SwapResult> r = registry_.swap(req->name(), req->spec());
  if (!r.ok()) return to_grpc(r.status());
  *resp->mutable_model() = std::move(r->model);
  resp->set_loaded_beside(r->loaded_beside);
  resp->set_message(r->message);
  resp->set_swap_seconds(r->swap_seconds);
  resp->set_old_model_freed_bytes(r->old_model_freed_bytes);
  return grpc::Status::OK;
}

}  // namespace fluxserve::server
