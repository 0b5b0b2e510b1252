// A FLUX transformer from a city96-style GGUF file (BFL names, every ggml type fluxserve decodes)
// against diffusers' FluxTransformer2DModel.from_single_file(..., GGUFQuantizationConfig(
// compute_dtype=float32)) on the CPU (tools/golden/generate_gguf_transformer.py): the output within
// 1e-4 relative L2, every GGUFLinear weight dequantized bit for bit as diffusers does it, the
// pipeline wiring (quant_backend 'gguf' reads the transformer folder's .gguf), and the load errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <algorithm>

#include <unistd.h>

#include "engine/io/safetensors.h"
#include "engine/models/flux_transformer.h"
#include "engine/pipeline/flux_pipeline.h"
#include "engine/quant/flux_gguf_names.h"
#include "engine/quant/ggml_linear.h"
#include "tests/golden/golden_util.h"

namespace fluxserve {
namespace {

namespace fs = std::filesystem;
using testing::fixture;
using testing::rel_error;

const std::string kDir = "gguf_transformer/transformer";
const std::string kFile = "flux-tiny-mixed.gguf";

FluxTransformerInputs inputs(const SafetensorsFile& f) {
  FluxTransformerInputs in;
  in.hidden_states = *f.get("hidden_states");
  in.encoder_hidden_states = *f.get("encoder_hidden_states");
  in.pooled_projections = *f.get("pooled_projections");
  in.timestep = *f.get("timestep");
  in.guidance = *f.get("guidance");
  in.img_ids = *f.get("img_ids");
  in.txt_ids = *f.get("txt_ids");
  return in;
}

TEST(GgufTransformerGolden, MatchesDiffusersFromSingleFile) {
  auto model = FluxTransformer2DModel::load_gguf(fixture(kDir));
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE((*model)->unused_keys().empty());
  EXPECT_EQ((*model)->gguf_file(), fixture(kDir) + "/" + kFile);
  ComponentQuantConfig gguf;
  gguf.backend = QuantBackend::kGguf;
  auto quantized = (*model)->quantize(gguf);
  ASSERT_TRUE(quantized.ok()) << quantized.status();
  // 54 GGUFLinear layers in diffusers; our stacks (q|k|v, q|k|v|mlp) count once, BF16 and the
  // F16/F32 layers stay plain: 54 - 2 x 4 (double q/k/v, add_q/k/v) - 3 x 3 (single q/k/v/mlp)
  // - 1 (BF16).
  EXPECT_EQ(*quantized, 54 - 2 * 4 - 3 * 3 - 1);
  auto io = SafetensorsFile::open(fixture("gguf_transformer/io.safetensors"));
  ASSERT_TRUE(io.ok()) << io.status();
  auto sample = (*model)->forward(inputs(**io));
  ASSERT_TRUE(sample.ok()) << sample.status();
  const Tensor ref = *(*io)->get("sample");
  ASSERT_EQ(sample->shape(), ref.shape());
  const double err = rel_error(*sample, ref);
  std::cout << "gguf transformer vs diffusers: relative L2 error " << err << "\n";
  EXPECT_LE(err, 1e-4);
}

// diffusers dequantizes in fp16 (dequantize_blocks_*), then casts to float32: bit-exact per type.
TEST(GgufTransformerGolden, DequantizesLikeDiffusers) {
  auto file = GgufFile::open(fixture(kDir) + "/" + kFile);
  ASSERT_TRUE(file.ok()) << file.status();
  auto map = map_flux_gguf((*file)->tensors(), kFile);
  ASSERT_TRUE(map.ok()) << map.status();
  auto io = SafetensorsFile::open(fixture("gguf_transformer/io.safetensors"));
  ASSERT_TRUE(io.ok());
  int checked = 0;
  std::set<std::string> types;
  for (const SafetensorsEntry& e : (*io)->entries()) {
    const std::string& name = e.name;
    if (name.rfind("deq.", 0) != 0) continue;
    SCOPED_TRACE(name);
    const Tensor want = *(*io)->get(name);
    const auto& src = map->tensors.at(name.substr(4) + ".weight");
    const int64_t k = src.shape[1], rows = want.size(0);
    ASSERT_EQ(want.size(1), k);
    auto bytes = gguf_row_bytes(*src.info, {src.rows[0].begin, rows});
    ASSERT_TRUE(bytes.ok());
    std::vector<float> got(static_cast<size_t>(rows * k));
    ASSERT_TRUE(ggml_dequantize_diffusers(src.info->type, (*file)->view(*src.info).data + bytes->offset,
                                          rows * k, got.data())
                    .ok());
    int64_t mismatches = 0;
    for (int64_t i = 0; i < rows * k; ++i) mismatches += got[i] != want.data<float>()[i];
    EXPECT_EQ(mismatches, 0) << ggml::ggml_type_info(src.info->type).name;
    types.insert(ggml::ggml_type_info(src.info->type).name);
    ++checked;
  }
  EXPECT_EQ(checked, 54);
  EXPECT_EQ(types.size(), 11u);  // q8_0 q4_0 q4_1 q5_0 q5_1 q2_k..q6_k bf16
}

// A scratch copy of the fixture folder, to break in various ways.
class GgufTransformerErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("fluxserve_gguf_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    fs::copy_file(fixture(kDir) + "/config.json", dir_ / "config.json");
  }
  void TearDown() override { fs::remove_all(dir_); }
  void copy_gguf(const std::string& name) { fs::copy_file(fixture(kDir) + "/" + kFile, dir_ / name); }
  std::string load_error() {
    auto m = FluxTransformer2DModel::load_gguf(dir_.string());
    return m.ok() ? std::string("loaded") : std::string(m.status().message());
  }
  fs::path dir_;
};

TEST_F(GgufTransformerErrors, NoFile) {
  EXPECT_NE(load_error().find("needs the transformer as a .gguf file"), std::string::npos);
}

TEST_F(GgufTransformerErrors, TwoFiles) {
  copy_gguf("a.gguf");
  copy_gguf("b.gguf");
  const std::string e = load_error();
  EXPECT_NE(e.find("2 .gguf files"), std::string::npos) << e;
  EXPECT_NE(e.find("b.gguf"), std::string::npos) << e;
}

TEST_F(GgufTransformerErrors, ConfigMismatch) {
  copy_gguf(kFile);
  std::ifstream in(dir_ / "config.json");
  nlohmann::json j = nlohmann::json::parse(in);
  in.close();
  j["joint_attention_dim"] = 64;
  std::ofstream(dir_ / "config.json") << j.dump();
  const std::string e = load_error();
  EXPECT_NE(e.find("tensor 'txt_in.weight'"), std::string::npos) << e;
  EXPECT_NE(e.find("context_embedder.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("[64, 64]"), std::string::npos) << e;
  j["joint_attention_dim"] = 48;
  j["num_layers"] = 3;
  std::ofstream(dir_ / "config.json") << j.dump();
  EXPECT_NE(load_error().find("num_layers = 3, but the file has double_blocks = 2"), std::string::npos);
}

TEST_F(GgufTransformerErrors, UnsupportedType) {
  // Re-label a Q4_0 tensor IQ4_NL (same 18-byte blocks of 32): valid GGUF, unsupported type.
  std::ifstream in(fixture(kDir) + "/" + kFile, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string name = "double_blocks.1.img_attn.qkv.weight";
  auto pos = std::search(bytes.begin(), bytes.end(), name.begin(), name.end());
  ASSERT_NE(pos, bytes.end());
  const size_t type_at = static_cast<size_t>(pos - bytes.begin()) + name.size() + 4 + 2 * 8;
  ASSERT_EQ(bytes[type_at], 2);  // Q4_0
  bytes[type_at] = 20;           // IQ4_NL
  std::ofstream(dir_ / kFile, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  const std::string e = load_error();
  EXPECT_NE(e.find("tensor 'double_blocks.1.img_attn.qkv.weight' has ggml type iq4_nl"),
            std::string::npos) << e;
  EXPECT_NE(e.find(kFile), std::string::npos) << e;
}

TEST_F(GgufTransformerErrors, NotAFluxFile) {
  fs::copy_file(fixture("gguf/types.gguf"), dir_ / "types.gguf");
  EXPECT_NE(load_error().find("'img_in.weight' is missing"), std::string::npos);
}

// FluxPipeline::load with quant_backend 'gguf' takes the transformer from its folder's .gguf.
TEST(GgufTransformerGolden, PipelineLoadsTheGgufFile) {
  const fs::path tiny = fixture("../../../models/tiny-flux");
  const fs::path dir = fs::temp_directory_path() / ("fluxserve_gguf_pipe_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "transformer");
  for (const auto& e : fs::directory_iterator(tiny)) {
    if (e.path().filename() != "transformer") fs::create_symlink(fs::absolute(e.path()), dir / e.path().filename());
  }
  fs::create_symlink(fs::absolute(fixture(kDir) + "/config.json"), dir / "transformer/config.json");
  fs::create_symlink(fs::absolute(fixture(kDir) + "/" + kFile), dir / "transformer" / kFile);
  auto quant = PipelineQuantConfig::from_json(nlohmann::json::parse(
      R"({"quant_mapping": {"transformer": {"quant_backend": "gguf", "compute_dtype": "float32"}}})"));
  ASSERT_TRUE(quant.ok()) << quant.status();
  auto pipe = FluxPipeline::load(dir.string(), &*quant);
  ASSERT_TRUE(pipe.ok()) << pipe.status();
  EXPECT_NE((*pipe)->quantization().find("gguf"), std::string::npos) << (*pipe)->quantization();
  EXPECT_NE((*pipe)->quantization().find("(36 linear layers)"), std::string::npos)
      << (*pipe)->quantization();
  GenerateRequest r;
  r.prompt = "a red fox";
  r.height = r.width = 64;
  r.num_inference_steps = 2;
  r.max_sequence_length = 32;
  auto out = (*pipe)->generate(r);
  ASSERT_TRUE(out.ok()) << out.status();
  // Without the quantization config the same folder has no safetensors weights to load.
  EXPECT_FALSE(FluxPipeline::load(dir.string()).ok());
  fs::remove_all(dir);
}

}  // namespace
}  // namespace fluxserve
