// CLIP BPE and T5 tokenizers on hand-made vocabularies and broken files, and the Unicode pieces
// they rest on. The full comparison with transformers is tests/golden/tokenizers_golden_test.cc.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "engine/text/clip_tokenizer.h"
#include "engine/text/t5_tokenizer.h"
#include "engine/text/unicode.h"
#include "nlohmann/json.hpp"
#include "tests/unit/test_util.h"

namespace fluxserve {
namespace {
using namespace text;  // NOLINT(build/namespaces)
}  // namespace
namespace {

using fluxserve::testing::expect_error;
using fluxserve::testing::make_temp_dir;

void write(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// A CLIP vocabulary in the OpenAI/HF layout: 256 byte stand-ins, the same + "</w>", merges,
// specials.
std::string make_clip_dir(const std::vector<std::pair<std::string, std::string>>& merges,
                          const std::string& config = R"({"model_max_length": 8})") {
  const std::string dir = make_temp_dir("clip");
  std::vector<std::string> tokens;
  std::vector<int> bs;
  for (int b = '!'; b <= '~'; ++b) bs.push_back(b);
  for (int b = 0xA1; b <= 0xAC; ++b) bs.push_back(b);
  for (int b = 0xAE; b <= 0xFF; ++b) bs.push_back(b);
  std::vector<char32_t> cs(bs.begin(), bs.end());
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    if (std::find(bs.begin(), bs.end(), b) == bs.end()) {
      bs.push_back(b);
      cs.push_back(next++);
    }
  }
  for (char32_t c : cs) tokens.push_back(utf8_encode(std::u32string(1, c)));
  for (char32_t c : cs) tokens.push_back(utf8_encode(std::u32string(1, c)) + "</w>");
  std::string merges_txt = "#version: 0.2\n";
  for (const auto& [a, b] : merges) {
    tokens.push_back(a + b);
    merges_txt += a + " " + b + "\n";
  }
  tokens.push_back("<|startoftext|>");
  tokens.push_back("<|endoftext|>");
  nlohmann::json vocab = nlohmann::json::object();
  for (size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = i;
  write(dir + "/vocab.json", vocab.dump());
  write(dir + "/merges.txt", merges_txt);
  if (!config.empty()) write(dir + "/tokenizer_config.json", config);
  return dir;
}

const std::vector<std::pair<std::string, std::string>> kMerges = {
    {"c", "a"}, {"ca", "t</w>"}, {"'", "s</w>"}, {"i", "t</w>"}};

TEST(ClipTokenizer, BpeSpecialsTruncationAndPadding) {
  auto tok_or = ClipTokenizer::load(make_clip_dir(kMerges));
  ASSERT_TRUE(tok_or.ok()) << tok_or.status();
  const auto& tok = *tok_or;
  const int64_t n = tok->vocab_size();
  ASSERT_EQ(n, 512 + 4 + 2);
  EXPECT_EQ(tok->model_max_length(), 8);
  const int64_t cat = 512 + 1, its = 512 + 2, it = 512 + 3, bos = n - 2, eos = n - 1;
  auto t = tok->tokenize("CAT  It's");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(*t, (std::vector<int64_t>{cat, it, its}));
  // Specials typed in the prompt are kept; in another case they are ordinary text.
  t = tok->tokenize("cat<|endoftext|>");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(*t, (std::vector<int64_t>{cat, eos}));
  auto e = tok->encode("cat");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->ids, (std::vector<int64_t>{bos, cat, eos, eos, eos, eos, eos, eos}));
  EXPECT_EQ(e->untruncated_length, 3);
  EXPECT_FALSE(e->truncated());
  e = tok->encode("cat cat cat cat cat cat cat cat");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->ids, (std::vector<int64_t>{bos, cat, cat, cat, cat, cat, cat, eos}));
  EXPECT_EQ(e->untruncated_length, 10);
  EXPECT_TRUE(e->truncated());
  EXPECT_EQ(e->truncated_text, "cat cat");
  EXPECT_EQ(tok->decode({cat, it, its}), "cat it 's");
}

TEST(ClipTokenizer, InvalidUtf8IsAnError) {
  auto tok_or = ClipTokenizer::load(make_clip_dir(kMerges));
  ASSERT_TRUE(tok_or.ok());
  const auto& tok = *tok_or;
  expect_error(tok->encode("a\xff").status(), {"UTF-8", "byte offset 1"});
}

TEST(ClipTokenizer, MissingFilesNameThePath) {
  const std::string dir = make_clip_dir(kMerges);
  std::filesystem::remove(dir + "/merges.txt");
  expect_error(ClipTokenizer::load(dir).status(), {dir + "/merges.txt"},
               absl::StatusCode::kNotFound);
  std::filesystem::remove(dir + "/vocab.json");
  expect_error(ClipTokenizer::load(dir).status(), {dir + "/vocab.json"},
               absl::StatusCode::kNotFound);
}

TEST(ClipTokenizer, CorruptFilesNameFileAndLine) {
  std::string dir = make_clip_dir(kMerges);
  write(dir + "/merges.txt", "#version: 0.2\nc a\nthree parts here\n");
  expect_error(ClipTokenizer::load(dir).status(), {dir + "/merges.txt", "line 3"});
  write(dir + "/merges.txt", "#version: 0.2\nc a\nq zz\n");
  expect_error(ClipTokenizer::load(dir).status(),
               {dir + "/merges.txt", "line 3", "\"zz\"", "vocabulary"});
  write(dir + "/vocab.json", "{\"a\": 0,");
  expect_error(ClipTokenizer::load(dir).status(), {dir + "/vocab.json", "invalid JSON"});
  write(dir + "/vocab.json", "[1, 2]");
  expect_error(ClipTokenizer::load(dir).status(), {dir + "/vocab.json", "object"});
  write(dir + "/vocab.json", R"({"a": "x"})");
  expect_error(ClipTokenizer::load(dir).status(), {dir + "/vocab.json", "\"a\""});
  write(dir + "/vocab.json", R"({"a": 0, "b": 0})");
  expect_error(ClipTokenizer::load(dir).status(), {dir + "/vocab.json", "id 0"});

  dir = make_clip_dir(kMerges, R"({"model_max_length": 1})");
  expect_error(ClipTokenizer::load(dir).status(),
               {dir + "/tokenizer_config.json", "model_max_length"});
  dir = make_clip_dir(kMerges, R"({"model_max_length": "77"})");
  expect_error(ClipTokenizer::load(dir).status(),
               {dir + "/tokenizer_config.json", "model_max_length"});
  dir = make_clip_dir(kMerges, R"({"pad_token": "<nope>"})");
  expect_error(ClipTokenizer::load(dir).status(), {"<nope>"});
}

// transformers 5's save_pretrained writes tokenizer.json only (no vocab.json / merges.txt).
TEST(ClipTokenizer, ReadsTokenizerJsonWhenVocabJsonIsAbsent) {
  const std::string dir = make_clip_dir(kMerges);
  auto vocab = nlohmann::json::parse(std::ifstream(dir + "/vocab.json"));
  nlohmann::json merges = nlohmann::json::array();
  for (const auto& [a, b] : kMerges) merges.push_back({a, b});
  nlohmann::json tj = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}};
  std::filesystem::remove(dir + "/vocab.json");
  std::filesystem::remove(dir + "/merges.txt");
  write(dir + "/tokenizer.json", tj.dump());
  auto tok_or = ClipTokenizer::load(dir);
  ASSERT_TRUE(tok_or.ok()) << tok_or.status();
  auto t = (*tok_or)->tokenize("cat it's");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(*t, (std::vector<int64_t>{513, 515, 514}));
  tj["model"]["merges"].push_back({"q"});
  write(dir + "/tokenizer.json", tj.dump());
  expect_error(ClipTokenizer::load(dir).status(), {dir + "/tokenizer.json", "merge 5"});
}

