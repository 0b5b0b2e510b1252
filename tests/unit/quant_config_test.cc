// PipelineQuantConfig (engine/quant/quant_config): resolution, defaults and the content of every
// error message (field named, allowed values listed). Agreement with diffusers on which configs
// are accepted is checked by tests/golden/quant_config_golden_test.cc.
#include <gtest/gtest.h>

#include "engine/quant/quant_config.h"

namespace fluxserve {
namespace {

using nlohmann::json;

void expect_error(const json& j, std::initializer_list<const char*> needles) {
  auto q = PipelineQuantConfig::from_json(j, "model.json");
  ASSERT_FALSE(q.ok()) << j.dump();
  EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string msg(q.status().message());
  EXPECT_NE(msg.find("model.json"), std::string::npos) << msg;
  for (const char* n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
}

const json kNf4 = {{"load_in_4bit", true}, {"bnb_4bit_quant_type", "nf4"},
                   {"bnb_4bit_compute_dtype", "bfloat16"}};

TEST(QuantConfig, GlobalFormQuantizesEveryModuleByDefault) {
  auto q = PipelineQuantConfig::from_json({{"quant_backend", "bitsandbytes_4bit"}, {"quant_kwargs", kNf4}});
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_FALSE(q->is_granular());
  for (const char* c : {"transformer", "text_encoder", "text_encoder_2", "vae"}) {
    auto r = q->resolve(c);
    ASSERT_TRUE(r.has_value()) << c;
    EXPECT_EQ(r->backend, QuantBackend::kBitsAndBytes4bit);
    EXPECT_EQ(r->bnb_4bit_quant_type, "nf4");
    EXPECT_EQ(r->bnb_4bit_compute_dtype, "bfloat16");
    EXPECT_EQ(r->bnb_4bit_quant_storage, "uint8");
    EXPECT_DOUBLE_EQ(r->llm_int8_threshold, 6.0);
    EXPECT_FALSE(r->bnb_4bit_use_double_quant);
  }
  EXPECT_FALSE(q->resolve("tokenizer").has_value());
  EXPECT_FALSE(q->resolve("scheduler").has_value());
  EXPECT_TRUE(q->warnings().empty());
}

TEST(QuantConfig, ComponentsToQuantizeStringOrList) {
  auto q = PipelineQuantConfig::from_json({{"quant_backend", "bitsandbytes_8bit"},
                                           {"quant_kwargs", {{"load_in_8bit", true}}},
                                           {"components_to_quantize", "text_encoder_2"}});
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_TRUE(q->resolve("text_encoder_2", false).has_value());
  EXPECT_FALSE(q->resolve("transformer", true).has_value());
  EXPECT_EQ(q->to_json()["components_to_quantize"], json({"text_encoder_2"}));

  auto w = PipelineQuantConfig::from_json({{"quant_backend", "bitsandbytes_8bit"},
                                           {"quant_kwargs", {{"load_in_8bit", true}}},
                                           {"components_to_quantize", {"transformer", "unet", "tokenizer"}}});
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_EQ(w->warnings().size(), 2u);
  EXPECT_NE(w->warnings()[0].find("'unet' will be ignored"), std::string::npos) << w->warnings()[0];
  EXPECT_NE(w->warnings()[1].find("'tokenizer' is not a model"), std::string::npos);
}

TEST(QuantConfig, GranularForm) {
  auto q = PipelineQuantConfig::from_json(json::parse(R"({"quant_mapping": {
      "transformer": {"quant_backend": "torchao", "quant_type": "int4wo", "group_size": 64,
                      "modules_to_not_convert": ["proj_out"]},
      "text_encoder_2": {"quant_backend": "bitsandbytes_8bit", "load_in_8bit": true},
      "vae": {"quant_backend": "gguf", "compute_dtype": "half"}}})"));
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_TRUE(q->is_granular());
  auto t = q->resolve("transformer");
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->backend, QuantBackend::kTorchAo);
  EXPECT_EQ(t->torchao_kind, TorchAoKind::kInt4WeightOnly);
  EXPECT_EQ(t->group_size, 64);
  EXPECT_EQ(t->to_json()["torchao_config"]["_type"], "Int4WeightOnlyConfig");
  EXPECT_EQ(t->to_json()["quant_type_kwargs"], json({{"group_size", 64}}));
  EXPECT_EQ(q->resolve("vae")->compute_dtype, "float16");
  EXPECT_EQ(q->resolve("text_encoder_2")->backend, QuantBackend::kBitsAndBytes8bit);
  EXPECT_FALSE(q->resolve("text_encoder").has_value());
  // Defaults for the torchao shorthands.
  auto d = PipelineQuantConfig::from_json(
      {{"quant_mapping", {{"transformer", {{"quant_backend", "torchao"}, {"quant_type", "float8wo"}}}}}});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->resolve("transformer")->weight_dtype, "float8_e5m2");
}

