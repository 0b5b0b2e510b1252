// CLIPTextModel and T5EncoderModel on the CPU against transformers' own forward pass
// (tools/golden/generate_text_encoders.py): legacy (eos_token_id 2, `text_model.` keys) and
// transformers-5 CLIP layouts, first-eos pooling, T5 short and long (log buckets) sequences with
// bf16 weights; the relative-position buckets exactly; the CLI; and clear errors for bad ids,
// too-long sequences, missing keys and unsupported configs. Tolerance: relative L2 <= 1e-4.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/io/safetensors.h"
#include "engine/models/clip_text.h"
#include "engine/models/t5_encoder.h"
#include "tests/golden/golden_util.h"

namespace fluxserve {
namespace {

namespace fs = std::filesystem;
using testing::fixture;
using testing::rel_error;

std::string case_dir(const std::string& c) { return fixture("text_encoders/" + c); }

Tensor read(const std::string& file, const std::string& name) {
  auto f = SafetensorsFile::open(file);
  EXPECT_TRUE(f.ok()) << f.status();
  auto t = (*f)->get(name);
  EXPECT_TRUE(t.ok()) << t.status();
  return t->clone();
}

Tensor to_i32(const Tensor& ids) {
  Tensor out = Tensor::empty(ids.shape(), DType::kI32);
  for (int64_t i = 0; i < ids.numel(); ++i) {
    out.data<int32_t>()[i] = static_cast<int32_t>(ids.data<int64_t>()[i]);
  }
  return out;
}

// A scratch copy of a fixture model folder, removed at the end of the test.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& name)
      : path_(fs::temp_directory_path() / (std::to_string(getpid()) + "_" + name)) {
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~ScratchDir() { fs::remove_all(path_); }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

void copy_model(const std::string& from, const std::string& to) {
  fs::create_directories(to);
  fs::copy(from, to, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
}

// Rewrites <dir>/model.safetensors without `drop`.
void drop_key(const std::string& dir, const std::string& drop) {
  const std::string path = dir + "/model.safetensors";
  std::vector<std::pair<std::string, Tensor>> keep;
  {
    auto f = SafetensorsFile::open(path);
    ASSERT_TRUE(f.ok()) << f.status();
    for (const SafetensorsEntry& e : (*f)->entries()) {
      if (e.name != drop) keep.emplace_back(e.name, (*(*f)->get(e.name)).clone());
    }
  }
  ASSERT_TRUE(write_safetensors(path, keep).ok());
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// ---------------------------------------------------------------------------------------------
// CLIP
// ---------------------------------------------------------------------------------------------

class ClipGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(ClipGolden, MatchesTransformers) {
  const std::string dir = case_dir(GetParam());
  auto model = CLIPTextModel::load(dir + "/model");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE((*model)->unused_keys().empty());
  const Tensor ids = read(dir + "/inputs.safetensors", "input_ids");
  auto out = (*model)->forward(ids);
  ASSERT_TRUE(out.ok()) << out.status();
  const Tensor ref_last = read(dir + "/outputs.safetensors", "last_hidden_state");
  const Tensor ref_pooled = read(dir + "/outputs.safetensors", "pooler_output");
  ASSERT_EQ(out->last_hidden_state.shape(), ref_last.shape());
  ASSERT_EQ(out->pooler_output.shape(), ref_pooled.shape());
  const double e_last = rel_error(out->last_hidden_state, ref_last);
  const double e_pooled = rel_error(out->pooler_output, ref_pooled);
  std::cout << GetParam() << ": relative L2 error last_hidden_state " << e_last
            << ", pooler_output " << e_pooled << "\n";
  EXPECT_LE(e_last, 1e-4);
  EXPECT_LE(e_pooled, 1e-4);

  // int32 ids are the same ids.
  auto out32 = (*model)->forward(to_i32(ids));
  ASSERT_TRUE(out32.ok()) << out32.status();
  EXPECT_EQ(rel_error(out32->last_hidden_state, out->last_hidden_state), 0.0);
  EXPECT_EQ(rel_error(out32->pooler_output, out->pooler_output), 0.0);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ClipGolden,
                         ::testing::Values("clip_legacy", "clip_eos", "clip_eos_mid"));

TEST(ClipGolden, PooledPositionFollowsTransformers) {
  // Legacy eos id 2: first position of the largest id.
  const int64_t a[] = {998, 5, 999, 7, 999, 999};
  EXPECT_EQ(clip_pooled_position(a, 6, 2), 2);
  // Corrected eos id: first position of it, even when larger ids come before.
  const int64_t b[] = {298, 200, 150, 299, 150};
  EXPECT_EQ(clip_pooled_position(b, 5, 150), 2);
  EXPECT_EQ(clip_pooled_position(b, 5, 2), 3);
  // No eos at all: position 0 (argmax of all-false).
  EXPECT_EQ(clip_pooled_position(b, 5, 7), 0);
}

TEST(ClipGolden, CausalMaskMatters) {
  // Changing a later token leaves earlier positions untouched and changes later ones.
  auto model = CLIPTextModel::load(case_dir("clip_eos") + "/model");
  ASSERT_TRUE(model.ok()) << model.status();
  Tensor ids = read(case_dir("clip_eos") + "/inputs.safetensors", "input_ids");
  const CLIPTextOutput base = *(*model)->forward(ids);
  const int64_t len = ids.size(1), d = base.last_hidden_state.size(2);
  ids.data<int64_t>()[10] = ids.data<int64_t>()[10] == 5 ? 6 : 5;
  const CLIPTextOutput changed = *(*model)->forward(ids);
  for (int64_t i = 0; i < 10 * d; ++i) {
    ASSERT_EQ(changed.last_hidden_state.data<float>()[i], base.last_hidden_state.data<float>()[i]);
  }
  double diff = 0;
  for (int64_t i = 10 * d; i < len * d; ++i) {
    diff += std::abs(changed.last_hidden_state.data<float>()[i] -
                     base.last_hidden_state.data<float>()[i]);
  }
  EXPECT_GT(diff, 1e-3);
}

TEST(ClipGolden, RejectsBadInputs) {
  auto model = CLIPTextModel::load(case_dir("clip_legacy") + "/model");
  ASSERT_TRUE(model.ok()) << model.status();
  const Tensor good = read(case_dir("clip_legacy") + "/inputs.safetensors", "input_ids");

  Tensor bad_id = good.clone();
  bad_id.data<int64_t>()[1 * 77 + 3] = 1000;  // vocab_size
  auto r = (*model)->forward(bad_id);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("input_ids[1, 3] = 1000"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("[0, 1000)"), std::string::npos) << r.status();

  Tensor negative = good.clone();
  negative.data<int64_t>()[0] = -1;
  r = (*model)->forward(negative);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("-1"), std::string::npos) << r.status();

  Tensor too_long = Tensor::zeros({1, 78}, DType::kI64);
  r = (*model)->forward(too_long);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("sequence length 78 exceeds max_position_embeddings 77"),
            std::string::npos)
      << r.status();

  r = (*model)->forward(Tensor::zeros({2, 5}));  // float ids
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("int64 or int32"), std::string::npos) << r.status();

  r = (*model)->forward(Tensor::zeros({5}, DType::kI64));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("[batch, seq_len]"), std::string::npos) << r.status();

