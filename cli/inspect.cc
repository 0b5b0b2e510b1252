// `fluxserve inspect`: loads a pipeline (quantize-on-load when a config is given) and prints what
// each component holds — device, weight format, quantized/total Linear layers, bytes — from
// FluxPipeline::memory(), as a table or JSON. Rows are (component, device) pairs, so when the
// device map arrives (issue #7) a component split over gpu/cpu/disk becomes several rows and the
// totals gain one line per device without changing the format.
#include <cstdio>
#include <iostream>
#include <map>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/inspect_plan.h"
#include "engine/core/status.h"
#include "engine/io/checkpoint.h"
#include "engine/pipeline/flux_pipeline.h"
#include "nlohmann/json.hpp"

namespace fluxserve::cli {
namespace {

constexpr const char* kInspectUsage = R"(usage: fluxserve inspect [--model DIR] [--quant-config spec.json] [--json]
       fluxserve inspect [--model DIR] [--quant-config spec.json] [--placement placement.json]
                         [--gpu-memory 24GiB | cuda:0=24GiB,cuda:1=16GiB] [--cpu-memory 64GiB] [--json]
Loads a diffusers FluxPipeline folder (default: the embedded tiny model), quantizing on load when
--quant-config gives diffusers' PipelineQuantizationConfig as JSON (README: Quantization), and
prints per component its device, weight format, quantized/total Linear layers and the bytes its
tensors hold (weights, biases, norms, quantization states; each buffer counted once), with a
total line. --json prints the same as one JSON object.

With --placement (the Placement part of a model spec as JSON: device_map, component_device_map,
device_map_modules, max_memory, offload) or --gpu-memory (alone: device_map "auto"), it loads
nothing and prints the device-map plan instead, sized from the components' config.json in bf16
(README: Device map and offload): each module's device, bytes per device, peak GPU bytes and
bytes streamed per step. The plan is computed only; GPU execution arrives with issues #6/#7.
)";

std::string human_bytes(int64_t b) {
  const double v = static_cast<double>(b);
  if (b >= (int64_t{1} << 30)) return absl::StrFormat("%.2f GiB", v / (1 << 30));
  if (b >= (int64_t{1} << 20)) return absl::StrFormat("%.2f MiB", v / (1 << 20));
  if (b >= 1024) return absl::StrFormat("%.1f KiB", v / 1024);
  return absl::StrCat(b, " B");
}

std::string grouped(int64_t b) {  // 1234567 -> 1,234,567
  std::string s = absl::StrCat(b), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i > 0 && (s.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(s[i]);
  }
  return out;
}

struct Totals {
  int64_t bytes = 0;
  int quantized_layers = 0, total_layers = 0;
  void add(const ComponentMemory& m) {
    bytes += m.bytes;
    quantized_layers += m.quantized_layers;
    total_layers += m.total_layers;
  }
};

nlohmann::json to_json(const std::string& model, const std::string& quantization,
                       const std::vector<ComponentMemory>& mem) {
  nlohmann::json rows = nlohmann::json::array();
  Totals all;
  std::map<std::string, Totals> by_device;
  for (const ComponentMemory& m : mem) {
    rows.push_back({{"component", m.component},
                    {"device", m.device},
                    {"format", m.format},
                    {"quantized_layers", m.quantized_layers},
                    {"total_layers", m.total_layers},
                    {"bytes", m.bytes}});
    all.add(m);
    by_device[m.device].add(m);
  }
  nlohmann::json devices = nlohmann::json::object();
  for (const auto& [d, t] : by_device) devices[d] = {{"bytes", t.bytes}};
  return {{"model", model},
          {"quantization", quantization},
          {"components", rows},
          {"devices", devices},
          {"total",
           {{"bytes", all.bytes},
            {"quantized_layers", all.quantized_layers},
            {"total_layers", all.total_layers}}}};
}

void print_table(const std::string& model, const std::string& quantization,
                 const std::vector<ComponentMemory>& mem) {
  size_t fw = 6;  // "format"
  for (const ComponentMemory& m : mem) fw = std::max(fw, m.format.size());
  const std::string row = absl::StrCat("%-15s %-6s %-", fw, "s %15s %12s %15s\n");
  auto line = [&](const std::string& c, const std::string& d, const std::string& f,
                  const std::string& layers, const std::string& h, const std::string& exact) {
    std::printf("%s", absl::StrFormat(*absl::ParsedFormat<'s', 's', 's', 's', 's', 's'>::New(row),
                                      c, d, f, layers, h, exact)
                          .c_str());
  };
  std::printf("model: %s\nquantization: %s\n\n", model.c_str(), quantization.c_str());
  line("component", "device", "format", "linear (q/all)", "bytes", "exact");
  Totals all;
  std::map<std::string, Totals> by_device;
  for (const ComponentMemory& m : mem) {
    line(m.component, m.device, m.format, absl::StrCat(m.quantized_layers, "/", m.total_layers),
         human_bytes(m.bytes), grouped(m.bytes));
    all.add(m);
    by_device[m.device].add(m);
  }
  if (by_device.size() > 1) {
    for (const auto& [d, t] : by_device) {
      line(absl::StrCat("total ", d), d, "",
           absl::StrCat(t.quantized_layers, "/", t.total_layers), human_bytes(t.bytes),
           grouped(t.bytes));
    }
  }
  line("total", by_device.size() == 1 ? by_device.begin()->first : "", "",
       absl::StrCat(all.quantized_layers, "/", all.total_layers), human_bytes(all.bytes),
       grouped(all.bytes));
}

absl::Status inspect(const Args& a) {
  const std::string model = a.str_or("model", default_model_dir());
  FLUX_ASSIGN_OR_RETURN(int64_t threads, a.int_or("threads", 0));
  set_threads(threads);
  std::optional<PipelineQuantConfig> quant;
  if (a.has("quant-config")) {
    const std::string path = *a.str("quant-config");
    FLUX_ASSIGN_OR_RETURN(nlohmann::json j, read_json_file(path));
    FLUX_ASSIGN_OR_RETURN(quant, PipelineQuantConfig::from_json(j, path));
    for (const std::string& w : quant->warnings()) std::cerr << "warning: " << w << "\n";
  }
  if (a.has("placement") || a.has("gpu-memory") || a.has("cpu-memory")) {
    return inspect_plan(a, model, quant ? &*quant : nullptr);
  }
  FLUX_ASSIGN_OR_RETURN(auto pipe, FluxPipeline::load(model, quant ? &*quant : nullptr));
  const std::vector<ComponentMemory> mem = pipe->memory();
  if (a.has("json")) {
    std::cout << to_json(model, pipe->quantization(), mem).dump(2) << "\n";
  } else {
    print_table(model, pipe->quantization(), mem);
  }
  return absl::OkStatus();
}

}  // namespace

int inspect_main(const std::vector<std::string>& args) {
  if (!args.empty() && (args[0] == "--help" || args[0] == "help")) {
    std::cout << kInspectUsage;
    return 0;
  }
  auto a = Args::parse(args, {"model", "quant-config", "json", "threads", "placement", "gpu-memory", "cpu-memory"},
                        {"json"});
  absl::Status st = a.ok() ? inspect(*a) : a.status();
  if (!st.ok()) {
    std::cerr << "fluxserve inspect: " << st.message() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace fluxserve::cli
