// Swap under load: clients generate continuously while the default model is swapped back and
// forth between two specs (unquantized / bitsandbytes nf4) and a second model is unloaded and
// loaded again. No request may fail or be lost, every result names the pipeline that produced it,
// and only requests naming the unloaded model may get NOT_FOUND, only while it is gone. The test
// checks that requests really were in flight across every swap, so "zero failed" means something.
#include <atomic>
#include <map>
#include <mutex>
#include <thread>

#include "tests/integration/fixture.h"

namespace fluxserve::integration {
namespace {

using Clock = std::chrono::steady_clock;

struct Record {
  std::string model;  // what the request named
  Clock::time_point start, end;
  grpc::Status status;
  std::string result_model, quantization;
};

class SwapTest : public ServerTest {
 protected:
  ServerOptions Options() override {
    ServerOptions o;
    o.config_json = R"({"models": [{"name": "tiny-flux", "path": "tiny-flux"},
                                   {"name": "extra", "path": "tiny-flux"}],
                        "default_model": "tiny-flux"})";
    return o;
  }

  static pb::ModelSpec Plain() {
    pb::ModelSpec s;
    s.set_name("tiny-flux");
    s.set_path("tiny-flux");
    return s;
  }
  static pb::ModelSpec Nf4() {
    pb::ModelSpec s = Plain();
    auto* q = s.mutable_quantization();
    q->set_quant_backend("bitsandbytes_4bit");
    auto& kw = *q->mutable_quant_kwargs()->mutable_fields();
    kw["load_in_4bit"].set_bool_value(true);
    kw["bnb_4bit_quant_type"].set_string_value("nf4");
    q->add_components_to_quantize("transformer");
    return s;
  }

  std::vector<Record> records() {
    std::lock_guard<std::mutex> lock(mu_);
    return records_;
  }
  // Waits until `n` more requests for `model` have finished.
  void WaitForMore(const std::string& model, size_t n) {
    auto count = [&] {
      std::lock_guard<std::mutex> lock(mu_);
      size_t c = 0;
      for (const Record& r : records_) c += r.model == model;
      return c;
    };
    const size_t target = count() + n;
    const auto deadline = Clock::now() + std::chrono::seconds(120);
    while (count() < target && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

  std::mutex mu_;
  std::vector<Record> records_;
};

TEST_F(SwapTest, NoRequestFailsOrIsLostAcrossSwapsAndReloads) {
  auto stub = pb::ModelService::NewStub(channel_);
  const auto metrics0 = Scrape(server_->metrics_port());
  ASSERT_TRUE(metrics0.ok()) << metrics0.status();

  std::atomic<bool> stop{false};
  std::vector<std::thread> clients;
  // Three clients on the swapped name (one through the empty default), one on "extra".
  for (const std::string model : {"tiny-flux", "tiny-flux", "", "extra"}) {
    clients.emplace_back([&, model] {
      auto ch = server_->channel();  // each client its own connection
      for (uint64_t seed = 0; !stop.load(); ++seed) {
        pb::GenerateRequest req = SmallRequest(seed, 2, 64);
        req.set_model(model);
        Record rec{.model = model.empty() ? "tiny-flux" : model, .start = Clock::now()};
        GenerateOutcome g = Generate(ch, req, {.timeout_s = 120});
        rec.end = Clock::now();
        rec.status = g.status;
        if (g.result) {
          rec.result_model = g.result->model();
          rec.quantization = g.result->quantization();
        }
        std::lock_guard<std::mutex> lock(mu_);
        records_.push_back(rec);
      }
    });
  }
  WaitForMore("tiny-flux", 4);
  WaitForMore("extra", 2);

  struct Swap {
    Clock::time_point start, end;
    std::string quantization;
  };
  std::vector<Swap> swaps;
  std::string plain_q, nf4_q;
  for (int k = 0; k < 4; ++k) {
    const bool to_nf4 = k % 2 == 0;
    grpc::ClientContext ctx;
    SetTimeout(ctx, 120);
    pb::SwapModelRequest req;
    req.set_name("tiny-flux");
    *req.mutable_spec() = to_nf4 ? Nf4() : Plain();
    pb::SwapModelResponse resp;
    Swap sw{.start = Clock::now()};
    grpc::Status s = stub->SwapModel(&ctx, req, &resp);
    sw.end = Clock::now();
    ASSERT_TRUE(s.ok()) << "swap " << k << ": " << s.error_message();
    EXPECT_EQ(resp.model().name(), "tiny-flux");
    EXPECT_EQ(resp.model().state(), pb::MODEL_STATE_READY);
    sw.quantization = resp.model().quantization();
    (to_nf4 ? nf4_q : plain_q) = sw.quantization;
    swaps.push_back(sw);
    WaitForMore("tiny-flux", 4);
  }
  ASSERT_NE(plain_q, nf4_q) << "the two specs must be told apart by their quantization";

  // Unload and reload the second model while its client keeps asking for it.
  Clock::time_point unload_start = Clock::now(), load_end;
  {
    grpc::ClientContext ctx;
    SetTimeout(ctx, 120);
    pb::UnloadModelRequest req;
    req.set_name("extra");
    pb::UnloadModelResponse resp;
    grpc::Status s = stub->UnloadModel(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  WaitForMore("extra", 2);  // these see NOT_FOUND
  {
    grpc::ClientContext ctx;
    SetTimeout(ctx, 120);
    pb::LoadModelRequest req;
    req.mutable_spec()->set_name("extra");
    req.mutable_spec()->set_path("tiny-flux");
    pb::ModelInfo info;
    grpc::Status s = stub->LoadModel(&ctx, req, &info);
    load_end = Clock::now();
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  WaitForMore("extra", 2);
  stop = true;
  for (std::thread& t : clients) t.join();

  const std::vector<Record> recs = records();
  size_t ok = 0, not_found = 0, extra_ok_after_reload = 0;
  std::set<std::string> quantizations_seen;
  for (const Record& r : recs) {
    if (r.status.ok()) {
      ++ok;
      EXPECT_EQ(r.result_model, r.model);
      if (r.model == "tiny-flux") {
        EXPECT_TRUE(r.quantization == plain_q || r.quantization == nf4_q) << r.quantization;
        quantizations_seen.insert(r.quantization);
        // A request that started after a swap finished, and ended before the next one began,
        // ran on that swap's pipeline.
        for (size_t k = 0; k < swaps.size(); ++k) {
          const bool after = r.start > swaps[k].end;
          const bool before_next = k + 1 == swaps.size() || r.end < swaps[k + 1].start;
          if (after && before_next) {
            EXPECT_EQ(r.quantization, swaps[k].quantization) << "request after swap " << k;
          }
        }
      } else if (r.start > load_end) {
        ++extra_ok_after_reload;
      }
      continue;
    }
    // The only failure allowed: NOT_FOUND for the unloaded name, while it was unloaded.
    EXPECT_EQ(r.model, "extra") << r.status.error_code() << ": " << r.status.error_message();
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::NOT_FOUND) << r.status.error_message();
    EXPECT_NE(r.status.error_message().find("extra"), std::string::npos);
    EXPECT_GT(r.end, unload_start);
    EXPECT_LT(r.start, load_end);
    ++not_found;
  }
  EXPECT_EQ(quantizations_seen.size(), 2u);
  EXPECT_GE(not_found, 1u);
  EXPECT_GE(extra_ok_after_reload, 1u);
  // Every swap happened with requests in flight on the swapped name.
  for (size_t k = 0; k < swaps.size(); ++k) {
    int overlapping = 0;
    for (const Record& r : recs) {
      overlapping += r.model == "tiny-flux" && r.start < swaps[k].end && r.end > swaps[k].start;
    }
    EXPECT_GE(overlapping, 1) << "swap " << k << " overlapped no request";
  }

  // Nothing lost: the server counted exactly the successes the clients saw, and no errors.
  const int port = server_->metrics_port();
  const double ok0 = metrics0->Sum("fluxserve_requests_total", {{"outcome", "ok"}});
  EXPECT_EQ(WaitForMetric(port, "fluxserve_requests_total", {{"outcome", "ok"}}, ok0 + ok),
            ok0 + ok);
  auto m = Scrape(port);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->Sum("fluxserve_requests_total", {{"outcome", "error"}}), 0);
  EXPECT_EQ(m->Sum("fluxserve_request_failures_total", {{"reason", "unknown_model"}}), not_found);
  EXPECT_EQ(m->Sum("fluxserve_model_swaps_total", {{"model", "tiny-flux"}, {"outcome", "ok"}}),
            4);
  EXPECT_EQ(m->Sum("fluxserve_model_state", {{"model", "tiny-flux"}, {"state", "ready"}}), 1);
  EXPECT_EQ(m->Sum("fluxserve_model_state", {{"model", "extra"}, {"state", "ready"}}), 1);
  std::cerr << recs.size() << " requests: " << ok << " ok, " << not_found << " NOT_FOUND\n";
}

}  // namespace
// GetModel's memory is the engine's own accounting (FluxPipeline::memory()), per component, and
// /metrics shows the same bytes; swapping to nf4 shrinks the transformer and marks its layers.
TEST_F(SwapTest, GetModelReportsTheEnginesMemoryPerComponent) {
  auto stub = pb::ModelService::NewStub(channel_);
  auto get = [&]() -> pb::ModelInfo {
    grpc::ClientContext ctx;
    SetTimeout(ctx, 30);
    pb::GetModelRequest req;
    req.set_name("tiny-flux");
    pb::ModelInfo info;
    grpc::Status s = stub->GetModel(&ctx, req, &info);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return info;
  };
  auto by_component = [](const pb::ModelInfo& info) {
    std::map<std::string, pb::ComponentMemory> out;
    int64_t sum = 0;
    for (const pb::ComponentMemory& c : info.memory()) {
      EXPECT_EQ(c.device(), "cpu") << c.component();
      EXPECT_GT(c.bytes(), 0) << c.component();
      EXPECT_FALSE(c.format().empty()) << c.component();
      sum += c.bytes();
      out[c.component()] = c;
    }
    EXPECT_EQ(sum, info.total_bytes());
    return out;
  };

  const pb::ModelInfo plain = get();
  auto p = by_component(plain);
  ASSERT_EQ(p.size(), 4u);
  for (const char* name : {"transformer", "text_encoder", "text_encoder_2", "vae"}) {
    ASSERT_TRUE(p.count(name)) << name;
  }
  EXPECT_GT(p["transformer"].total_layers(), 0);
  EXPECT_EQ(p["transformer"].quantized_layers(), 0);
  auto scraped = Scrape(server_->metrics_port());
  ASSERT_TRUE(scraped.ok()) << scraped.status();
  for (const auto& [name, c] : p) {
    EXPECT_EQ(scraped->Sum("fluxserve_model_memory_bytes",
                           {{"model", "tiny-flux"}, {"component", name}, {"device", "cpu"}}),
              static_cast<double>(c.bytes()))
        << name;
  }

  {
    grpc::ClientContext ctx;
    SetTimeout(ctx, 120);
    pb::SwapModelRequest req;
    req.set_name("tiny-flux");
    *req.mutable_spec() = Nf4();
    pb::SwapModelResponse resp;
    grpc::Status s = stub->SwapModel(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  auto q = by_component(get());
  ASSERT_EQ(q.size(), 4u);
  EXPECT_EQ(q["transformer"].quantized_layers(), p["transformer"].total_layers());
  EXPECT_NE(q["transformer"].format().find("nf4"), std::string::npos) << q["transformer"].format();
  EXPECT_LT(q["transformer"].bytes(), p["transformer"].bytes());
  for (const char* name : {"text_encoder", "text_encoder_2", "vae"}) {
    EXPECT_EQ(q[name].bytes(), p[name].bytes()) << name;
    EXPECT_EQ(q[name].quantized_layers(), 0) << name;
  }
}

}  // namespace fluxserve::integration
