// Diffusers checkpoint layout: model_index.json, single-file and sharded weight folders, explicit
// file lists, and typed config access, with errors that name the file and key at fault.
#include "engine/io/checkpoint.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/io/json_util.h"
#include "engine/io/safetensors.h"
#include "tests/unit/test_util.h"

namespace fluxserve {
namespace {

using testing::expect_error;

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

Tensor iota(Shape shape, float start) {
  Tensor t = Tensor::empty(std::move(shape), DType::kF32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = start + static_cast<float>(i);
  return t;
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::make_temp_dir("checkpoint_test"); }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }

  // Two shards and an index under `index_name` mapping every key to its shard.
  void write_sharded(const std::string& stem, const std::string& index_name) {
    ASSERT_TRUE(write_safetensors(path(stem + "-00001-of-00002.safetensors"),
                                  {{"a.weight", iota({2, 3}, 0)}, {"a.bias", iota({3}, 10)}})
                    .ok());
    ASSERT_TRUE(
        write_safetensors(path(stem + "-00002-of-00002.safetensors"), {{"b.weight", iota({4}, 20)}})
            .ok());
    write_text(path(index_name), R"({"metadata": {"total_size": 52}, "weight_map": {)"
                                 R"("a.weight": ")" +
                                     stem +
                                     R"(-00001-of-00002.safetensors", )"
                                     R"("a.bias": ")" +
                                     stem +
                                     R"(-00001-of-00002.safetensors", )"
                                     R"("b.weight": ")" +
                                     stem + R"(-00002-of-00002.safetensors"}})");
  }

  std::string dir_;
};

// ---- read_json_file / model_index -----------------------------------------------------------

TEST_F(CheckpointTest, ReadJsonFileErrorsNameFile) {
  expect_error(read_json_file(path("absent.json")).status(), {"absent.json"},
               absl::StatusCode::kNotFound);
  write_text(path("bad.json"), "{\"a\": 1,\n \"b\": }");
  expect_error(read_json_file(path("bad.json")).status(), {"bad.json", "invalid JSON at byte"});
  write_text(path("good.json"), R"({"a": [1, 2]})");
  auto j = read_json_file(path("good.json"));
  ASSERT_TRUE(j.ok()) << j.status();
  EXPECT_EQ((*j)["a"][1], 2);
}

TEST_F(CheckpointTest, ModelIndexSkipsNullComponents) {
  write_text(path("model_index.json"), R"({
    "_class_name": "FluxPipeline", "_diffusers_version": "0.32.0",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "transformer": ["diffusers", "FluxTransformer2DModel"],
    "text_encoder_2": ["transformers", "T5EncoderModel"],
    "image_encoder": [null, null],
    "feature_extractor": [null, null]})");
  auto mi = read_model_index(dir_);
  ASSERT_TRUE(mi.ok()) << mi.status();
  EXPECT_EQ(mi->class_name, "FluxPipeline");
  EXPECT_EQ(mi->components.size(), 3u);
  EXPECT_EQ(mi->components.at("transformer"),
            std::make_pair(std::string("diffusers"), std::string("FluxTransformer2DModel")));
  EXPECT_EQ(mi->components.count("image_encoder"), 0u);
  EXPECT_EQ(mi->components.count("_diffusers_version"), 0u);
}

TEST_F(CheckpointTest, ModelIndexErrors) {
  expect_error(read_model_index(dir_).status(), {"model_index.json"}, absl::StatusCode::kNotFound);
  write_text(path("model_index.json"), R"({"transformer": ["diffusers", "X"]})");
  expect_error(read_model_index(dir_).status(), {"model_index.json", "_class_name"});
  write_text(path("model_index.json"), R"({"_class_name": 3})");
  expect_error(read_model_index(dir_).status(), {"model_index.json", "_class_name", "integer"});
  write_text(path("model_index.json"), R"({"_class_name": "FluxPipeline", "vae": ["diffusers"]})");
  expect_error(read_model_index(dir_).status(), {"model_index.json", "'vae'"});
  write_text(path("model_index.json"),
             R"({"_class_name": "FluxPipeline", "vae": ["diffusers", null]})");
  expect_error(read_model_index(dir_).status(), {"model_index.json", "'vae'"});
  write_text(path("model_index.json"), R"([1])");
  expect_error(read_model_index(dir_).status(), {"model_index.json", "object"});
}

