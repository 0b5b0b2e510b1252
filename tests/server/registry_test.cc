// server/registry with the tiny model: load, leases that keep their generation through a swap,
// swap beside and swap by drain-and-reload, failed swaps that leave the old model serving,
// unload waiting for in-flight leases, and memory staying flat over repeated swaps.
#include "server/registry.h"

#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <thread>

namespace fluxserve::server {
namespace {

const std::string kRoot = std::string(FLUXSERVE_SOURCE_DIR) + "/models";

v1::ModelSpec tiny(const std::string& name) {
  v1::ModelSpec s;
  s.set_name(name);
  s.set_path("tiny-flux");
  return s;
}

v1::ModelSpec tiny_nf4(const std::string& name) {
  v1::ModelSpec s = tiny(name);
  v1::Quantization* q = s.mutable_quantization();
  q->set_quant_backend("bitsandbytes_4bit");
  (*q->mutable_quant_kwargs()->mutable_fields())["load_in_4bit"].set_bool_value(true);
  (*q->mutable_quant_kwargs()->mutable_fields())["bnb_4bit_quant_type"].set_string_value("nf4");
  q->add_components_to_quantize("transformer");
  return s;
}

absl::Status never_stop() { return absl::OkStatus(); }

absl::Status generate_on(const ModelLease& lease) {
  GenerateRequest r;
  r.prompt = "a fox";
  r.width = r.height = 32;
  r.num_inference_steps = 2;
  r.max_sequence_length = 16;
  return lease.model().pipeline->generate(r).status();
}

ModelRegistry::Options options(int64_t mem_available = -1) {
  ModelRegistry::Options o;
  o.model_root = kRoot;
  o.mem_available = [mem_available] { return mem_available; };
  return o;
}

TEST(ModelRegistry, LoadListGetAndAcquire) {
  int changes = 0;
  ModelRegistry::Options o = options();
  o.on_change = [&] { ++changes; };
  ModelRegistry reg(o);
  absl::StatusOr<v1::ModelInfo> info = reg.load(tiny("tiny"), false);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->state(), v1::MODEL_STATE_READY);
  EXPECT_TRUE(info->is_default());  // the first model becomes the default
  EXPECT_GT(info->total_bytes(), 0);
  EXPECT_EQ(info->memory_size(), 4);
  EXPECT_EQ(info->quantization(), "none");
  EXPECT_GE(changes, 2);  // LOADING, READY
  EXPECT_TRUE(reg.default_ready());

