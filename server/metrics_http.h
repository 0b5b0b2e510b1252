// A minimal HTTP/1.1 endpoint for Prometheus scrapes: GET/HEAD /metrics answered with a body
// produced on demand, one connection at a time on its own thread.
// Why not prometheus-cpp's Exposer: its CivetWeb worker threads run on a small fixed stack, and
// in this process the static TLS of OpenBLAS (~60 KB) is carved out of every thread's stack, so
// the first scrape overflowed it and crashed the server. Threads created here get the default
// stack size.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace fluxserve::server {

class MetricsHttpServer {
 public:
  // Binds `listen` (HOST:PORT; port 0 picks a free one) and starts serving; `body` is called per
  // scrape.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> start(
      const std::string& listen, std::function<std::string()> body);
  ~MetricsHttpServer();  // stops accepting and joins the thread
  int port() const { return port_; }

 private:
  MetricsHttpServer() = default;
  void loop();
  void handle(int fd);
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};  // a pipe that interrupts poll() at shutdown
  int port_ = 0;
  std::function<std::string()> body_;
  std::thread thread_;
};

}  // namespace fluxserve::server
