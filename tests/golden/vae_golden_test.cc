// AutoencoderKL decoder on the CPU against diffusers (tools/golden/generate_vae.py): a tiny
// FLUX-layout VAE (f32, batch 2, non-square latents) and a bf16 one with post_quant_conv and
// layers_per_block 2; FluxPipeline's latent scaling and VaeImageProcessor's uint8 postprocess;
// `fluxserve eval vae` as users run it; and the errors a bad checkpoint or input must give.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/io/checkpoint.h"
#include "engine/io/safetensors.h"
#include "engine/models/vae_decoder.h"
#include "tests/golden/golden_util.h"

namespace fluxserve {
namespace {

using testing::fixture;
using testing::rel_error;
namespace fs = std::filesystem;

std::string case_dir(const std::string& c) { return fixture("vae/" + c); }

Tensor read(const std::string& path, const std::string& name) {
  auto f = SafetensorsFile::open(path);
  EXPECT_TRUE(f.ok()) << f.status();
  auto t = (*f)->get(name);
  EXPECT_TRUE(t.ok()) << t.status();
  return t->clone();  // the file's mapping goes away with `f`
}

class VaeGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(VaeGolden, DecodeMatchesDiffusers) {
  const std::string dir = case_dir(GetParam());
  auto vae = AutoencoderKL::load(dir + "/model/vae");
  ASSERT_TRUE(vae.ok()) << vae.status();
  EXPECT_TRUE((*vae)->unused_keys().empty());  // encoder.* / quant_conv.* do not count
  const Tensor latents = read(dir + "/inputs.safetensors", "latents");
  const Tensor ref = read(dir + "/outputs.safetensors", "sample");
  auto sample = (*vae)->decode(latents);
  ASSERT_TRUE(sample.ok()) << sample.status();
  ASSERT_EQ(sample->shape(), ref.shape());
  const double err = rel_error(*sample, ref);
  std::cout << GetParam() << ": relative L2 error " << err << "\n";
  EXPECT_LE(err, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, VaeGolden,
                         ::testing::Values("flux_vae_tiny", "vae_bf16_postquant"));

TEST(VaeGolden, ConfigReadsFluxFields) {
  auto vae = AutoencoderKL::load(case_dir("flux_vae_tiny") + "/model/vae");
  ASSERT_TRUE(vae.ok()) << vae.status();
  const AutoencoderKLConfig& c = (*vae)->config();
  EXPECT_EQ(c.latent_channels, 16);
  EXPECT_EQ(c.upscale_factor(), 8);
  EXPECT_FALSE(c.use_post_quant_conv);
  EXPECT_DOUBLE_EQ(c.scaling_factor, 0.3611);
  EXPECT_DOUBLE_EQ(c.shift_factor, 0.1159);
  auto bf16 = AutoencoderKL::load(case_dir("vae_bf16_postquant") + "/model/vae");
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  EXPECT_TRUE((*bf16)->config().use_post_quant_conv);
  EXPECT_EQ((*bf16)->config().upscale_factor(), 4);
}

// What FluxPipeline does around vae.decode: scale the latents, then postprocess to uint8.
TEST(VaeGolden, PipelineScalingAndPostprocess) {
  const std::string dir = case_dir("flux_vae_tiny");
  auto vae = AutoencoderKL::load(dir + "/model/vae");
  ASSERT_TRUE(vae.ok()) << vae.status();
  const std::string pipe = dir + "/pipeline.safetensors";
  const Tensor unscaled = read(pipe, "unscaled"), scaled = read(pipe, "scaled");
  const Tensor image = read(pipe, "image");

  auto ours_scaled = (*vae)->scale_latents(unscaled);
  ASSERT_TRUE(ours_scaled.ok()) << ours_scaled.status();
  ASSERT_EQ(ours_scaled->shape(), scaled.shape());
  for (int64_t i = 0; i < scaled.numel(); ++i) {
    ASSERT_EQ(ours_scaled->data<float>()[i], scaled.data<float>()[i]) << i;  // bit-exact
  }

  // The postprocess alone, on diffusers' own sample: byte-exact.
  const Tensor ref_sample = read(dir + "/outputs.safetensors", "sample");
  auto ref_u8 = postprocess_to_uint8(ref_sample);
  ASSERT_TRUE(ref_u8.ok()) << ref_u8.status();
  ASSERT_EQ(ref_u8->dtype(), DType::kU8);
  ASSERT_EQ(ref_u8->shape(), image.shape());
  for (int64_t i = 0; i < image.numel(); ++i) {
    ASSERT_EQ(ref_u8->data<uint8_t>()[i], image.data<uint8_t>()[i]) << i;
  }

  // The whole path from the unscaled latents: equal on >= 99.9% of bytes, never off by more than 1.
  auto sample = (*vae)->decode(*ours_scaled);
  ASSERT_TRUE(sample.ok()) << sample.status();
  auto u8 = postprocess_to_uint8(*sample);
  ASSERT_TRUE(u8.ok()) << u8.status();
  int64_t equal = 0;
  int worst = 0;
  for (int64_t i = 0; i < image.numel(); ++i) {
    const int d = std::abs(int(u8->data<uint8_t>()[i]) - int(image.data<uint8_t>()[i]));
    equal += d == 0;
    worst = std::max(worst, d);
  }
  const double frac = double(equal) / double(image.numel());
  std::cout << "uint8 image: " << frac * 100 << "% equal, max difference " << worst << "\n";
  EXPECT_GE(frac, 0.999);
  EXPECT_LE(worst, 1);
}

// An x whose f32 path (x * 0.5 + 0.5) * 255 lands exactly on `target`, searched among the floats
// around the exact preimage ((k + 0.5) / 255 itself is not representable). NaN if none is found.
float preimage_of(float target) {
  const float x0 = 2.0f * (target / 255.0f) - 1.0f;
  float up = x0, down = x0;
  for (int i = 0; i < 256; ++i) {
    for (float c : {up, down}) {
      if ((c * 0.5f + 0.5f) * 255.0f == target) return c;
    }
    up = std::nextafter(up, 2.0f);
    down = std::nextafter(down, -2.0f);
  }
  return std::nanf("");
}

TEST(VaeGolden, PostprocessRoundsHalfToEvenAndClamps) {
  // numpy's round() sends halves to the even neighbour (64.5 -> 64, 65.5 -> 66). Exact halves
  // are reachable only for some k; collect those.
  std::vector<float> v, want;
  int even = 0, odd = 0;
  for (int k = 64; k < 192; ++k) {
    const float x = preimage_of(static_cast<float>(k) + 0.5f);
    if (std::isnan(x)) continue;
    v.push_back(x);
    want.push_back(static_cast<float>(k % 2 == 0 ? k : k + 1));
    (k % 2 == 0 ? even : odd) += 1;
  }
  ASSERT_GT(even, 0);
  ASSERT_GT(odd, 0);
  // Out of range and NaN clamp to the ends (NaN -> 0).
  for (float x : {-3.0f, 7.0f, std::nanf(""), 1.0f, -1.0f}) v.push_back(x);
  for (float w : {0.0f, 255.0f, 0.0f, 255.0f, 0.0f}) want.push_back(w);
  const int64_t n = static_cast<int64_t>(v.size());
  auto u8 = postprocess_to_uint8(Tensor::from_vector(v, {1, 1, 1, n}));
  ASSERT_TRUE(u8.ok());
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(u8->data<uint8_t>()[i], want[i]) << i;
  // NCHW -> NHWC: channel planes R = [-1, -1], G = [1, 1], B = [-1, 1].
  auto rgb = postprocess_to_uint8(Tensor::from_vector({-1, -1, 1, 1, -1, 1}, {1, 3, 1, 2}));
  ASSERT_TRUE(rgb.ok());
  ASSERT_EQ(rgb->shape(), (Shape{1, 1, 2, 3}));
  const std::vector<int> rgb_want = {0, 255, 0, 0, 255, 255};
  for (size_t i = 0; i < rgb_want.size(); ++i) EXPECT_EQ(rgb->data<uint8_t>()[i], rgb_want[i]);
}

TEST(VaeGolden, RejectsBadLatents) {
  auto vae = AutoencoderKL::load(case_dir("flux_vae_tiny") + "/model/vae");
  ASSERT_TRUE(vae.ok());
  auto r = (*vae)->decode(Tensor::zeros({1, 4, 6, 10}));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("latent_channels"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("16"), std::string::npos) << r.status();
  r = (*vae)->decode(Tensor::zeros({16, 6, 10}));
  EXPECT_FALSE(r.ok());
  r = (*vae)->decode(Tensor::zeros({1, 16, 0, 10}));
  EXPECT_FALSE(r.ok());
}

// A scratch copy of a fixture's vae folder whose weights and config the test may change.
class ScratchVae {
 public:
  explicit ScratchVae(const std::string& name)
      : dir_(fs::temp_directory_path() / (std::to_string(getpid()) + "_vae_" + name)) {
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    const std::string src = case_dir("flux_vae_tiny") + "/model/vae";
    fs::copy_file(src + "/config.json", dir_ / "config.json");
    auto f = SafetensorsFile::open(src + "/diffusion_pytorch_model.safetensors");
    EXPECT_TRUE(f.ok());
    for (const SafetensorsEntry& e : (*f)->entries())
      tensors_.emplace_back(e.name, (*f)->get(e.name)->clone());
  }
  ~ScratchVae() { fs::remove_all(dir_); }
  std::vector<std::pair<std::string, Tensor>>& tensors() { return tensors_; }
  void set_config(const std::string& key, const nlohmann::json& value) {
    auto j = read_json_file((dir_ / "config.json").string());
    ASSERT_TRUE(j.ok());
    (*j)[key] = value;
    std::ofstream((dir_ / "config.json").string()) << j->dump(2);
  }
  absl::StatusOr<std::unique_ptr<AutoencoderKL>> load() {
    const absl::Status st =
        write_safetensors((dir_ / "diffusion_pytorch_model.safetensors").string(), tensors_);
    if (!st.ok()) return st;
    return AutoencoderKL::load(dir_.string());
  }

