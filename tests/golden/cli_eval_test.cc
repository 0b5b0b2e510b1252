// The `fluxserve` tools as a user runs them: eval transformer / scheduler against the diffusers
// fixtures, the offline run on the embedded default, and clear failures on bad invocations.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "engine/io/safetensors.h"
#include "engine/pipeline/png.h"
#include "tests/golden/golden_util.h"

namespace fluxserve {
namespace {

using testing::fixture;
using testing::rel_error;

struct Result {
  int code;
  std::string output;  // stdout + stderr
};

Result run_cli(const std::string& args) {
  // ctest runs tests as parallel processes: one log file per process.
  const std::string log = std::filesystem::temp_directory_path() /
                          ("fluxserve_cli_test." + std::to_string(getpid()) + ".log");
  const std::string cmd = std::string(FLUXSERVE_BIN) + " " + args + " > " + log + " 2>&1";
  const int rc = std::system(cmd.c_str());
  std::ifstream f(log);
  std::stringstream ss;
  ss << f.rdbuf();
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, ss.str()};
}

std::string tmp(const std::string& name) {
  return (std::filesystem::temp_directory_path() / (std::to_string(getpid()) + "_" + name)).string();
}

TEST(CliEval, TransformerMatchesDiffusers) {
  for (const std::string c : {"flux_dev_tiny", "flux_schnell_tiny"}) {
    const std::string out = tmp("cli_" + c + ".safetensors");
    const Result r = run_cli("eval transformer --model " + fixture(c + "/model") + " --inputs " +
                             fixture(c + "/inputs.safetensors") + " --outputs " + out);
    ASSERT_EQ(r.code, 0) << r.output;
    auto ours = SafetensorsFile::open(out);
    auto ref = SafetensorsFile::open(fixture(c + "/outputs.safetensors"));
    ASSERT_TRUE(ours.ok() && ref.ok());
    EXPECT_LE(rel_error(*(*ours)->get("sample"), *(*ref)->get("sample")), 1e-4) << c;
  }
}

TEST(CliEval, SchedulerMatchesDiffusers) {
  const std::string out = tmp("cli_sched.safetensors");
  const Result r = run_cli("eval scheduler --model " + fixture("scheduler/flux_dev") +
                           " --steps 28 --image-seq-len 4096 --outputs " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  auto ours = SafetensorsFile::open(out);
  auto ref = SafetensorsFile::open(fixture("scheduler/flux_dev/tables.safetensors"));
  ASSERT_TRUE(ours.ok() && ref.ok());
  const Tensor s = *(*ours)->get("sigmas"), rs = *(*ref)->get("sigmas_N28_L4096");
  const Tensor t = *(*ours)->get("timesteps"), rt = *(*ref)->get("timesteps_N28_L4096");
  ASSERT_EQ(s.numel(), 29);
  for (int64_t i = 0; i < 29; ++i) EXPECT_NEAR(s.data<float>()[i], rs.data<float>()[i], 1e-6);
  for (int64_t i = 0; i < 28; ++i) EXPECT_NEAR(t.data<float>()[i], rt.data<float>()[i], 1e-3);
}

TEST(CliEval, GenerateOnTheEmbeddedDefault) {
  const std::string out = tmp("cli_generate.png");
  const Result r = run_cli("generate --width 72 --height 48 --steps 2 --seed 3 --prompt 'a fox' "
                           "--output " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("2/2 steps"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("resized to 64x48"), std::string::npos) << r.output;
  std::ifstream f(out, std::ios::binary);
  std::stringstream bytes;
  bytes << f.rdbuf();
  PngText text;
  auto img = decode_png(bytes.str(), &text);
  ASSERT_TRUE(img.ok()) << img.status();
  EXPECT_EQ(img->width, 64);
  EXPECT_EQ(img->height, 48);
  std::map<std::string, std::string> kv(text.begin(), text.end());
  EXPECT_EQ(kv["prompt"], "a fox");
  EXPECT_EQ(kv["seed"], "3");
  EXPECT_EQ(kv["steps"], "2");
  EXPECT_EQ(kv["size"], "64x48");
}

void expect_failure(const std::string& args, const std::string& needle) {
  const Result r = run_cli(args);
  EXPECT_EQ(r.code, 1) << args << "\n" << r.output;
  EXPECT_NE(r.output.find(needle), std::string::npos) << args << "\n" << r.output;
}

TEST(CliEval, BadInvocationsFailClearly) {
  const std::string model = fixture("flux_dev_tiny/model");
  expect_failure("eval transformer --model " + model + " --outputs /tmp/x.safetensors",
                 "--inputs is required");
  expect_failure("eval transformer --model " + model + " --inputz a", "unknown flag --inputz");
  expect_failure("eval transformer --model /nonexistent --inputs a --outputs b",
                 "/nonexistent");
  expect_failure("eval scheduler --model " + model + " --steps zero --image-seq-len 1 --outputs b",
                 "--steps must be an integer");
  expect_failure("eval scheduler --model " + model + " --steps 0 --image-seq-len 1 --outputs b",
                 "num_inference_steps");
  expect_failure("generate --steps 0", "num_inference_steps");
  expect_failure("generate --guidance nan", "guidance_scale");
  expect_failure("generate --model " + model, "tokenizer");
  // Inputs of the wrong model: the schnell inputs lack guidance and have other widths.
  expect_failure("eval transformer --model " + model + " --inputs " +
                     fixture("flux_schnell_tiny/inputs.safetensors") + " --outputs " +
                     tmp("never.safetensors"),
                 "inputs.safetensors");
  // A truncated inputs file names the file.
  const std::string cut = tmp("truncated_inputs.safetensors");
  std::filesystem::copy_file(fixture("flux_dev_tiny/inputs.safetensors"), cut,
                             std::filesystem::copy_options::overwrite_existing);
  std::filesystem::resize_file(cut, std::filesystem::file_size(cut) / 2);
  expect_failure("eval transformer --model " + model + " --inputs " + cut + " --outputs " +
                     tmp("never.safetensors"),
                 "truncated_inputs.safetensors");
}

}  // namespace
}  // namespace fluxserve
