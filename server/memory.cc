#include "server/memory.h"

#include <dlfcn.h>
#include <malloc.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "absl/strings/str_join.h"
#include "engine/io/safetensors.h"

namespace fluxserve::server {
namespace {

constexpr const char* kComponents[] = {"transformer", "text_encoder", "text_encoder_2", "vae"};

std::vector<std::string> safetensors_files(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (e.path().extension() == ".safetensors") out.push_back(e.path().string());
  }
  return out;
}

// Bits per weight of the quantized form, scales included (bitsandbytes: one f32 absmax per
// 64-value block; torchao/uintx: a scale and zero point per group).
double quantized_bits(const ComponentQuantConfig& q) {
  switch (q.backend) {
    case QuantBackend::kBitsAndBytes4bit: return 4.5;
    case QuantBackend::kBitsAndBytes8bit: return 8.25;
    case QuantBackend::kGguf: return 16;  // already quantized on disk; take the stored size
    case QuantBackend::kTorchAo:
      switch (q.torchao_kind) {
        case TorchAoKind::kInt4WeightOnly:
        case TorchAoKind::kInt8DynamicActivationInt4Weight: return 4.5;
        case TorchAoKind::kFpxWeightOnly: return 1.0 + q.fpx_ebits + q.fpx_mbits;
        case TorchAoKind::kUintxWeightOnly: return q.uintx_bits + 0.5;
        default: return 8.25;
      }
  }
  return 16;
}

}  // namespace

int64_t process_rss_bytes() {
  std::ifstream f("/proc/self/statm");
  int64_t size = 0, resident = 0;
  if (!(f >> size >> resident)) return 0;
  return resident * static_cast<int64_t>(sysconf(_SC_PAGESIZE));
}

int64_t mem_available_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string key, unit;
  int64_t kb = 0;
  while (f >> key >> kb >> unit) {
    if (key == "MemAvailable:") return kb * 1024;
  }
  return -1;
}

namespace {

// The few NVML entry points used, with the ABI of nvml.h (stable since NVML 10: the _v2 names).
struct NvmlMemory {
  unsigned long long total, free, used;
};
using NvmlDevice = void*;
struct Nvml {
  int (*init)() = nullptr;
  int (*count)(unsigned int*) = nullptr;
  int (*handle)(unsigned int, NvmlDevice*) = nullptr;
  int (*memory)(NvmlDevice, NvmlMemory*) = nullptr;
  bool ok = false;
};

const Nvml& nvml() {
  static const Nvml n = [] {
    Nvml r;
    void* lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) return r;
    r.init = reinterpret_cast<int (*)()>(dlsym(lib, "nvmlInit_v2"));
    r.count = reinterpret_cast<int (*)(unsigned int*)>(dlsym(lib, "nvmlDeviceGetCount_v2"));
    r.handle = reinterpret_cast<int (*)(unsigned int, NvmlDevice*)>(
        dlsym(lib, "nvmlDeviceGetHandleByIndex_v2"));
    r.memory = reinterpret_cast<int (*)(NvmlDevice, NvmlMemory*)>(
        dlsym(lib, "nvmlDeviceGetMemoryInfo"));
    r.ok = r.init != nullptr && r.count != nullptr && r.handle != nullptr &&
           r.memory != nullptr && r.init() == 0;  // NVML_SUCCESS
    return r;
  }();
  return n;
}

}  // namespace

std::vector<GpuMemory> gpu_memory() {
  std::vector<GpuMemory> out;
  const Nvml& n = nvml();
  unsigned int count = 0;
  if (!n.ok || n.count(&count) != 0) return out;
  for (unsigned int i = 0; i < count; ++i) {
    NvmlDevice dev = nullptr;
    NvmlMemory m{};
    if (n.handle(i, &dev) != 0 || n.memory(dev, &m) != 0) continue;
    out.push_back({static_cast<int>(i), static_cast<int64_t>(m.used), static_cast<int64_t>(m.total)});
  }
  return out;
}

int64_t trim_heap() {
  const int64_t before = process_rss_bytes();
  malloc_trim(0);
  return before - process_rss_bytes();
}

int64_t estimate_pipeline_bytes(const std::string& dir, const PipelineQuantConfig* quant) {
  double total = 0;
  for (const char* component : kComponents) {
    std::optional<ComponentQuantConfig> q;
    if (quant != nullptr) q = quant->resolve(component);
    for (const std::string& path : safetensors_files(dir + "/" + component)) {
      absl::StatusOr<std::shared_ptr<const SafetensorsFile>> f = SafetensorsFile::open(path);
      if (!f.ok()) continue;
      for (const SafetensorsEntry& e : (*f)->entries()) {
        const double stored = static_cast<double>(e.end - e.begin);
        if (q && e.shape.size() == 2 && q->backend != QuantBackend::kGguf) {
          total += static_cast<double>(shape_numel(e.shape)) * quantized_bits(*q) / 8.0;
        } else {
          total += stored;
        }
      }
    }
  }
  return static_cast<int64_t>(total);
}

}  // namespace fluxserve::server
