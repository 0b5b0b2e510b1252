// `fluxserve serve`: builds the gRPC server (ImageService, ModelService, health, reflection,
// TLS, auth), the device queue, the model registry and the metrics endpoint, loads the
// configured models in the background and drains on SIGTERM/SIGINT.
#pragma once

#include <string>
#include <vector>

namespace fluxserve::server {

// `args`: the flags after `serve`. `default_model_dir`: the embedded tiny model's folder.
// Returns the process exit code (0 after a clean drain, 1 on startup errors, 2 on bad flags).
int serve_main(const std::vector<std::string>& args, const std::string& default_model_dir);

}  // namespace fluxserve::server