  EXPECT_EQ(reg.load(tiny("tiny"), false).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(reg.list().size(), 1u);
  EXPECT_EQ(reg.get("nope").status().code(), absl::StatusCode::kNotFound);

  absl::StatusOr<std::shared_ptr<ModelLease>> lease = reg.acquire("", never_stop);
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ((*lease)->model().name, "tiny");
  EXPECT_EQ(reg.get("tiny")->active_requests(), 1);
  EXPECT_TRUE(generate_on(**lease).ok());
  lease->reset();
  EXPECT_EQ(reg.get("tiny")->active_requests(), 0);
  absl::StatusOr<std::shared_ptr<ModelLease>> missing = reg.acquire("other", never_stop);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("tiny"), std::string::npos) << missing.status();
}

TEST(ModelRegistry, BadSpecsAreRefusedBeforeLoading) {
  ModelRegistry reg(options());
  v1::ModelSpec escape = tiny("x");
  escape.set_path("../server");
  EXPECT_EQ(reg.load(escape, false).status().code(), absl::StatusCode::kPermissionDenied);
  v1::ModelSpec gpu = tiny("x");
  gpu.mutable_placement()->set_device_map("cuda");
  EXPECT_EQ(reg.load(gpu, false).status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(reg.load(tiny("bad name"), false).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(reg.list().empty());
  // Not enough memory by the estimate: refused with the numbers.
  ModelRegistry small(options(/*mem_available=*/1000));
  absl::StatusOr<v1::ModelInfo> r = small.load(tiny("t"), false);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(r.status().message().find("available"), std::string::npos) << r.status();
}

TEST(ModelRegistry, FailedLoadIsReportedAndCanBeRetried) {
  ModelRegistry reg(options());
  v1::ModelSpec broken = tiny("t");
  broken.set_path("tiny-flux/transformer");  // a folder, not a pipeline
  absl::StatusOr<v1::ModelInfo> r = reg.load(broken, false);
  ASSERT_FALSE(r.ok());
  absl::StatusOr<v1::ModelInfo> info = reg.get("t");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state(), v1::MODEL_STATE_FAILED);
  EXPECT_FALSE(info->reason().empty());
  EXPECT_EQ(reg.acquire("t", never_stop).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(reg.default_ready());
  ASSERT_TRUE(reg.load(tiny("t"), false).ok());  // a FAILED name can be loaded again
  EXPECT_TRUE(reg.default_ready());
}

TEST(ModelRegistry, SwapBesideKeepsInFlightRequestsOnTheirModel) {
  ModelRegistry reg(options());
  ASSERT_TRUE(reg.load(tiny("m"), true).ok());
  std::shared_ptr<ModelLease> old = *reg.acquire("m", never_stop);
  const FluxPipeline* old_pipe = old->model().pipeline.get();

  std::future<absl::StatusOr<SwapResult>> swap =
      std::async(std::launch::async, [&] { return reg.swap("m", tiny_nf4("")); });
  // The name flips as soon as the new model is loaded; the swap then waits for `old`.
  for (int i = 0; i < 500 && reg.get("m")->quantization() == "none"; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_NE(reg.get("m")->quantization(), "none");
  std::shared_ptr<ModelLease> fresh = *reg.acquire("m", never_stop);
  EXPECT_NE(fresh->model().pipeline.get(), old_pipe);
  EXPECT_EQ(swap.wait_for(std::chrono::milliseconds(50)), std::future_status::timeout);
  EXPECT_TRUE(generate_on(*old).ok());  // the in-flight request finishes on the old model
  old.reset();
  absl::StatusOr<SwapResult> r = swap.get();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->loaded_beside);
  EXPECT_GT(r->old_model_freed_bytes, 0);
  EXPECT_EQ(r->model.state(), v1::MODEL_STATE_READY);
  EXPECT_NE(r->model.quantization().find("bitsandbytes"), std::string::npos) << r->model.quantization();
  EXPECT_NE(r->message.find("beside"), std::string::npos) << r->message;
  EXPECT_TRUE(generate_on(*fresh).ok());
}

TEST(ModelRegistry, SwapDrainsAndReloadsWhenBothWouldNotFit) {
  // MemAvailable below the estimate: no room beside, so drain and reload.
  auto avail = std::make_shared<std::atomic<int64_t>>(-1);
  ModelRegistry::Options o = options();
  o.mem_available = [avail] { return avail->load(); };
  ModelRegistry reg(o);
  ASSERT_TRUE(reg.load(tiny("m"), true).ok());
  avail->store(1000);
  absl::StatusOr<SwapResult> r = reg.swap("m", tiny_nf4("m"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->loaded_beside);
  EXPECT_NE(r->message.find("drained and reloaded"), std::string::npos) << r->message;
  EXPECT_EQ(reg.get("m")->state(), v1::MODEL_STATE_READY);
  EXPECT_TRUE(generate_on(**reg.acquire("m", never_stop)).ok());
}

TEST(ModelRegistry, RequestsWaitWhileTheNameReloads) {
  auto avail = std::make_shared<std::atomic<int64_t>>(-1);
  ModelRegistry::Options o = options();
  o.mem_available = [avail] { return avail->load(); };
  ModelRegistry reg(o);
  ASSERT_TRUE(reg.load(tiny("m"), true).ok());
  std::shared_ptr<ModelLease> old = *reg.acquire("m", never_stop);
  avail->store(1000);
  std::future<absl::StatusOr<SwapResult>> swap =
      std::async(std::launch::async, [&] { return reg.swap("m", tiny("m")); });
  for (int i = 0; i < 500 && reg.get("m")->state() != v1::MODEL_STATE_LOADING; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_EQ(reg.get("m")->state(), v1::MODEL_STATE_LOADING);
  EXPECT_FALSE(reg.default_ready());
  // A request arriving now waits; its own stop condition ends the wait.
  int polls = 0;
  absl::StatusOr<std::shared_ptr<ModelLease>> gave_up = reg.acquire("m", [&] {
    return ++polls > 3 ? absl::DeadlineExceededError("deadline") : absl::OkStatus();
  });
  EXPECT_EQ(gave_up.status().code(), absl::StatusCode::kDeadlineExceeded);
  std::future<absl::StatusOr<std::shared_ptr<ModelLease>>> waiter =
      std::async(std::launch::async, [&] { return reg.acquire("m", never_stop); });
  old.reset();  // the drain completes, the reload starts
  absl::StatusOr<std::shared_ptr<ModelLease>> got = waiter.get();
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(swap.get().ok());
  EXPECT_TRUE(reg.default_ready());
}

TEST(ModelRegistry, FailedSwapLeavesTheOldModelServing) {
  for (int64_t avail : {int64_t{-1}, int64_t{1000}}) {  // beside, then drain-and-reload
    auto mem = std::make_shared<std::atomic<int64_t>>(-1);
    ModelRegistry::Options o = options();
    o.mem_available = [mem] { return mem->load(); };
    ModelRegistry reg(o);
    ASSERT_TRUE(reg.load(tiny("m"), true).ok());
    mem->store(avail);
    const FluxPipeline* before = (*reg.acquire("m", never_stop))->model().pipeline.get();
    v1::ModelSpec broken = tiny("m");
    broken.set_path("tiny-flux/vae");
    absl::StatusOr<SwapResult> r = reg.swap("m", broken);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("swap of 'm' failed"), std::string::npos) << r.status();
    absl::StatusOr<v1::ModelInfo> info = reg.get("m");
    EXPECT_EQ(info->state(), v1::MODEL_STATE_READY) << avail;
    EXPECT_EQ(info->spec().path(), "tiny-flux");
    std::shared_ptr<ModelLease> lease = *reg.acquire("m", never_stop);
    if (avail < 0) {
      EXPECT_EQ(lease->model().pipeline.get(), before);  // untouched
    }
    EXPECT_TRUE(generate_on(*lease).ok());
  }
  // Spec errors are refused before anything changes.
  ModelRegistry reg(options());
  ASSERT_TRUE(reg.load(tiny("m"), true).ok());
  EXPECT_EQ(reg.swap("m", tiny("other")).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(reg.swap("zz", tiny("")).status().code(), absl::StatusCode::kNotFound);
}

TEST(ModelRegistry, UnloadWaitsForInFlightLeases) {
  ModelRegistry reg(options());
  ASSERT_TRUE(reg.load(tiny("m"), true).ok());
  std::shared_ptr<ModelLease> lease = *reg.acquire("m", never_stop);
  std::future<absl::StatusOr<UnloadResult>> unload =
      std::async(std::launch::async, [&] { return reg.unload("m"); });
  for (int i = 0; i < 500 && reg.get("m")->state() != v1::MODEL_STATE_UNLOADING; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(reg.get("m")->state(), v1::MODEL_STATE_UNLOADING);
  EXPECT_EQ(reg.acquire("m", never_stop).status().code(), absl::StatusCode::kNotFound);  // out of routing at once
  EXPECT_EQ(unload.wait_for(std::chrono::milliseconds(50)), std::future_status::timeout);
  EXPECT_TRUE(generate_on(*lease).ok());
  lease.reset();
  absl::StatusOr<UnloadResult> r = unload.get();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GT(r->freed_bytes, 0);
  EXPECT_EQ(reg.get("m").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(reg.unload("m").status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(reg.default_ready());
}

TEST(ModelRegistry, RepeatedSwapsKeepMemoryFlat) {
  ModelRegistry reg(options());
  ASSERT_TRUE(reg.load(tiny("m"), true).ok());
  // Warm up allocator arenas and the page cache, then measure.
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(reg.swap("m", i % 2 ? tiny("m") : tiny_nf4("m")).ok());
  trim_heap();
  const int64_t before = process_rss_bytes();
  for (int i = 0; i < 40; ++i) {
    absl::StatusOr<SwapResult> r = reg.swap("m", i % 2 ? tiny("m") : tiny_nf4("m"));
    ASSERT_TRUE(r.ok()) << r.status();
    if (i % 4 == 0) {
      ASSERT_TRUE(generate_on(**reg.acquire("m", never_stop)).ok());
    }
  }
  trim_heap();
  const int64_t growth = process_rss_bytes() - before;
  // The tiny model holds ~3 MB; 40 leaked generations would be > 100 MB.
  EXPECT_LT(growth, 16 << 20) << "RSS grew by " << growth << " bytes over 40 swaps";
}

}  // namespace
}  // namespace fluxserve::server
