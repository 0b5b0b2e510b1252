// fluxctl models list|get|load|unload|swap: ModelService. Specs are read from protobuf-JSON files,
// the same form as a ModelSpec in the server's --config, so unknown fields are errors here too.
#include <iostream>

#include <google/protobuf/util/json_util.h>

#include "absl/strings/str_format.h"
#include "fluxserve/v1/model_service.grpc.pb.h"
#include "tools/fluxctl/commands.h"

namespace fluxctl {
namespace {

namespace pb = fluxserve::v1;

constexpr const char* kModelsUsage = R"(usage: fluxctl models <command>

  list                          name, state, default, quantization, memory, active requests
  get NAME                      the model's full ModelInfo as JSON
  load --spec FILE [--default]  load a ModelSpec (protobuf JSON); --default: make it the default
  unload NAME                   stop routing to NAME, finish its requests, free its memory
  swap NAME --spec FILE         point NAME at a new spec; requests in flight finish on the old one
  --timeout S                   deadline in seconds (default: 10 for list/get, none otherwise)

ModelService may need the admin token (--token / --token-file before or after the command).
)";

std::string state_name(pb::ModelState s) {
  switch (s) {
    case pb::MODEL_STATE_LOADING: return "LOADING";
    case pb::MODEL_STATE_READY: return "READY";
    case pb::MODEL_STATE_UNLOADING: return "UNLOADING";
    case pb::MODEL_STATE_FAILED: return "FAILED";
    default: return "UNSPECIFIED";
  }
}

std::string mib(int64_t bytes) { return absl::StrFormat("%.1f MiB", bytes / 1048576.0); }

absl::StatusOr<pb::ModelSpec> read_spec(const std::string& path) {
  auto text = read_file(path);
  if (!text.ok()) return text.status();
  pb::ModelSpec spec;
  google::protobuf::util::JsonParseOptions opts;
  opts.ignore_unknown_fields = false;
  auto st = google::protobuf::util::JsonStringToMessage(*text, &spec, opts);
  if (!st.ok()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: not a ModelSpec: %s", path, std::string(st.message())));
  }
  return spec;
}

void print_info(const pb::ModelInfo& m) {
  std::cout << absl::StrFormat("%s  %s%s  quantization: %s  %s  loaded in %.2f s\n", m.name(),
                               state_name(m.state()), m.is_default() ? " (default)" : "",
                               m.quantization().empty() ? "none" : m.quantization(),
                               mib(m.total_bytes()), m.load_seconds());
  if (!m.reason().empty()) std::cout << "  reason: " << m.reason() << "\n";
}

}  // namespace

int models_main(const Connection& conn, const std::vector<std::string>& args) {
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      std::cout << kModelsUsage;
      return kExitOk;
    }
  }
  auto flags = Flags::parse(args, {"spec", "timeout"}, {"default"});
  if (!flags.ok()) return usage_error("models", std::string(flags.status().message()));
  const auto& pos = flags->positional();
  if (pos.empty()) return usage_error("models", "missing command (list, get, load, unload, swap)");
  const std::string& cmd = pos[0];
  auto timeout = flags->double_opt("timeout");
  if (!timeout.ok()) return usage_error("models", std::string(timeout.status().message()));
  const bool quick = cmd == "list" || cmd == "get";
  const double deadline = timeout->value_or(quick ? 10.0 : 0.0);
  const size_t want_pos = (cmd == "get" || cmd == "unload" || cmd == "swap") ? 2 : 1;
  if (pos.size() != want_pos) {
    return usage_error("models", absl::StrFormat("'%s' takes %s", cmd,
                                                 want_pos == 2 ? "a model NAME" : "no NAME"));
  }
  const bool needs_spec = cmd == "load" || cmd == "swap";
  if (needs_spec != flags->has("spec")) {
    return usage_error("models", needs_spec ? "--spec FILE is required" : "--spec is for load/swap");
  }

  Client client(conn);
  auto stub = pb::ModelService::NewStub(client.channel());
  grpc::ClientContext ctx;
  client.prepare(ctx, deadline);

  if (cmd == "list") {
    pb::ListModelsResponse resp;
    grpc::Status s = stub->ListModels(&ctx, pb::ListModelsRequest(), &resp);
    if (!s.ok()) return report("models list", s);
    std::cout << absl::StrFormat("%-24s %-10s %-8s %-28s %12s %7s\n", "NAME", "STATE", "DEFAULT",
                                 "QUANTIZATION", "MEMORY", "ACTIVE");
    for (const auto& m : resp.models()) {
      std::cout << absl::StrFormat("%-24s %-10s %-8s %-28s %12s %7d\n", m.name(),
                                   state_name(m.state()), m.is_default() ? "yes" : "",
                                   m.quantization().empty() ? "none" : m.quantization(),
                                   mib(m.total_bytes()), m.active_requests());
      if (!m.reason().empty()) std::cout << "  reason: " << m.reason() << "\n";
    }
    return kExitOk;
  }
  if (cmd == "get") {
    pb::GetModelRequest req;
    req.set_name(pos[1]);
    pb::ModelInfo info;
    grpc::Status s = stub->GetModel(&ctx, req, &info);
    if (!s.ok()) return report("models get", s);
    std::string json;
    google::protobuf::util::JsonPrintOptions opts;
    opts.add_whitespace = true;
    opts.preserve_proto_field_names = true;
    (void)google::protobuf::util::MessageToJsonString(info, &json, opts);
    std::cout << json;
    return kExitOk;
  }
  if (cmd == "unload") {
    pb::UnloadModelRequest req;
    req.set_name(pos[1]);
    pb::UnloadModelResponse resp;
    grpc::Status s = stub->UnloadModel(&ctx, req, &resp);
    if (!s.ok()) return report("models unload", s);
    std::cout << absl::StrFormat("unloaded %s: freed %s, resident set returned %s\n", pos[1],
                                 mib(resp.freed_bytes()), mib(resp.rss_returned_bytes()));
    return kExitOk;
  }
  if (!needs_spec) return usage_error("models", "unknown command '" + cmd + "'");
  auto spec = read_spec(flags->str_or("spec", ""));
  if (!spec.ok()) return usage_error("models", std::string(spec.status().message()));
  if (cmd == "load") {
    pb::LoadModelRequest req;
    *req.mutable_spec() = *spec;
    req.set_make_default(flags->has("default"));
    pb::ModelInfo info;
    grpc::Status s = stub->LoadModel(&ctx, req, &info);
    if (!s.ok()) return report("models load", s);
    print_info(info);
    return kExitOk;
  }
  pb::SwapModelRequest req;
  req.set_name(pos[1]);
  *req.mutable_spec() = *spec;
  pb::SwapModelResponse resp;
  grpc::Status s = stub->SwapModel(&ctx, req, &resp);
  if (!s.ok()) return report("models swap", s);
  print_info(resp.model());
  std::cout << absl::StrFormat("swapped in %.2f s (%s), old model freed %s%s%s\n",
                               resp.swap_seconds(),
                               resp.loaded_beside() ? "loaded beside" : "drained and reloaded",
                               mib(resp.old_model_freed_bytes()),
                               resp.message().empty() ? "" : ": ", resp.message());
  return kExitOk;
}

}  // namespace fluxctl
