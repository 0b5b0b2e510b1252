// FluxTransformer2DModel config parsing: diffusers defaults, tolerated unknown fields, and a
// precise error for every inconsistency a hand-edited config can have.
#include <gtest/gtest.h>

#include "engine/models/flux_config.h"

namespace fluxserve {
namespace {

TEST(FluxConfig, DefaultsAreFluxDev) {
  auto c = FluxTransformerConfig::from_json(nlohmann::json::object(), "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->inner_dim(), 3072);
  EXPECT_EQ(c->out_channels, 64);
  EXPECT_EQ(c->num_layers, 19);
  EXPECT_EQ(c->num_single_layers, 38);
  EXPECT_FALSE(c->guidance_embeds);
}

TEST(FluxConfig, OutChannelsNullMeansInChannels) {
  auto c = FluxTransformerConfig::from_json({{"in_channels", 16}, {"out_channels", nullptr},
                                             {"attention_head_dim", 16}, {"axes_dims_rope", {4, 6, 6}},
                                             {"future_field", "ignored"}},
                                            "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->out_channels, 16);
}

void expect_error(const nlohmann::json& j, const std::string& needle) {
  auto c = FluxTransformerConfig::from_json(j, "transformer/config.json");
  ASSERT_FALSE(c.ok()) << j.dump();
  EXPECT_NE(c.status().message().find(needle), std::string::npos) << c.status();
  EXPECT_NE(c.status().message().find("transformer/config.json"), std::string::npos);
}

TEST(FluxConfig, RejectsInconsistentConfigs) {
  expect_error({{"axes_dims_rope", {16, 56, 50}}}, "attention_head_dim");
  expect_error({{"attention_head_dim", 15}, {"axes_dims_rope", {5, 5, 5}}}, "even");
  expect_error({{"num_attention_heads", 0}}, "num_attention_heads");
  expect_error({{"num_layers", "19"}}, "num_layers");
  expect_error({{"guidance_embeds", 1}}, "guidance_embeds");
  expect_error({{"_class_name", "UNet2DConditionModel"}}, "FluxTransformer2DModel");
  expect_error(nlohmann::json::array(), "not a JSON object");
}

}  // namespace
}  // namespace fluxserve
