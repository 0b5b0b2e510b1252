// The bad-input table: each malformed request gets the documented status code and a message that
// names the field or resource at fault, and the server stays healthy after every one.
#include <filesystem>
#include <set>

#include "tests/integration/fixture.h"

namespace fluxserve::integration {
namespace {

namespace fs = std::filesystem;
using grpc::StatusCode;

struct Expect {
  std::set<StatusCode> codes;  // usually one; two where the contract leaves the choice open
  std::vector<std::string> in_message;
};

class BadInputTest : public ServerTest {
 protected:
  void Check(const std::string& what, const grpc::Status& s, const Expect& e) {
    SCOPED_TRACE(what);
    EXPECT_TRUE(e.codes.contains(s.error_code()))
        << "code " << s.error_code() << ": " << s.error_message();
    for (const std::string& part : e.in_message) {
      EXPECT_NE(s.error_message().find(part), std::string::npos)
          << "'" << part << "' not in: " << s.error_message();
    }
    auto h = CheckHealth(channel_);
    ASSERT_TRUE(h.ok()) << "server unhealthy after " << what << ": " << h.status();
    EXPECT_EQ(*h, kServing) << "after " << what;
  }

  grpc::Status Load(const pb::ModelSpec& spec) {
    auto stub = pb::ModelService::NewStub(channel_);
    grpc::ClientContext ctx;
    SetTimeout(ctx, 60);
    pb::LoadModelRequest req;
    *req.mutable_spec() = spec;
    pb::ModelInfo info;
    return stub->LoadModel(&ctx, req, &info);
  }

