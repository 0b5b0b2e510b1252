// The whole FluxPipeline against diffusers (tools/golden/generate_pipeline.py): dev-like (the
// embedded default) and schnell-like tiny pipelines, with and without true CFG, square,
// non-square and resized sizes, two images per prompt. Final latents within 1e-3 relative; the
// decoded uint8 images within 1 level on >= 99% of pixels.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include "engine/io/checkpoint.h"
#include "engine/io/safetensors.h"
#include "engine/pipeline/flux_pipeline.h"
#include "tests/golden/golden_util.h"

namespace fluxserve {
namespace {

using testing::fixture;
using testing::rel_error;

std::string model_dir(const std::string& name) {
  if (name == "default") return fixture("../../../models/tiny-flux");
  return fixture("pipeline/" + name + "/model");
}

TEST(PipelineGolden, MatchesDiffusers) {
  auto cases = read_json_file(fixture("pipeline/cases.json"));
  ASSERT_TRUE(cases.ok()) << cases.status();
  std::map<std::string, std::unique_ptr<FluxPipeline>> pipes;
  int checked = 0;
  for (const auto& c : (*cases)["cases"]) {
    const std::string name = c["name"].get<std::string>();
    const std::string model = c["model"].get<std::string>();
    if (!pipes.contains(model)) {
      auto p = FluxPipeline::load(model_dir(model));
      ASSERT_TRUE(p.ok()) << p.status();
      pipes[model] = std::move(*p);
    }
    GenerateRequest r;
    r.prompt = c["prompt"].get<std::string>();
    if (c.contains("prompt_2")) r.prompt_2 = c["prompt_2"].get<std::string>();
    if (c.contains("negative_prompt")) r.negative_prompt = c["negative_prompt"].get<std::string>();
    r.true_cfg_scale = c.value("true_cfg_scale", 1.0);
    r.height = c["height"].get<int64_t>();
    r.width = c["width"].get<int64_t>();
    r.num_inference_steps = c["num_inference_steps"].get<int64_t>();
    r.guidance_scale = c["guidance_scale"].get<double>();
    r.seed = c["seed"].get<uint64_t>();
    r.max_sequence_length = c["max_sequence_length"].get<int64_t>();
    r.num_images_per_prompt = c.value("num_images_per_prompt", 1);
    auto res = pipes[model]->generate(r);
    ASSERT_TRUE(res.ok()) << name << ": " << res.status();

    auto ref = SafetensorsFile::open(fixture("pipeline/" + name + ".safetensors"));
    ASSERT_TRUE(ref.ok()) << ref.status();
    const Tensor ref_latents = *(*ref)->get("latents");
    ASSERT_EQ(res->latents.shape(), ref_latents.shape()) << name;
    const double err = rel_error(res->latents, ref_latents);
    const Tensor ref_image = *(*ref)->get("image");  // [N, H, W, 3] uint8
    ASSERT_EQ(static_cast<int64_t>(res->images.size()), ref_image.size(0)) << name;
    int64_t total = 0, close = 0, worst = 0;
    for (size_t i = 0; i < res->images.size(); ++i) {
      const Image& img = res->images[i];
      ASSERT_EQ(img.height, ref_image.size(1)) << name;
      ASSERT_EQ(img.width, ref_image.size(2)) << name;
      const uint8_t* rp = ref_image.data<uint8_t>() + i * img.rgb.size();
      for (size_t k = 0; k < img.rgb.size(); ++k) {
        const int64_t d = std::abs(static_cast<int>(img.rgb[k]) - static_cast<int>(rp[k]));
        worst = std::max(worst, d);
        close += d <= 1;
        ++total;
      }
    }
    const double frac = static_cast<double>(close) / static_cast<double>(total);
    std::cout << name << ": latents relative L2 " << err << ", pixels within 1 level "
              << 100.0 * frac << "% (max diff " << worst << ")\n";
    EXPECT_LE(err, 1e-3) << name;
    EXPECT_GE(frac, 0.99) << name;
    if (r.height % 16 != 0 || r.width % 16 != 0) {
      ASSERT_FALSE(res->warnings.empty()) << name;
      EXPECT_NE(res->warnings[0].find("resized"), std::string::npos) << res->warnings[0];
    }
    ++checked;
  }
  EXPECT_EQ(checked, 5);
}

TEST(PipelineGolden, RejectsBadRequests) {
  auto pipe = FluxPipeline::load(model_dir("default"));
  ASSERT_TRUE(pipe.ok()) << pipe.status();
  auto expect_bad = [&](GenerateRequest r, const std::string& needle) {
    r.height = r.height ? r.height : 64;
    auto res = (*pipe)->generate(r);
    ASSERT_FALSE(res.ok()) << needle;
    EXPECT_EQ(res.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(res.status().message().find(needle), std::string::npos) << res.status();
  };
  GenerateRequest base;
  base.height = base.width = 64;
  base.num_inference_steps = 1;
  GenerateRequest r = base;
  r.num_inference_steps = 0;
  expect_bad(r, "num_inference_steps");
  r = base;
  r.num_inference_steps = 100000;
  expect_bad(r, "num_inference_steps");
  r = base;
  r.guidance_scale = std::nan("");
  expect_bad(r, "guidance_scale");
  r = base;
  r.guidance_scale = -1;
  expect_bad(r, "guidance_scale");
  r = base;
  r.width = 8;
  expect_bad(r, "width");
  r = base;
  r.max_sequence_length = 513;
  expect_bad(r, "max_sequence_length");
  r = base;
  r.width = r.height = 16384;
  auto huge = (*pipe)->generate(r);
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(huge.status().message().find("GiB"), std::string::npos) << huge.status();
  r = base;
  r.prompt = std::string("\xff\xfe", 2);
  auto res = (*pipe)->generate(r);
  EXPECT_FALSE(res.ok());
  // The empty prompt is valid; a prompt past the CLIP limit is truncated with a warning.
  r = base;
  r.prompt = "";
  EXPECT_TRUE((*pipe)->generate(r).ok());
  r = base;
  r.max_sequence_length = 16;
  r.prompt = std::string(2000, 'a') + " b c d e f g h i j k l m n o p q r s t u v w x y z";
  for (int i = 0; i < 40; ++i) r.prompt += " word";
  res = (*pipe)->generate(r);
  ASSERT_TRUE(res.ok()) << res.status();
  bool clip_warned = false, t5_warned = false;
  for (const std::string& w : res->warnings) {
    clip_warned |= w.find("CLIP") != std::string::npos;
    t5_warned |= w.find("T5") != std::string::npos;
  }
  EXPECT_TRUE(clip_warned && t5_warned);
}

TEST(PipelineGolden, ComponentsThatDisagreeAreNamed) {
  // The schnell fixture's transformer with the default model's other parts fits; a pipeline whose
  // T5 width differs from joint_attention_dim does not. Build one by pointing at a broken copy.
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("fluxserve_mismatch_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::copy(model_dir("default"), dir, fs::copy_options::recursive);
  auto cfg = read_json_file((dir / "transformer/config.json").string());
  ASSERT_TRUE(cfg.ok());
  (*cfg)["joint_attention_dim"] = 40;
  {
    std::ofstream f(dir / "transformer/config.json");
    f << cfg->dump();
  }
  auto pipe = FluxPipeline::load(dir.string());
  ASSERT_FALSE(pipe.ok());
  // The transformer weights no longer fit its own config, or the components disagree: either way
  // the message names what is wrong.
  EXPECT_NE(pipe.status().message().find("context_embedder"), std::string::npos) << pipe.status();
  fs::remove(dir / "tokenizer_2/spiece.model");
  pipe = FluxPipeline::load(dir.string());
  ASSERT_FALSE(pipe.ok());
  EXPECT_NE(pipe.status().message().find("spiece.model"), std::string::npos) << pipe.status();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace fluxserve
