// The placement part of a model spec (proto/fluxserve/v1/model_spec.proto `Placement`, in its
// protobuf-JSON form) parsed and checked: device names, sizes, strategies and offload policies as
// diffusers and accelerate spell them. The planner (planner.h) turns it into a plan; the server's
// config check and `fluxserve inspect --placement` both go through this parser, so one message
// names a bad field wherever it is written.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace fluxserve {

// A device as accelerate's device maps name it: "cuda:N", "cpu" or "disk". Ordered GPUs first
// (by index), then cpu, then disk, the order accelerate fills them in.
struct MapDevice {
  enum Kind { kCuda, kCpu, kDisk } kind = kCpu;
  int index = 0;
  std::string name() const;
  bool is_gpu() const { return kind == kCuda; }
  auto operator<=>(const MapDevice&) const = default;
};
// "cuda:N", "cuda" (= cuda:0), an integer N (accelerate's GPU keys), "cpu", "disk".
absl::StatusOr<MapDevice> parse_device(const std::string& s, const std::string& field);

// accelerate's convert_file_size_to_int, plus plain integers: "24GiB" (2^30), "24GB" (10^9),
// "512MiB", "100KB", "1.5GiB". Bits ("...b" lowercase) are refused rather than guessed.
absl::StatusOr<int64_t> parse_size(const std::string& s, const std::string& field);

// String strategies accelerate / diffusers accept for a model's device_map.
enum class MapStrategy { kAuto, kBalanced, kBalancedLow0, kSequential };

// How one component's weights travel (diffusers' enable_*_offload).
struct OffloadPolicy {
  enum Kind {
    kNone,        // stays where the device map puts it
    kModel,       // enable_model_cpu_offload: whole model onloaded when it runs
    kGroup,       // enable_group_offload(offload_type=block_level|leaf_level)
    kSequential,  // enable_sequential_cpu_offload: every leaf module onloaded for its forward
    kDisk,        // group offload with offload_to_disk_path: weights on disk, not in RAM
  } kind = kNone;
  bool leaf_level = false;       // group: offload_type "leaf_level"
  int num_blocks_per_group = 0;  // group/disk block_level: required (diffusers' error otherwise)
  bool use_stream = false;       // prefetch the next group on a side stream
  std::string name() const;
};

// What a component's device map is, before planning.
struct ComponentMapSpec {
  enum Kind { kInherit, kDevice, kStrategy, kModules } kind = kInherit;
  MapDevice device;                                        // kDevice
  MapStrategy strategy = MapStrategy::kAuto;               // kStrategy
  std::vector<std::pair<std::string, MapDevice>> modules;  // kModules: module prefix -> device
};

struct PlacementSpec {
  // Pipeline level: "" / "cpu" (everything on the CPU), "cuda[:N]" (whole pipeline on one GPU),
  // "balanced" (diffusers: whole components over the GPUs), "auto" (fluxserve: accelerate's
  // infer_auto_device_map per component, sharing the budget; see planner.h).
  enum PipelineKind { kAllCpu, kOneDevice, kBalanced, kAuto } pipeline = kAllCpu;
  MapDevice pipeline_device;                           // kOneDevice
  std::map<std::string, ComponentMapSpec> components;  // per component overrides
  std::map<MapDevice, int64_t> max_memory;             // accelerate's max_memory, parsed
  std::map<std::string, OffloadPolicy> offload;        // per component

  // The protobuf-JSON form of Placement (preserve_proto_field_names): device_map,
  // component_device_map, device_map_modules, max_memory, offload. `what` prefixes messages
  // ("placement.json", "models[0].placement"). Unknown keys are errors. Component names are
  // checked here; module names need the inventory (planner.h validate).
  static absl::StatusOr<PlacementSpec> from_json(const nlohmann::json& j, const std::string& what);

  // True when nothing leaves the CPU (what the CPU-only engine can execute today).
  bool all_cpu() const;
};

// The FluxPipeline module components, in model_cpu_offload_seq order.
const std::vector<std::string>& placement_components();

}  // namespace fluxserve