  r = (*model)->forward(Tensor::zeros({1, 0}, DType::kI64));
  EXPECT_FALSE(r.ok());
}

TEST(ClipGolden, MissingKeyNamesKeyAndFolder) {
  for (const auto& [c, key] : {std::pair<std::string, std::string>{
                                   "clip_legacy", "text_model.encoder.layers.1.mlp.fc2.weight"},
                               {"clip_eos", "final_layer_norm.bias"}}) {
    ScratchDir tmp("clip_missing_" + c);
    copy_model(case_dir(c) + "/model", tmp.str());
    drop_key(tmp.str(), key);
    auto m = CLIPTextModel::load(tmp.str());
    ASSERT_FALSE(m.ok()) << c;
    EXPECT_NE(m.status().message().find("'" + key + "'"), std::string::npos) << m.status();
    EXPECT_NE(m.status().message().find(tmp.str()), std::string::npos) << m.status();
  }
}

TEST(ClipGolden, RejectsUnsupportedConfig) {
  ScratchDir tmp("clip_config");
  copy_model(case_dir("clip_eos") + "/model", tmp.str());
  const std::string cfg = tmp.str() + "/config.json";
  const std::string text = slurp(cfg);

  std::string gelu = text;
  gelu.replace(gelu.find("\"quick_gelu\""), 12, "\"relu\"");
  write_text(cfg, gelu);
  auto m = CLIPTextModel::load(tmp.str());
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("hidden_act 'relu'"), std::string::npos) << m.status();
  EXPECT_NE(m.status().message().find(cfg), std::string::npos) << m.status();

