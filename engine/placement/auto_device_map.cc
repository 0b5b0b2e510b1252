#include "engine/placement/auto_device_map.h"

#include <algorithm>
#include <optional>
#include <set>

namespace fluxserve {
namespace {

bool under(const std::string& name, const std::string& prefix) {
  return prefix.empty() || name == prefix || name.starts_with(prefix + ".");
}

// The inventory seen as accelerate's module tree: a node is a unit (atomic: a no-split block or
// a leaf module) or a dotted prefix of units (splittable into its children).
class Tree {
 public:
  explicit Tree(const ComponentInventory& inv) : inv_(inv) {}

  bool atomic(const std::string& node) const { return inv_.find(node) != nullptr; }
  int64_t size(const std::string& node) const { return inv_.bytes_under(node); }

  // Direct children of `node`, in registration order.
  std::vector<std::string> children(const std::string& node) const {
    std::vector<std::string> out;
    const size_t skip = node.empty() ? 0 : node.size() + 1;
    for (const ModuleUnit& u : inv_.units) {
      if (!under(u.name, node) || u.name == node) continue;
      const size_t dot = u.name.find('.', skip);
      std::string child = u.name.substr(0, dot);
      if (out.empty() || out.back() != child) out.push_back(std::move(child));
    }
    return out;
  }

  // get_max_layer_size: the largest layer (atomic node) among `nodes` and their descendants.
  int64_t max_layer(const std::vector<std::string>& nodes) const {
    int64_t best = 0;
    std::vector<std::string> todo(nodes.begin(), nodes.end());
    while (!todo.empty()) {
      const std::string n = todo.front();
      todo.erase(todo.begin());
      if (atomic(n)) {
        best = std::max(best, size(n));
      } else {
        std::vector<std::string> c = children(n);
        todo.insert(todo.begin(), c.begin(), c.end());
      }
    }
    return best;
  }

  // Units outside `node` tied to units inside it, or inside tied to outside (accelerate's
  // tied_params for the module being placed): the outside member of each pair.
  std::vector<const ModuleUnit*> tied_outside(const std::string& node) const {
    std::vector<const ModuleUnit*> out;
    for (const ModuleUnit& u : inv_.units) {
      if (u.tied_to.empty()) continue;
      const bool a = under(u.name, node), b = under(u.tied_to, node);
      if (a && !b) out.push_back(inv_.find(u.tied_to));
      if (b && !a) out.push_back(&u);
    }
    return out;
  }