// ---- WeightStore ----------------------------------------------------------------------------

TEST_F(CheckpointTest, ShardedDiffusersIndex) {
  write_sharded("diffusion_pytorch_model", "diffusion_pytorch_model.safetensors.index.json");
  auto ws = WeightStore::open_dir(dir_);
  ASSERT_TRUE(ws.ok()) << ws.status();
  EXPECT_EQ(ws->keys(), (std::vector<std::string>{"a.bias", "a.weight", "b.weight"}));
  EXPECT_TRUE(ws->contains("b.weight"));
  EXPECT_FALSE(ws->contains("c.weight"));
  EXPECT_EQ(ws->file_of("b.weight"), path("diffusion_pytorch_model-00002-of-00002.safetensors"));
  EXPECT_EQ(ws->file_of("nope"), "");
  EXPECT_EQ(ws->source(), dir_);

  auto b = ws->get("b.weight");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->shape(), (Shape{4}));
  EXPECT_EQ(b->data<float>()[3], 23.f);
  auto a = ws->get("a.weight", {2, 3});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->data<float>()[5], 5.f);
}

TEST_F(CheckpointTest, ShardedTransformersIndex) {
  write_sharded("model", "model.safetensors.index.json");
  auto ws = WeightStore::open_dir(dir_);
  ASSERT_TRUE(ws.ok()) << ws.status();
  EXPECT_EQ(ws->keys().size(), 3u);
  auto bias = ws->get("a.bias");
  ASSERT_TRUE(bias.ok()) << bias.status();
  EXPECT_EQ(bias->data<float>()[0], 10.f);
}

TEST_F(CheckpointTest, SingleFileNames) {
  for (const char* name : {"diffusion_pytorch_model.safetensors", "model.safetensors"}) {
    const std::string d = testing::make_temp_dir("checkpoint_test");
    ASSERT_TRUE(write_safetensors(d + "/" + name, {{"w", iota({2}, 1)}}).ok());
    auto ws = WeightStore::open_dir(d);
    ASSERT_TRUE(ws.ok()) << name << ": " << ws.status();
    EXPECT_EQ(ws->keys(), std::vector<std::string>{"w"});
    EXPECT_EQ(ws->file_of("w"), d + "/" + name);
  }
}

TEST_F(CheckpointTest, NoWeightsListsWhatWasLookedFor) {
  ASSERT_TRUE(
      write_safetensors(path("diffusion_pytorch_model.fp16.safetensors"), {{"w", iota({1}, 0)}})
          .ok());
  expect_error(WeightStore::open_dir(dir_).status(),
               {dir_, "diffusion_pytorch_model.safetensors.index.json",
                "model.safetensors.index.json", "diffusion_pytorch_model.safetensors",
                "model.safetensors", "present: diffusion_pytorch_model.fp16.safetensors"},
               absl::StatusCode::kNotFound);
  expect_error(WeightStore::open_dir(path("nodir")).status(), {"nodir"},
               absl::StatusCode::kNotFound);
}

TEST_F(CheckpointTest, MissingShard) {
  write_sharded("model", "model.safetensors.index.json");
  std::filesystem::remove(path("model-00002-of-00002.safetensors"));
  expect_error(WeightStore::open_dir(dir_).status(),
               {"missing shard", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
                "'b.weight'"},
               absl::StatusCode::kNotFound);
}

TEST_F(CheckpointTest, IndexPointsKeyAtShardWithoutIt) {
  ASSERT_TRUE(write_safetensors(path("s1.safetensors"), {{"a", iota({1}, 0)}}).ok());
  ASSERT_TRUE(write_safetensors(path("s2.safetensors"), {{"b", iota({1}, 0)}}).ok());
  write_text(path("model.safetensors.index.json"),
             R"({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors"}})");
  expect_error(WeightStore::open_dir(dir_).status(),
               {"model.safetensors.index.json", "'b'", "s1.safetensors"});
}

