// Subcommands of the `fluxserve` binary. Each returns a process exit code and prints its own
// errors; all of them go through the engine's public API only.
#pragma once

#include <string>
#include <vector>

namespace fluxserve::cli {

int eval_main(const std::vector<std::string>& args);   // eval transformer | scheduler
int bench_main(const std::vector<std::string>& args);  // bench transformer
int bench_quant_linear_main(const std::vector<std::string>& args);  // bench quant-linear
int generate_main(const std::vector<std::string>& args);  // text -> PNG
int quantize_main(const std::vector<std::string>& args);  // pipeline -> pre-quantized pipeline
int bench_load_main(const std::vector<std::string>& args);  // bench load (cli/bench_load.cc)
int inspect_main(const std::vector<std::string>& args);   // memory per component (inspect.cc)
// `eval clip|t5` (cli/eval_text.cc), `eval vae` (cli/eval_vae.cc), `eval tokenize`
// (cli/eval_tokenize.cc): args are the flags after the component name.
int eval_text_main(const std::string& component, const std::vector<std::string>& args);
int eval_vae_main(const std::vector<std::string>& args);
int eval_tokenize_main(const std::vector<std::string>& args);
// The embedded default model folder (models/tiny-flux in the source tree or next to the binary).
std::string default_model_dir();

}  // namespace fluxserve::cli
