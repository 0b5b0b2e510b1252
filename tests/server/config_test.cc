// server/config: the ServerConfig file, model names, path resolution under --model-root and the
// spec -> engine conversion, as a table of bad inputs with the code and message each must give.
#include "server/config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace fluxserve::server {
namespace {

namespace fs = std::filesystem;

const std::string kTiny = std::string(FLUXSERVE_SOURCE_DIR) + "/models/tiny-flux";

class TempRoot : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = fs::temp_directory_path() /
            absl::StrCat("fluxserve_config_test_", getpid(), "_",
                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(base_);
    root_ = base_ / "root";
    fs::create_directories(root_ / "model-a");
    fs::create_directories(base_ / "outside");
    fs::create_directory_symlink(base_ / "outside", root_ / "escape");
    fs::create_directory_symlink(root_ / "model-a", root_ / "alias");
    std::ofstream(root_ / "file.txt") << "x";
  }
  void TearDown() override { fs::remove_all(base_); }
  fs::path base_, root_;
};

TEST_F(TempRoot, ResolvesInsideTheRoot) {
  absl::StatusOr<std::string> p = resolve_model_path("model-a", root_.string(), "spec.path");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(*p, fs::canonical(root_ / "model-a").string());
  // An absolute path inside the root, and a symlink that stays inside, are fine.
  EXPECT_TRUE(resolve_model_path((root_ / "model-a").string(), root_.string(), "f").ok());
  EXPECT_TRUE(resolve_model_path("alias", root_.string(), "f").ok());
}

TEST_F(TempRoot, RefusesEscapesAndNonFolders) {
  struct Case {
    std::string path;
    absl::StatusCode code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"../outside", absl::StatusCode::kPermissionDenied, "outside --model-root"},
      {"model-a/../../outside", absl::StatusCode::kPermissionDenied, "outside --model-root"},
      {"escape", absl::StatusCode::kPermissionDenied, "outside --model-root"},
      {(base_ / "outside").string(), absl::StatusCode::kPermissionDenied, "outside --model-root"},
      {".", absl::StatusCode::kPermissionDenied, "outside --model-root"},
      {"missing", absl::StatusCode::kNotFound, "spec.path: 'missing'"},
      {"file.txt", absl::StatusCode::kInvalidArgument, "is not a folder"},
      {"", absl::StatusCode::kInvalidArgument, "spec.path: the checkpoint folder is required"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<std::string> p = resolve_model_path(c.path, root_.string(), "spec.path");
    ASSERT_FALSE(p.ok()) << c.path;
    EXPECT_EQ(p.status().code(), c.code) << c.path << ": " << p.status();
    EXPECT_NE(p.status().message().find(c.message), std::string::npos)
        << c.path << ": " << p.status();
  }
}

TEST(ModelName, Validation) {
  EXPECT_TRUE(validate_model_name("flux-dev_1.0", "name").ok());
  const std::vector<std::string> bad_names = {"", "a b", "a/b", "..", std::string(65, 'a'), "naïve"};
  for (const std::string& bad : bad_names) {
    absl::Status st = validate_model_name(bad, "spec.name");
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(st.message().find("spec.name"), std::string::npos) << st;
  }
}

TEST(ServerConfig, ParsesTheProtobufJsonForm) {
  absl::StatusOr<v1::ServerConfig> cfg = parse_server_config(R"({
    "models": [
      {"name": "a", "path": "tiny-flux", "defaults": {"width": 256, "height": 256}},
      {"name": "b", "path": "tiny-flux",
       "quantization": {"quant_backend": "bitsandbytes_4bit",
                        "quant_kwargs": {"load_in_4bit": true, "bnb_4bit_quant_type": "nf4"},
                        "components_to_quantize": ["transformer"]}}],
    "default_model": "b"})",
                                                              "cfg.json");
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->models_size(), 2);
  EXPECT_EQ(cfg->models(0).defaults().width(), 256);
  EXPECT_EQ(cfg->default_model(), "b");
}