  std::string arch = text;
  arch.replace(arch.find("\"CLIPTextModel\""), 15, "\"T5EncoderModel\"");
  write_text(cfg, arch);
  m = CLIPTextModel::load(tmp.str());
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("architectures"), std::string::npos) << m.status();

  std::string heads = text;
  heads.replace(heads.find("\"num_attention_heads\": 2"), 24, "\"num_attention_heads\": 3");
  write_text(cfg, heads);
  m = CLIPTextModel::load(tmp.str());
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("not divisible"), std::string::npos) << m.status();

  // A checkpoint that does not fit the config: the shape error names key and file.
  std::string wide = text;
  wide.replace(wide.find("\"intermediate_size\": 37"), 23, "\"intermediate_size\": 38");
  write_text(cfg, wide);
  m = CLIPTextModel::load(tmp.str());
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("encoder.layers.0.mlp.fc1.weight"), std::string::npos)
      << m.status();
}

// ---------------------------------------------------------------------------------------------
// T5
// ---------------------------------------------------------------------------------------------

class T5Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(T5Golden, MatchesTransformers) {
  const std::string dir = case_dir(GetParam());
  auto model = T5EncoderModel::load(dir + "/model");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE((*model)->unused_keys().empty());
  const Tensor ids = read(dir + "/inputs.safetensors", "input_ids");
  auto out = (*model)->forward(ids);
  ASSERT_TRUE(out.ok()) << out.status();
  const Tensor ref = read(dir + "/outputs.safetensors", "last_hidden_state");
  ASSERT_EQ(out->shape(), ref.shape());
  const double err = rel_error(*out, ref);
  std::cout << GetParam() << ": relative L2 error last_hidden_state " << err << "\n";
  EXPECT_LE(err, 1e-4);
  auto out32 = (*model)->forward(to_i32(ids));
  ASSERT_TRUE(out32.ok());
  EXPECT_EQ(rel_error(*out32, *out), 0.0);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, T5Golden, ::testing::Values("t5_short", "t5_long_bf16"));

TEST(T5Golden, RelativePositionBucketsMatchTransformers) {
  const std::string file = case_dir("t5_buckets.safetensors");
  const Tensor rel = read(file, "relative_position");
  for (const auto& [nb, md] : {std::pair{32, 128}, {64, 256}, {8, 20}}) {
    const Tensor ref = read(file, "buckets_" + std::to_string(nb) + "_" + std::to_string(md));
    int mismatches = 0;
    for (int64_t i = 0; i < rel.numel(); ++i) {
      const int64_t got = t5_relative_position_bucket(rel.data<int32_t>()[i], nb, md);
      if (got != ref.data<int32_t>()[i] && ++mismatches < 5) {
        ADD_FAILURE() << "buckets " << nb << "/" << md << ": rel " << rel.data<int32_t>()[i]
                      << " -> " << got << ", transformers " << ref.data<int32_t>()[i];
      }
    }
    EXPECT_EQ(mismatches, 0);
  }
}

