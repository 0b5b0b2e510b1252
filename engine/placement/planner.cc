#include "engine/placement/planner.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/core/status.h"

namespace fluxserve {
namespace {

const MapDevice kCpu{MapDevice::kCpu, 0};
const MapDevice kDisk{MapDevice::kDisk, 0};

bool under(const std::string& name, const std::string& prefix) {
  return prefix.empty() || name == prefix || name.starts_with(prefix + ".");
}

// The GPU offloaded weights compute on: the pipeline's device, else the first GPU budgeted.
MapDevice onload_device(const PlacementSpec& spec) {
  if (spec.pipeline == PlacementSpec::kOneDevice && spec.pipeline_device.is_gpu()) {
    return spec.pipeline_device;
  }
  for (const auto& [d, v] : spec.max_memory) {
    if (d.is_gpu()) return d;
  }
  return MapDevice{MapDevice::kCuda, 0};
}

absl::Status check_gpu_known(const MapDevice& d, const PlacementSpec& spec,
                             const std::string& field) {
  if (!d.is_gpu()) return absl::OkStatus();
  std::vector<std::string> gpus;
  for (const auto& [k, v] : spec.max_memory) {
    if (k.is_gpu()) gpus.push_back(k.name());
  }
  if (gpus.empty() || spec.max_memory.contains(d)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(field, ": unknown device '", d.name(),
                                                 "' (max_memory budgets ",
                                                 absl::StrJoin(gpus, ", "), ")"));
}

// An explicit {module prefix -> device} map for one component, checked against its units.
absl::StatusOr<std::map<std::string, MapDevice>> explicit_map(
    const ComponentInventory& inv, const std::vector<std::pair<std::string, MapDevice>>& entries,
    const PlacementSpec& spec, const std::string& what) {
  for (const auto& [prefix, d] : entries) {
    const std::string field = absl::StrCat(what, ".device_map_modules.", inv.component,
                                           prefix.empty() ? "" : ".", prefix);
    FLUX_RETURN_IF_ERROR(check_gpu_known(d, spec, field));
    bool known = prefix.empty();
    for (const ModuleUnit& u : inv.units) {
      if (under(u.name, prefix)) known = true;
      if (prefix.starts_with(u.name + ".")) {
        return absl::InvalidArgumentError(absl::StrCat(
            field, ": '", prefix, "' is inside ", u.name,
            u.block ? " (a no-split block of " + inv.model_class + ")" : " (a leaf module)",
            ": device maps split ", inv.component, " only at block boundaries (",
            absl::StrJoin(inv.no_split_classes, ", "), ")"));
      }
    }
    if (!known) {
      std::vector<std::string> top;
      for (const ModuleUnit& u : inv.units) {
        const std::string t = u.name.substr(0, u.name.find('.'));
        if (top.empty() || top.back() != t) top.push_back(t);
      }
      return absl::InvalidArgumentError(absl::StrCat(field, ": unknown module '", inv.component,
                                                     ".", prefix, "' (", inv.model_class, " has ",
                                                     absl::StrJoin(top, ", "), ")"));
    }
  }
  std::map<std::string, MapDevice> out;
  std::vector<std::string> missing;
  for (const ModuleUnit& u : inv.units) {
    size_t best = 0;
    bool found = false;
    for (const auto& [prefix, d] : entries) {  // the most specific entry wins
      if (under(u.name, prefix) && (!found || prefix.size() >= best)) {
        out[u.name] = d;
        best = prefix.size();
        found = true;
      }
    }
    if (!found && u.bytes > 0) missing.push_back(absl::StrCat(inv.component, ".", u.name));
    if (!found) out[u.name] = kCpu;  // parameterless modules hold nothing to place
  }
  if (!missing.empty()) {
    if (missing.size() > 5) {
      missing.resize(5);
      missing.push_back("...");
    }
    return absl::InvalidArgumentError(absl::StrCat(
        what, ".device_map_modules: gives no device for ", absl::StrJoin(missing, ", ")));
  }
  return out;
}

// Bytes of `inv`'s units with their device, after bitsandbytes' cpu-offload rule.
absl::Status apply_units(const ComponentInventory& inv,
                         const std::map<std::string, MapDevice>& where, ComponentPlan& cp,
                         const std::string& what) {
  std::vector<std::string> offloaded;
  int64_t largest_offloaded = 0;
  for (const ModuleUnit& u : inv.units) {
    const MapDevice d = where.at(u.name);
    int64_t bytes = u.bytes;
    if (!d.is_gpu() && u.bytes > 0) {
      offloaded.push_back(u.name);
      if (inv.bnb_fp32_cpu_offload) bytes = u.dense_bytes;
      largest_offloaded =
          std::max(largest_offloaded, inv.bnb_fp32_cpu_offload ? bytes : u.largest_leaf);
    }
    cp.resident[d] += bytes;
    cp.bytes += bytes;
  }
  if (!cp.exec.is_gpu() || offloaded.empty()) return absl::OkStatus();
  if (inv.quantized && !inv.bnb_fp32_cpu_offload) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, ": ", inv.component, " is quantized with bitsandbytes and its device map puts ",
        offloaded.size(), " module(s) on cpu/disk (", offloaded.front(),
        offloaded.size() > 1 ? ", ..." : "",
        "); diffusers refuses this unless llm_int8_enable_fp32_cpu_offload is set (those modules "
        "then stay unquantized). Give the GPU more memory or set it in the quantization config"));
  }
  for (const auto& [d, b] : cp.resident) {
    if (!d.is_gpu()) cp.streamed_per_forward += b;
  }
  cp.onload_peak = largest_offloaded;
  cp.notes.push_back(absl::StrCat(offloaded.size(), " module(s) off the GPU run on ",
                                  cp.exec.name(),
                                  " via accelerate hooks (one leaf module onloaded at a time)"));
  if (inv.bnb_fp32_cpu_offload) {
    cp.notes.push_back("llm_int8_enable_fp32_cpu_offload: modules on cpu/disk stay unquantized");
  }
  return absl::OkStatus();
}

