// The device-map planner on the CPU with simulated budgets: FLUX.1-dev-sized pipelines (from the
// configs alone) under several max_memory settings and offload policies, the spec parser's
// errors, and out-of-memory reports. Upstream parity of the maps themselves is in
// tests/golden/device_map_golden_test.cc.
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "engine/placement/planner.h"

namespace fluxserve {
namespace {

constexpr int64_t GiB = int64_t{1} << 30;

// FLUX.1-dev's four module components (black-forest-labs/FLUX.1-dev config.json values).
std::vector<ComponentInventory> flux_dev(
    const std::optional<ComponentQuantConfig>& transformer_quant = {}) {
  FluxTransformerConfig t;
  t.guidance_embeds = true;
  T5Config t5;
  t5.vocab_size = 32128, t5.d_model = 4096, t5.d_kv = 64, t5.d_ff = 10240, t5.num_layers = 24;
  t5.num_heads = 64, t5.is_gated_act = true;
  CLIPTextConfig clip;
  clip.hidden_size = 768, clip.intermediate_size = 3072, clip.num_hidden_layers = 12;
  clip.num_attention_heads = 12;
  AutoencoderKLConfig vae;
  vae.latent_channels = 16, vae.block_out_channels = {128, 256, 512, 512}, vae.layers_per_block = 2;
  vae.use_post_quant_conv = false;
  const StorageForm bf16{DType::kBF16, DType::kBF16, std::nullopt};
  StorageForm tq = bf16;
  tq.quant = transformer_quant;
  return {*clip_text_inventory(clip, bf16), *t5_encoder_inventory(t5, bf16),
          *flux_transformer_inventory(t, tq), *vae_decoder_inventory(vae, bf16)};
}

absl::StatusOr<Plan> plan(const nlohmann::json& placement,
                          const std::vector<ComponentInventory>& inv = flux_dev()) {
  auto spec = PlacementSpec::from_json(placement, "placement");
  if (!spec.ok()) return spec.status();
  return plan_placement(inv, *spec, "placement");
}

const ComponentPlan& component(const Plan& p, const std::string& name) {
  for (const ComponentPlan& c : p.components) {
    if (c.component == name) return c;
  }
  static ComponentPlan none;
  ADD_FAILURE() << name;
  return none;
}

const MapDevice kGpu0{MapDevice::kCuda, 0}, kCpu{MapDevice::kCpu, 0}, kDisk{MapDevice::kDisk, 0};

TEST(DeviceMap, FluxDevSizesMatchThePublishedParameterCounts) {
  // perf-anchors §1: transformer 11,901,408,320 params, T5 4,762,310,656, CLIP 123,060,480 (+ the
  // 77 int64 position ids buffer), all bf16.
  const auto inv = flux_dev();
  EXPECT_EQ(inv[2].bytes(), 2 * int64_t{11901408320});
  EXPECT_EQ(inv[1].bytes(), 2 * int64_t{4762310656});
  EXPECT_EQ(inv[0].bytes(), 2 * int64_t{123060480} + 77 * 8);
}

TEST(DeviceMap, SizesAndDevicesParseLikeAccelerate) {
  EXPECT_EQ(*parse_size("24GiB", "f"), 24 * GiB);
  EXPECT_EQ(*parse_size("24GB", "f"), int64_t{24000000000});
  EXPECT_EQ(*parse_size("1.5 GiB", "f"), 3 * GiB / 2);
  EXPECT_EQ(*parse_size("512MiB", "f"), 512 << 20);
  EXPECT_EQ(*parse_size("1000", "f"), 1000);
  EXPECT_FALSE(parse_size("24Gb", "f").ok());  // bits
  EXPECT_FALSE(parse_size("lots", "f").ok());
  EXPECT_FALSE(parse_size("-1GB", "f").ok());
  EXPECT_EQ(parse_device("0", "f")->name(), "cuda:0");
  EXPECT_EQ(parse_device("cuda", "f")->name(), "cuda:0");
  EXPECT_EQ(parse_device("cuda:3", "f")->name(), "cuda:3");
  EXPECT_EQ(parse_device("disk", "f")->name(), "disk");
  const auto bad = parse_device("tpu:0", "placement.max_memory.tpu:0");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("unknown device 'tpu:0'"), std::string::npos);
}

TEST(DeviceMap, SpecErrorsNameTheField) {
  auto msg = [](const nlohmann::json& j) {
    auto s = PlacementSpec::from_json(j, "placement");
    EXPECT_FALSE(s.ok()) << j.dump();
    return std::string(s.status().message());
  };
  EXPECT_NE(msg({{"device_map", "everywhere"}}).find("placement.device_map"), std::string::npos);
  EXPECT_NE(msg({{"device_map_modules", {{"unet.down_blocks", "cuda:0"}}}})
                .find("unknown component 'unet'"),
            std::string::npos);
  EXPECT_NE(msg({{"device_map_modules", {{"transformer.x_embedder", "npu:0"}}}})
                .find("unknown device 'npu:0'"),
            std::string::npos);
  EXPECT_NE(
      msg({{"offload", {{"transformer", {{"policy", "group"}}}}}}).find("num_blocks_per_group"),
      std::string::npos);
  EXPECT_NE(msg({{"offload", {{"vae", {{"policy", "teleport"}}}}}}).find("unknown offload policy"),
            std::string::npos);
  EXPECT_NE(msg({{"max_memory", {{"cuda:0", "big"}}}}).find("placement.max_memory.cuda:0"),
            std::string::npos);
  EXPECT_NE(msg({{"devicemap", "auto"}}).find("unknown key 'devicemap'"), std::string::npos);
  EXPECT_TRUE(PlacementSpec::from_json(nlohmann::json::object(), "p")->all_cpu());
  EXPECT_TRUE(PlacementSpec::from_json({{"device_map", "cpu"}}, "p")->all_cpu());
  EXPECT_FALSE(PlacementSpec::from_json({{"device_map", "cuda"}}, "p")->all_cpu());
}

TEST(DeviceMap, AutoHonoursMaxMemoryAndSplitsOnlyAtBlocks) {
  for (int64_t gib : {8, 12, 16, 24, 40, 80}) {
    SCOPED_TRACE(gib);
    auto p = plan({{"device_map", "auto"},
                   {"max_memory", {{"cuda:0", absl::StrCat(gib, "GiB")}, {"cpu", "64GiB"}}}});
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_LE(p->peak.at(kGpu0), gib * GiB);
    EXPECT_LE(p->resident[kCpu], 64 * GiB);
    int64_t total = 0;
    for (const PlannedUnit& u : p->units) {
      total += u.bytes;
      // Units are whole blocks or leaf modules; no unit name lies inside another's block.
      EXPECT_EQ(u.module.find(".attn"), std::string::npos) << u.module;
    }
    int64_t inventory_total = 0;
    for (const auto& c : flux_dev()) inventory_total += c.bytes();
    EXPECT_EQ(total, inventory_total);
    const ComponentPlan& t = component(*p, "transformer");
    EXPECT_EQ(t.exec, kGpu0);
    // What is off the GPU is streamed in every step; all of it fits from 40 GiB on.
    EXPECT_EQ(p->streamed_per_step, t.bytes - t.resident.at(kGpu0));
    if (gib >= 40) {
      EXPECT_EQ(p->streamed_per_step, 0);
    }
    if (gib <= 16) {
      EXPECT_GT(p->streamed_per_step, 0);
    }
  }
}

TEST(DeviceMap, ReservationKeepsRoomForTheLargestOffloadedLayer) {
  // 16 GiB on one GPU for the transformer alone: accelerate keeps one double block's worth free.
  auto p = plan({{"component_device_map", {{"transformer", "auto"}}},
                 {"max_memory", {{"cuda:0", "16GiB"}, {"cpu", "64GiB"}}}});
  ASSERT_TRUE(p.ok()) << p.status();
  const ComponentPlan& t = component(*p, "transformer");
  const int64_t on_gpu = t.resident.at(kGpu0);
  EXPECT_LE(on_gpu + 283183616, 16 * GiB);  // a single block (the largest left) still fits
  EXPECT_GT(on_gpu + 2 * 283183616, 16 * GiB);
}

TEST(DeviceMap, OneGpuTooSmallIsResourceExhaustedWithTheNumbers) {
  auto p = plan({{"device_map", "cuda"}, {"max_memory", {{"cuda:0", "24GiB"}}}});
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kResourceExhausted);
  const std::string m(p.status().message());
  for (const char* s : {"out of memory on cuda:0", "the plan needs 31.", "allows 24.00 GiB",
                        "transformer 22.17 GiB", "text_encoder_2 8.87 GiB", "short by"}) {
    EXPECT_NE(m.find(s), std::string::npos) << s << " in: " << m;
  }
  EXPECT_TRUE(plan({{"device_map", "cuda"}, {"max_memory", {{"cuda:0", "40GiB"}}}}).ok());
}

