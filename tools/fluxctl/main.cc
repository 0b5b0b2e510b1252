// fluxctl: the command-line client of `fluxserve serve`. The connection flags may appear anywhere
// on the line; everything else belongs to the command (tools/fluxctl/commands.h).
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "tools/fluxctl/commands.h"

namespace {

constexpr const char* kUsage = R"(usage: fluxctl [--server HOST:PORT] [--token T | --token-file F] [--tls-ca F] <command> ...

commands:
  generate --prompt TEXT [...]      text to PNG, with a progress bar; images go to --out DIR
  models list                       the loaded models, their state, memory and default
  models get NAME                   one model in full (JSON)
  models load --spec FILE [--default]
  models unload NAME
  models swap NAME --spec FILE      re-point NAME at a new spec without dropping requests
  health [--service S] [--watch]    exit 0 when SERVING, 1 otherwise

connection:
  --server HOST:PORT   default 127.0.0.1:50051
  --token T            sent as `authorization: Bearer T` (ModelService may need the admin token)
  --token-file F       the token read from a file (surrounding whitespace ignored)
  --tls-ca F           PEM root certificates: connect with TLS

`fluxctl <command> --help` describes a command's flags. Errors print the gRPC status code and
the server's message and exit 1; usage errors exit 2.
)";

bool is_connection_flag(const std::string& arg, bool* takes_next) {
  for (const char* f : fluxctl::kConnectionFlags) {
    const std::string flag = std::string("--") + f;
    if (arg == flag) {
      *takes_next = true;
      return true;
    }
    if (arg.rfind(flag + "=", 0) == 0) {
      *takes_next = false;
      return true;
    }
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> global, rest;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    bool takes_next = false;
    if (is_connection_flag(arg, &takes_next)) {
      global.push_back(arg);
      if (takes_next && i + 1 < argc) global.push_back(argv[++i]);
      else if (takes_next) return fluxctl::usage_error("fluxctl", arg + " needs a value");
    } else {
      rest.push_back(arg);
    }
  }
  if (rest.empty() || rest[0] == "--help" || rest[0] == "-h" || rest[0] == "help") {
    std::cout << kUsage;
    return rest.empty() ? fluxctl::kExitUsage : fluxctl::kExitOk;
  }
  auto flags = fluxctl::Flags::parse(global, {"server", "token", "token-file", "tls-ca"});
  if (!flags.ok()) return fluxctl::usage_error("fluxctl", std::string(flags.status().message()));
  auto conn = fluxctl::connection_from_flags(*flags);
  if (!conn.ok()) return fluxctl::usage_error("fluxctl", std::string(conn.status().message()));

  const std::string cmd = rest[0];
  const std::vector<std::string> args(rest.begin() + 1, rest.end());
  if (cmd == "generate") return fluxctl::generate_main(*conn, args);
  if (cmd == "models") return fluxctl::models_main(*conn, args);
  if (cmd == "health") return fluxctl::health_main(*conn, args);
  std::cerr << "fluxctl: unknown command '" << cmd << "'\n\n" << kUsage;
  return fluxctl::kExitUsage;
}