TEST(QuantConfig, TopLevelErrors) {
  expect_error({{"quant_backend", "bitsandbytes_4bit"}, {"quant_kwargs", kNf4},
                {"quant_mapping", {{"vae", {{"quant_backend", "gguf"}}}}}},
               {"both quant_backend and quant_mapping"});
  expect_error(json::object(), {"must provide quant_backend", "bitsandbytes_4bit, bitsandbytes_8bit, torchao, gguf"});
  expect_error({{"quant_backend", "bitsandbytes_4bit"}}, {"quant_kwargs is missing or empty"});
  expect_error({{"quant_backend", "bitsandbytes_4bit"}, {"quant_kwargs", json::object()}}, {"quant_kwargs"});
  expect_error({{"quant_backend", "nf4"}, {"quant_kwargs", kNf4}}, {"unknown quant_backend 'nf4'", "allowed: bitsandbytes_4bit"});
  expect_error({{"quant_backend", "quanto"}, {"quant_kwargs", {{"weights_dtype", "int8"}}}}, {"does not support", "quanto"});
  expect_error({{"quant_backend", 4}, {"quant_kwargs", kNf4}}, {"quant_backend must be a string", "got integer"});
  expect_error({{"quant_backend", "torchao"}, {"quant_kwargs", {{"quant_type", "int8wo"}}}}, {"requires quant_mapping", "torchao"});
  expect_error({{"quant_backend", "gguf"}, {"quant_kwargs", {{"compute_dtype", "bfloat16"}}}}, {"requires quant_mapping"});
  expect_error({{"quant_backend", "bitsandbytes_4bit"}, {"quant_kwargs", kNf4}, {"components_to_quantize", 3}},
               {"components_to_quantize must be a string or a list", "text_encoder, text_encoder_2, transformer, vae"});
  expect_error({{"quant_backend", "bitsandbytes_4bit"}, {"quant_kwargs", kNf4}, {"components_to_quantize", {"vae", 1}}},
               {"components_to_quantize[1]"});
  expect_error({{"quant_mapping", {{"vae", {{"quant_backend", "gguf"}}}}}, {"components_to_quantize", "vae"}},
               {"components_to_quantize is not used with quant_mapping"});
  expect_error({{"quant_mapping", {{"vae", {{"quant_backend", "gguf"}}}}}, {"quant_kwargs", kNf4}},
               {"quant_kwargs is not used with quant_mapping"});
  expect_error(json::array(), {"expected a JSON object"});
}

json bnb4(json extra) {
  json kw = {{"load_in_4bit", true}};
  kw.update(extra);
  return {{"quant_backend", "bitsandbytes_4bit"}, {"quant_kwargs", kw}};
}