TEST_F(CheckpointTest, MalformedIndex) {
  ASSERT_TRUE(write_safetensors(path("s1.safetensors"), {{"a", iota({1}, 0)}}).ok());
  const std::string index = "diffusion_pytorch_model.safetensors.index.json";
  write_text(path(index), R"({"metadata": {}})");
  expect_error(WeightStore::open_dir(dir_).status(), {index, "weight_map"});
  write_text(path(index), R"({"weight_map": []})");
  expect_error(WeightStore::open_dir(dir_).status(), {index, "weight_map", "array"});
  write_text(path(index), R"({"weight_map": {"a": 1}})");
  expect_error(WeightStore::open_dir(dir_).status(), {index, "'a'"});
  write_text(path(index), R"({"weight_map": {"a": "../s1.safetensors"}})");
  expect_error(WeightStore::open_dir(dir_).status(), {index, "'a'", "outside"});
  write_text(path(index), R"({"weight_map": )");
  expect_error(WeightStore::open_dir(dir_).status(), {index, "invalid JSON"});
}

TEST_F(CheckpointTest, CorruptShardNamesShardFile) {
  ASSERT_TRUE(write_safetensors(path("s1.safetensors"), {{"a", iota({1}, 0)}}).ok());
  write_text(path("s2.safetensors"), "garbage!");
  write_text(path("model.safetensors.index.json"),
             R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})");
  expect_error(WeightStore::open_dir(dir_).status(), {"s2.safetensors"});
}

TEST_F(CheckpointTest, OpenFilesDuplicateKey) {
  ASSERT_TRUE(write_safetensors(path("x.safetensors"), {{"k", iota({1}, 0)}}).ok());
  ASSERT_TRUE(
      write_safetensors(path("y.safetensors"), {{"j", iota({1}, 0)}, {"k", iota({1}, 0)}}).ok());
  expect_error(WeightStore::open_files({path("x.safetensors"), path("y.safetensors")}).status(),
               {"'k'", path("x.safetensors"), path("y.safetensors")});
  expect_error(WeightStore::open_files({}).status(), {"no files"});
}

TEST_F(CheckpointTest, OpenFilesMerges) {
  ASSERT_TRUE(write_safetensors(path("x.safetensors"), {{"k", iota({1}, 0)}}).ok());
  ASSERT_TRUE(write_safetensors(path("y.safetensors"), {{"j", iota({2}, 5)}}).ok());
  auto ws = WeightStore::open_files({path("x.safetensors"), path("y.safetensors")});
  ASSERT_TRUE(ws.ok()) << ws.status();
  EXPECT_EQ(ws->keys(), (std::vector<std::string>{"j", "k"}));
  EXPECT_EQ(ws->file_of("j"), path("y.safetensors"));
  auto j = ws->get("j");
  ASSERT_TRUE(j.ok()) << j.status();
  EXPECT_EQ(j->data<float>()[1], 6.f);
}

TEST_F(CheckpointTest, MissingKeyAndWrongShape) {
  ASSERT_TRUE(write_safetensors(path("model.safetensors"), {{"w", iota({2, 3}, 0)}}).ok());
  auto ws = WeightStore::open_dir(dir_);
  ASSERT_TRUE(ws.ok()) << ws.status();
  expect_error(ws->get("proj_out.weight").status(), {"'proj_out.weight'", dir_},
               absl::StatusCode::kNotFound);
  expect_error(ws->get("proj_out.weight", {1}).status(), {"'proj_out.weight'"},
               absl::StatusCode::kNotFound);
  expect_error(ws->get("w", {3, 2}).status(),
               {"'w'", path("model.safetensors"), "expected shape [3, 2]", "got [2, 3]"});
}

// ---- ConfigReader ---------------------------------------------------------------------------