TEST(ClipTokenizer, ConfigIsOptional) {
  auto tok_or = ClipTokenizer::load(make_clip_dir(kMerges, ""));
  ASSERT_TRUE(tok_or.ok()) << tok_or.status();
  const auto& tok = *tok_or;
  EXPECT_EQ(tok->model_max_length(), 77);
  auto e = tok->encode("");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->ids.size(), 77u);
  EXPECT_EQ(e->untruncated_length, 2);
}

TEST(T5Tokenizer, MissingOrCorruptModelNamesTheFile) {
  const std::string dir = make_temp_dir("t5");
  expect_error(T5Tokenizer::load(dir).status(), {dir + "/spiece.model"},
               absl::StatusCode::kNotFound);
  write(dir + "/spiece.model", "this is not a protobuf \xff\xff\xff");
  expect_error(T5Tokenizer::load(dir).status(), {dir + "/spiece.model"});
}

TEST(Unicode, Nfc) {
  EXPECT_EQ(nfc(U"e\u0301"), U"\u00e9");
  EXPECT_EQ(nfc(U"A\u030a"), U"\u00c5");
  EXPECT_EQ(nfc(U"\u212b"), U"\u00c5");              // singleton decomposition
  EXPECT_EQ(nfc(U"\u1100\u1161\u11a8"), U"\uac01");  // Hangul LV + T
  EXPECT_EQ(nfc(U"a\u0323\u0302"), U"\u1ead");       // ordered marks compose in turn
  EXPECT_EQ(nfc(U"a\u0302\u0323"), U"\u1ead");       // reordered first
  EXPECT_EQ(nfc(U"\u0958"), U"\u0915\u093c");        // composition exclusion
  EXPECT_EQ(nfc(U"abc"), U"abc");
}

TEST(Unicode, LowerAndClasses) {
  EXPECT_EQ(to_lower(U"ABC\u0130\u03a3\u1e9e\u01c5"), U"abci\u0307\u03c3\u00df\u01c6");
  EXPECT_TRUE(is_letter(U'\u00e9'));
  EXPECT_TRUE(is_letter(U'\u6771'));
  EXPECT_FALSE(is_letter(U'\u0301'));
  EXPECT_TRUE(is_number(U'\u00bd'));
  EXPECT_TRUE(is_number(U'\u216b'));
  EXPECT_FALSE(is_number(U'x'));
  EXPECT_TRUE(is_whitespace(U'\u3000'));
  EXPECT_FALSE(is_whitespace(U'\u200b'));
}

TEST(Unicode, Utf8) {
  auto u = utf8_decode("a\xc3\xa9\xf0\x9f\x98\x80");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(*u, U"a\u00e9\U0001F600");
  EXPECT_EQ(utf8_encode(*u), "a\xc3\xa9\xf0\x9f\x98\x80");
  EXPECT_FALSE(utf8_decode("\xc0\x80").ok());      // overlong
  EXPECT_FALSE(utf8_decode("\xed\xa0\x80").ok());  // surrogate
  EXPECT_FALSE(utf8_decode("\xf0\x9f\x98").ok());  // truncated
  EXPECT_EQ(utf8_lossy("a\xf0\x9f\x98"
                       "b\xff"),
            "a\xef\xbf\xbd"
            "b\xef\xbf\xbd");
}

}  // namespace
}  // namespace fluxserve
