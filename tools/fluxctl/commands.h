// The fluxctl commands. Each gets the connection (already parsed from the global flags) and its
// own arguments, prints what it did and returns the process exit code (client.h).
#pragma once

#include <string>
#include <vector>

#include "tools/fluxctl/client.h"

namespace fluxctl {

int generate_main(const Connection& conn, const std::vector<std::string>& args);
int models_main(const Connection& conn, const std::vector<std::string>& args);
int health_main(const Connection& conn, const std::vector<std::string>& args);

// Prints "fluxctl: <message>" and the hint to use --help; returns kExitUsage.
int usage_error(const std::string& command, const std::string& message);

}  // namespace fluxctl
