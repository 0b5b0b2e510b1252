// FlowMatchEulerDiscreteScheduler tables and steps against diffusers (FluxPipeline's
// set_timesteps call) over every config case × (steps, image_seq_len) pair in cases.json.
#include <gtest/gtest.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/io/checkpoint.h"
#include "engine/io/safetensors.h"
#include "engine/pipeline/scheduler.h"
#include "tests/golden/golden_util.h"

namespace fluxserve {
namespace {

using testing::fixture;

void expect_table(const std::vector<float>& ours, const Tensor& ref, const std::string& what) {
  ASSERT_EQ(static_cast<int64_t>(ours.size()), ref.numel()) << what;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    const float r = ref.data<float>()[i];
    if (std::isnan(r)) {
      EXPECT_TRUE(std::isnan(ours[i])) << what << "[" << i << "]";  // diffusers' own 0/0
      continue;
    }
    EXPECT_NEAR(ours[i], r, 1e-6 * std::max(1.0f, std::fabs(r))) << what << "[" << i << "]";
  }
}

TEST(SchedulerGolden, TablesAndStepsMatchDiffusers) {
  auto cases = read_json_file(fixture("scheduler/cases.json"));
  ASSERT_TRUE(cases.ok()) << cases.status();
  int tables = 0, steps = 0;
  for (const auto& name : (*cases)["config_cases"]) {
    const std::string dir = fixture("scheduler/" + name.get<std::string>());
    auto sched = FlowMatchEulerDiscreteScheduler::load(dir);
    ASSERT_TRUE(sched.ok()) << sched.status();
    auto file = SafetensorsFile::open(dir + "/tables.safetensors");
    ASSERT_TRUE(file.ok()) << file.status();
    for (const auto& nl : (*cases)["steps_seq_len"]) {
      const int64_t n = nl[0].get<int64_t>(), l = nl[1].get<int64_t>();
      ASSERT_TRUE(sched->set_timesteps(n, l).ok());
      const std::string suffix = absl::StrCat("_N", n, "_L", l);
      expect_table(sched->sigmas(), *(*file)->get("sigmas" + suffix), dir + " sigmas" + suffix);
      expect_table(sched->timesteps(), *(*file)->get("timesteps" + suffix),
                   dir + " timesteps" + suffix);
      ++tables;
    }
    // Euler steps, each from the same sample, at step index k of the 4-step, 1024-token schedule.
    ASSERT_TRUE(sched->set_timesteps(4, 1024).ok());
    const Tensor sample = *(*file)->get("step_sample");
    const Tensor v = *(*file)->get("step_model_output");
    for (int k = 0; k < 4; ++k) {
      Tensor x = sample.clone();
      ASSERT_TRUE(sched->step(k, v, x).ok());
      const Tensor ref = *(*file)->get(absl::StrCat("step_prev_N4_L1024_i", k));
      for (int64_t i = 0; i < ref.numel(); ++i) {
        ASSERT_EQ(x.data<float>()[i], ref.data<float>()[i]) << dir << " step " << k << " @" << i;
      }
      ++steps;
    }
  }
  EXPECT_EQ(tables, 30);
  EXPECT_EQ(steps, 20);
}

TEST(SchedulerGolden, MuFollowsFluxPipeline) {
  // calculate_shift(4096) = max_shift and (256) = base_shift for the FLUX.1-dev config.
  EXPECT_DOUBLE_EQ(calculate_shift(4096, 256, 4096, 0.5, 1.15), 1.15);
  EXPECT_NEAR(calculate_shift(256, 256, 4096, 0.5, 1.15), 0.5, 1e-15);
}

TEST(SchedulerGolden, RejectsBadRequestsAndConfigs) {
  FlowMatchEulerDiscreteScheduler s{FlowMatchEulerConfig{}};
  EXPECT_FALSE(s.set_timesteps(0, 1024).ok());
  EXPECT_FALSE(s.set_timesteps(4, 0).ok());
  ASSERT_TRUE(s.set_timesteps(4, 1024).ok());
  Tensor x = Tensor::zeros({2, 3});
  EXPECT_FALSE(s.step(4, Tensor::zeros({2, 3}), x).ok());
  EXPECT_FALSE(s.step(0, Tensor::zeros({3, 2}), x).ok());

  auto karras = FlowMatchEulerConfig::from_json({{"use_karras_sigmas", true}}, "cfg.json");
  ASSERT_FALSE(karras.ok());
  EXPECT_NE(karras.status().message().find("use_karras_sigmas"), std::string::npos);
  auto bad_type = FlowMatchEulerConfig::from_json({{"shift", "three"}}, "cfg.json");
  ASSERT_FALSE(bad_type.ok());
  EXPECT_NE(bad_type.status().message().find("shift"), std::string::npos);
  auto tst = FlowMatchEulerConfig::from_json({{"time_shift_type", "cubic"}}, "cfg.json");
  EXPECT_FALSE(tst.ok());
  // Unknown fields are tolerated, as diffusers does.
  EXPECT_TRUE(FlowMatchEulerConfig::from_json({{"some_future_field", 1}}, "cfg.json").ok());
}

}  // namespace
}  // namespace fluxserve