TEST(T5Golden, PositionBiasMatters) {
  // [A, B, B, B, B, B]: positions 1..5 hold the same token and see the same tokens, so only the
  // relative position bias can tell them apart.
  auto model = T5EncoderModel::load(case_dir("t5_short") + "/model");
  ASSERT_TRUE(model.ok()) << model.status();
  Tensor ids = Tensor::empty({1, 6}, DType::kI64);
  for (int i = 0; i < 6; ++i) ids.data<int64_t>()[i] = i == 0 ? 7 : 42;
  const Tensor out = *(*model)->forward(ids);
  const int64_t d = out.size(2);
  for (int64_t p = 2; p < 6; ++p) {
    double diff = 0;
    for (int64_t j = 0; j < d; ++j) {
      diff += std::abs(out.data<float>()[d + j] - out.data<float>()[p * d + j]);
    }
    EXPECT_GT(diff, 1e-3) << "positions 1 and " << p;
  }
}

TEST(T5Golden, RejectsBadInputs) {
  auto model = T5EncoderModel::load(case_dir("t5_short") + "/model");
  ASSERT_TRUE(model.ok()) << model.status();
  Tensor ids = read(case_dir("t5_short") + "/inputs.safetensors", "input_ids");
  ids.data<int64_t>()[5] = 1100;
  auto r = (*model)->forward(ids);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("T5EncoderModel: input_ids[0, 5] = 1100 is outside"),
            std::string::npos)
      << r.status();
  // No position limit: a long sequence is fine (relative positions only).
  EXPECT_TRUE((*model)->forward(Tensor::zeros({1, 600}, DType::kI64)).ok());
}

TEST(T5Golden, MissingKeyNamesKeyAndFolder) {
  ScratchDir tmp("t5_missing");
  copy_model(case_dir("t5_short") + "/model", tmp.str());
  drop_key(tmp.str(), "encoder.block.1.layer.1.DenseReluDense.wi_1.weight");
  auto m = T5EncoderModel::load(tmp.str());
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("'encoder.block.1.layer.1.DenseReluDense.wi_1.weight'"),
            std::string::npos)
      << m.status();
  EXPECT_NE(m.status().message().find(tmp.str()), std::string::npos) << m.status();

  drop_key(tmp.str(), "shared.weight");
  m = T5EncoderModel::load(tmp.str());
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("encoder.embed_tokens.weight"), std::string::npos)
      << m.status();
}

TEST(T5Golden, RejectsUnsupportedConfig) {
  ScratchDir tmp("t5_config");
  copy_model(case_dir("t5_short") + "/model", tmp.str());
  const std::string cfg = tmp.str() + "/config.json";
  const std::string text = slurp(cfg);
  std::string relu = text;
  relu.replace(relu.find("\"gated-gelu\""), 12, "\"relu\"");
  write_text(cfg, relu);
  auto m = T5EncoderModel::load(tmp.str());
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("'relu' is not supported"), std::string::npos) << m.status();
  EXPECT_NE(m.status().message().find(cfg), std::string::npos) << m.status();

  std::string model_type = text;
  model_type.replace(model_type.find("\"model_type\": \"t5\""), 18, "\"model_type\": \"mt5\"");
  write_text(cfg, model_type);
  m = T5EncoderModel::load(tmp.str());
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("model_type is 'mt5'"), std::string::npos) << m.status();
}

// ---------------------------------------------------------------------------------------------
// CLI: `fluxserve eval clip|t5`
// ---------------------------------------------------------------------------------------------

struct CliResult {
  int code;
  std::string output;
};

CliResult run_cli(const std::string& args) {
  const std::string log =
      (fs::temp_directory_path() / ("fluxserve_text_cli." + std::to_string(getpid()) + ".log"))
          .string();
  const int rc =
      std::system((std::string(FLUXSERVE_BIN) + " " + args + " > " + log + " 2>&1").c_str());
  const std::string out = slurp(log);
  fs::remove(log);
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, out};
}