TEST(DeviceMap, ExplicitMapsAreValidated) {
  auto msg = [](const nlohmann::json& modules) {
    auto p = plan({{"device_map_modules", modules}, {"max_memory", {{"cuda:0", "80GiB"}}}});
    EXPECT_FALSE(p.ok()) << modules.dump();
    return std::string(p.status().message());
  };
  EXPECT_NE(msg({{"transformer", "cuda:0"}, {"transformer.decoder", "cpu"}})
                .find("unknown module 'transformer.decoder'"),
            std::string::npos);
  EXPECT_NE(msg({{"transformer", "cuda:0"}, {"transformer.transformer_blocks.3.attn", "cpu"}})
                .find("only at block boundaries"),
            std::string::npos);
  EXPECT_NE(msg({{"transformer", "cuda:1"}}).find("unknown device 'cuda:1'"), std::string::npos);
  EXPECT_NE(
      msg({{"transformer.transformer_blocks", "cuda:0"}}).find("gives no device for transformer."),
      std::string::npos);

  // A valid split at block boundaries: double blocks on the GPU, the rest on the CPU.
  auto p = plan({{"device_map_modules",
                  {{"transformer", "cpu"}, {"transformer.transformer_blocks", "cuda:0"}}},
                 {"max_memory", {{"cuda:0", "24GiB"}}}});
  ASSERT_TRUE(p.ok()) << p.status();
  const ComponentPlan& t = component(*p, "transformer");
  EXPECT_EQ(t.resident.at(kGpu0), int64_t{19} * 679662592);
  EXPECT_EQ(p->streamed_per_step, t.bytes - t.resident.at(kGpu0));
  EXPECT_EQ(t.exec, kGpu0);
}

