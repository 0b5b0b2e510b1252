// Pre-quantized bitsandbytes checkpoints written by diffusers + bitsandbytes
// (tools/golden/generate_bnb_checkpoint.py): fluxserve loads them as stored and its forward matches
// diffusers' on the same checkpoint; write_bnb_transformer (fluxserve quantize) on the same
// unquantized weights writes the same tensors, byte for byte, and the same quantization_config;
// broken quant state fails with InvalidArgument naming the file and the key.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "engine/io/checkpoint.h"
#include "engine/io/safetensors.h"
#include "engine/models/flux_transformer.h"
#include "engine/quant/bnb_checkpoint.h"
#include "engine/quant/bnb_checkpoint_writer.h"
#include "tests/golden/golden_util.h"

namespace fluxserve {
namespace {

namespace fs = std::filesystem;
using testing::fixture;
using testing::rel_error;

std::string temp_dir(const std::string& stem) {
  std::string tmpl = ::testing::TempDir() + "/" + stem + "_XXXXXX";
  char* p = mkdtemp(tmpl.data());
  EXPECT_NE(p, nullptr);
  return tmpl;
}

std::string root() { return fixture("bnb_checkpoint"); }

ComponentQuantConfig case_config(const std::string& name) {
  const nlohmann::json cases = *read_json_file(root() + "/cases.json");
  auto pq = PipelineQuantConfig::from_json({{"quant_mapping", {{"transformer", cases.at(name)}}}});
  EXPECT_TRUE(pq.ok()) << pq.status();
  return *pq->resolve("transformer");
}

class BnbCheckpointGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(BnbCheckpointGolden, LoadsAsStoredAndMatchesDiffusersForward) {
  const std::string dir = root() + "/" + GetParam();
  auto model = FluxTransformer2DModel::load(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE((*model)->unused_keys().empty())
      << "first unused: " << (*model)->unused_keys().front();
  auto inputs = SafetensorsFile::open(root() + "/inputs.safetensors");
  auto outputs = SafetensorsFile::open(root() + "/outputs.safetensors");
  ASSERT_TRUE(inputs.ok() && outputs.ok());
  auto sample = (*model)->forward(testing::transformer_inputs(**inputs));
  ASSERT_TRUE(sample.ok()) << sample.status();
  const Tensor ref = *(*outputs)->get("sample_" + GetParam());
  ASSERT_EQ(sample->shape(), ref.shape());
  const double err = rel_error(*sample, ref);
  std::cout << GetParam() << ": relative L2 error vs diffusers " << err << "\n";
  EXPECT_LE(err, 1e-5);
}

TEST_P(BnbCheckpointGolden, QuantizeWritesWhatDiffusersSaves) {
  const std::string out = temp_dir("bnb_write_" + GetParam());
  auto stats = write_bnb_transformer(root() + "/source", out + "/transformer",
                                     case_config(GetParam()));
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_GT(stats->quantized_layers, 0);
  auto ours = SafetensorsFile::open(out + "/transformer/diffusion_pytorch_model.safetensors");
  auto ref = SafetensorsFile::open(root() + "/" + GetParam() + "/diffusion_pytorch_model.safetensors");
  ASSERT_TRUE(ours.ok() && ref.ok()) << ours.status() << ref.status();
  EXPECT_EQ((*ours)->metadata(), (*ref)->metadata());
  ASSERT_EQ((*ours)->entries().size(), (*ref)->entries().size());
  for (size_t i = 0; i < (*ref)->entries().size(); ++i) {
    const SafetensorsEntry& r = (*ref)->entries()[i];
    const SafetensorsEntry& o = (*ours)->entries()[i];
    ASSERT_EQ(o.name, r.name);
    EXPECT_EQ(o.dtype, r.dtype) << r.name;
    EXPECT_EQ(o.shape, r.shape) << r.name;
    const Tensor a = *(*ours)->get(r.name), b = *(*ref)->get(r.name);
    ASSERT_EQ(a.nbytes(), b.nbytes()) << r.name;
    EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0) << r.name << " differs";
  }
  const nlohmann::json cfg_ours = *read_json_file(out + "/transformer/config.json");
  const nlohmann::json cfg_ref = *read_json_file(root() + "/" + GetParam() + "/config.json");
  EXPECT_EQ(cfg_ours["quantization_config"], cfg_ref["quantization_config"])
      << cfg_ours["quantization_config"].dump() << "\nvs\n" << cfg_ref["quantization_config"].dump();
  // And it loads back as a pre-quantized checkpoint.
  auto model = FluxTransformer2DModel::load(out + "/transformer");
  ASSERT_TRUE(model.ok()) << model.status();
  fs::remove_all(out);
}

INSTANTIATE_TEST_SUITE_P(Cases, BnbCheckpointGolden,
                         ::testing::Values("nf4_dq", "fp4", "int8_skip"));

TEST(BnbCheckpointConfig, ReadsTheSavedQuantizationConfig) {
  auto c = read_checkpoint_quant_config(root() + "/nf4_dq");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(c->has_value());
  EXPECT_EQ((*c)->backend, QuantBackend::kBitsAndBytes4bit);
  EXPECT_EQ((*c)->bnb_4bit_quant_type, "nf4");
  EXPECT_TRUE((*c)->bnb_4bit_use_double_quant);
  auto none = read_checkpoint_quant_config(root() + "/source");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  // Round trip: our dict equals diffusers' to_dict.
  const nlohmann::json saved = (*read_json_file(root() + "/int8_skip/config.json"))["quantization_config"];
  auto c8 = checkpoint_quant_config({{"quantization_config", saved}}, "config.json");
  ASSERT_TRUE(c8.ok() && c8->has_value());
  EXPECT_EQ(bnb_quantization_config_dict(**c8), saved);
  auto torchao = checkpoint_quant_config(
      {{"quantization_config", {{"quant_method", "torchao"}, {"quant_type", "int8wo"}}}}, "c.json");
  ASSERT_FALSE(torchao.ok());
  EXPECT_EQ(torchao.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(torchao.status().message().find("pickle"), std::string::npos) << torchao.status();
}

// A copy of a fixture checkpoint with its tensors edited by `edit` and its config by `edit_cfg`.
std::string broken_copy(const std::string& name,
                        const std::function<void(std::vector<std::pair<std::string, Tensor>>&)>& edit,
                        const std::function<void(nlohmann::json&)>& edit_cfg = nullptr) {
  const std::string dir = temp_dir("bnb_broken");
  auto f = SafetensorsFile::open(root() + "/" + name + "/diffusion_pytorch_model.safetensors");
  EXPECT_TRUE(f.ok());
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const SafetensorsEntry& e : (*f)->entries()) tensors.emplace_back(e.name, *(*f)->get(e.name));
  edit(tensors);
  EXPECT_TRUE(write_safetensors(dir + "/diffusion_pytorch_model.safetensors", tensors).ok());
  nlohmann::json cfg = *read_json_file(root() + "/" + name + "/config.json");
  if (edit_cfg) edit_cfg(cfg);
  std::ofstream(dir + "/config.json") << cfg.dump();
  return dir;
}

void expect_load_error(const std::string& dir, std::initializer_list<std::string> parts) {
  auto m = FluxTransformer2DModel::load(dir);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << m.status();
  for (const std::string& p : parts) {
    EXPECT_NE(m.status().message().find(p), std::string::npos)
        << "'" << p << "' not in: " << m.status().message();
  }
  fs::remove_all(dir);
}

Tensor u8_of(const std::string& s) {
  Tensor t = Tensor::empty({static_cast<int64_t>(s.size())}, DType::kU8);
  std::memcpy(t.raw(), s.data(), s.size());
  return t;
}

const std::string kQ = "x_embedder.weight.quant_state.bitsandbytes__nf4";

std::string state_json(const std::vector<std::pair<std::string, Tensor>>& t) {
  for (const auto& [k, v] : t) {
    if (k == kQ) return std::string(static_cast<const char*>(v.raw()), v.nbytes());
  }
  return "";
}

void replace(std::vector<std::pair<std::string, Tensor>>& t, const std::string& key, Tensor v) {
  for (auto& [k, old] : t) {
    if (k == key) old = std::move(v);
  }
}

TEST(BnbCheckpointErrors, MissingKey) {
  expect_load_error(broken_copy("nf4_dq", [](auto& t) {
                      std::erase_if(t, [](auto& e) { return e.first == "x_embedder.weight.absmax"; });
                    }),
                    {"diffusion_pytorch_model.safetensors", "x_embedder.weight.absmax"});
}

TEST(BnbCheckpointErrors, AbsmaxLengthDoesNotMatchPackedSize) {
  expect_load_error(broken_copy("fp4", [](auto& t) {
                      replace(t, "x_embedder.weight.absmax", Tensor::zeros({3}));
                    }),
                    {"diffusion_pytorch_model.safetensors", "x_embedder.weight.absmax"});
}

TEST(BnbCheckpointErrors, ShapeInJsonDoesNotMatchConfig) {
  expect_load_error(broken_copy("nf4_dq", [](auto& t) {
                      std::string s = state_json(t);
                      const size_t at = s.find("[64, 64]");
                      ASSERT_NE(at, std::string::npos) << s;
                      s.replace(at, 8, "[32, 128]");
                      replace(t, kQ, u8_of(s));
                    }),
                    {"diffusion_pytorch_model.safetensors", kQ, "[32, 128]"});
}

TEST(BnbCheckpointErrors, UnknownQuantType) {
  expect_load_error(broken_copy("nf4_dq", [](auto& t) {
                      std::string s = state_json(t);
                      s.replace(s.find("\"nf4\""), 5, "\"nf5\"");
                      replace(t, kQ, u8_of(s));
                    }),
                    {"diffusion_pytorch_model.safetensors", kQ, "nf5"});
}

TEST(BnbCheckpointErrors, UnsupportedBlocksize) {
  expect_load_error(broken_copy("nf4_dq", [](auto& t) {
                      std::string s = state_json(t);
                      s.replace(s.find("\"blocksize\": 64"), 15, "\"blocksize\": 48");
                      replace(t, kQ, u8_of(s));
                    }),
                    {"diffusion_pytorch_model.safetensors", kQ, "blocksize 48"});
}

TEST(BnbCheckpointErrors, MissingScb) {
  expect_load_error(broken_copy("int8_skip", [](auto& t) {
                      std::erase_if(t, [](auto& e) { return e.first == "x_embedder.SCB"; });
                    }),
                    {"diffusion_pytorch_model.safetensors", "x_embedder.SCB"});
}

TEST(BnbCheckpointErrors, QuantizedWeightsWithoutQuantizationConfig) {
  expect_load_error(broken_copy("int8_skip", [](auto&) {},
                                [](nlohmann::json& c) { c.erase("quantization_config"); }),
                    {"no quantization_config"});
}

TEST(BnbCheckpointErrors, ModeDisagreesWithConfig) {
  expect_load_error(broken_copy("int8_skip", [](auto&) {},
                                [](nlohmann::json& c) {
                                  c["quantization_config"]["load_in_8bit"] = false;
                                  c["quantization_config"]["load_in_4bit"] = true;
                                }),
                    {"x_embedder.weight", "8-bit", "load_in_4bit"});
}

TEST(BnbCheckpointWriter, RefusesAQuantizedSource) {
  const std::string out = temp_dir("bnb_requant");
  auto s = write_bnb_transformer(root() + "/nf4_dq", out + "/t", case_config("nf4_dq"));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition) << s.status();
  fs::remove_all(out);
}

}  // namespace
}  // namespace fluxserve