  static pb::ModelSpec Spec(const std::string& name, const std::string& path) {
    pb::ModelSpec s;
    s.set_name(name);
    s.set_path(path);
    return s;
  }
};

TEST_F(BadInputTest, GenerateRequests) {
  struct Case {
    std::string what;
    std::function<void(pb::GenerateRequest&)> edit;
    Expect expect;
  };
  const std::vector<Case> cases = {
      {"negative width", [](auto& r) { r.set_width(-64); },
       {{StatusCode::INVALID_ARGUMENT}, {"width"}}},
      {"huge height", [](auto& r) { r.set_height(1 << 20); },
       {{StatusCode::INVALID_ARGUMENT}, {"height"}}},
      {"zero steps", [](auto& r) { r.set_num_inference_steps(0); },
       {{StatusCode::INVALID_ARGUMENT}, {"num_inference_steps"}}},
      {"too many steps", [](auto& r) { r.set_num_inference_steps(100000); },
       {{StatusCode::INVALID_ARGUMENT}, {"num_inference_steps"}}},
      {"negative guidance", [](auto& r) { r.set_guidance_scale(-1); },
       {{StatusCode::INVALID_ARGUMENT}, {"guidance_scale"}}},
      {"too many images", [](auto& r) { r.set_num_images(1000); },
       {{StatusCode::INVALID_ARGUMENT}, {"num_images"}}},
      {"unknown model", [](auto& r) { r.set_model("no-such-model"); },
       {{StatusCode::NOT_FOUND}, {"no-such-model"}}},
      {"oversized prompt", [](auto& r) { r.set_prompt(std::string(16385, 'a')); },
       {{StatusCode::INVALID_ARGUMENT}, {"prompt", "16384"}}},
      {"oversized negative prompt", [](auto& r) {
         r.set_negative_prompt(std::string(20000, 'b'));
         r.set_true_cfg_scale(2);
       },
       {{StatusCode::INVALID_ARGUMENT}, {"negative_prompt"}}},
  };
  for (const Case& c : cases) {
    pb::GenerateRequest req = SmallRequest(1);
    c.edit(req);
    GenerateOutcome g = Generate(channel_, req, {.timeout_s = 30});
    EXPECT_FALSE(g.result.has_value()) << c.what;
    Check(c.what, g.status, c.expect);
  }
  // And the server still generates.
  GenerateOutcome ok = Generate(channel_, SmallRequest(1));
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
}

TEST_F(BadInputTest, LoadModelSpecs) {
  const std::string root = server_->model_root();
  // A copy of the model outside the root, reached by a symlink inside it.
  const std::string outside = server_->dir() + "/outside";
  fs::create_directories(outside);
  fs::copy(root + "/tiny-flux", outside + "/tiny-flux", fs::copy_options::recursive);
  fs::create_directory_symlink(outside + "/tiny-flux", root + "/escape");
  // A model whose model_index.json is not JSON.
  fs::copy(root + "/tiny-flux", root + "/broken", fs::copy_options::recursive);
  WriteFile(root + "/broken/model_index.json", "{\"_class_name\": \"FluxPipeline\",");

  pb::ModelSpec unknown_kwarg = Spec("quant-typo", "tiny-flux");
  unknown_kwarg.mutable_quantization()->set_quant_backend("bitsandbytes_4bit");
  auto& kw = *unknown_kwarg.mutable_quantization()->mutable_quant_kwargs()->mutable_fields();
  kw["load_in_4bit"].set_bool_value(true);
  kw["bnb_4bit_quant_typo"].set_string_value("nf4");
  pb::ModelSpec unknown_backend = Spec("quant-backend", "tiny-flux");
  unknown_backend.mutable_quantization()->set_quant_backend("bitsandbytes_3bit");

  struct Case {
    std::string what;
    pb::ModelSpec spec;
    Expect expect;
  };
  const std::set<StatusCode> outside_codes = {StatusCode::INVALID_ARGUMENT,
                                              StatusCode::PERMISSION_DENIED};
  const std::vector<Case> cases = {
      {"dot-dot path", Spec("dotdot", "../outside/tiny-flux"), {outside_codes, {"path"}}},
      {"absolute path outside the root", Spec("abs", outside + "/tiny-flux"),
       {outside_codes, {"path"}}},
      {"symlink escape", Spec("symlink", "escape"), {outside_codes, {"path"}}},
      {"missing folder", Spec("missing", "no-such-dir"), {{StatusCode::NOT_FOUND}, {"no-such-dir"}}},
      {"invalid model_index.json", Spec("broken", "broken"),
       {{StatusCode::INVALID_ARGUMENT}, {"model_index.json"}}},
      {"unknown quantization kwarg", unknown_kwarg,
       {{StatusCode::INVALID_ARGUMENT}, {"bnb_4bit_quant_typo"}}},
      {"unknown quant_backend", unknown_backend,
       {{StatusCode::INVALID_ARGUMENT}, {"bitsandbytes_3bit"}}},
      {"bad name", Spec("bad name!", "tiny-flux"), {{StatusCode::INVALID_ARGUMENT}, {"name"}}},
      {"name taken", Spec("tiny-flux", "tiny-flux"), {{StatusCode::ALREADY_EXISTS}, {"tiny-flux"}}},
  };
  for (const Case& c : cases) Check(c.what, Load(c.spec), c.expect);

  // None of them became servable: tiny-flux is the one READY model; a refused load may stay
  // listed only as FAILED with its reason (the registry's documented state).
  auto stub = pb::ModelService::NewStub(channel_);
  grpc::ClientContext ctx;
  SetTimeout(ctx, 10);
  pb::ListModelsResponse list;
  ASSERT_TRUE(stub->ListModels(&ctx, pb::ListModelsRequest(), &list).ok());
  int ready = 0;
  for (const pb::ModelInfo& m : list.models()) {
    if (m.name() == "tiny-flux") {
      EXPECT_EQ(m.state(), pb::MODEL_STATE_READY);
      ++ready;
      continue;
    }
    EXPECT_EQ(m.state(), pb::MODEL_STATE_FAILED) << m.name();
    EXPECT_FALSE(m.reason().empty()) << m.name();
  }
  EXPECT_EQ(ready, 1);
}

TEST_F(BadInputTest, FluxctlRejectsAnInvalidSpecFileBeforeSendingIt) {
  const std::string spec = server_->dir() + "/bad_spec.json";
  WriteFile(spec, R"({"name": "x", "path": "tiny-flux", "quantisation": {}})");
  CommandResult r = RunCommand(std::string(FLUXCTL_BIN) + " --server " + server_->address() +
                               " models load --spec " + spec);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("quantisation"), std::string::npos) << r.output;
  WriteFile(spec, "{not json");
  r = RunCommand(std::string(FLUXCTL_BIN) + " --server " + server_->address() +
                 " models load --spec " + spec);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("bad_spec.json"), std::string::npos) << r.output;
}

TEST_F(BadInputTest, UnknownModelForGetAndUnload) {
  auto stub = pb::ModelService::NewStub(channel_);
  {
    grpc::ClientContext ctx;
    SetTimeout(ctx, 10);
    pb::GetModelRequest req;
    req.set_name("ghost");
    pb::ModelInfo info;
    Check("get unknown", stub->GetModel(&ctx, req, &info), {{StatusCode::NOT_FOUND}, {"ghost"}});
  }
  {
    grpc::ClientContext ctx;
    SetTimeout(ctx, 10);
    pb::UnloadModelRequest req;
    req.set_name("ghost");
    pb::UnloadModelResponse resp;
    Check("unload unknown", stub->UnloadModel(&ctx, req, &resp),
          {{StatusCode::NOT_FOUND}, {"ghost"}});
  }
}

}  // namespace
}  // namespace fluxserve::integration
