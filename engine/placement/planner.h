// The device-map planner (issue #7): from a pipeline's inventory (module_inventory.h) and a
// PlacementSpec, where every placement unit lives ("cuda:N", "cpu", "disk"), the bytes resident
// per device, the peak GPU bytes once offloaded weights are brought in to compute, and the bytes
// streamed host->GPU per denoising step. Nothing is executed here: the runtime that follows the
// plan arrives with issues #6/#7. `fluxserve inspect --placement` prints it.
//
// Upstream semantics followed (and where fluxserve differs):
//  - Component strategies ("auto", "balanced", "balanced_low_0", "sequential") are diffusers'
//    model-level from_pretrained(device_map=...): get_balanced_memory / get_max_memory, then
//    infer_auto_device_map (auto_device_map.h), bitsandbytes' 0.9 max_memory factor included.
//    Each such component sees the whole max_memory, as separate from_pretrained calls do.
//  - Pipeline "balanced" is diffusers' pipeline-level map: whole components over the GPUs.
//  - Pipeline "auto" is a fluxserve extension (diffusers pipelines take only "balanced"): the
//    model-level "auto" applied to transformer, text_encoder_2, text_encoder, vae in turn, each on
//    what the previous ones left (their reservation included).
//  - Modules on cpu/disk in a device-mapped model run on the first GPU through accelerate's
//    AlignDevicesHook, which onloads each leaf module for its forward: streamed every forward,
//    one leaf at a time on the GPU. A bitsandbytes component may only have cpu/disk modules with
//    llm_int8_enable_fp32_cpu_offload, and those stay unquantized (diffusers' skip list).
//  - Offload policies (diffusers enable_model_cpu_offload, enable_group_offload,
//    enable_sequential_cpu_offload; "disk" = group offload to offload_to_disk_path) keep the
//    component off the GPU and onload it around its forward; they refuse a device-mapped
//    component as diffusers does. Activations and workspaces are not in these numbers.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/placement/auto_device_map.h"
#include "engine/placement/module_inventory.h"
#include "engine/placement/placement_spec.h"

namespace fluxserve {

struct ComponentPlan {
  std::string component;
  std::string format;
  std::string how;  // "auto", "cuda:0", "balanced (pipeline)", "explicit map", "cpu"
  OffloadPolicy offload;
  MapDevice exec;     // where its forward computes
  int64_t bytes = 0;  // stored bytes (after any fp32-cpu-offload dequantized modules)
  std::map<MapDevice, int64_t> resident;  // where the bytes live between forwards
  int64_t onload_peak = 0;                // extra bytes on `exec` while its forward runs
  int64_t streamed_per_forward = 0;       // host/disk -> GPU bytes each forward
  int64_t onloaded_once = 0;              // model offload: moved in once per image
  bool denoiser = false;                  // runs once per denoising step (the transformer)
  std::vector<std::pair<std::string, MapDevice>> device_map;  // accelerate's cleaned form
  std::vector<std::string> notes;
};

struct PlannedUnit {
  std::string component, module;
  MapDevice device;
  int64_t bytes = 0;
};

struct Plan {
  std::vector<ComponentPlan> components;
  std::vector<PlannedUnit> units;
  std::map<MapDevice, int64_t> resident;  // all components
  std::map<MapDevice, int64_t> peak;      // resident + the largest onload among components there
  DeviceBudget budget;                    // the max_memory the plan was checked against
  int64_t streamed_per_step = 0;          // per transformer forward (x2 with true CFG)
  int64_t streamed_per_image = 0;         // text encoders, VAE and model-offload onloads, once
};

// Validates the spec against the inventory (unknown component, module or device names, splits
// inside a no-split block, uncovered modules: InvalidArgument naming them) and plans it. A plan
// that needs more than max_memory on a device is ResourceExhausted with the numbers (needed,
// allowed, where, and what is there). `what` prefixes messages.
absl::StatusOr<Plan> plan_placement(const std::vector<ComponentInventory>& inventory,
                                    const PlacementSpec& spec, const std::string& what);

}  // namespace fluxserve
