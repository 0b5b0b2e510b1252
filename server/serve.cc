#include "server/serve.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <omp.h>
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "engine/core/status.h"
#include "server/auth.h"
#include "server/config.h"
#include "server/flags.h"
#include "server/image_service.h"
#include "server/metrics.h"
#include "server/model_service.h"
#include "server/queue.h"
#include "server/registry.h"

namespace fluxserve::server {
namespace {

void log(const std::string& msg) {
  // One write per line so lines from the loader and main threads do not interleave.
  const std::string line = absl::StrCat("fluxserve serve: ", msg, "\n");
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

absl::StatusOr<std::string> read_file(const std::string& path, const std::string& flag) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return absl::NotFoundError(absl::StrCat("--", flag, ": cannot read '", path, "'"));
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Written via a temporary file and a rename, so a reader never sees a partial number.
absl::Status write_port_file(const std::string& path, int port, const std::string& flag) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << port << "\n";
    if (!f.good()) return absl::UnavailableError(absl::StrCat("--", flag, ": cannot write '", tmp, "'"));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("--", flag, ": ", path, ": ", ec.message()));
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials(const ServeFlags& f) {
  if (f.tls_cert.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions opts;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  FLUX_ASSIGN_OR_RETURN(pair.private_key, read_file(f.tls_key, "tls-key"));
  FLUX_ASSIGN_OR_RETURN(pair.cert_chain, read_file(f.tls_cert, "tls-cert"));
  opts.pem_key_cert_pairs.push_back(std::move(pair));
  if (!f.tls_client_ca.empty()) {
    FLUX_ASSIGN_OR_RETURN(opts.pem_root_certs, read_file(f.tls_client_ca, "tls-client-ca"));
    opts.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(opts);
}

absl::StatusOr<Authenticator> authenticator(const ServeFlags& f) {
  std::vector<std::string> user, admin;
  if (!f.auth_token_file.empty()) {
    FLUX_ASSIGN_OR_RETURN(user, read_token_file(f.auth_token_file, "auth-token-file"));
  }
  if (!f.admin_token_file.empty()) {
    FLUX_ASSIGN_OR_RETURN(admin, read_token_file(f.admin_token_file, "admin-token-file"));
  }
  return Authenticator(std::move(user), std::move(admin));
}

// The embedded model at the size `fluxserve generate` uses for it.
v1::ServerConfig embedded_config(const std::string& default_model_dir) {
  v1::ServerConfig cfg;
  v1::ModelSpec* m = cfg.add_models();
  m->set_name("tiny-flux");
  m->set_path(default_model_dir);
  m->mutable_defaults()->set_width(256);
  m->mutable_defaults()->set_height(256);
  cfg.set_default_model("tiny-flux");
  return cfg;
}

// Health statuses as server/README.md specifies them, from readiness and the drain flag.
class Health {
 public:
  void attach(grpc::HealthCheckServiceInterface* h) {
    std::lock_guard<std::mutex> lock(mu_);
    h_ = h;
  }
  void update(bool default_ready, bool draining) {
    std::lock_guard<std::mutex> lock(mu_);
    if (h_ == nullptr) return;
    const bool ready = default_ready && !draining;
    h_->SetServingStatus("", ready);
    h_->SetServingStatus("readiness", ready);
    h_->SetServingStatus("liveness", true);
    h_->SetServingStatus("fluxserve.v1.ImageService", ready);
    h_->SetServingStatus("fluxserve.v1.ModelService", !draining);
  }

 private:
  std::mutex mu_;
  grpc::HealthCheckServiceInterface* h_ = nullptr;
};

int fail(const absl::Status& st, int code = 1) {
  log(std::string(st.message()));
  return code;
}

}  // namespace

int serve_main(const std::vector<std::string>& args, const std::string& default_model_dir) {
  if (!args.empty() && (args[0] == "--help" || args[0] == "help")) {
    std::cout << kServeUsage;
    return 0;
  }
  absl::StatusOr<ServeFlags> flags = parse_serve_flags(args, default_model_dir);
  if (!flags.ok()) return fail(flags.status(), 2);
  const ServeFlags& f = *flags;

  // Signals are taken by sigwait below; blocked here, before any thread exists, so that every
  // thread (gRPC's, OpenMP's) inherits the mask and none of them is interrupted instead.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  absl::StatusOr<v1::ServerConfig> config =
      f.config.empty() ? absl::StatusOr<v1::ServerConfig>(embedded_config(default_model_dir))
                       : read_server_config(f.config);
  if (!config.ok()) return fail(config.status());
  absl::StatusOr<Authenticator> auth = authenticator(f);
  if (!auth.ok()) return fail(auth.status());
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> creds = credentials(f);
  if (!creds.ok()) return fail(creds.status());

  // The metrics read the registry at scrape time; the registry reports loads to the metrics.
  std::atomic<ModelRegistry*> registry_ptr{nullptr};
  Metrics metrics([&registry_ptr] {
    ModelRegistry* r = registry_ptr.load();
    return r != nullptr ? r->list() : std::vector<v1::ModelInfo>{};
  });
  Health health;
  std::atomic<bool> draining{false};
  ModelRegistry::Options ropts;
  ropts.model_root = f.model_root;
  ropts.compute_threads = f.threads;
  ropts.metrics = &metrics;
  ropts.on_change = [&] {
    if (ModelRegistry* r = registry_ptr.load()) health.update(r->default_ready(), draining.load());
  };
  ModelRegistry registry(ropts);
  registry_ptr.store(&registry);
  const std::string default_name =
      config->default_model().empty() ? config->models(0).name() : config->default_model();
  registry.set_default_model(default_name);

  WorkQueue::Options qopts;
  qopts.device = "cpu";
  qopts.max_waiting = f.max_queue;
  const int threads = f.threads;
  qopts.on_worker_start = [threads] {
    if (threads > 0) omp_set_num_threads(threads);
  };
  qopts.on_depth = [&metrics](int depth) { metrics.set_queue_depth(depth); };
  WorkQueue queue(qopts);
  queue.start();

  ImageServiceImpl::Options iopts;
  iopts.limits.max_prompt_bytes = f.max_prompt_bytes;
  iopts.max_message_bytes = f.max_message_bytes;
  ImageServiceImpl image_service(registry, queue, *auth, &metrics, iopts);
  ModelServiceImpl model_service(registry, *auth);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(f.listen, *creds, &port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(f.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(f.max_message_bytes));
  builder.RegisterService(&image_service);
  builder.RegisterService(&model_service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return fail(absl::UnavailableError(absl::StrCat("--listen ", f.listen, ": cannot listen there")));
  }
  health.attach(server->GetHealthCheckService());
  health.update(registry.default_ready(), false);
  if (!f.port_file.empty()) {
    if (absl::Status st = write_port_file(f.port_file, port, "port-file"); !st.ok()) return fail(st);
  }
  log(absl::StrCat("gRPC on ", f.listen, " (port ", port, f.tls_cert.empty() ? "" : ", TLS", ")"));
  if (!f.metrics_listen.empty()) {
    absl::StatusOr<int> mport = metrics.serve(f.metrics_listen);
    if (!mport.ok()) return fail(mport.status());
    if (!f.metrics_port_file.empty()) {
      if (absl::Status st = write_port_file(f.metrics_port_file, *mport, "metrics-port-file");
          !st.ok()) {
        return fail(st);
      }
    }
    log(absl::StrCat("metrics on ", f.metrics_listen, " (port ", *mport, ") /metrics"));
  }

  // Health answers from here on; the models load in the background, the default first, and
  // readiness follows the default model.
  std::atomic<bool> loading{true};
  std::thread loader([&] {
    std::vector<const v1::ModelSpec*> order;
    for (const v1::ModelSpec& m : config->models()) {
      if (m.name() == default_name) order.insert(order.begin(), &m);
      else order.push_back(&m);
    }
    for (const v1::ModelSpec* m : order) {
      if (draining.load()) break;
      log(absl::StrCat("loading model '", m->name(), "' from ", m->path()));
      absl::StatusOr<v1::ModelInfo> info = registry.load(*m, m->name() == default_name);
      if (info.ok()) {
        log(absl::StrCat("model '", m->name(), "' READY in ", info->load_seconds(), " s (",
                         info->total_bytes(), " bytes, quantization: ", info->quantization(), ")"));
      } else {
        log(absl::StrCat("model '", m->name(), "' FAILED: ", info.status().message()));
      }
    }
    loading.store(false);
  });

  int sig = 0;
  sigwait(&stop_signals, &sig);
  log(absl::StrCat(sig == SIGTERM ? "SIGTERM" : "SIGINT", ": draining (up to ", f.drain_timeout_s,
                   " s), health NOT_SERVING"));
  draining.store(true);
  health.update(false, true);
  // Refuses new calls at once; in-flight calls run until the deadline, then are cancelled (a
  // running generation stops at its next denoising step). Returns when all handlers are done.
  const auto deadline = std::chrono::system_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(f.drain_timeout_s * 1000));
  server->Shutdown(deadline);
  queue.stop();
  if (loading.load()) {
    // A model load cannot be interrupted; waiting for it would hold up the exit for as long as
    // the load takes. Nothing else is left to flush.
    log("a model is still loading; exiting without waiting for it");
    std::fflush(nullptr);
    std::_Exit(0);
  }
  loader.join();
  server->Wait();
  registry_ptr.store(nullptr);
  registry.clear();
  log("drained; exiting");
  return 0;
}

}  // namespace fluxserve::server
