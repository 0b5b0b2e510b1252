// The planner against upstream (tools/golden/generate_device_map.py): our config-only inventories
// of FLUX.1-dev's transformer, T5-XXL and CLIP-L have exactly accelerate's module tree and
// compute_module_sizes bytes (bf16, meta-device models), and for each recorded budget our
// balanced_memory / infer_auto_device_map / pipeline "balanced" give upstream's device maps.
#include <gtest/gtest.h>

#include <fstream>
#include <set>

#include "engine/io/checkpoint.h"
#include "engine/models/flux_transformer.h"
#include "engine/placement/auto_device_map.h"
#include "engine/placement/module_inventory.h"
#include "nlohmann/json.hpp"
#include "tests/golden/golden_util.h"

namespace fluxserve {
namespace {

const nlohmann::json& cases() {
  static const nlohmann::json j = [] {
    std::ifstream f(testing::fixture("device_map/cases.json"));
    return nlohmann::json::parse(f);
  }();
  return j;
}

ComponentInventory inventory(const std::string& component) {
  const nlohmann::json& cfg = cases()["components"][component]["config"];
  const StorageForm bf16{DType::kBF16, DType::kBF16, std::nullopt};
  absl::StatusOr<ComponentInventory> inv;
  if (component == "transformer") {
    inv = flux_transformer_inventory(*FluxTransformerConfig::from_json(cfg, component), bf16);
  } else if (component == "text_encoder_2") {
    inv = t5_encoder_inventory(*T5Config::from_json(cfg, component), bf16);
  } else if (component == "text_encoder") {
    inv = clip_text_inventory(*CLIPTextConfig::from_json(cfg, component), bf16);
  } else {
    inv = vae_decoder_inventory(*AutoencoderKLConfig::from_json(cfg, component), bf16);
  }
  EXPECT_TRUE(inv.ok()) << inv.status();
  return *inv;
}

MapDevice device(const std::string& s) { return *parse_device(s, "fixture"); }

TEST(DeviceMapGolden, InventoriesHaveAcceleratesModuleTreeAndSizes) {
  for (const char* component : {"transformer", "text_encoder_2", "text_encoder"}) {
    SCOPED_TRACE(component);
    const ComponentInventory inv = inventory(component);
    const auto& sizes = cases()["components"][component]["module_sizes"];
    // Every module upstream has outside the no-split blocks is one of our units or a prefix of
    // some, in the same order, with the same bytes.
    std::vector<std::string> ours = {""};
    for (const ModuleUnit& u : inv.units) {
      std::string prefix;
      for (size_t dot = 0; (dot = u.name.find('.', dot + 1)) != std::string::npos;) {
        prefix = u.name.substr(0, dot);
        if (std::find(ours.begin(), ours.end(), prefix) == ours.end()) ours.push_back(prefix);
      }
      ours.push_back(u.name);
    }
    std::vector<std::string> theirs;
    for (const auto& [name, bytes] : sizes.items()) theirs.push_back(name);
    // nlohmann::json orders object keys alphabetically; compare as sets, order is checked below.
    EXPECT_EQ(std::set<std::string>(ours.begin(), ours.end()),
              std::set<std::string>(theirs.begin(), theirs.end()));
    for (const std::string& m : ours) {
      ASSERT_TRUE(sizes.contains(m)) << m;
      EXPECT_EQ(inv.bytes_under(m), sizes[m].get<int64_t>()) << m;
    }
    EXPECT_EQ(inv.model_class, cases()["components"][component]["class"].get<std::string>());
  }
  // The VAE: our decoder-only unit against diffusers' decoder module.
  const ComponentInventory vae = inventory("vae");
  EXPECT_EQ(vae.bytes(), cases()["components"]["vae"]["module_sizes"]["decoder"].get<int64_t>());
}

TEST(DeviceMapGolden, BalancedMemoryAndInferAutoDeviceMapMatchUpstream) {
  int n = 0;
  for (const auto& c : cases()["model_cases"]) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    const ComponentInventory inv = inventory(c["component"]);
    DeviceBudget given;
    for (const auto& [d, v] : c["max_memory"].items()) given[device(d)] = v.get<int64_t>();
    const std::string s = c["device_map"];
    const MapStrategy strategy = s == "sequential"       ? MapStrategy::kSequential
                                 : s == "balanced_low_0" ? MapStrategy::kBalancedLow0
                                 : s == "balanced"       ? MapStrategy::kBalanced
                                                         : MapStrategy::kAuto;
    const DeviceBudget budget = balanced_memory(inv, given, strategy);
    DeviceBudget want_budget;
    for (const auto& [d, v] : c["balanced_max_memory"].items())
      want_budget[device(d)] = v.get<int64_t>();
    EXPECT_EQ(budget, want_budget);

    const AutoDeviceMap m = infer_auto_device_map(inv, budget);
    std::set<std::pair<std::string, std::string>> ours, theirs;
    for (const auto& [module, d] : m.cleaned) ours.insert({module, d.name()});
    for (const auto& e : c["result"])
      theirs.insert({e[0].get<std::string>(), e[1].get<std::string>()});
    EXPECT_EQ(ours, theirs);
    // Split points are block boundaries: every unit inside a block list is a whole block.
    for (const auto& [module, d] : m.cleaned) {
      for (const ModuleUnit& u : inv.units) {
        EXPECT_FALSE(module.starts_with(u.name + ".")) << module << " splits " << u.name;
      }
    }
    ++n;
  }
  EXPECT_GE(n, 8);
}

TEST(DeviceMapGolden, PipelineBalancedMatchesDiffusers) {
  for (const auto& c : cases()["pipeline_cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    std::vector<std::pair<std::string, int64_t>> sizes;
    for (const auto& [comp, v] : c["component_sizes"].items())
      sizes.emplace_back(comp, v.get<int64_t>());
    // diffusers sorts by size (stable); feed the components in the pipeline's own order.
    std::sort(sizes.begin(), sizes.end(), [](auto& a, auto& b) { return a.second > b.second; });
    DeviceBudget gpus;
    for (const auto& [d, v] : c["max_memory"].items()) gpus[device(d)] = v.get<int64_t>();
    const auto got = assign_components_to_devices(sizes, gpus);
    for (const auto& [comp, d] : c["result"].items()) {
      ASSERT_TRUE(got.contains(comp)) << comp;
      EXPECT_EQ(got.at(comp).name(), d.get<std::string>()) << comp;
    }
  }
}

// The config-only sizes are the models' own accounting: the tiny FLUX transformer loaded on the
// CPU (bf16 weights, f32 biases and norms) holds exactly what its inventory says, dense and
// quantized on load (bitsandbytes nf4 with double quant, LLM.int8).
TEST(DeviceMapGolden, InventoryMatchesLoadedTransformerMemory) {
  const std::string dir = testing::fixture("../../../models/tiny-flux/transformer");
  auto cfg = FluxTransformerConfig::from_json(*read_json_file(dir + "/config.json"), "config.json");
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  const nlohmann::json nf4 = {{"quant_backend", "bitsandbytes_4bit"},
                              {"quant_kwargs",
                               {{"load_in_4bit", true},
                                {"bnb_4bit_quant_type", "nf4"},
                                {"bnb_4bit_use_double_quant", true}}}};
  const nlohmann::json int8 = {{"quant_backend", "bitsandbytes_8bit"},
                               {"quant_kwargs", {{"load_in_8bit", true}}}};
  for (const nlohmann::json& q : {nlohmann::json(), nf4, int8}) {
    SCOPED_TRACE(q.dump());
    std::optional<ComponentQuantConfig> cq;
    if (!q.is_null()) cq = PipelineQuantConfig::from_json(q, "q")->resolve("transformer");
    auto model = FluxTransformer2DModel::load(dir);
    ASSERT_TRUE(model.ok()) << model.status();
    if (cq) {
      ASSERT_TRUE((*model)->quantize(*cq).ok());
    }
    auto inv = flux_transformer_inventory(*cfg, StorageForm{DType::kBF16, DType::kF32, cq});
    ASSERT_TRUE(inv.ok()) << inv.status();
    EXPECT_EQ(inv->bytes(), (*model)->memory().bytes);
    EXPECT_EQ(inv->quantized, cq.has_value());
  }
}

}  // namespace
}  // namespace fluxserve
