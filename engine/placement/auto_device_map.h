// accelerate's device-map inference (accelerate/utils/modeling.py, 1.15) on a ComponentInventory:
// get_balanced_memory / get_max_memory turn a budget into per-device limits, and
// infer_auto_device_map fills GPUs in order, then the CPU, then disk, splitting a module into its
// children only when it does not fit and never splitting a no-split block. Also diffusers'
// pipeline-level "balanced" (pipeline_loading_utils._assign_components_to_devices), which places
// whole components. tests/golden/device_map_golden_test.cc compares all three with upstream.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/placement/module_inventory.h"
#include "engine/placement/placement_spec.h"

namespace fluxserve {

using DeviceBudget = std::map<MapDevice, int64_t>;

// What diffusers' _determine_device_map (and transformers' _get_device_map) feed to
// infer_auto_device_map: get_max_memory for "sequential", get_balanced_memory otherwise
// (balanced_low_0 for kBalancedLow0). Budgets here are always given (never probed), so the "use
// 90% of a single GPU" rule for an unset max_memory does not arise.
DeviceBudget balanced_memory(const ComponentInventory& inv, const DeviceBudget& max_memory,
                             MapStrategy strategy);

struct AutoDeviceMap {
  // Every unit's device (the planner's view).
  std::map<std::string, MapDevice> unit_device;
  // The map as accelerate returns it (clean_device_map: modules whose units all share a device
  // merged into their parent), in accelerate's order.
  std::vector<std::pair<std::string, MapDevice>> cleaned;
  // Bytes charged per device, with the largest-layer reservation accelerate adds when it moves on
  // from gpu 0 / cpu (infer_auto_device_map's device_memory_used).
  std::map<MapDevice, int64_t> used;
};

// infer_auto_device_map(model, max_memory, no_split_module_classes) with clean_result=True and
// no fallback_allocation. Devices come from `max_memory` plus "disk" (unbounded), GPUs first.
// On the first GPU and the CPU it keeps room for the largest layer still to place (a no-split
// block or a leaf module), so an offloaded layer can be brought back for its forward.
AutoDeviceMap infer_auto_device_map(const ComponentInventory& inv, const DeviceBudget& max_memory);

// accelerate's clean_device_map: keys under `module` that all share one device become `module`,
// recursively (keys are module names, "" the whole model).
std::vector<std::pair<std::string, MapDevice>> clean_device_map(
    std::vector<std::pair<std::string, MapDevice>> map, const std::string& module = "");

// diffusers' pipeline device_map="balanced": components largest first; GPUs by budget, largest
// first, visited 0..n-1,n-1..0; a component that does not fit the current GPU's remaining budget
// goes to the CPU (upstream records only the last such component and loads the others without
// a device map, i.e. on the CPU as well: the same outcome). `sizes` in bytes.
std::map<std::string, MapDevice> assign_components_to_devices(
    const std::vector<std::pair<std::string, int64_t>>& sizes, const DeviceBudget& gpu_budget);

}  // namespace fluxserve