// Offload policies: the component lives on cpu (disk for "disk") and is onloaded around forward.
void apply_offload(const ComponentInventory& inv, ComponentPlan& cp) {
  const OffloadPolicy& o = cp.offload;
  const MapDevice home = o.kind == OffloadPolicy::kDisk ? kDisk : kCpu;
  cp.bytes = inv.bytes();
  cp.resident[home] = cp.bytes;
  int64_t largest_leaf = 0, unmatched = 0, largest_group = 0;
  std::map<std::string, std::vector<int64_t>> lists;  // block list -> block sizes in order
  for (const ModuleUnit& u : inv.units) {
    largest_leaf = std::max(largest_leaf, u.block ? u.largest_leaf : u.bytes);
    if (u.block) {
      lists[u.name.substr(0, u.name.rfind('.'))].push_back(u.bytes);
    } else {
      unmatched += u.bytes;
    }
  }
  switch (o.kind) {
    case OffloadPolicy::kModel:
      cp.onload_peak = cp.bytes;
      cp.onloaded_once = cp.bytes;
      return;
    case OffloadPolicy::kSequential:
      cp.onload_peak = largest_leaf;
      break;
    case OffloadPolicy::kGroup:
    case OffloadPolicy::kDisk:
      if (o.leaf_level) {
        cp.onload_peak = largest_leaf * (o.use_stream ? 2 : 1);
        break;
      }
      // diffusers block_level: each direct ModuleList cut into groups of num_blocks_per_group;
      // the other modules form one group onloaded for the whole forward.
      for (const auto& [list, sizes] : lists) {
        for (size_t i = 0; i < sizes.size(); i += static_cast<size_t>(o.num_blocks_per_group)) {
          int64_t g = 0;
          for (size_t k = i;
               k < std::min(sizes.size(), i + static_cast<size_t>(o.num_blocks_per_group)); ++k)
            g += sizes[k];
          largest_group = std::max(largest_group, g);
        }
      }
      cp.onload_peak = unmatched + largest_group * (o.use_stream ? 2 : 1);
      break;
    case OffloadPolicy::kNone:
      return;
  }
  cp.streamed_per_forward = cp.bytes;
}

