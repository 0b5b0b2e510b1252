// Runs the real `fluxserve serve` as a child process on loopback for the integration tests: a
// private model root (a copy of models/tiny-flux), a ServerConfig naming it, ports picked by the
// kernel and read back from the port files, the server's output kept in a log for failures.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"

namespace fluxserve::integration {

struct ServerOptions {
  // The ServerConfig JSON written to <dir>/config.json; empty = no --config (embedded default).
  std::string config_json = R"({"models": [{"name": "tiny-flux", "path": "tiny-flux"}]})";
  // Added after the fixture's own flags (--listen, --port-file, --metrics-*, --model-root,
  // --config, --threads 1).
  std::vector<std::string> extra_args;
  // Seconds to wait for the port files.
  double start_timeout_s = 120;
};

class ServerProcess {
 public:
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(const ServerOptions& opts = {});
  ~ServerProcess();  // SIGKILLs a server still running

  const std::string& dir() const { return dir_; }              // scratch dir of this server
  std::string model_root() const { return dir_ + "/models"; }  // holds tiny-flux/
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  pid_t pid() const { return pid_; }
  std::shared_ptr<grpc::Channel> channel() const;

  // Sends `sig` and waits up to timeout_s; returns the exit code, or 128+signal when the
  // process died of a signal. An error when it did not exit in time (it is then SIGKILLed).
  absl::StatusOr<int> Stop(int sig, double timeout_s);
  // Waits for an exit without sending anything.
  absl::StatusOr<int> Wait(double timeout_s);
  std::string log() const;  // what the server wrote to stdout and stderr

 private:
  ServerProcess() = default;
  std::string dir_;
  pid_t pid_ = -1;
  int port_ = 0;
  int metrics_port_ = 0;
  bool exited_ = false;
};

// HTTP/1.0 GET of http://127.0.0.1:<port><path>; returns the body of a 200 response.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path);

// Runs a shell command; returns its exit code and combined output.
struct CommandResult {
  int exit_code = -1;
  std::string output;
};
CommandResult RunCommand(const std::string& command);

// A fresh directory under the test temp dir.
std::string MakeTempDir(const std::string& stem);
std::string ReadFileOrEmpty(const std::string& path);
void WriteFile(const std::string& path, const std::string& text);

}  // namespace fluxserve::integration
