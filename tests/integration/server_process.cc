#include "tests/integration/server_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace fluxserve::integration {
namespace fs = std::filesystem;

std::string MakeTempDir(const std::string& stem) {
  const char* base = getenv("TMPDIR");
  std::string tmpl = absl::StrCat(base && *base ? base : "/tmp", "/", stem, "_XXXXXX");
  if (mkdtemp(tmpl.data()) == nullptr) return "";
  return tmpl;
}

std::string ReadFileOrEmpty(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

namespace {

// The port files are written once the server listens; an empty or partial file means "not yet".
int ReadPort(const std::string& path) {
  std::string text = ReadFileOrEmpty(path);
  int port = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &port)) return 0;
  return port;
}

int DecodeWaitStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(const ServerOptions& opts) {
  std::unique_ptr<ServerProcess> p(new ServerProcess());
  p->dir_ = MakeTempDir("fluxserve_it");
  if (p->dir_.empty()) return absl::InternalError("mkdtemp failed");
  // A private model root: tests add broken models and symlinks to it, and the server must treat
  // everything outside it (including the repository's models/) as out of bounds.
  std::error_code ec;
  fs::create_directories(p->model_root(), ec);
  fs::copy(FLUXSERVE_MODELS_DIR "/tiny-flux", p->model_root() + "/tiny-flux",
           fs::copy_options::recursive, ec);
  if (ec) return absl::InternalError(absl::StrCat("copying tiny-flux: ", ec.message()));

  std::vector<std::string> args = {FLUXSERVE_BIN,
                                   "serve",
                                   "--listen",
                                   "127.0.0.1:0",
                                   "--port-file",
                                   p->dir_ + "/port",
                                   "--metrics-listen",
                                   "127.0.0.1:0",
                                   "--metrics-port-file",
                                   p->dir_ + "/metrics_port",
                                   "--model-root",
                                   p->model_root(),
                                   // Tests run beside each other on small machines.
                                   "--threads",
                                   "1"};
  if (!opts.config_json.empty()) {
    WriteFile(p->dir_ + "/config.json", opts.config_json);
    args.push_back("--config");
    args.push_back(p->dir_ + "/config.json");
  }
  args.insert(args.end(), opts.extra_args.begin(), opts.extra_args.end());

  const std::string log_path = p->dir_ + "/server.log";
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    const int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  p->pid_ = pid;

  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(opts.start_timeout_s * 1e3));
  while (true) {
    p->port_ = ReadPort(p->dir_ + "/port");
    p->metrics_port_ = ReadPort(p->dir_ + "/metrics_port");
    if (p->port_ > 0 && p->metrics_port_ > 0) break;
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      p->exited_ = true;
      return absl::InternalError(absl::StrCat("fluxserve serve exited (", DecodeWaitStatus(status),
                                              ") before listening:\n", p->log()));
    }
    if (std::chrono::steady_clock::now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("no port file after ", opts.start_timeout_s, " s:\n", p->log()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return p;
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0 && !exited_) {
    kill(pid_, SIGKILL);
    int status;
    waitpid(pid_, &status, 0);
  }
  if (!dir_.empty() && getenv("FLUXSERVE_KEEP_TEST_DIRS") == nullptr) {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
}

std::shared_ptr<grpc::Channel> ServerProcess::channel() const {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  // A fresh connection per channel: tests that count requests or cancel must not share one.
  args.SetInt("grpc.use_local_subchannel_pool", 1);
  return grpc::CreateCustomChannel(address(), grpc::InsecureChannelCredentials(), args);
}

absl::StatusOr<int> ServerProcess::Wait(double timeout_s) {
  if (exited_) return absl::FailedPreconditionError("already exited");
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1e3));
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      exited_ = true;
      return DecodeWaitStatus(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return absl::DeadlineExceededError(absl::StrCat("still running after ", timeout_s, " s"));
}

absl::StatusOr<int> ServerProcess::Stop(int sig, double timeout_s) {
  if (exited_) return absl::FailedPreconditionError("already exited");
  kill(pid_, sig);
  return Wait(timeout_s);
}

std::string ServerProcess::log() const { return ReadFileOrEmpty(dir_ + "/server.log"); }

absl::StatusOr<std::string> HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError("socket failed");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("cannot connect to 127.0.0.1:", port));
  }
  const std::string req = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return absl::InternalError("short write");
  }
  std::string resp;
  std::array<char, 65536> buf;
  ssize_t n;
  while ((n = read(fd, buf.data(), buf.size())) > 0) resp.append(buf.data(), n);
  close(fd);
  const size_t header_end = resp.find("\r\n\r\n");
  if (header_end == std::string::npos) return absl::InternalError("no HTTP header in: " + resp);
  const std::string status_line = resp.substr(0, resp.find("\r\n"));
  if (status_line.find(" 200") == std::string::npos) {
    return absl::InternalError("HTTP status: " + status_line);
  }
  return resp.substr(header_end + 4);
}

CommandResult RunCommand(const std::string& command) {
  CommandResult r;
  FILE* f = popen((command + " 2>&1").c_str(), "r");
  if (f == nullptr) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), f)) > 0) r.output.append(buf.data(), n);
  const int status = pclose(f);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

}  // namespace fluxserve::integration
