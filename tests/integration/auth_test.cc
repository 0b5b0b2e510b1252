// Bearer-token auth on the real server: ImageService needs the user token, ModelService the admin
// token; health stays open for probes. Also drives fluxctl's --token/--token-file and exit codes.
#include "tests/integration/fixture.h"

namespace fluxserve::integration {
namespace {

constexpr const char* kUserToken = "user-secret-1234";
constexpr const char* kAdminToken = "admin-secret-5678";

class AuthTest : public ServerTest {
 protected:
  ServerOptions Options() override {
    token_dir_ = MakeTempDir("fluxserve_auth");
    // Trailing newline: token files written by hand or by secrets mounts usually have one.
    WriteFile(token_dir_ + "/user", std::string(kUserToken) + "\n");
    WriteFile(token_dir_ + "/admin", std::string(kAdminToken) + "\n");
    ServerOptions o;
    o.extra_args = {"--auth-token-file", token_dir_ + "/user", "--admin-token-file",
                    token_dir_ + "/admin"};
    return o;
  }

  grpc::Status ListModels(const std::string& token) {
    auto stub = pb::ModelService::NewStub(channel_);
    grpc::ClientContext ctx;
    SetTimeout(ctx, 10);
    AddToken(ctx, token);
    pb::ListModelsResponse resp;
    return stub->ListModels(&ctx, pb::ListModelsRequest(), &resp);
  }

  std::string Fluxctl(const std::string& args) {
    return std::string(FLUXCTL_BIN) + " --server " + server_->address() + " " + args;
  }

  std::string token_dir_;
};

TEST_F(AuthTest, ImageServiceNeedsTheUserToken) {
  GenerateOutcome none = Generate(channel_, SmallRequest(1));
  EXPECT_EQ(none.status.error_code(), grpc::StatusCode::UNAUTHENTICATED)
      << none.status.error_message();
  GenerateOutcome wrong = Generate(channel_, SmallRequest(1), {.token = "not-the-token"});
  EXPECT_EQ(wrong.status.error_code(), grpc::StatusCode::UNAUTHENTICATED)
      << wrong.status.error_message();
  EXPECT_TRUE(wrong.events.empty()) << "a rejected call must not start streaming";
  GenerateOutcome ok = Generate(channel_, SmallRequest(1), {.token = kUserToken});
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_TRUE(ok.result.has_value());

  auto m = Scrape(server_->metrics_port());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->Sum("fluxserve_request_failures_total", {{"reason", "unauthenticated"}}), 2);
}

TEST_F(AuthTest, ModelServiceNeedsTheAdminToken) {
  EXPECT_EQ(ListModels("").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(ListModels("wrong").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // The user token is not enough for model management once an admin token is configured.
  const grpc::Status user = ListModels(kUserToken);
  EXPECT_TRUE(user.error_code() == grpc::StatusCode::UNAUTHENTICATED ||
              user.error_code() == grpc::StatusCode::PERMISSION_DENIED)
      << user.error_code() << ": " << user.error_message();
  EXPECT_TRUE(ListModels(kAdminToken).ok());
  // The admin token manages models; it does not stand in for the user token on ImageService.
  GenerateOutcome g = Generate(channel_, SmallRequest(1), {.token = kAdminToken});
  EXPECT_EQ(g.status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << g.status.error_message();
}

TEST_F(AuthTest, HealthNeedsNoToken) {
  auto s = CheckHealth(channel_);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(*s, kServing);
}

TEST_F(AuthTest, FluxctlSendsTokensAndReportsTheCode) {
  CommandResult denied = RunCommand(Fluxctl("models list"));
  EXPECT_EQ(denied.exit_code, 1) << denied.output;
  EXPECT_NE(denied.output.find("UNAUTHENTICATED"), std::string::npos) << denied.output;

  CommandResult listed = RunCommand(Fluxctl("--token-file " + token_dir_ + "/admin models list"));
  EXPECT_EQ(listed.exit_code, 0) << listed.output;
  EXPECT_NE(listed.output.find("tiny-flux"), std::string::npos) << listed.output;
  EXPECT_NE(listed.output.find("READY"), std::string::npos) << listed.output;

  const std::string out_dir = server_->dir() + "/out";
  CommandResult gen = RunCommand(Fluxctl(std::string("--token ") + kUserToken +
                                         " generate --prompt fox --width 64 --height 64"
                                         " --steps 2 --seed 11 --out " + out_dir));
  EXPECT_EQ(gen.exit_code, 0) << gen.output;
  EXPECT_TRUE(IsPng(ReadFileOrEmpty(out_dir + "/11_0.png"))) << gen.output;
  EXPECT_NE(gen.output.find("seed 11"), std::string::npos) << gen.output;

  CommandResult health = RunCommand(Fluxctl("health"));
  EXPECT_EQ(health.exit_code, 0) << health.output;
  EXPECT_NE(health.output.find("SERVING"), std::string::npos) << health.output;
}

}  // namespace
}  // namespace fluxserve::integration
