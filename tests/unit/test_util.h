// Helpers shared by the unit tests: scratch directories and error-message assertions.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <random>
#include <vector>
#include <string>

#include "absl/status/status.h"
#include "engine/core/tensor.h"

namespace fluxserve::testing {

// A fresh directory under the test temp dir, named after `stem`.
inline std::string make_temp_dir(const std::string& stem) {
  std::string tmpl = ::testing::TempDir() + "/" + stem + "_XXXXXX";
  char* p = mkdtemp(tmpl.data());
  EXPECT_NE(p, nullptr);
  return tmpl;
}

// The status is an error of `code` whose message holds every one of `parts`.
inline void expect_error(const absl::Status& s, std::initializer_list<std::string> parts,
                         absl::StatusCode code = absl::StatusCode::kInvalidArgument) {
  ASSERT_FALSE(s.ok()) << "expected an error";
  EXPECT_EQ(s.code(), code) << s;
  const std::string msg(s.message());
  for (const std::string& part : parts) {
    EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' not in: " << msg;
  }
}

// f32 tensor of N(mean, scale^2) values from a fixed seed.
inline Tensor randn(Shape shape, uint32_t seed, float scale = 1.0f, float mean = 0.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(mean, scale);
  Tensor t = Tensor::empty(std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = nd(rng);
  return t;
}

// ||a - ref|| / ||ref|| with a double-precision reference.
inline double rel_l2(const Tensor& a, const std::vector<double>& ref) {
  EXPECT_EQ(a.numel(), static_cast<int64_t>(ref.size()));
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = a.data<float>()[i] - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

}  // namespace fluxserve::testing
