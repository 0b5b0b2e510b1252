// Subcommands of the `fluxserve` binary. Each returns a process exit code and prints its own
// errors; all of them go through the engine's public API only.
#pragma once

#include <string>
#include <vector>

namespace fluxserve::cli {

int eval_main(const std::vector<std::string>& args);   // eval transformer | scheduler
int bench_main(const std::vector<std::string>& args);  // bench transformer
int run_main(const std::vector<std::string>& args);    // offline denoising run
// The embedded default model folder (models/tiny-flux in the source tree or next to the binary).
std::string default_model_dir();

}  // namespace fluxserve::cli