 private:
  fs::path dir_;
  std::vector<std::pair<std::string, Tensor>> tensors_;
};

TEST(VaeGolden, MissingOrMisshapenKeyIsNamed) {
  {
    ScratchVae s("missing");
    const std::string key = "decoder.up_blocks.2.resnets.0.conv_shortcut.weight";
    auto& t = s.tensors();
    const size_t before = t.size();
    std::erase_if(t, [&](const auto& kv) { return kv.first == key; });
    ASSERT_EQ(t.size(), before - 1);
    auto r = s.load();
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find(key), std::string::npos) << r.status();
  }
  {
    ScratchVae s("shape");
    const std::string key = "decoder.mid_block.attentions.0.to_k.weight";
    for (auto& [k, v] : s.tensors()) {
      if (k == key) v = Tensor::zeros({v.size(0), v.size(1), 1, 1});  // BFL-style 1x1 conv
    }
    auto r = s.load();
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find(key), std::string::npos) << r.status();
  }
  {
    // A checkpoint without the encoder half (as a decoder-only export would be) still loads.
    ScratchVae s("no_encoder");
    std::erase_if(s.tensors(), [](const auto& kv) { return kv.first.rfind("encoder.", 0) == 0; });
    auto r = s.load();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE((*r)->unused_keys().empty());
  }
}

TEST(VaeGolden, ConfigErrorsAndTolerance) {
  {
    ScratchVae s("extra_fields");
    s.set_config("some_future_field", {1, 2, 3});
    s.set_config("shift_factor", nullptr);  // SD-style VAEs: null -> 0
    auto r = s.load();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ((*r)->config().shift_factor, 0.0);
  }
  {
    ScratchVae s("groups");
    s.set_config("norm_num_groups", 3);
    auto r = s.load();
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("norm_num_groups"), std::string::npos) << r.status();
    EXPECT_NE(r.status().message().find("config.json"), std::string::npos) << r.status();
  }
  {
    ScratchVae s("up_types");
    s.set_config("up_block_types", {"UpDecoderBlock2D", "AttnUpDecoderBlock2D", "UpDecoderBlock2D",
                                    "UpDecoderBlock2D"});
    auto r = s.load();
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("AttnUpDecoderBlock2D"), std::string::npos) << r.status();
  }
  {
    // use_post_quant_conv true on a checkpoint without post_quant_conv: the key is named.
    ScratchVae s("postquant");
    s.set_config("use_post_quant_conv", true);
    auto r = s.load();
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("post_quant_conv.weight"), std::string::npos) << r.status();
  }
}