TEST(ServerConfig, BadConfigsNameTheField) {
  struct Case {
    const char* json;
    absl::StatusCode code;
    const char* message;
  };
  const std::vector<Case> cases = {
      {R"({"models": [{"name": "a", "path": "p", "colour": 1}]})", absl::StatusCode::kInvalidArgument,
       "colour"},
      {R"({"modles": []})", absl::StatusCode::kInvalidArgument, "modles"},
      {R"(not json)", absl::StatusCode::kInvalidArgument, "cfg.json: not a ServerConfig"},
      {R"({})", absl::StatusCode::kInvalidArgument, "at least one model"},
      {R"({"models": [{"name": "a b", "path": "p"}]})", absl::StatusCode::kInvalidArgument,
       "models[0].name"},
      {R"({"models": [{"name": "a", "path": "p"}, {"name": "a", "path": "q"}]})",
       absl::StatusCode::kInvalidArgument, "models[1].name: 'a' is used twice"},
      {R"({"models": [{"name": "a"}]})", absl::StatusCode::kInvalidArgument, "models[0].path"},
      {R"({"models": [{"name": "a", "path": "p"}], "default_model": "z"})",
       absl::StatusCode::kInvalidArgument, "default_model: 'z' is not one of the models"},
      {R"({"models": [{"name": "a", "path": "p", "placement": {"device_map": "cuda"}}]})",
       absl::StatusCode::kUnimplemented, "models[0].placement.device_map"},
      {R"({"models": [{"name": "a", "path": "p", "placement": {"max_memory": {"cpu": "1GiB"}}}]})",
       absl::StatusCode::kUnimplemented, "issue #7"},
      {R"({"models": [{"name": "a", "path": "p",
           "placement": {"offload": {"transformer": {"policy": "model"}}}}]})",
       absl::StatusCode::kUnimplemented, "offload.transformer.policy"},
      // The planner's own validation comes first: an invalid map is InvalidArgument naming it.
      {R"({"models": [{"name": "a", "path": "p",
           "placement": {"offload": {"transformer": {"policy": "group"}}}}]})",
       absl::StatusCode::kInvalidArgument, "offload.transformer.num_blocks_per_group"},
      {R"({"models": [{"name": "a", "path": "p",
           "placement": {"device_map_modules": {"transformer.x_embedder": "tpu:0"}}}]})",
       absl::StatusCode::kInvalidArgument, "unknown device 'tpu:0'"},
      {R"({"models": [{"name": "a", "path": "p", "placement": {"max_memory": {"cuda:0": "lots"}}}]})",
       absl::StatusCode::kInvalidArgument, "placement.max_memory.cuda:0"},
      {R"({"models": [{"name": "a", "path": "p", "defaults": {"width": 100000}}]})",
       absl::StatusCode::kInvalidArgument, "models[0].defaults.width"},
      {R"({"models": [{"name": "a", "path": "p", "defaults": {"num_inference_steps": 0}}]})",
       absl::StatusCode::kInvalidArgument, "defaults.num_inference_steps"},
      {R"({"models": [{"name": "a", "path": "p", "quantization": {"quant_backend": "int3"}}]})",
       absl::StatusCode::kInvalidArgument, "models[0].quantization"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<v1::ServerConfig> cfg = parse_server_config(c.json, "cfg.json");
    ASSERT_FALSE(cfg.ok()) << c.json;
    EXPECT_EQ(cfg.status().code(), c.code) << c.json << "\n" << cfg.status();
    EXPECT_NE(cfg.status().message().find(c.message), std::string::npos)
        << c.json << "\n" << cfg.status();
  }
}

TEST(Quantization, SpecBecomesPipelineQuantConfig) {
  v1::Quantization q;
  absl::StatusOr<std::optional<PipelineQuantConfig>> none = quant_config_from_spec(q, "q");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());

  q.set_quant_backend("bitsandbytes_4bit");
  (*q.mutable_quant_kwargs()->mutable_fields())["load_in_4bit"].set_bool_value(true);
  (*q.mutable_quant_kwargs()->mutable_fields())["bnb_4bit_quant_type"].set_string_value("nf4");
  q.add_components_to_quantize("transformer");
  absl::StatusOr<std::optional<PipelineQuantConfig>> cfg = quant_config_from_spec(q, "q");
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  ASSERT_TRUE(cfg->has_value());
  std::optional<ComponentQuantConfig> t = (*cfg)->resolve("transformer");
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->backend, QuantBackend::kBitsAndBytes4bit);
  EXPECT_EQ(t->bnb_4bit_quant_type, "nf4");
  EXPECT_FALSE((*cfg)->resolve("vae").has_value());

  // Granular form: quant_mapping with numbers (protobuf Struct numbers are doubles).
  v1::Quantization g;
  auto& m = (*g.mutable_quant_mapping())["transformer"];
  (*m.mutable_fields())["quant_backend"].set_string_value("torchao");
  (*m.mutable_fields())["quant_type"].set_string_value("int4wo");
  (*m.mutable_fields())["group_size"].set_number_value(64);
  absl::StatusOr<std::optional<PipelineQuantConfig>> gc = quant_config_from_spec(g, "q");
  ASSERT_TRUE(gc.ok()) << gc.status();
  ASSERT_TRUE((*gc)->resolve("transformer").has_value());
  EXPECT_EQ((*gc)->resolve("transformer")->group_size, 64);

  // Both forms at once is diffusers' error, named.
  g.set_quant_backend("bitsandbytes_8bit");
  absl::StatusOr<std::optional<PipelineQuantConfig>> both = quant_config_from_spec(g, "spec.quantization");
  ASSERT_FALSE(both.ok());
  EXPECT_EQ(both.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(both.status().message().find("spec.quantization"), std::string::npos) << both.status();
}

TEST(ResolveSpec, TinyModel) {
  const std::string root = fs::path(kTiny).parent_path().string();
  v1::ModelSpec spec;
  spec.set_name("tiny");
  spec.set_path("tiny-flux");
  absl::StatusOr<ResolvedSpec> r = resolve_spec(spec, root, "spec");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->dir, fs::canonical(kTiny).string());
  EXPECT_FALSE(r->quant.has_value());

  spec.mutable_placement()->set_device_map("balanced");
  absl::StatusOr<ResolvedSpec> bad = resolve_spec(spec, root, "spec");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(bad.status().message().find("spec.placement.device_map"), std::string::npos);
}

}  // namespace
}  // namespace fluxserve::server
