#include "engine/placement/placement_spec.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/core/status.h"

namespace fluxserve {
namespace {

absl::Status bad(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

absl::StatusOr<MapStrategy> parse_strategy(const std::string& s) {
  if (s == "auto") return MapStrategy::kAuto;
  if (s == "balanced") return MapStrategy::kBalanced;
  if (s == "balanced_low_0") return MapStrategy::kBalancedLow0;
  if (s == "sequential") return MapStrategy::kSequential;
  return absl::NotFoundError(s);
}

absl::Status check_component(const std::string& c, const std::string& field) {
  const auto& all = placement_components();
  if (std::find(all.begin(), all.end(), c) != all.end()) return absl::OkStatus();
  return bad(field, absl::StrCat("unknown component '", c, "' (FluxPipeline has ",
                                 absl::StrJoin(all, ", "), ")"));
}

absl::StatusOr<std::string> str_field(const nlohmann::json& j, const std::string& field) {
  if (!j.is_string()) return bad(field, absl::StrCat("must be a string, got ", j.dump()));
  return j.get<std::string>();
}

absl::Status check_keys(const nlohmann::json& j, const std::vector<std::string>& known,
                        const std::string& field) {
  if (!j.is_object()) return bad(field, absl::StrCat("must be an object, got ", j.dump()));
  for (const auto& [k, v] : j.items()) {
    if (std::find(known.begin(), known.end(), k) == known.end()) {
      return bad(field,
                 absl::StrCat("unknown key '", k, "' (known: ", absl::StrJoin(known, ", "), ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<OffloadPolicy> parse_offload(const nlohmann::json& j, const std::string& field) {
  FLUX_RETURN_IF_ERROR(
      check_keys(j, {"policy", "num_blocks_per_group", "use_stream", "offload_type"}, field));
  OffloadPolicy p;
  std::string policy = "none", type;
  if (j.contains("policy")) {
    FLUX_ASSIGN_OR_RETURN(policy, str_field(j["policy"], field + ".policy"));
  }
  if (j.contains("offload_type")) {
    FLUX_ASSIGN_OR_RETURN(type, str_field(j["offload_type"], field + ".offload_type"));
  }
  if (policy == "" || policy == "none")
    p.kind = OffloadPolicy::kNone;
  else if (policy == "model")
    p.kind = OffloadPolicy::kModel;
  else if (policy == "group")
    p.kind = OffloadPolicy::kGroup;
  else if (policy == "sequential")
    p.kind = OffloadPolicy::kSequential;
  else if (policy == "disk")
    p.kind = OffloadPolicy::kDisk;
  else {
    return bad(field + ".policy", absl::StrCat("unknown offload policy '", policy,
                                               "' (none, model, group, sequential, disk)"));
  }
  if (j.contains("num_blocks_per_group")) {
    if (!j["num_blocks_per_group"].is_number_integer() ||
        j["num_blocks_per_group"].get<int64_t>() < 1) {
      return bad(field + ".num_blocks_per_group",
                 absl::StrCat("must be an integer >= 1, got ", j["num_blocks_per_group"].dump()));
    }
    p.num_blocks_per_group = j["num_blocks_per_group"].get<int>();
  }
  if (j.contains("use_stream")) {
    if (!j["use_stream"].is_boolean()) return bad(field + ".use_stream", "must be true or false");
    p.use_stream = j["use_stream"].get<bool>();
  }
  if (!type.empty() && type != "block_level" && type != "leaf_level") {
    return bad(field + ".offload_type",
               absl::StrCat("must be block_level or leaf_level, got '", type, "'"));
  }
  p.leaf_level = type == "leaf_level";
  const bool grouped = p.kind == OffloadPolicy::kGroup || p.kind == OffloadPolicy::kDisk;
  if (!grouped && (p.num_blocks_per_group != 0 || p.use_stream || !type.empty())) {
    return bad(field, absl::StrCat("num_blocks_per_group, use_stream and offload_type apply to the "
                                   "group and disk policies, not '",
                                   p.name(), "'"));
  }
  if (grouped && !p.leaf_level) {
    // diffusers apply_group_offloading: block_level needs num_blocks_per_group, and with
    // use_stream it is forced to 1 (diffusers warns; we refuse the contradiction up front).
    if (p.num_blocks_per_group == 0 && !p.use_stream) {
      return bad(field + ".num_blocks_per_group",
                 "`num_blocks_per_group` must be provided when using `offload_type='block_level'.");
    }
    if (p.use_stream && p.num_blocks_per_group > 1) {
      return bad(field + ".num_blocks_per_group",
                 "use_stream with block_level offload moves one block per group (diffusers forces "
                 "num_blocks_per_group=1); set 1 or leave it out");
    }
    if (p.use_stream) p.num_blocks_per_group = 1;
  }
  return p;
}

}  // namespace

std::string MapDevice::name() const {
  switch (kind) {
    case kCuda:
      return absl::StrCat("cuda:", index);
    case kCpu:
      return "cpu";
    case kDisk:
      return "disk";
  }
  return "?";
}

absl::StatusOr<MapDevice> parse_device(const std::string& s, const std::string& field) {
  if (s == "cpu") return MapDevice{MapDevice::kCpu, 0};
  if (s == "disk") return MapDevice{MapDevice::kDisk, 0};
  if (s == "cuda") return MapDevice{MapDevice::kCuda, 0};
  std::string digits = s;
  if (absl::StartsWith(s, "cuda:")) digits = s.substr(5);
  int index = -1;
  auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), index);
  if (!digits.empty() && ec == std::errc() && p == digits.data() + digits.size() && index >= 0 &&
      index < 64) {
    return MapDevice{MapDevice::kCuda, index};
  }
  return bad(field, absl::StrCat("unknown device '", s, "' (cuda, cuda:N, N, cpu or disk)"));
}

absl::StatusOr<int64_t> parse_size(const std::string& in, const std::string& field) {
  const std::string s(absl::StripAsciiWhitespace(in));
  static const std::vector<std::pair<std::string, double>> units = {{"TIB", 1099511627776.0},
                                                                    {"GIB", 1073741824.0},
                                                                    {"MIB", 1048576.0},
                                                                    {"KIB", 1024.0},
                                                                    {"TB", 1e12},
                                                                    {"GB", 1e9},
                                                                    {"MB", 1e6},
                                                                    {"KB", 1e3},
                                                                    {"B", 1.0}};
  const std::string upper = absl::AsciiStrToUpper(s);
  double scale = 1.0;
  std::string number = s;
  for (const auto& [suffix, mult] : units) {
    if (absl::EndsWith(upper, suffix)) {
      if (s.back() == 'b') {
        return bad(field,
                   absl::StrCat("'", s, "': sizes in bits are not accepted, write bytes (B)"));
      }
      scale = mult;
      number = s.substr(0, s.size() - suffix.size());
      break;
    }
  }
  number = std::string(absl::StripAsciiWhitespace(number));
  char* end = nullptr;
  const double v = number.empty() ? NAN : std::strtod(number.c_str(), &end);
  if (number.empty() || end != number.c_str() + number.size() || !std::isfinite(v) || v < 0 ||
      v * scale > 9.0e18) {
    return bad(field,
               absl::StrCat("'", in, "' is not a size (e.g. 24GiB, 80GB, 512MiB, 1073741824)"));
  }
  return static_cast<int64_t>(v * scale);
}

std::string OffloadPolicy::name() const {
  switch (kind) {
    case kNone:
      return "none";
    case kModel:
      return "model";
    case kGroup:
      return leaf_level ? "group (leaf_level)"
                        : absl::StrCat("group (", num_blocks_per_group, " block(s)/group)");
    case kSequential:
      return "sequential";
    case kDisk:
      return "disk";
  }
  return "?";
}

const std::vector<std::string>& placement_components() {
  static const std::vector<std::string> c = {"text_encoder", "text_encoder_2", "transformer",
                                             "vae"};
  return c;
}

bool PlacementSpec::all_cpu() const {
  if (pipeline != kAllCpu || !max_memory.empty()) return false;
  for (const auto& [c, m] : components) {
    if (m.kind != ComponentMapSpec::kDevice || m.device.kind != MapDevice::kCpu) return false;
  }
  for (const auto& [c, o] : offload) {
    if (o.kind != OffloadPolicy::kNone) return false;
  }
  return true;
}

absl::StatusOr<PlacementSpec> PlacementSpec::from_json(const nlohmann::json& j,
                                                       const std::string& what) {
  FLUX_RETURN_IF_ERROR(check_keys(
      j, {"device_map", "component_device_map", "device_map_modules", "max_memory", "offload"},
      what));
  PlacementSpec p;
  if (j.contains("device_map")) {
    const std::string field = what + ".device_map";
    FLUX_ASSIGN_OR_RETURN(std::string m, str_field(j["device_map"], field));
    if (m.empty() || m == "cpu") {
      p.pipeline = kAllCpu;
    } else if (m == "balanced") {
      p.pipeline = kBalanced;
    } else if (m == "auto") {
      p.pipeline = kAuto;
    } else {
      auto d = parse_device(m, field);
      if (!d.ok()) {
        return bad(field,
                   absl::StrCat("unknown pipeline device_map '", m,
                                "' (\"\", cpu, cuda, cuda:N, balanced or auto; per-component "
                                "strategies go in component_device_map)"));
      }
      p.pipeline = kOneDevice;
      p.pipeline_device = *d;
    }
  }
  if (j.contains("component_device_map")) {
    const std::string field = what + ".component_device_map";
    if (!j["component_device_map"].is_object()) return bad(field, "must be an object");
    for (const auto& [c, v] : j["component_device_map"].items()) {
      const std::string f = absl::StrCat(field, ".", c);
      FLUX_RETURN_IF_ERROR(check_component(c, f));
      FLUX_ASSIGN_OR_RETURN(std::string s, str_field(v, f));
      ComponentMapSpec m;
      if (auto st = parse_strategy(s); st.ok()) {
        m.kind = ComponentMapSpec::kStrategy;
        m.strategy = *st;
      } else {
        auto d = parse_device(s, f);
        if (!d.ok()) {
          return bad(f, absl::StrCat("unknown device_map '", s,
                                     "' (a device: cuda, cuda:N, cpu, "
                                     "disk; or auto, balanced, balanced_low_0, sequential)"));
        }
        m.kind = ComponentMapSpec::kDevice;
        m.device = *d;
      }
      p.components[c] = m;
    }
  }
  if (j.contains("device_map_modules")) {
    const std::string field = what + ".device_map_modules";
    if (!j["device_map_modules"].is_object()) return bad(field, "must be an object");
    for (const auto& [key, v] : j["device_map_modules"].items()) {
      const std::string f = absl::StrCat(field, ".", key);
      const size_t dot = key.find('.');
      const std::string c = key.substr(0, dot);
      FLUX_RETURN_IF_ERROR(check_component(c, f));
      FLUX_ASSIGN_OR_RETURN(std::string s, str_field(v, f));
      FLUX_ASSIGN_OR_RETURN(MapDevice d, parse_device(s, f));
      ComponentMapSpec& m = p.components[c];
      if (m.kind != ComponentMapSpec::kInherit && m.kind != ComponentMapSpec::kModules) {
        return bad(f, absl::StrCat("component '", c,
                                   "' has a component_device_map entry as well; "
                                   "give one or the other"));
      }
      m.kind = ComponentMapSpec::kModules;
      m.modules.emplace_back(dot == std::string::npos ? "" : key.substr(dot + 1), d);
    }
  }
  if (j.contains("max_memory")) {
    const std::string field = what + ".max_memory";
    if (!j["max_memory"].is_object()) return bad(field, "must be an object");
    for (const auto& [k, v] : j["max_memory"].items()) {
      const std::string f = absl::StrCat(field, ".", k);
      FLUX_ASSIGN_OR_RETURN(MapDevice d, parse_device(k, f));
      FLUX_ASSIGN_OR_RETURN(std::string s, str_field(v, f));
      FLUX_ASSIGN_OR_RETURN(int64_t bytes, parse_size(s, f));
      if (p.max_memory.contains(d)) return bad(f, absl::StrCat(d.name(), " is given twice"));
      p.max_memory[d] = bytes;
    }
  }
  if (j.contains("offload")) {
    const std::string field = what + ".offload";
    if (!j["offload"].is_object()) return bad(field, "must be an object");
    for (const auto& [c, v] : j["offload"].items()) {
      const std::string f = absl::StrCat(field, ".", c);
      FLUX_RETURN_IF_ERROR(check_component(c, f));
      FLUX_ASSIGN_OR_RETURN(p.offload[c], parse_offload(v, f));
    }
  }
  return p;
}

}  // namespace fluxserve