absl::Status check_budget(const Plan& plan, const std::string& what) {
  for (const auto& [d, need] : plan.peak) {
    auto it = plan.budget.find(d);
    if (d.kind == MapDevice::kDisk || it == plan.budget.end() || need <= it->second) continue;
    std::vector<std::string> parts;
    const ComponentPlan* onload = nullptr;
    for (const ComponentPlan& c : plan.components) {
      auto r = c.resident.find(d);
      if (r != c.resident.end() && r->second > 0)
        parts.push_back(absl::StrCat(c.component, " ", format_bytes(r->second)));
      if (c.exec == d && c.onload_peak > 0 && (!onload || c.onload_peak > onload->onload_peak))
        onload = &c;
    }
    std::string extra;
    const int64_t resident = plan.resident.contains(d) ? plan.resident.at(d) : 0;
    if (need > resident && onload) {
      extra = absl::StrCat(" + ", format_bytes(need - resident), " onloaded while ",
                           onload->component, " runs (",
                           onload->offload.kind == OffloadPolicy::kNone ? "offloaded modules"
                                                                        : onload->offload.name(),
                           ")");
    }
    return absl::ResourceExhaustedError(absl::StrCat(
        what, ": out of memory on ", d.name(), ": the plan needs ", format_bytes(need), " (", need,
        " bytes: resident ", parts.empty() ? "nothing" : absl::StrJoin(parts, ", "), extra,
        ") but max_memory allows ", format_bytes(it->second), " (", it->second,
        " bytes), short by ", format_bytes(need - it->second)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Plan> plan_placement(const std::vector<ComponentInventory>& inventory,
                                    const PlacementSpec& spec, const std::string& what) {
  Plan plan;
  plan.budget = spec.max_memory;
  const bool any_strategy =
      spec.pipeline == PlacementSpec::kAuto || spec.pipeline == PlacementSpec::kBalanced ||
      std::any_of(spec.components.begin(), spec.components.end(),
                  [](auto& c) { return c.second.kind == ComponentMapSpec::kStrategy; });
  bool has_gpu_budget = false;
  for (const auto& [d, v] : spec.max_memory) has_gpu_budget |= d.is_gpu();
  if (any_strategy && !has_gpu_budget) {
    return absl::InvalidArgumentError(absl::StrCat(
        what,
        ".max_memory: \"auto\"/\"balanced\" device maps need a GPU budget ({\"cuda:0\": "
        "\"24GiB\", ...} or --gpu-memory): the planner does not probe devices"));
  }
  for (const auto& [c, m] : spec.components) {
    if (std::none_of(inventory.begin(), inventory.end(),
                     [&](auto& i) { return i.component == c; })) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": component '", c, "' is not in this pipeline folder"));
    }
  }
  if (spec.pipeline == PlacementSpec::kOneDevice) {
    FLUX_RETURN_IF_ERROR(check_gpu_known(spec.pipeline_device, spec, what + ".device_map"));
  }
  // Pipeline "balanced": whole components first, by size.
  std::map<std::string, MapDevice> balanced;
  if (spec.pipeline == PlacementSpec::kBalanced) {
    std::vector<std::pair<std::string, int64_t>> sizes;
    for (const ComponentInventory& inv : inventory) sizes.emplace_back(inv.component, inv.bytes());
    balanced = assign_components_to_devices(sizes, spec.max_memory);
  }
  // Pipeline "auto": largest-first priority order over a shrinking budget.
  DeviceBudget remaining = spec.max_memory;
  std::vector<const ComponentInventory*> order;
  for (const char* c : {"transformer", "text_encoder_2", "text_encoder", "vae"}) {
    for (const ComponentInventory& inv : inventory) {
      if (inv.component == c) order.push_back(&inv);
    }
  }
  std::map<std::string, ComponentPlan> plans;
  const MapDevice onload = onload_device(spec);
  for (const ComponentInventory* ip : order) {
    const ComponentInventory& inv = *ip;
    ComponentPlan cp;
    cp.component = inv.component;
    cp.format = inv.format;
    cp.denoiser = inv.component == "transformer";
    auto oit = spec.offload.find(inv.component);
    if (oit != spec.offload.end()) cp.offload = oit->second;
    auto mit = spec.components.find(inv.component);
    const ComponentMapSpec map = mit == spec.components.end() ? ComponentMapSpec{} : mit->second;
    const bool mapped =
        map.kind == ComponentMapSpec::kStrategy || map.kind == ComponentMapSpec::kModules ||
        (map.kind == ComponentMapSpec::kInherit &&
         (spec.pipeline == PlacementSpec::kAuto || spec.pipeline == PlacementSpec::kBalanced));
    if (cp.offload.kind != OffloadPolicy::kNone) {
      if (mapped) {
        return absl::FailedPreconditionError(
            absl::StrCat(what, ".offload.", inv.component, ": ", inv.component,
                         " has a device mapping strategy, "
                         "so offload policy '",
                         cp.offload.name(),
                         "' is not allowed (diffusers: call "
                         "reset_device_map() first); give one or the other"));
      }
      cp.exec = onload;
      cp.how = "offloaded";
      apply_offload(inv, cp);
      plans[inv.component] = std::move(cp);
      continue;
    }
    std::map<std::string, MapDevice> where;
    auto all_on = [&](MapDevice d) {
      for (const ModuleUnit& u : inv.units) where[u.name] = d;
    };
    if (map.kind == ComponentMapSpec::kModules) {
      FLUX_ASSIGN_OR_RETURN(where, explicit_map(inv, map.modules, spec, what));
      cp.how = "explicit map";
    } else if (map.kind == ComponentMapSpec::kStrategy ||
               (map.kind == ComponentMapSpec::kInherit && spec.pipeline == PlacementSpec::kAuto)) {
      const bool own = map.kind == ComponentMapSpec::kStrategy;
      const MapStrategy strategy = own ? map.strategy : MapStrategy::kAuto;
      DeviceBudget budget = balanced_memory(inv, own ? spec.max_memory : remaining, strategy);
      if (inv.quantized) {  // diffusers' bitsandbytes adjust_max_memory
        for (auto& [d, v] : budget) v = static_cast<int64_t>(static_cast<double>(v) * 0.90);
      }
      AutoDeviceMap m = infer_auto_device_map(inv, budget);
      where = m.unit_device;
      for (const auto& [d, used] : m.used) {
        if (remaining.contains(d)) remaining[d] = std::max<int64_t>(0, remaining[d] - used);
      }
      cp.how = own ? std::string(strategy == MapStrategy::kAuto           ? "auto"
                                 : strategy == MapStrategy::kBalanced     ? "balanced"
                                 : strategy == MapStrategy::kBalancedLow0 ? "balanced_low_0"
                                                                          : "sequential")
                   : "auto (pipeline)";
    } else if (map.kind == ComponentMapSpec::kDevice) {
      FLUX_RETURN_IF_ERROR(check_gpu_known(
          map.device, spec, absl::StrCat(what, ".component_device_map.", inv.component)));
      all_on(map.device);
      cp.how = map.device.name();
    } else if (spec.pipeline == PlacementSpec::kBalanced) {
      all_on(balanced.contains(inv.component) ? balanced.at(inv.component) : kCpu);
      cp.how = "balanced (pipeline)";
    } else if (spec.pipeline == PlacementSpec::kOneDevice) {
      all_on(spec.pipeline_device);
      cp.how = spec.pipeline_device.name();
    } else {
      all_on(kCpu);
      cp.how = "cpu";
    }
    // Where it computes: its first GPU (accelerate's main device), or the CPU when it has none.
    cp.exec = kCpu;
    for (const ModuleUnit& u : inv.units) {
      if (where.at(u.name).is_gpu() && (!cp.exec.is_gpu() || where.at(u.name) < cp.exec))
        cp.exec = where.at(u.name);
    }
    FLUX_RETURN_IF_ERROR(apply_units(inv, where, cp, what));
    std::vector<std::pair<std::string, MapDevice>> units_in_order;
    for (const ModuleUnit& u : inv.units) units_in_order.emplace_back(u.name, where.at(u.name));
    cp.device_map = clean_device_map(units_in_order);
    plans[inv.component] = std::move(cp);
  }
  // Output in the pipeline's execution order, with per-unit rows.
  for (const ComponentInventory& inv : inventory) {
    ComponentPlan& cp = plans.at(inv.component);
    for (const ModuleUnit& u : inv.units) {
      if (u.bytes == 0) continue;
      MapDevice d = cp.offload.kind == OffloadPolicy::kNone ? cp.exec : cp.resident.begin()->first;
      for (const auto& [prefix, dev] : cp.device_map) {
        if (cp.offload.kind == OffloadPolicy::kNone && under(u.name, prefix)) d = dev;
      }
      const bool dense =
          !d.is_gpu() && inv.bnb_fp32_cpu_offload && cp.offload.kind == OffloadPolicy::kNone;
      plan.units.push_back({inv.component, u.name, d, dense ? u.dense_bytes : u.bytes});
    }
    for (const auto& [d, b] : cp.resident) plan.resident[d] += b;
    if (cp.denoiser) {
      plan.streamed_per_step += cp.streamed_per_forward;
      plan.streamed_per_image += cp.onloaded_once;
    } else {
      plan.streamed_per_image += cp.streamed_per_forward + cp.onloaded_once;
    }
    plan.components.push_back(std::move(cp));
  }
  plan.peak = plan.resident;
  std::map<MapDevice, int64_t> onload_max;
  for (const ComponentPlan& c : plan.components) {
    if (c.onload_peak > 0) onload_max[c.exec] = std::max(onload_max[c.exec], c.onload_peak);
  }
  for (const auto& [d, b] : onload_max) plan.peak[d] += b;
  FLUX_RETURN_IF_ERROR(check_budget(plan, what));
  return plan;
}

}  // namespace fluxserve
