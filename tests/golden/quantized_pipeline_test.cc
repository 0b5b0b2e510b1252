// The tiny default pipeline with its transformer quantized on load, in every quantize-on-load
// format: it must run, hold fewer bytes than the stored weights, and stay close to the
// unquantized run (cosine similarity of the final latents; PSNR of the image is printed for the
// README table). The formats themselves are proven bit-exact against bitsandbytes / torchao in
// bnb_golden_test.cc and torchao_golden_test.cc; this proves the wiring (which layers, skips).
#include <gtest/gtest.h>

#include <stdlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>

#include "engine/pipeline/flux_pipeline.h"
#include "engine/quant/bnb_checkpoint_writer.h"
#include "tests/golden/golden_util.h"

namespace fluxserve {
namespace {

using testing::fixture;

std::string default_model() { return fixture("../../../models/tiny-flux"); }

GenerateRequest request() {
  GenerateRequest r;
  r.prompt = "a photo of a red fox in the snow, 35mm film";
  r.height = r.width = 128;
  r.num_inference_steps = 4;
  r.seed = 0;
  r.max_sequence_length = 64;
  return r;
}

double cosine(const Tensor& a, const Tensor& b) {
  double ab = 0, aa = 0, bb = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double x = a.data<float>()[i], y = b.data<float>()[i];
    ab += x * y;
    aa += x * x;
    bb += y * y;
  }
  return ab / std::sqrt(aa * bb);
}

double psnr(const Image& a, const Image& b) {
  double se = 0;
  for (size_t i = 0; i < a.rgb.size(); ++i) {
    const double d = static_cast<double>(a.rgb[i]) - b.rgb[i];
    se += d * d;
  }
  const double mse = se / static_cast<double>(a.rgb.size());
  return mse == 0 ? 99.0 : 10.0 * std::log10(255.0 * 255.0 / mse);
}

TEST(QuantizedPipeline, EveryFormatRunsSmallerAndClose) {
  auto base = FluxPipeline::load(default_model());
  ASSERT_TRUE(base.ok()) << base.status();
  auto ref = (*base)->generate(request());
  ASSERT_TRUE(ref.ok()) << ref.status();
  const int64_t base_bytes = (*base)->transformer_linear_bytes();

  struct Case {
    const char* name;
    nlohmann::json config;
    double min_cosine;
  };
  auto bnb4 = [](const char* type, bool dq) {
    return nlohmann::json{{"quant_backend", "bitsandbytes_4bit"},
                          {"quant_kwargs",
                           {{"load_in_4bit", true},
                            {"bnb_4bit_quant_type", type},
                            {"bnb_4bit_use_double_quant", dq}}},
                          {"components_to_quantize", {"transformer"}}};
  };
  auto ao = [](nlohmann::json kw) {
    kw["quant_backend"] = "torchao";
    return nlohmann::json{{"quant_mapping", {{"transformer", kw}}}};
  };
  const std::vector<Case> cases = {
      {"bnb nf4", bnb4("nf4", false), 0.95},
      {"bnb nf4 double quant", bnb4("nf4", true), 0.95},
      {"bnb fp4", bnb4("fp4", false), 0.95},
      {"bnb LLM.int8",
       {{"quant_backend", "bitsandbytes_8bit"},
        {"quant_kwargs", {{"load_in_8bit", true}}},
        {"components_to_quantize", {"transformer"}}},
       0.99},
      {"torchao int8wo", ao({{"quant_type", "int8wo"}}), 0.99},
      {"torchao int8dq", ao({{"quant_type", "int8dq"}}), 0.99},
      {"torchao int4wo g32", ao({{"quant_type", "int4wo"}, {"group_size", 32}}), 0.95},
      {"torchao float8wo", ao({{"quant_type", "float8wo_e4m3"}}), 0.98},
      {"torchao float8dq row", ao({{"quant_type", "float8dq_e4m3_row"}}), 0.98},
  };
  for (const Case& c : cases) {
    auto cfg = PipelineQuantConfig::from_json(c.config, c.name);
    ASSERT_TRUE(cfg.ok()) << c.name << ": " << cfg.status();
    auto pipe = FluxPipeline::load(default_model(), &*cfg);
    ASSERT_TRUE(pipe.ok()) << c.name << ": " << pipe.status();
    EXPECT_NE((*pipe)->quantization(), "none");
    auto res = (*pipe)->generate(request());
    ASSERT_TRUE(res.ok()) << c.name << ": " << res.status();
    const double cs = cosine(res->latents, ref->latents);
    const double p = psnr(res->images[0], ref->images[0]);
    const int64_t bytes = (*pipe)->transformer_linear_bytes();
    std::printf("| %s | %lld | %.3f | %.5f | %.1f dB |\n", c.name, static_cast<long long>(bytes),
                static_cast<double>(bytes) / static_cast<double>(base_bytes), cs, p);
    EXPECT_LT(bytes, base_bytes) << c.name;
    EXPECT_GE(cs, c.min_cosine) << c.name;
  }
}

TEST(QuantizedPipeline, SkipListsKeepLayersUnquantized) {
  auto base = FluxPipeline::load(default_model());
  ASSERT_TRUE(base.ok());
  auto all = PipelineQuantConfig::from_json(
      {{"quant_mapping", {{"transformer", {{"quant_backend", "torchao"}, {"quant_type", "int8wo"}}}}}},
      "spec.json");
  auto skip = PipelineQuantConfig::from_json(
      {{"quant_mapping",
        {{"transformer",
          {{"quant_backend", "torchao"},
           {"quant_type", "int8wo"},
           {"modules_to_not_convert", {"single_transformer_blocks", "proj_out"}}}}}}},
      "spec.json");
  ASSERT_TRUE(all.ok() && skip.ok()) << skip.status();
  auto pa = FluxPipeline::load(default_model(), &*all);
  auto ps = FluxPipeline::load(default_model(), &*skip);
  ASSERT_TRUE(pa.ok() && ps.ok());
  // Skipped layers keep their stored weights: more bytes than quantizing everything.
  EXPECT_GT((*ps)->transformer_linear_bytes(), (*pa)->transformer_linear_bytes());
  EXPECT_LT((*ps)->transformer_linear_bytes(), (*base)->transformer_linear_bytes());
}

// Every component quantized alone, then all four together, in each quantize-on-load format: the
// README's per-component table (bytes from FluxPipeline::memory(), error vs the unquantized run).
// Which layers each component converts is proven against upstream in
// component_quant_golden_test.cc.
TEST(QuantizedPipeline, EveryComponentQuantizedRunsSmallerAndClose) {
  auto base = FluxPipeline::load(default_model());
  ASSERT_TRUE(base.ok()) << base.status();
  auto ref = (*base)->generate(request());
  ASSERT_TRUE(ref.ok()) << ref.status();
  std::map<std::string, int64_t> base_bytes;
  for (const ComponentMemory& m : (*base)->memory()) base_bytes[m.component] = m.bytes;

  struct Format {
    const char* name;
    nlohmann::json spec;  // one quant_mapping entry
    double min_cosine;    // each component alone
  };
  auto bnb4 = [](const char* type, bool dq) {
    return nlohmann::json{{"quant_backend", "bitsandbytes_4bit"}, {"load_in_4bit", true},
                          {"bnb_4bit_quant_type", type}, {"bnb_4bit_use_double_quant", dq}};
  };
  auto ao = [](nlohmann::json kw) {
    kw["quant_backend"] = "torchao";
    return kw;
  };
  const std::vector<Format> formats = {
      {"bnb nf4", bnb4("nf4", false), 0.95},
      {"bnb nf4 double quant", bnb4("nf4", true), 0.95},
      {"bnb fp4", bnb4("fp4", false), 0.95},
      {"bnb LLM.int8", {{"quant_backend", "bitsandbytes_8bit"}, {"load_in_8bit", true}}, 0.99},
      {"torchao int8wo", ao({{"quant_type", "int8wo"}}), 0.99},
      {"torchao int8dq", ao({{"quant_type", "int8dq"}}), 0.99},
      {"torchao int4wo g32", ao({{"quant_type", "int4wo"}, {"group_size", 32}}), 0.95},
      {"torchao float8wo e4m3", ao({{"quant_type", "float8wo_e4m3"}}), 0.98},
  };
  const std::vector<std::string> components = {"text_encoder", "text_encoder_2", "vae", "all"};
  std::printf("| format | component | bytes | vs bf16 | quantized/total Linear | cosine | PSNR |\n");
  for (const Format& f : formats) {
    for (const std::string& comp : components) {
      nlohmann::json mapping = nlohmann::json::object();
      for (const char* c : {"text_encoder", "text_encoder_2", "transformer", "vae"}) {
        if (comp == c || comp == "all") mapping[c] = f.spec;
      }
      auto cfg = PipelineQuantConfig::from_json({{"quant_mapping", mapping}}, f.name);
      ASSERT_TRUE(cfg.ok()) << f.name << ": " << cfg.status();
      auto pipe = FluxPipeline::load(default_model(), &*cfg);
      ASSERT_TRUE(pipe.ok()) << f.name << " " << comp << ": " << pipe.status();
      auto res = (*pipe)->generate(request());
      ASSERT_TRUE(res.ok()) << f.name << " " << comp << ": " << res.status();
      int64_t bytes = 0, before = 0;
      int q = 0, total = 0;
      for (const ComponentMemory& m : (*pipe)->memory()) {
        if (comp != "all" && m.component != comp) continue;
        bytes += m.bytes;
        before += base_bytes[m.component];
        q += m.quantized_layers;
        total += m.total_layers;
      }
      const double cs = cosine(res->latents, ref->latents);
      std::printf("| %s | %s | %lld | %.2f | %d/%d | %.5f | %.1f dB |\n", f.name, comp.c_str(),
                  static_cast<long long>(bytes),
                  static_cast<double>(bytes) / static_cast<double>(before), q, total, cs,
                  psnr(res->images[0], ref->images[0]));
      EXPECT_LT(bytes, before) << f.name << " " << comp;
      EXPECT_GT(q, 0) << f.name << " " << comp;
      if (comp != "all") {
        EXPECT_GE(cs, f.min_cosine) << f.name << " " << comp;
      }
    }
  }
}

TEST(QuantizedPipeline, GgufOnlyQuantizesTheTransformer) {
  // The config schema already refuses gguf for the text encoders (transformers models); for the
  // VAE it parses, and loading names the component.
  auto cfg = PipelineQuantConfig::from_json(
      {{"quant_mapping", {{"vae", {{"quant_backend", "gguf"}, {"compute_dtype", "bfloat16"}}}}}},
      "spec.json");
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  auto pipe = FluxPipeline::load(default_model(), &*cfg);
  ASSERT_FALSE(pipe.ok());
  EXPECT_EQ(pipe.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(pipe.status().message().find("vae"), std::string::npos) << pipe.status();
  auto te = PipelineQuantConfig::from_json(
      {{"quant_mapping", {{"text_encoder_2", {{"quant_backend", "gguf"}}}}}}, "spec.json");
  EXPECT_FALSE(te.ok());
}

// A pipeline whose transformer was saved pre-quantized (nf4, as `fluxserve quantize` writes it)
// loads as stored; a config that also names the transformer is ignored with diffusers' warning,
// and the run is bit-identical to quantizing nf4 on load (the same packed bytes).
TEST(QuantizedPipeline, PrequantizedTransformerIgnoresAGivenConfig) {
  namespace fs = std::filesystem;
  std::string dir = ::testing::TempDir() + "/prequant_XXXXXX";
  ASSERT_NE(mkdtemp(dir.data()), nullptr);
  for (const auto& e : fs::directory_iterator(default_model())) {
    if (e.path().filename() != "transformer") {
      fs::create_symlink(fs::absolute(e.path()), fs::path(dir) / e.path().filename());
    }
  }
  auto nf4 = PipelineQuantConfig::from_json(
      {{"quant_mapping",
        {{"transformer",
          {{"quant_backend", "bitsandbytes_4bit"}, {"load_in_4bit", true},
           {"bnb_4bit_quant_type", "nf4"}}}}}},
      "nf4.json");
  ASSERT_TRUE(nf4.ok()) << nf4.status();
  auto written = write_bnb_transformer(default_model() + "/transformer", dir + "/transformer",
                                       *nf4->resolve("transformer"));
  ASSERT_TRUE(written.ok()) << written.status();

  auto int8 = PipelineQuantConfig::from_json(
      {{"quant_mapping", {{"transformer", {{"quant_backend", "torchao"}, {"quant_type", "int8wo"}}}}}},
      "int8.json");
  ASSERT_TRUE(int8.ok());
  auto pre = FluxPipeline::load(dir, &*int8);
  ASSERT_TRUE(pre.ok()) << pre.status();
  const std::string q = (*pre)->quantization();
  EXPECT_NE(q.find("pre-quantized checkpoint"), std::string::npos) << q;
  EXPECT_NE(q.find("nf4"), std::string::npos) << q;
  EXPECT_EQ(q.find("int8wo"), std::string::npos) << q;

  auto on_load = FluxPipeline::load(default_model(), &*nf4);
  ASSERT_TRUE(on_load.ok()) << on_load.status();
  EXPECT_EQ((*pre)->transformer_linear_bytes(), (*on_load)->transformer_linear_bytes());
  auto a = (*pre)->generate(request());
  auto b = (*on_load)->generate(request());
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
  ASSERT_EQ(a->latents.nbytes(), b->latents.nbytes());
  EXPECT_EQ(std::memcmp(a->latents.raw(), b->latents.raw(), a->latents.nbytes()), 0);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace fluxserve