TEST(QuantConfig, BitsAndBytesErrors) {
  expect_error(bnb4({{"load_in_8bit", true}}), {"load_in_4bit and load_in_8bit are both true"});
  expect_error({{"quant_backend", "bitsandbytes_4bit"}, {"quant_kwargs", {{"bnb_4bit_quant_type", "nf4"}}}},
               {"quant_kwargs.load_in_4bit must be true for quant_backend 'bitsandbytes_4bit'"});
  expect_error({{"quant_backend", "bitsandbytes_8bit"}, {"quant_kwargs", {{"load_in_4bit", true}}}},
               {"load_in_8bit must be true"});
  expect_error(bnb4({{"bnb_4bit_quant_type", "int4"}}), {"quant_kwargs.bnb_4bit_quant_type is 'int4'", "'fp4', 'nf4'"});
  expect_error(bnb4({{"bnb_4bit_quant_type", nullptr}}), {"bnb_4bit_quant_type"});
  expect_error(bnb4({{"bnb_4bit_compute_dtype", "bf16"}}), {"bnb_4bit_compute_dtype is 'bf16'", "bfloat16"});
  expect_error(bnb4({{"bnb_4bit_quant_storage", "int4"}}), {"bnb_4bit_quant_storage", "'uint8'", "'bfloat16'"});
  expect_error(bnb4({{"llm_int8_threshold", "6"}}), {"llm_int8_threshold must be a number", "got string"});
  expect_error(bnb4({{"llm_int8_skip_modules", "proj_out"}}), {"llm_int8_skip_modules must be a list of strings"});
  expect_error(bnb4({{"llm_int8_skip_modules", {"a", 2}}}), {"llm_int8_skip_modules[1] must be a string"});
  expect_error(bnb4({{"bnb_4bit_use_double_quant", "yes"}}), {"bnb_4bit_use_double_quant must be a boolean"});
  expect_error(bnb4({{"llm_int8_has_fp16_weight", nullptr}}), {"llm_int8_has_fp16_weight must be a boolean", "null"});
  expect_error(bnb4({{"bnb_4bit_blocksize", 64}}), {"field 'bnb_4bit_blocksize' does not belong to BitsAndBytesConfig", "bnb_4bit_quant_type"});
  expect_error(bnb4({{"quant_type", "int4wo"}}), {"'quant_type' does not belong"});
  // Accepted: JSON integer for a float field, aliases for dtypes.
  auto q = PipelineQuantConfig::from_json(bnb4({{"llm_int8_threshold", 5}, {"bnb_4bit_compute_dtype", "half"}}));
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_DOUBLE_EQ(q->resolve("vae")->llm_int8_threshold, 5.0);
  EXPECT_EQ(q->resolve("vae")->bnb_4bit_compute_dtype, "float16");
}

json ao(json entry) {
  entry["quant_backend"] = "torchao";
  return {{"quant_mapping", {{"transformer", entry}}}};
}

// int4dq, fpX and uintX: torchao <= 0.14 types, accepted with their old kwargs and defaults.
TEST(QuantConfig, TorchAoOldTypes) {
  auto one = [](json entry) {
    auto q = PipelineQuantConfig::from_json(ao(std::move(entry)));
    EXPECT_TRUE(q.ok()) << q.status();
    return q.ok() ? q->resolve("transformer") : std::nullopt;
  };
  auto t = one({{"quant_type", "int4dq"}});
  ASSERT_TRUE(t);
  EXPECT_EQ(t->torchao_kind, TorchAoKind::kInt8DynamicActivationInt4Weight);
  EXPECT_EQ(t->group_size, 32);
  EXPECT_FALSE(t->act_symmetric);
  EXPECT_EQ(t->to_json()["torchao_config"]["_type"], "Int8DynamicActivationInt4WeightConfig");
  t = one({{"quant_type", "int8_dynamic_activation_int4_weight"}, {"group_size", 64},
           {"act_mapping_type", "SYMMETRIC"}});
  ASSERT_TRUE(t);
  EXPECT_EQ(t->group_size, 64);
  EXPECT_TRUE(t->act_symmetric);
  t = one({{"quant_type", "fp6"}});
  ASSERT_TRUE(t);
  EXPECT_EQ(t->torchao_kind, TorchAoKind::kFpxWeightOnly);
  EXPECT_EQ(t->fpx_ebits, 3);
  EXPECT_EQ(t->fpx_mbits, 2);
  t = one({{"quant_type", "fp4"}});
  ASSERT_TRUE(t);
  EXPECT_EQ(t->fpx_ebits, 2);  // diffusers' default split: e2m1
  t = one({{"quant_type", "fp5_e1m3"}});
  ASSERT_TRUE(t);
  EXPECT_EQ(t->to_json()["torchao_config"]["_data"], json({{"ebits", 1}, {"mbits", 3}}));
  t = one({{"quant_type", "uint3wo"}});
  ASSERT_TRUE(t);
  EXPECT_EQ(t->torchao_kind, TorchAoKind::kUintxWeightOnly);
  EXPECT_EQ(t->uintx_bits, 3);
  EXPECT_EQ(t->group_size, 64);
  t = one({{"quant_type", "uintx_weight_only"}, {"dtype", "torch.uint5"}, {"group_size", 32},
           {"pack_dim", -1}, {"use_hqq", false}});
  ASSERT_TRUE(t);
  EXPECT_EQ(t->uintx_bits, 5);
  EXPECT_EQ(t->to_json()["torchao_config"]["_data"]["dtype"], "torch.uint5");
  EXPECT_EQ(t->to_json()["torchao_config"]["_data"]["group_size"], 32);
}