TEST(ConfigReaderTest, TypedGetters) {
  nlohmann::json j = nlohmann::json::parse(R"({
    "num_layers": 19, "big": 9007199254740993, "shift": 3, "theta": 1.5, "guidance": true,
    "name": "flux", "axes_dims_rope": [16, 56, 56], "nothing": null})");
  ConfigReader r(j, "transformer/config.json");
  EXPECT_EQ(*r.get_int("num_layers"), 19);
  EXPECT_EQ(*r.get_int("big"), 9007199254740993);
  EXPECT_EQ(*r.get_double("shift"), 3.0);  // ints are fine where a float is wanted
  EXPECT_EQ(*r.get_double("theta"), 1.5);
  EXPECT_EQ(*r.get_bool("guidance"), true);
  EXPECT_EQ(*r.get_string("name"), "flux");
  EXPECT_EQ(*r.get_int_list("axes_dims_rope"), (std::vector<int64_t>{16, 56, 56}));
  EXPECT_TRUE(r.has("name"));
  EXPECT_FALSE(r.has("nothing"));  // null counts as absent
  EXPECT_FALSE(r.has("absent"));
  EXPECT_EQ(*r.get_int("nothing", 7), 7);
  EXPECT_EQ(*r.get_int("absent", -1), -1);
  EXPECT_EQ(*r.get_string("absent", "d"), "d");
  EXPECT_EQ(*r.get_bool("absent", false), false);
  EXPECT_EQ(*r.get_double("absent", 0.25), 0.25);
  EXPECT_EQ(*r.get_int_list("absent", std::vector<int64_t>{1}), std::vector<int64_t>{1});
  EXPECT_EQ(r.what(), "transformer/config.json");
}

TEST(ConfigReaderTest, Errors) {
  nlohmann::json j = nlohmann::json::parse(R"({
    "a": "x", "f": 1.5, "b": 1, "s": 2, "l": [1, "2"], "nl": 5, "huge": 18446744073709551615,
    "nothing": null})");
  ConfigReader r(j, "cfg.json");
  auto msg = [](const auto& s) { return std::string(s.status().message()); };
  EXPECT_EQ(msg(r.get_int("a")), "cfg.json: field 'a' must be an integer, got string");
  EXPECT_EQ(msg(r.get_int("f")), "cfg.json: field 'f' must be an integer, got float");
  EXPECT_EQ(msg(r.get_int("missing")), "cfg.json: missing required field 'missing'");
  EXPECT_EQ(msg(r.get_int("nothing")), "cfg.json: missing required field 'nothing'");
  EXPECT_EQ(r.get_int("a").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.get_int("missing").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(msg(r.get_double("a")), "cfg.json: field 'a' must be a number, got string");
  EXPECT_EQ(msg(r.get_bool("b")), "cfg.json: field 'b' must be a boolean, got integer");
  EXPECT_EQ(msg(r.get_string("s")), "cfg.json: field 's' must be a string, got integer");
  EXPECT_EQ(msg(r.get_int_list("nl")),
            "cfg.json: field 'nl' must be a list of integers, got integer");
  expect_error(r.get_int_list("l").status(), {"cfg.json", "'l'", "element 1", "string"});
  expect_error(r.get_int("huge").status(), {"cfg.json", "'huge'", "range"});
  // A wrong type is an error even when a default is given.
  EXPECT_FALSE(r.get_int("a", 1).ok());

  nlohmann::json arr = nlohmann::json::array();
  ConfigReader ra(arr, "arr.json");
  expect_error(ra.get_int("x").status(), {"arr.json", "object", "'x'"});
  EXPECT_EQ(*ra.get_int("x", 3), 3);
}

TEST(JsonUtilTest, ParseJsonPositions) {
  auto bad = parse_json("{\"a\": tru}", "thing.json");
  expect_error(bad.status(), {"thing.json", "invalid JSON at byte"});
  auto trailing = parse_json("{} x", "t.json");
  expect_error(trailing.status(), {"t.json", "invalid JSON"});
  auto ok = parse_json("  {\"a\": 1}  ", "ok.json");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ((*ok)["a"], 1);
}

}  // namespace
}  // namespace fluxserve
