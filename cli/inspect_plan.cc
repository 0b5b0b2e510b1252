// `fluxserve inspect --placement/--gpu-memory`: the device-map plan (engine/placement/planner.h)
// for a pipeline folder, sized from its config.json files alone (no weights are read, so a
// FLUX.1-dev-sized plan needs only the configs). Prints each component's map in accelerate's
// cleaned form with the bytes of each entry, bytes per device, peak GPU bytes and bytes streamed.
#include "cli/inspect_plan.h"

#include <cstdio>
#include <iostream>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "engine/core/status.h"
#include "engine/io/checkpoint.h"
#include "engine/placement/planner.h"

namespace fluxserve::cli {
namespace {

// --gpu-memory "24GiB" (cuda:0) or "cuda:0=24GiB,cuda:1=16GiB"; --cpu-memory "64GiB".
absl::Status add_budgets(const Args& a, PlacementSpec& spec) {
  if (a.has("gpu-memory")) {
    int next = 0;
    const std::vector<std::string> parts = absl::StrSplit(*a.str("gpu-memory"), ',');
    for (const std::string& part : parts) {
      std::vector<std::string> kv = absl::StrSplit(part, '=');
      MapDevice d{MapDevice::kCuda, next};
      if (kv.size() == 2) {
        FLUX_ASSIGN_OR_RETURN(d, parse_device(kv[0], "--gpu-memory"));
        if (!d.is_gpu())
          return absl::InvalidArgumentError("--gpu-memory: '" + kv[0] + "' is not a GPU");
      }
      FLUX_ASSIGN_OR_RETURN(int64_t bytes, parse_size(kv.back(), "--gpu-memory"));
      spec.max_memory[d] = bytes;  // the flag overrides the file's budget for that GPU
      next = d.index + 1;
    }
  }
  if (a.has("cpu-memory")) {
    FLUX_ASSIGN_OR_RETURN(int64_t bytes, parse_size(*a.str("cpu-memory"), "--cpu-memory"));
    spec.max_memory[MapDevice{MapDevice::kCpu, 0}] = bytes;
  }
  return absl::OkStatus();
}

std::string cell(const std::map<MapDevice, int64_t>& m, const MapDevice& d) {
  auto it = m.find(d);
  return it == m.end() || it->second == 0 ? "-" : format_bytes(it->second);
}

nlohmann::json to_json(const std::string& model, const Plan& p) {
  auto devmap = [](const std::map<MapDevice, int64_t>& m) {
    nlohmann::json j = nlohmann::json::object();
    for (const auto& [d, b] : m) j[d.name()] = b;
    return j;
  };
  nlohmann::json comps = nlohmann::json::array(), units = nlohmann::json::array();
  for (const ComponentPlan& c : p.components) {
    nlohmann::json map = nlohmann::json::array();
    for (const auto& [m, d] : c.device_map) map.push_back({m, d.name()});
    comps.push_back({{"component", c.component},
                     {"format", c.format},
                     {"device_map", c.how},
                     {"offload", c.offload.name()},
                     {"exec_device", c.exec.name()},
                     {"bytes", c.bytes},
                     {"resident", devmap(c.resident)},
                     {"onload_peak_bytes", c.onload_peak},
                     {"streamed_per_forward_bytes", c.streamed_per_forward},
                     {"onloaded_once_bytes", c.onloaded_once},
                     {"hf_device_map", map},
                     {"notes", c.notes}});
  }
  for (const PlannedUnit& u : p.units) {
    units.push_back({{"module", absl::StrCat(u.component, ".", u.module)},
                     {"device", u.device.name()},
                     {"bytes", u.bytes}});
  }
  return {{"model", model},
          {"components", comps},
          {"modules", units},
          {"resident_bytes", devmap(p.resident)},
          {"peak_bytes", devmap(p.peak)},
          {"max_memory", devmap(p.budget)},
          {"streamed_per_step_bytes", p.streamed_per_step},
          {"streamed_per_image_bytes", p.streamed_per_image}};
}

void print_plan(const std::string& model, const Plan& p) {
  std::set<MapDevice> devices;
  for (const auto& [d, b] : p.resident) devices.insert(d);
  for (const auto& [d, b] : p.budget) devices.insert(d);
  std::printf("model: %s (sizes from config.json; nothing loaded)\n\n", model.c_str());
  std::string head = absl::StrFormat("%-15s %-16s %-24s %-7s %11s", "component", "device_map",
                                     "offload", "runs on", "bytes");
  for (const MapDevice& d : devices) absl::StrAppend(&head, absl::StrFormat(" %11s", d.name()));
  absl::StrAppend(&head, absl::StrFormat(" %12s %14s", "onload peak", "streamed/fwd"));
  std::printf("%s\n", head.c_str());
  for (const ComponentPlan& c : p.components) {
    std::string row = absl::StrFormat("%-15s %-16s %-24s %-7s %11s", c.component, c.how,
                                      c.offload.name(), c.exec.name(), format_bytes(c.bytes));
    for (const MapDevice& d : devices)
      absl::StrAppend(&row, absl::StrFormat(" %11s", cell(c.resident, d)));
    absl::StrAppend(
        &row, absl::StrFormat(" %12s %14s", c.onload_peak ? format_bytes(c.onload_peak) : "-",
                              c.streamed_per_forward ? format_bytes(c.streamed_per_forward) : "-"));
    std::printf("%s\n", row.c_str());
  }
  std::printf("\n%-8s %12s %12s %12s\n", "device", "resident", "peak", "max_memory");
  for (const MapDevice& d : devices) {
    std::printf("%-8s %12s %12s %12s\n", d.name().c_str(), cell(p.resident, d).c_str(),
                cell(p.peak, d).c_str(), cell(p.budget, d).c_str());
  }
  std::printf("\nstreamed host->GPU per denoising step (transformer forward): %s\n",
              format_bytes(p.streamed_per_step).c_str());
  std::printf("streamed once per image (text encoders, VAE, model offload):  %s\n",
              format_bytes(p.streamed_per_image).c_str());
  std::printf(
      "(weights only: activations and workspaces come on top)\n\nmodules (accelerate's "
      "hf_device_map form):\n");
  for (const ComponentPlan& c : p.components) {
    for (const auto& [m, d] : c.device_map) {
      int64_t bytes = 0;
      for (const PlannedUnit& u : p.units) {
        if (u.component == c.component &&
            (m.empty() || u.module == m || u.module.starts_with(m + ".")))
          bytes += u.bytes;
      }
      std::printf("  %-52s %-7s %11s\n", (m.empty() ? c.component : c.component + "." + m).c_str(),
                  d.name().c_str(), format_bytes(bytes).c_str());
    }
    for (const std::string& n : c.notes)
      std::printf("  note: %s: %s\n", c.component.c_str(), n.c_str());
  }
}

}  // namespace

absl::Status inspect_plan(const Args& a, const std::string& model,
                          const PipelineQuantConfig* quant) {
  PlacementSpec spec;
  if (a.has("placement")) {
    const std::string path = *a.str("placement");
    FLUX_ASSIGN_OR_RETURN(nlohmann::json j, read_json_file(path));
    FLUX_ASSIGN_OR_RETURN(spec, PlacementSpec::from_json(j, path));
  } else {
    spec.pipeline = PlacementSpec::kAuto;  // --gpu-memory alone: the pipeline "auto" plan
  }
  FLUX_RETURN_IF_ERROR(add_budgets(a, spec));
  // The GPU form: every tensor in the load dtype (bf16), as diffusers loads FLUX.
  FLUX_ASSIGN_OR_RETURN(auto inventory,
                        pipeline_inventory(model, quant, DType::kBF16, DType::kBF16));
  FLUX_ASSIGN_OR_RETURN(Plan plan,
                        plan_placement(inventory, spec, a.str_or("placement", "placement")));
  if (a.has("json")) {
    std::cout << to_json(model, plan).dump(2) << "\n";
  } else {
    print_plan(model, plan);
  }
  return absl::OkStatus();
}

}  // namespace fluxserve::cli