TEST(QuantConfig, TorchAoErrors) {
  expect_error(ao({{"quant_type", "int3wo"}}), {"quant_mapping.transformer.quant_type 'int3wo' is not a known", "int4wo", "float8dq_e4m3_row"});
  expect_error(ao(json::object()), {"quant_type is required", "int8wo"});
  expect_error(ao({{"quant_type", 8}}), {"quant_type must be a string"});
  expect_error(ao({{"quant_type", "fp6_e3m3"}}), {"fpX_eAmB needs X = A + B + 1", "6 != 3 + 3 + 1"});
  expect_error(ao({{"quant_type", "fp9"}}), {"X = 3..7"});
  expect_error(ao({{"quant_type", "fp3_e0m2"}}), {"X = 3..7 with A >= 1"});
  expect_error(ao({{"quant_type", "uint8wo"}}), {"'uint8wo' is not a known", "uint1wo..uint7wo"});
  expect_error(ao({{"quant_type", "uintx_weight_only"}}), {"quant_mapping.transformer.dtype is required", "'uint1'"});
  expect_error(ao({{"quant_type", "uintx_weight_only"}, {"dtype", "uint8"}}), {"dtype is \"uint8\""});
  expect_error(ao({{"quant_type", "uint4wo"}, {"dtype", "uint4"}}), {"does not support the keyword argument 'dtype'"});
  expect_error(ao({{"quant_type", "uint4wo"}, {"use_hqq", true}}), {"use_hqq is true", "HQQ"});
  expect_error(ao({{"quant_type", "uint4wo"}, {"group_size", nullptr}}), {"group_size is null", "positive integer"});
  expect_error(ao({{"quant_type", "int4dq"}, {"act_mapping_type", "affine"}}), {"act_mapping_type is \"affine\"", "'symmetric'"});
  expect_error(ao({{"quant_type", "fp6"}, {"group_size", 64}}), {"does not support the keyword argument 'group_size'"});
  expect_error(ao({{"quant_type", "float8_static_activation_float8_weight"}}), {"calibrated activation scale"});
  expect_error(ao({{"quant_type", "float8wo"}, {"group_size", 64}}),
               {"quant_type 'float8wo' does not support the keyword argument 'group_size'", "supported: none"});
  expect_error(ao({{"quant_type", "int4wo"}, {"group_size", 100}}), {"group_size is 100", "32, 64, 128, 256"});
  expect_error(ao({{"quant_type", "int8wo"}, {"group_size", -1}}), {"group_size", "positive integer"});
  expect_error(ao({{"quant_type", "int8wo"}, {"modules_to_not_convert", "x"}}), {"modules_to_not_convert must be a list"});
}

TEST(QuantConfig, MappingErrors) {
  expect_error({{"quant_mapping", {{"transformer", "nf4"}}}}, {"quant_mapping.transformer must be an object", "got string"});
  expect_error({{"quant_mapping", {{"transformer", {{"load_in_4bit", true}}}}}}, {"quant_mapping.transformer.quant_backend is required"});
  expect_error({{"quant_mapping", {{"transformer", {{"quant_backend", "int3"}}}}}}, {"quant_mapping.transformer.quant_backend", "unknown quant_backend 'int3'"});
  expect_error({{"quant_mapping", {{"text_encoder_2", {{"quant_backend", "gguf"}}}}}}, {"gguf", "diffusers models", "text_encoder_2"});
  expect_error({{"quant_mapping", {{"vae", {{"quant_backend", "gguf"}, {"compute_dtype", "int8"}}}}}}, {"quant_mapping.vae.compute_dtype is 'int8'", "bfloat16"});
  expect_error({{"quant_mapping", {{"vae", {{"quant_backend", "gguf"}, {"load_in_4bit", true}}}}}}, {"'load_in_4bit' does not belong to GGUFQuantizationConfig", "compute_dtype"});
  expect_error({{"quant_mapping", 3}}, {"quant_mapping must be an object"});
}

TEST(QuantConfig, ToJsonRoundTrips) {
  auto q = PipelineQuantConfig::from_json(bnb4({{"bnb_4bit_quant_type", "nf4"}}));
  ASSERT_TRUE(q.ok());
  const json j = q->to_json();
  EXPECT_EQ(j["quant_backend"], "bitsandbytes_4bit");
  EXPECT_EQ(j["quant_kwargs"]["bnb_4bit_quant_type"], "nf4");
  EXPECT_EQ(j["quant_kwargs"]["bnb_4bit_compute_dtype"], "float32");
  auto again = PipelineQuantConfig::from_json(j);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->to_json(), j);
}

}  // namespace
}  // namespace fluxserve
