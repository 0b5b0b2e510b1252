// CLIP and T5 input ids against transformers' CLIPTokenizer / T5TokenizerFast loaded from the
// embedded model's tokenizer/ and tokenizer_2/ (tools/golden/generate_tokenizers.py), for every
// prompt in tokenizers/cases.json, as FluxPipeline tokenizes them (77; 512 and 256).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/io/checkpoint.h"
#include "engine/io/safetensors.h"
#include "engine/text/clip_tokenizer.h"
#include "engine/text/t5_tokenizer.h"
#include "tests/golden/golden_util.h"

namespace fluxserve {
namespace {

using testing::fixture;

void write(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// The status is an error whose message holds every one of `parts`.
void expect_error(const absl::Status& s, std::initializer_list<std::string> parts) {
  ASSERT_FALSE(s.ok());
  for (const std::string& p : parts)
    EXPECT_NE(std::string(s.message()).find(p), std::string::npos) << p << " not in: " << s;
}

const std::string kModel = std::string(FLUXSERVE_FIXTURES) + "/../../../models/tiny-flux";

std::vector<int64_t> ids_of(const nlohmann::json& j) { return j.get<std::vector<int64_t>>(); }

class TokenizersGolden : public ::testing::Test {
 protected:
  void SetUp() override {
    auto cases = read_json_file(fixture("tokenizers/cases.json"));
    ASSERT_TRUE(cases.ok()) << cases.status();
    cases_ = std::move(*cases);
    ASSERT_GE(cases_["cases"].size(), 20u);
  }
  nlohmann::json cases_;
};

TEST_F(TokenizersGolden, ClipMatchesTransformers) {
  auto tok_or = ClipTokenizer::load(kModel + "/tokenizer");
  ASSERT_TRUE(tok_or.ok()) << tok_or.status();
  const auto& tok = *tok_or;
  EXPECT_EQ(tok->model_max_length(), 77);
  EXPECT_EQ(tok->vocab_size(), 2514);
  EXPECT_EQ(tok->bos_id(), 2512);
  EXPECT_EQ(tok->eos_id(), 2513);
  EXPECT_EQ(tok->pad_id(), 2513);
  int truncated = 0;
  for (const auto& c : cases_["cases"]) {
    const std::string name = c["name"], prompt = c["prompt"];
    auto got = tok->encode(prompt);
    ASSERT_TRUE(got.ok()) << name << ": " << got.status();
    EXPECT_EQ(got->ids, ids_of(c["clip_ids"])) << name;
    EXPECT_EQ(got->untruncated_length, c["clip_untruncated_length"].get<int64_t>()) << name;
    EXPECT_EQ(got->truncated_text, c["clip_removed_text"].get<std::string>()) << name;
    truncated += got->truncated();
  }
  EXPECT_GE(truncated, 2);
}

TEST_F(TokenizersGolden, T5MatchesTransformers) {
  auto tok_or = T5Tokenizer::load(kModel + "/tokenizer_2");
  ASSERT_TRUE(tok_or.ok()) << tok_or.status();
  const auto& tok = *tok_or;
  EXPECT_EQ(tok->model_max_length(), 512);
  EXPECT_EQ(tok->vocab_size(), 1100);
  int checked = 0, truncated = 0;
  for (const auto& c : cases_["cases"]) {
    const std::string name = c["name"], prompt = c["prompt"];
    for (const int64_t max_len : {512, 256}) {
      const auto& ref = c["t5"][std::to_string(max_len)];
      auto got = tok->encode(prompt, max_len);
      ASSERT_TRUE(got.ok()) << name << ": " << got.status();
      EXPECT_EQ(got->ids, ids_of(ref["ids"])) << name << " max_length " << max_len;
      EXPECT_EQ(got->untruncated_length, ref["untruncated_length"].get<int64_t>()) << name;
      EXPECT_EQ(got->truncated_text, ref["removed_text"].get<std::string>())
          << name << " " << max_len;
      ++checked;
      truncated += got->truncated();
    }
  }
  EXPECT_GE(checked, 40);
  EXPECT_GE(truncated, 2);
}

// `fluxserve eval tokenize` as a user runs it: ids in a safetensors file, warning on truncation.
TEST_F(TokenizersGolden, CliWritesIdsAndWarnsOnTruncation) {
  for (const auto& c : cases_["cases"]) {
    const std::string name = c["name"];
    if (name != "astronaut" && name != "long_t5") continue;
    const std::string prompt = c["prompt"];
    const std::string dir =
        std::filesystem::temp_directory_path() / ("fluxserve_tok." + std::to_string(getpid()));
    std::filesystem::create_directories(dir);
    const std::string prompt_file = dir + "/prompt.txt", out = dir + "/ids.safetensors",
                      log = dir + "/log.txt";
    std::ofstream(prompt_file) << prompt;
    const std::string cmd =
        std::string(FLUXSERVE_BIN) + " eval tokenize --model " + kModel + " --prompt \"$(cat " +
        prompt_file + ")\" --max-sequence-length 256 --outputs " + out + " > " + log + " 2>&1";
    const int rc = std::system(cmd.c_str());
    std::stringstream ss;
    ss << std::ifstream(log).rdbuf();
    ASSERT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 0) << ss.str();
    auto file = SafetensorsFile::open(out);
    ASSERT_TRUE(file.ok()) << file.status();
    auto clip = (*file)->get("input_ids_clip");
    auto t5 = (*file)->get("input_ids_t5");
    ASSERT_TRUE(clip.ok() && t5.ok());
    ASSERT_EQ(clip->dtype(), DType::kI64);
    ASSERT_EQ(clip->shape(), (Shape{1, 77}));
    ASSERT_EQ(t5->shape(), (Shape{1, 256}));
    const auto ref_clip = ids_of(c["clip_ids"]), ref_t5 = ids_of(c["t5"]["256"]["ids"]);
    EXPECT_EQ(std::vector<int64_t>(clip->data<int64_t>(), clip->data<int64_t>() + 77), ref_clip)
        << name;
    EXPECT_EQ(std::vector<int64_t>(t5->data<int64_t>(), t5->data<int64_t>() + 256), ref_t5) << name;
    const bool warned = ss.str().find("was truncated") != std::string::npos;
    EXPECT_EQ(warned, name == "long_t5") << ss.str();
    std::filesystem::remove_all(dir);
  }
}

// Config errors and edge lengths need a real spiece.model, so they live here rather than in unit/.
TEST(T5TokenizerGolden, CorruptConfigNamesTheFileAndEdgeLengths) {
  const std::string dir =
      std::filesystem::temp_directory_path() / ("fluxserve_t5cfg." + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(kModel + "/tokenizer_2/spiece.model", dir + "/spiece.model");
  write(dir + "/tokenizer_config.json", R"({"extra_ids": -3})");
  expect_error(T5Tokenizer::load(dir).status(), {dir + "/tokenizer_config.json", "extra_ids"});
  write(dir + "/tokenizer_config.json", "{");
  expect_error(T5Tokenizer::load(dir).status(), {dir + "/tokenizer_config.json"});
  write(dir + "/tokenizer_config.json", R"({"extra_ids": 100})");
  auto tok_or = T5Tokenizer::load(dir);
  ASSERT_TRUE(tok_or.ok()) << tok_or.status();
  const auto& tok = *tok_or;
  expect_error(tok->encode("hi", 0).status(), {"max_length 0"});
  expect_error(tok->encode("\xc3", 16).status(), {"UTF-8"});
  auto e = tok->encode("<extra_id_0></s>", 4);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->ids, (std::vector<int64_t>{tok->vocab_size() - 1, 1, 1, 0}));
  e = tok->encode("", 1);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->ids, (std::vector<int64_t>{1}));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace fluxserve
