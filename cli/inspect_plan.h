// The placement-planning half of `fluxserve inspect` (cli/inspect_plan.cc).
#pragma once

#include <string>

#include "absl/status/status.h"
#include "cli/args.h"
#include "engine/quant/quant_config.h"

namespace fluxserve::cli {

// Plans `model`'s placement from --placement (a Placement JSON) and/or --gpu-memory /
// --cpu-memory budgets and prints it (--json: as JSON). Reads only the components' config.json.
absl::Status inspect_plan(const Args& a, const std::string& model,
                          const PipelineQuantConfig* quant);

}  // namespace fluxserve::cli