TEST(TextEncodersCli, EvalMatchesTransformers) {
  ScratchDir tmp("text_cli");
  for (const auto& [component, c] : {std::pair<std::string, std::string>{"clip", "clip_legacy"},
                                     {"clip", "clip_eos_mid"},
                                     {"t5", "t5_long_bf16"}}) {
    const std::string out = tmp.str() + "/" + c + ".safetensors";
    const CliResult r =
        run_cli("eval " + component + " --model " + case_dir(c) + "/model --inputs " + case_dir(c) +
                "/inputs.safetensors --outputs " + out + " --threads 1");
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_EQ(r.output.find("warning"), std::string::npos) << r.output;
    const std::string ref = case_dir(c) + "/outputs.safetensors";
    EXPECT_LE(rel_error(read(out, "last_hidden_state"), read(ref, "last_hidden_state")), 1e-4) << c;
    if (component == "clip") {
      EXPECT_LE(rel_error(read(out, "pooler_output"), read(ref, "pooler_output")), 1e-4) << c;
    }
  }
}

TEST(TextEncodersCli, FindsComponentsInAPipelineFolder) {
  ScratchDir root("text_cli_pipeline");
  copy_model(case_dir("clip_eos") + "/model", root.str() + "/text_encoder");
  copy_model(case_dir("t5_short") + "/model", root.str() + "/text_encoder_2");
  write_text(root.str() + "/model_index.json", R"({
  "_class_name": "FluxPipeline",
  "text_encoder": ["transformers", "CLIPTextModel"],
  "text_encoder_2": ["transformers", "T5EncoderModel"]
})");
  for (const auto& [component, c] :
       {std::pair<std::string, std::string>{"clip", "clip_eos"}, {"t5", "t5_short"}}) {
    const std::string out = root.str() + "/" + c + "_out.safetensors";
    const CliResult r = run_cli("eval " + component + " --model " + root.str() + " --inputs " +
                                case_dir(c) + "/inputs.safetensors --outputs " + out);
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_LE(rel_error(read(out, "last_hidden_state"),
                        read(case_dir(c) + "/outputs.safetensors", "last_hidden_state")),
              1e-4)
        << c;
  }
}

TEST(TextEncodersCli, ErrorsNameTheFile) {
  ScratchDir tmp("text_cli_errors");
  // Ids outside the vocabulary: the message names the inputs file and the position.
  Tensor ids = read(case_dir("clip_eos") + "/inputs.safetensors", "input_ids");
  ids.data<int64_t>()[3] = 5000;
  const std::string bad = tmp.str() + "/bad_ids.safetensors";
  ASSERT_TRUE(write_safetensors(bad, {{"input_ids", ids}}).ok());
  CliResult r = run_cli("eval clip --model " + case_dir("clip_eos") + "/model --inputs " + bad +
                        " --outputs " + tmp.str() + "/o.safetensors");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find(bad + ": CLIPTextModel: input_ids[0, 3] = 5000"), std::string::npos)
      << r.output;

  // A wrongly named tensor.
  const std::string wrong = tmp.str() + "/wrong.safetensors";
  ASSERT_TRUE(write_safetensors(wrong, {{"ids", ids}}).ok());
  r = run_cli("eval t5 --model " + case_dir("t5_short") + "/model --inputs " + wrong +
              " --outputs " + tmp.str() + "/o.safetensors");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find(wrong + ": unexpected tensor 'ids'"), std::string::npos) << r.output;

  // The wrong encoder for the folder: T5 on a CLIP model.
  r = run_cli("eval t5 --model " + case_dir("clip_eos") + "/model --inputs " +
              case_dir("clip_eos") + "/inputs.safetensors --outputs " + tmp.str() +
              "/o.safetensors");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("config.json"), std::string::npos) << r.output;

  r = run_cli("eval clip --model " + case_dir("clip_eos") + "/model --bogus 1");
  EXPECT_NE(r.code, 0);
}

}  // namespace
}  // namespace fluxserve