// ---- the CLI as users run it ----

struct CliResult {
  int code;
  std::string output;
};

CliResult run_cli(const std::string& args) {
  const std::string log =
      fs::temp_directory_path() / ("fluxserve_vae_cli_test." + std::to_string(getpid()) + ".log");
  const std::string cmd = std::string(FLUXSERVE_BIN) + " " + args + " > " + log + " 2>&1";
  const int rc = std::system(cmd.c_str());
  std::ifstream f(log);
  std::stringstream ss;
  ss << f.rdbuf();
  fs::remove(log);
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, ss.str()};
}

TEST(VaeGolden, CliEvalVaeMatchesDiffusers) {
  const std::string out =
      (fs::temp_directory_path() / (std::to_string(getpid()) + "_vae_cli.safetensors")).string();
  // Pipeline root (vae/ found through model_index.json) and the vae folder itself.
  for (const std::string c : {"flux_vae_tiny", "vae_bf16_postquant"}) {
    for (const std::string& model : {case_dir(c) + "/model", case_dir(c) + "/model/vae"}) {
      const CliResult r = run_cli("eval vae --model " + model + " --inputs " + case_dir(c) +
                                  "/inputs.safetensors --outputs " + out + " --threads 2");
      ASSERT_EQ(r.code, 0) << r.output;
      EXPECT_EQ(r.output.find("warning"), std::string::npos) << r.output;
      EXPECT_LE(
          rel_error(read(out, "sample"), read(case_dir(c) + "/outputs.safetensors", "sample")),
          1e-4)
          << c;
    }
  }
  fs::remove(out);
}

TEST(VaeGolden, CliEvalVaeErrors) {
  // outputs.safetensors holds `sample`, not `latents`: named in the error.
  const std::string c = case_dir("flux_vae_tiny");
  CliResult r = run_cli("eval vae --model " + c + "/model --inputs " + c +
                        "/outputs.safetensors --outputs /dev/null");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("unexpected tensor 'sample'"), std::string::npos) << r.output;
  r = run_cli("eval vae --model " + c + " --inputs x --outputs y");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("no vae in"), std::string::npos) << r.output;
  r = run_cli("eval vae --model " + c + "/model --input x");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("unknown flag --input"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace fluxserve
