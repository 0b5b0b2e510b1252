// Process and model memory, as the registry and the metrics report it: resident set size,
// the kernel's MemAvailable, giving freed heap back (malloc_trim), what a loaded pipeline holds
// and how much a spec will need before it is loaded (swap admission). What a loaded pipeline
// holds per component is FluxPipeline::memory().
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/pipeline/flux_pipeline.h"
#include "engine/quant/quant_config.h"

namespace fluxserve::server {

// Resident set size of this process (/proc/self/statm), 0 when unreadable.
int64_t process_rss_bytes();
// MemAvailable from /proc/meminfo, -1 when unknown.
int64_t mem_available_bytes();
// Memory of each NVIDIA GPU as the driver reports it (NVML, the library nvidia-smi and DCGM use;
// loaded with dlopen, so machines without the driver run the same binary): used bytes are the
// whole device's, every process included. Empty without a driver or a GPU. NVML does not create
// a CUDA context, so scraping costs no GPU memory.
struct GpuMemory {
  int index = 0;
  int64_t used = 0, total = 0;
};
std::vector<GpuMemory> gpu_memory();

// Returns freed heap pages to the kernel (malloc_trim(0)) and the RSS drop it caused.
int64_t trim_heap();

// Bytes a pipeline folder will hold once loaded with `quant`: tensor sizes from the safetensors
// headers (mmapped as stored), the transformer's 2-d weights at the quantized width when it is
// quantized. An estimate for admission, not an accounting.
int64_t estimate_pipeline_bytes(const std::string& dir, const PipelineQuantConfig* quant);

}  // namespace fluxserve::server
