// The gtest fixture of the integration suite: a fresh `fluxserve serve` per test (the tiny model
// loads in well under a second), SERVING before the test body runs, and stopped with SIGTERM
// afterwards, where it must exit 0 — so every test also checks a clean drain.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>

#include <memory>

#include "tests/integration/client_util.h"
#include "tests/integration/server_process.h"

namespace fluxserve::integration {

class ServerTest : public ::testing::Test {
 protected:
  virtual ServerOptions Options() { return {}; }

  void SetUp() override {
    auto s = ServerProcess::Start(Options());
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    channel_ = server_->channel();
    ASSERT_TRUE(WaitForHealth(channel_, HealthStatus::HealthCheckResponse_ServingStatus_SERVING))
        << "the server never became SERVING:\n"
        << server_->log();
  }

  void TearDown() override {
    if (server_ == nullptr || stopped_) return;
    auto code = server_->Stop(SIGTERM, 120);
    EXPECT_TRUE(code.ok()) << code.status() << "\n" << server_->log();
    if (code.ok()) {
      EXPECT_EQ(*code, 0) << "exit status after SIGTERM\n" << server_->log();
    }
    if (HasFailure()) std::cerr << "---- server log ----\n" << server_->log() << "\n";
  }

  // The test stopped the server itself (TearDown has nothing left to check).
  void MarkStopped() { stopped_ = true; }

  std::unique_ptr<ServerProcess> server_;
  std::shared_ptr<grpc::Channel> channel_;
  bool stopped_ = false;
};

inline constexpr auto kServing = HealthStatus::HealthCheckResponse_ServingStatus_SERVING;
inline constexpr auto kNotServing = HealthStatus::HealthCheckResponse_ServingStatus_NOT_SERVING;

// PNG files start with these 8 bytes.
inline bool IsPng(const std::string& data) {
  return data.size() > 8 && data.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0;
}

}  // namespace fluxserve::integration