TEST(DeviceMap, OffloadPoliciesPeakAndStreamedBytes) {
  const auto inv = flux_dev();
  const int64_t transformer = inv[2].bytes(), t5 = inv[1].bytes();
  // Model offload: one whole model on the GPU at a time; nothing moves inside the loop.
  auto model = plan({{"device_map", "cuda"},
                     {"max_memory", {{"cuda:0", "24GiB"}}},
                     {"offload",
                      {{"transformer", {{"policy", "model"}}},
                       {"text_encoder_2", {{"policy", "model"}}},
                       {"text_encoder", {{"policy", "model"}}},
                       {"vae", {{"policy", "model"}}}}}});
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->peak.at(kGpu0), transformer);
  EXPECT_EQ(model->streamed_per_step, 0);
  EXPECT_EQ(model->streamed_per_image, transformer + t5 + inv[0].bytes() + inv[3].bytes());

  // Group offload, one block per group with a prefetch stream: unmatched modules + 2 double blocks.
  auto group = plan({{"device_map", "cuda"},
                     {"offload",
                      {{"transformer", {{"policy", "group"}, {"use_stream", true}}},
                       {"text_encoder_2", {{"policy", "sequential"}}}}}});
  ASSERT_TRUE(group.ok()) << group.status();
  const int64_t unmatched = transformer - inv[2].bytes_under("transformer_blocks") -
                            inv[2].bytes_under("single_transformer_blocks");
  EXPECT_EQ(component(*group, "transformer").onload_peak, unmatched + 2 * 679662592);
  EXPECT_EQ(group->streamed_per_step, transformer);
  EXPECT_EQ(group->resident.at(kCpu), transformer + t5);
  // Sequential: the largest leaf Linear of T5 (its [32128, 4096] table is not a Linear).
  EXPECT_EQ(component(*group, "text_encoder_2").onload_peak, int64_t{263192576});

  // Disk: the transformer lives on disk, RAM keeps nothing of it.
  auto disk =
      plan({{"device_map", "cuda"},
            {"offload", {{"transformer", {{"policy", "disk"}, {"num_blocks_per_group", 2}}}}}});
  ASSERT_TRUE(disk.ok()) << disk.status();
  EXPECT_EQ(disk->resident.at(kDisk), transformer);
  EXPECT_EQ(component(*disk, "transformer").onload_peak, unmatched + 2 * 679662592);

  // An offload policy on a device-mapped component is refused, as diffusers does.
  auto both = plan({{"component_device_map", {{"transformer", "auto"}}},
                    {"max_memory", {{"cuda:0", "24GiB"}}},
                    {"offload", {{"transformer", {{"policy", "model"}}}}}});
  ASSERT_FALSE(both.ok());
  EXPECT_NE(both.status().message().find("reset_device_map"), std::string::npos);
}

