// PipelineQuantConfig against diffusers' PipelineQuantizationConfig: for every case written by
// tools/golden/generate_quant_config.py, our accept/reject decision must match diffusers' (or the
// case's documented expect_ours), and every resolved component config must equal diffusers'
// to_dict() field by field.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "engine/io/json_util.h"
#include "engine/quant/quant_config.h"
#include "tests/golden/golden_util.h"

namespace fluxserve {
namespace {

nlohmann::json load_cases() {
  std::ifstream f(testing::fixture("quant_config/cases.json"));
  std::stringstream ss;
  ss << f.rdbuf();
  auto j = parse_json(ss.str(), "quant_config/cases.json");
  EXPECT_TRUE(j.ok()) << j.status();
  return j.ok() ? *j : nlohmann::json::object();
}

// Keys transformers' TorchAoConfig adds that have no meaning for us.
bool ignored_key(const std::string& k) {
  return k == "include_input_output_embeddings" || k == "untie_embedding_weights";
}

void expect_same(const std::string& ctx, const nlohmann::json& ours, const nlohmann::json& ref) {
  ASSERT_TRUE(ours.is_object()) << ctx;
  for (const auto& [k, v] : ref.items()) {
    if (ignored_key(k)) continue;
    ASSERT_TRUE(ours.contains(k)) << ctx << ": we lack diffusers' field '" << k << "'";
    if (v.is_number() && ours[k].is_number()) {
      EXPECT_DOUBLE_EQ(ours[k].get<double>(), v.get<double>()) << ctx << "." << k;
    } else {
      EXPECT_EQ(ours[k], v) << ctx << "." << k;
    }
  }
  for (const auto& [k, v] : ours.items()) {
    if (k == "quant_type" || k == "quant_type_kwargs") continue;  // torchao string form: ours only
    EXPECT_TRUE(ref.contains(k)) << ctx << ": field '" << k << "' is not in diffusers' to_dict()";
  }
}

TEST(QuantConfigGolden, MatchesDiffusers) {
  const nlohmann::json doc = load_cases();
  ASSERT_TRUE(doc.contains("cases"));
  const auto& cases = doc["cases"];
  ASSERT_GE(cases.size(), 60u);
  int accepted = 0, rejected = 0, deviations = 0;
  for (const auto& c : cases) {
    const std::string name = c["name"].get<std::string>();
    SCOPED_TRACE(name);
    const auto& ref = c["diffusers"];
    const bool diffusers_accepts = !ref.contains("error");
    bool expect_accept = diffusers_accepts;
    if (c.contains("expect_ours")) {
      expect_accept = c["expect_ours"] == "accept";
      ++deviations;
    }
    auto q = PipelineQuantConfig::from_json(c["config"], "quantization");
    if (!expect_accept) {
      EXPECT_FALSE(q.ok()) << name << ": diffusers says "
                           << (diffusers_accepts ? std::string("ok") : ref["error"].dump());
      if (!q.ok()) {
        EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
        EXPECT_NE(q.status().message().find("quantization"), std::string::npos) << q.status();
      }
      ++rejected;
      continue;
    }
    ASSERT_TRUE(q.ok()) << name << ": " << q.status();
    ++accepted;
    if (!diffusers_accepts) continue;  // accepted deliberately; nothing to compare with
    for (const auto& [component, want] : ref["resolved"].items()) {
      auto got = q->resolve(component);
      if (want.is_null()) {
        EXPECT_FALSE(got.has_value()) << component << " should not be quantized";
        continue;
      }
      ASSERT_TRUE(got.has_value()) << component << " should be quantized";
      expect_same(name + "/" + component, got->to_json(), want);
    }
    if (!ref["warning"].is_null()) {
      EXPECT_FALSE(q->warnings().empty()) << "diffusers warns: " << ref["warning"];
    }
    // to_json() round-trips to the same resolution.
    auto again = PipelineQuantConfig::from_json(q->to_json(), "quantization");
    ASSERT_TRUE(again.ok()) << again.status() << "\n" << q->to_json().dump();
    for (const auto& [component, want] : ref["resolved"].items()) {
      auto a = q->resolve(component), b = again->resolve(component);
      ASSERT_EQ(a.has_value(), b.has_value()) << component;
      if (a) {
        EXPECT_EQ(a->to_json(), b->to_json()) << component;
      }
    }
  }
  std::cout << cases.size() << " cases: " << accepted << " accepted, " << rejected
            << " rejected, " << deviations << " documented deviations\n";
}

}  // namespace
}  // namespace fluxserve