 private:
  const ComponentInventory& inv_;
};

}  // namespace

DeviceBudget balanced_memory(const ComponentInventory& inv, const DeviceBudget& max_memory,
                             MapStrategy strategy) {
  DeviceBudget mm = max_memory;
  if (strategy == MapStrategy::kSequential) return mm;
  std::vector<MapDevice> gpus;
  for (const auto& [d, v] : mm) {
    if (d.is_gpu() && v > 0) gpus.push_back(d);
  }
  const int n = static_cast<int>(gpus.size());
  if (n == 0) return mm;
  const bool low_zero = strategy == MapStrategy::kBalancedLow0 && n > 1;
  const int64_t total = inv.bytes();
  int64_t per_gpu = total / (low_zero ? n - 1 : n);
  // The buffer: the first instance of each no-split class (one per block list here), or the mean
  // leaf module, whichever is larger, times 1.25.
  int64_t block = 0, leaf_count = 0, leaf_bytes = 0;
  std::set<std::string> seen;
  for (const ModuleUnit& u : inv.units) {
    leaf_count += u.leaf_modules;
    leaf_bytes += u.leaf_bytes;
    if (!u.block) continue;
    const std::string list =
        u.name.substr(0, u.name.rfind('.') == std::string::npos ? 0 : u.name.rfind('.'));
    if (seen.insert(list).second) block = std::max(block, u.bytes);
  }
  const int64_t mean_leaves = static_cast<int64_t>(
      static_cast<double>(leaf_bytes) / static_cast<double>(std::max<int64_t>(leaf_count, 1)));
  per_gpu += static_cast<int64_t>(1.25 * static_cast<double>(std::max(block, mean_leaves)));
  // Every GPU but the last gets min(per_gpu, its budget); the last keeps its budget as a spill.
  const int64_t first_budget = mm[gpus[0]];
  for (int i = 0; i + 1 < n; ++i) {
    mm[gpus[i]] = std::min(low_zero && i == 0 ? first_budget : per_gpu, mm[gpus[i]]);
  }
  if (low_zero) {
    int64_t others = 0;
    for (int i = 1; i < n; ++i) others += mm[gpus[i]];
    mm[gpus[0]] = std::min(std::max<int64_t>(0, total - others), mm[gpus[0]]);
  }
  return mm;
}

AutoDeviceMap infer_auto_device_map(const ComponentInventory& inv, const DeviceBudget& max_memory) {
  const Tree tree(inv);
  std::vector<MapDevice> devices;
  for (const auto& [d, v] : max_memory) devices.push_back(d);  // std::map order: GPUs, cpu, disk
  const MapDevice disk{MapDevice::kDisk, 0};
  if (std::find(devices.begin(), devices.end(), disk) == devices.end()) devices.push_back(disk);
  std::vector<MapDevice> main_devices;
  if (devices.front().is_gpu()) main_devices.push_back(devices.front());
  main_devices.push_back(MapDevice{MapDevice::kCpu, 0});

  AutoDeviceMap out;
  std::map<std::string, MapDevice> node_device;          // accelerate's device_map before cleaning
  std::vector<std::pair<std::string, MapDevice>> order;  // the same in insertion order
  std::vector<std::string> todo = tree.children("");
  size_t current = 0;
  std::map<MapDevice, int64_t>& used = out.used;
  int64_t max_layer = 0;
  auto find_todo = [&](const std::string& unit) -> std::optional<size_t> {
    for (size_t i = 0; i < todo.size(); ++i) {
      if (under(unit, todo[i])) return i;
    }
    return std::nullopt;
  };

  while (!todo.empty()) {
    const std::string name = todo.front();
    todo.erase(todo.begin());
    // accelerate recomputes the largest layer once the current largest ones are placed; the
    // maximum over what is left is the same number.
    max_layer = tree.max_layer(todo);
    const int64_t module_size = tree.size(name);
    const MapDevice device = devices[current];
    const bool bounded = device.kind != MapDevice::kDisk;
    int64_t limit = bounded ? max_memory.at(device) : 0, reserved = 0;
    if (std::find(main_devices.begin(), main_devices.end(), device) != main_devices.end()) {
      limit -= max_layer;
      reserved = max_layer;
    }
    // Tied parameters outside this module pull their module along (get_module_size_with_ties).
    std::vector<size_t> tied_nodes;
    int64_t with_ties = module_size;
    for (const ModuleUnit* t : tree.tied_outside(name)) {
      if (auto i = find_todo(t->name)) {
        tied_nodes.push_back(*i);
        with_ties += tree.size(todo[*i]) - t->bytes;
      }
    }
    if (!bounded || used[device] + with_ties <= limit) {
      used[device] += with_ties;
      node_device[name] = device;
      order.emplace_back(name, device);
      std::sort(tied_nodes.rbegin(), tied_nodes.rend());
      for (size_t i : tied_nodes) {
        node_device[todo[i]] = device;
        order.emplace_back(todo[i], device);
        todo.erase(todo.begin() + static_cast<long>(i));
      }
      continue;
    }
    // The module fits without its tied module: split the tied module if it can be split.
    if (!tied_nodes.empty() && used[device] + module_size <= limit) {
      bool split = false;
      for (size_t i : tied_nodes) {
        if (tree.atomic(todo[i])) continue;
        const std::string tied = todo[i];
        std::vector<std::string> c = tree.children(tied);
        todo.erase(todo.begin() + static_cast<long>(i));
        todo.insert(todo.begin() + static_cast<long>(i), c.begin(), c.end());
        todo.insert(todo.begin(), name);
        split = true;
        break;
      }
      if (split) continue;
    }
    if (used[device] + module_size >= limit && !tree.atomic(name)) {
      std::vector<std::string> c = tree.children(name);
      todo.insert(todo.begin(), c.begin(), c.end());
      continue;
    }
    // Nothing fits here any more: move on, charging the reservation to this device.
    used[device] += reserved;
    ++current;
    todo.insert(todo.begin(), name);
  }
  for (auto it = used.begin(); it != used.end();)
    it = it->second > 0 ? std::next(it) : used.erase(it);

  for (const ModuleUnit& u : inv.units) {
    // The deepest assigned node containing the unit (nodes are disjoint, so exactly one).
    for (const auto& [node, d] : node_device) {
      if (under(u.name, node)) out.unit_device[u.name] = d;
    }
  }
  out.cleaned = clean_device_map(std::move(order), "");
  return out;
}

std::vector<std::pair<std::string, MapDevice>> clean_device_map(
    std::vector<std::pair<std::string, MapDevice>> map, const std::string& module) {
  // accelerate: if every key under `module` maps to one device and there are several keys, they
  // become the single key `module` (appended last); then the same for each child of `module`.
  const std::string prefix = module.empty() ? "" : module + ".";
  std::set<MapDevice> values;
  size_t count = 0;
  for (const auto& [k, d] : map) {
    if (k.starts_with(prefix)) {
      values.insert(d);
      ++count;
    }
  }
  if (values.size() == 1 && count > 1) {
    std::erase_if(map, [&](const auto& e) { return e.first.starts_with(prefix); });
    map.emplace_back(module, *values.begin());
  }
  std::set<std::string> children;
  for (const auto& [k, d] : map) {
    if (!k.starts_with(prefix) || k.size() <= module.size()) continue;
    const size_t dot = k.find('.', prefix.size());
    children.insert(k.substr(0, dot));
  }
  for (const std::string& c : children) map = clean_device_map(std::move(map), c);
  return map;
}

std::map<std::string, MapDevice> assign_components_to_devices(
    const std::vector<std::pair<std::string, int64_t>>& sizes, const DeviceBudget& gpu_budget) {
  std::vector<std::pair<std::string, int64_t>> comps = sizes;
  std::stable_sort(comps.begin(), comps.end(),
                   [](auto& a, auto& b) { return a.second > b.second; });
  std::vector<std::pair<MapDevice, int64_t>> gpus;
  for (const auto& [d, v] : gpu_budget) {
    if (d.is_gpu()) gpus.emplace_back(d, v);
  }
  std::stable_sort(gpus.begin(), gpus.end(), [](auto& a, auto& b) { return a.second > b.second; });
  std::map<std::string, MapDevice> out;
  if (gpus.empty()) return out;
  std::vector<size_t> cycle;
  for (size_t i = 0; i < gpus.size(); ++i) cycle.push_back(i);
  for (size_t i = gpus.size(); i-- > 0;) cycle.push_back(i);
  size_t k = 0;
  for (const auto& [c, bytes] : comps) {
    auto& [device, left] = gpus[cycle[k % cycle.size()]];
    if (bytes > left) {
      out[c] = MapDevice{MapDevice::kCpu, 0};
      continue;
    }
    out[c] = device;
    left -= bytes;
    ++k;
  }
  return out;
}

}  // namespace fluxserve