TEST(DeviceMap, BitsandbytesCpuOffloadNeedsTheFp32Flag) {
  auto q = PipelineQuantConfig::from_json(
      {{"quant_backend", "bitsandbytes_8bit"}, {"quant_kwargs", {{"load_in_8bit", true}}}}, "q");
  ASSERT_TRUE(q.ok()) << q.status();
  std::optional<ComponentQuantConfig> cq = q->resolve("transformer");
  const nlohmann::json small = {{"component_device_map", {{"transformer", "auto"}}},
                                {"max_memory", {{"cuda:0", "8GiB"}, {"cpu", "64GiB"}}}};
  auto refused = plan(small, flux_dev(cq));
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("llm_int8_enable_fp32_cpu_offload"), std::string::npos);

  cq->llm_int8_enable_fp32_cpu_offload = true;
  const auto inv = flux_dev(cq);
  auto p = plan(small, inv);
  ASSERT_TRUE(p.ok()) << p.status();
  const ComponentPlan& t = component(*p, "transformer");
  // The modules left on the CPU are stored unquantized (bf16): more bytes than the int8 form.
  EXPECT_GT(t.bytes, inv[2].bytes());
  EXPECT_LE(p->peak.at(kGpu0), 8 * GiB);
  // Enough GPU for the whole int8 model: no fp32 modules, nothing streamed.
  auto fits = plan(
      {{"component_device_map", {{"transformer", "auto"}}}, {"max_memory", {{"cuda:0", "24GiB"}}}},
      inv);
  ASSERT_TRUE(fits.ok()) << fits.status();
  EXPECT_EQ(component(*fits, "transformer").bytes, inv[2].bytes());
  EXPECT_EQ(fits->streamed_per_step, 0);
}

TEST(DeviceMap, PipelineBalancedPlacesWholeComponents) {
  auto p = plan(
      {{"device_map", "balanced"}, {"max_memory", {{"cuda:0", "24GiB"}, {"cuda:1", "24GiB"}}}});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(component(*p, "transformer").exec, kGpu0);
  EXPECT_EQ(component(*p, "text_encoder_2").exec, (MapDevice{MapDevice::kCuda, 1}));
  EXPECT_EQ(p->streamed_per_step, 0);
  auto none = plan({{"device_map", "auto"}});
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("need a GPU budget"), std::string::npos);
}

}  // namespace
}  // namespace fluxserve
