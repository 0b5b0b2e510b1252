// Helpers shared by the unit tests: scratch directories and error-message assertions.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <initializer_list>
#include <string>

#include "absl/status/status.h"

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

}  // namespace fluxserve::testing
