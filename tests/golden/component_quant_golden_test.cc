// Quantize-on-load of text_encoder (CLIP), text_encoder_2 (T5) and vae against the real upstream
// quantizers (tools/golden/generate_component_quant.py): the set of nn.Linear modules we convert
// equals the set transformers / diffusers converted, case by case (default skips, T5's
// keep-in-fp32 "wo", user skip lists with each library's matching rule), and the quantized
// encoders' outputs match the upstream quantized models' within 1e-5 relative (f32).
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <set>

#include "absl/strings/match.h"
#include "engine/io/safetensors.h"
#include "engine/models/clip_text.h"
#include "engine/models/t5_encoder.h"
#include "engine/models/vae_decoder.h"
#include "engine/quant/quant_config.h"
#include "nlohmann/json.hpp"
#include "tests/golden/golden_util.h"

namespace fluxserve {
namespace {

using testing::fixture;
using testing::rel_error;

std::string tiny(const std::string& component) {
  return fixture("../../../models/tiny-flux/" + component);
}

nlohmann::json cases() {
  std::ifstream f(fixture("component_quant/cases.json"));
  return nlohmann::json::parse(f);
}

ComponentQuantConfig resolve(const std::string& component, const nlohmann::json& spec) {
  auto cfg = PipelineQuantConfig::from_json({{"quant_mapping", {{component, spec}}}}, "cases.json");
  EXPECT_TRUE(cfg.ok()) << cfg.status();
  std::optional<ComponentQuantConfig> c = cfg->resolve(component);
  EXPECT_TRUE(c.has_value()) << component;
  return *c;
}

class ComponentQuantGolden : public ::testing::Test {
 protected:
  void SetUp() override {
    auto in = SafetensorsFile::open(fixture("component_quant/inputs.safetensors"));
    auto out = SafetensorsFile::open(fixture("component_quant/outputs.safetensors"));
    ASSERT_TRUE(in.ok() && out.ok());
    inputs_ = std::move(*in);
    outputs_ = std::move(*out);
  }
  Tensor input(const std::string& k) { return *inputs_->get(k); }
  Tensor ref(const std::string& k) { return *outputs_->get(k); }
  std::shared_ptr<const SafetensorsFile> inputs_, outputs_;
};

TEST_F(ComponentQuantGolden, ConvertedModulesAndOutputsMatchUpstream) {
  const nlohmann::json all = cases();
  ASSERT_GE(all.size(), 18u);
  for (const nlohmann::json& c : all) {
    const std::string name = c["case"], comp = c["component"];
    SCOPED_TRACE(name);
    const ComponentQuantConfig cfg = resolve(comp, c["spec"]);
    std::set<std::string> upstream;
    for (const std::string m : c["converted"]) {
      // We load only the VAE's decoder; upstream's list also has the encoder's attention.
      if (comp == "vae" && !absl::StartsWith(m, "decoder.")) {
        EXPECT_TRUE(absl::StartsWith(m, "encoder.")) << m;
        continue;
      }
      upstream.insert(m);
    }
    std::vector<std::string> ours;
    double err = 0;
    if (comp == "text_encoder") {
      auto m = CLIPTextModel::load(tiny(comp));
      ASSERT_TRUE(m.ok()) << m.status();
      auto q = (*m)->quantize(cfg);
      ASSERT_TRUE(q.ok()) << q.status();
      ours = *q;
      auto y = (*m)->forward(input("clip_input_ids"));
      ASSERT_TRUE(y.ok()) << y.status();
      err = std::max(rel_error(y->last_hidden_state, ref(name + ".last_hidden_state")),
                     rel_error(y->pooler_output, ref(name + ".pooler_output")));
    } else if (comp == "text_encoder_2") {
      auto m = T5EncoderModel::load(tiny(comp));
      ASSERT_TRUE(m.ok()) << m.status();
      auto q = (*m)->quantize(cfg);
      ASSERT_TRUE(q.ok()) << q.status();
      ours = *q;
      auto y = (*m)->forward(input("t5_input_ids"));
      ASSERT_TRUE(y.ok()) << y.status();
      err = rel_error(*y, ref(name + ".last_hidden_state"));
    } else {
      auto m = AutoencoderKL::load(tiny(comp));
      ASSERT_TRUE(m.ok()) << m.status();
      auto q = (*m)->quantize(cfg);
      ASSERT_TRUE(q.ok()) << q.status();
      ours = *q;
      auto y = (*m)->decode(input("vae_latents"));
      ASSERT_TRUE(y.ok()) << y.status();
      err = rel_error(*y, ref(name + ".sample"));
    }
    EXPECT_EQ(std::set<std::string>(ours.begin(), ours.end()), upstream);
    EXPECT_EQ(ours.size(), upstream.size()) << "a module converted twice";
    EXPECT_LE(err, 1e-5) << "vs " << c["output_source"].get<std::string>();
    std::printf("%-28s converted %2zu  rel err %.2e\n", name.c_str(), ours.size(), err);
  }
}

// T5's `wo` is in _keep_in_fp32_modules: transformers upcasts it to float32 when it loads the
// model in float16 (the fixture records the dtype upstream gave every kept Linear); we do the same
// with an f16 checkpoint, and bf16/f32 keep their dtype.
TEST(ComponentQuant, KeptInFp32ModulesAreFloat32ForFloat16Loads) {
  bool saw_wo = false;
  for (const nlohmann::json& c : cases()) {
    for (const auto& [module, dtype] : c["kept_dtype_float16_load"].items()) {
      const bool wo = absl::EndsWith(module, ".wo");
      EXPECT_EQ(dtype.get<std::string>(), wo ? "float32" : "float16") << c["case"] << " " << module;
      saw_wo = saw_wo || wo;
    }
  }
  EXPECT_TRUE(saw_wo);
  EXPECT_EQ(T5EncoderModel::quant_traits().keep_in_fp32_modules, std::vector<std::string>{"wo"});
}

TEST(ComponentQuant, GgufIsRefusedNamingTheComponent) {
  ComponentQuantConfig gguf;
  gguf.backend = QuantBackend::kGguf;
  auto clip = CLIPTextModel::load(tiny("text_encoder"));
  auto vae = AutoencoderKL::load(tiny("vae"));
  ASSERT_TRUE(clip.ok() && vae.ok());
  auto a = (*clip)->quantize(gguf);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(a.status().message(), "text_encoder")) << a.status();
  auto b = (*vae)->quantize(gguf);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_TRUE(absl::StrContains(b.status().message(), "vae")) << b.status();
}

TEST(ComponentQuant, BadRegexInSkipListIsInvalidArgument) {
  auto t5 = T5EncoderModel::load(tiny("text_encoder_2"));
  ASSERT_TRUE(t5.ok());
  const ComponentQuantConfig cfg = resolve(
      "text_encoder_2", {{"quant_backend", "torchao"}, {"quant_type", "int8wo"},
                         {"modules_to_not_convert", {"encoder.block.(0"}}});
  auto q = (*t5)->quantize(cfg);
  ASSERT_FALSE(q.ok());
  EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(q.status().message(), "encoder.block.(0")) << q.status();
}

}  // namespace
}  // namespace fluxserve
