// `fluxserve inspect` as a user runs it: the JSON and table totals equal FluxPipeline::memory()
// for the same model and quantization config, and bad invocations fail with a message.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/pipeline/flux_pipeline.h"
#include "nlohmann/json.hpp"
#include "tests/golden/golden_util.h"

namespace fluxserve {
namespace {

struct Result {
  int code;
  std::string out, err;
};

std::string tmp(const std::string& name) {
  return (std::filesystem::temp_directory_path() / (std::to_string(getpid()) + "_inspect_" + name))
      .string();
}

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

Result run_cli(const std::string& args) {
  const std::string out = tmp("stdout"), err = tmp("stderr");
  const std::string cmd = std::string(FLUXSERVE_BIN) + " " + args + " > " + out + " 2> " + err;
  const int rc = std::system(cmd.c_str());
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, slurp(out), slurp(err)};
}

std::string tiny() { return testing::fixture("../../../models/tiny-flux"); }

std::string grouped(int64_t b) {
  std::string s = std::to_string(b), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i > 0 && (s.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(s[i]);
  }
  return out;
}

TEST(CliInspect, TotalsEqualPipelineMemory) {
  const nlohmann::json spec = {
      {"quant_mapping",
       {{"text_encoder_2",
         {{"quant_backend", "bitsandbytes_4bit"}, {"load_in_4bit", true},
          {"bnb_4bit_quant_type", "nf4"}, {"bnb_4bit_use_double_quant", true}}},
        {"transformer", {{"quant_backend", "torchao"}, {"quant_type", "int8wo"}}}}}};
  const std::string spec_path = tmp("spec.json");
  std::ofstream(spec_path) << spec.dump();
  auto cfg = PipelineQuantConfig::from_json(spec, spec_path);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  auto pipe = FluxPipeline::load(tiny(), &*cfg);
  ASSERT_TRUE(pipe.ok()) << pipe.status();
  int64_t total = 0;
  int q = 0, layers = 0;
  for (const ComponentMemory& m : (*pipe)->memory()) {
    total += m.bytes;
    q += m.quantized_layers;
    layers += m.total_layers;
  }

  const Result j = run_cli("inspect --model " + tiny() + " --quant-config " + spec_path + " --json");
  ASSERT_EQ(j.code, 0) << j.err;
  const nlohmann::json out = nlohmann::json::parse(j.out);
  EXPECT_EQ(out["total"]["bytes"].get<int64_t>(), total);
  EXPECT_EQ(out["total"]["quantized_layers"].get<int>(), q);
  EXPECT_EQ(out["total"]["total_layers"].get<int>(), layers);
  const std::vector<ComponentMemory> mem = (*pipe)->memory();
  ASSERT_EQ(out["components"].size(), mem.size());
  for (size_t i = 0; i < mem.size(); ++i) {
    EXPECT_EQ(out["components"][i]["component"], mem[i].component);
    EXPECT_EQ(out["components"][i]["bytes"].get<int64_t>(), mem[i].bytes);
    EXPECT_EQ(out["components"][i]["format"], mem[i].format);
  }

  const Result t = run_cli("inspect --model " + tiny() + " --quant-config " + spec_path);
  ASSERT_EQ(t.code, 0) << t.err;
  std::string total_line;
  std::istringstream lines(t.out);
  for (std::string l; std::getline(lines, l);) {
    if (l.rfind("total ", 0) == 0) total_line = l;
  }
  EXPECT_NE(total_line.find(grouped(total)), std::string::npos) << t.out;
  EXPECT_NE(total_line.find(std::to_string(q) + "/" + std::to_string(layers)), std::string::npos)
      << t.out;
  EXPECT_NE(t.out.find("bitsandbytes nf4 (double quant)"), std::string::npos) << t.out;
}

TEST(CliInspect, BadInvocationsFailWithAMessage) {
  Result r = run_cli("inspect --model /nonexistent/dir");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("/nonexistent/dir"), std::string::npos) << r.err;
  r = run_cli("inspect --quant-confg x.json");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("quant-confg"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace fluxserve
