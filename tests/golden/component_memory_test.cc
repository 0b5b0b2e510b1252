// Memory accounting (ModelMemory / FluxPipeline::memory()) against numbers computed independently:
// an unquantized component holds exactly its checkpoint's tensors in the dtypes we keep (Linear,
// conv and embedding weights as stored, 1-D vectors and T5's bias table as f32); a quantized one
// holds, per converted layer, the packed sizes of its format instead of the stored weight.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "absl/strings/match.h"
#include "engine/io/safetensors.h"
#include "engine/models/clip_text.h"
#include "engine/models/flux_transformer.h"
#include "engine/models/model_memory.h"
#include "engine/models/t5_encoder.h"
#include "engine/models/vae_decoder.h"
#include "engine/pipeline/flux_pipeline.h"
#include "tests/golden/golden_util.h"

namespace fluxserve {
namespace {

using testing::fixture;

std::string tiny(const std::string& rel = "") {
  return fixture("../../../models/tiny-flux") + (rel.empty() ? "" : "/" + rel);
}

std::shared_ptr<const SafetensorsFile> weights_of(const std::string& component) {
  const std::string name = component == "transformer" || component == "vae"
                               ? "diffusion_pytorch_model.safetensors"
                               : "model.safetensors";
  auto f = SafetensorsFile::open(tiny(component + "/" + name));
  EXPECT_TRUE(f.ok()) << f.status();
  return *f;
}

// What the unquantized model keeps of its checkpoint: the VAE's decoder half only; 1-D tensors
// (biases, norms) and T5's relative_attention_bias table converted to f32, the rest as stored.
int64_t expected_dense_bytes(const std::string& component) {
  int64_t total = 0;
  const auto file = weights_of(component);  // the entries live as long as the file
  for (const SafetensorsEntry& e : file->entries()) {
    if (component == "vae" && !absl::StartsWith(e.name, "decoder.")) continue;
    const bool f32 = e.shape.size() == 1 || absl::StrContains(e.name, "relative_attention_bias");
    total += shape_numel(e.shape) * static_cast<int64_t>(f32 ? 4 : dtype_size(e.dtype));
  }
  return total;
}

// Bytes of one quantized [n, k] weight, from each format's layout.
int64_t packed_bytes(const std::string& format, int64_t n, int64_t k) {
  const int64_t numel = n * k, blocks = (numel + 63) / 64;  // bitsandbytes blocksize 64
  if (format == "nf4") return (numel + 1) / 2 + blocks * 4 + 16 * 4;  // codes, f32 absmax, code map
  if (format == "nf4_dq") {  // absmax as u8 codes + one f32 absmax per 256 of them + dynamic map
    return (numel + 1) / 2 + blocks + (blocks + 255) / 256 * 4 + 256 * 4 + 16 * 4;
  }
  if (format == "int8" || format == "int8wo") return numel + n * 4;  // int8 rows + f32 row scale
  ADD_FAILURE() << format;
  return 0;
}

nlohmann::json spec_for(const std::string& format) {
  if (format == "nf4" || format == "nf4_dq") {
    return {{"quant_backend", "bitsandbytes_4bit"}, {"load_in_4bit", true},
            {"bnb_4bit_quant_type", "nf4"}, {"bnb_4bit_use_double_quant", format == "nf4_dq"}};
  }
  if (format == "int8") return {{"quant_backend", "bitsandbytes_8bit"}, {"load_in_8bit", true}};
  return {{"quant_backend", "torchao"}, {"quant_type", "int8wo"}};
}

struct Loaded {
  std::function<absl::StatusOr<std::vector<std::string>>(const ComponentQuantConfig&)> quantize;
  std::function<ModelMemory()> memory;
  std::shared_ptr<void> keep;
};

template <class M>
Loaded wrap(absl::StatusOr<std::unique_ptr<M>> m) {
  EXPECT_TRUE(m.ok()) << m.status();
  std::shared_ptr<M> p = std::move(*m);
  return {[p](const ComponentQuantConfig& c) { return p->quantize(c); },
          [p] { return p->memory(); }, p};
}

Loaded load(const std::string& component) {
  if (component == "text_encoder") return wrap(CLIPTextModel::load(tiny(component)));
  if (component == "text_encoder_2") return wrap(T5EncoderModel::load(tiny(component)));
  return wrap(AutoencoderKL::load(tiny(component)));
}

const std::map<std::string, int> kLinearModules = {
    {"text_encoder", 12}, {"text_encoder_2", 14}, {"vae", 4}};

TEST(ComponentMemory, UnquantizedBytesAreTheCheckpointInTheKeptDtypes) {
  for (const auto& [component, layers] : kLinearModules) {
    const ModelMemory m = load(component).memory();
    EXPECT_EQ(m.bytes, expected_dense_bytes(component)) << component;
    EXPECT_EQ(m.total_layers, layers) << component;
    EXPECT_EQ(m.quantized_layers, 0) << component;
    EXPECT_EQ(m.format, "bf16") << component;
  }
  auto tr = FluxTransformer2DModel::load(tiny("transformer"));
  ASSERT_TRUE(tr.ok()) << tr.status();
  EXPECT_EQ((*tr)->memory().bytes, expected_dense_bytes("transformer"));
  EXPECT_EQ((*tr)->memory().format, "bf16");
}

TEST(ComponentMemory, QuantizedBytesArePackedSizesOfTheConvertedLayers) {
  for (const auto& [component, layers] : kLinearModules) {
    std::map<std::string, Shape> shapes;
    const auto file = weights_of(component);
    for (const SafetensorsEntry& e : file->entries()) shapes[e.name] = e.shape;
    for (const std::string format : {"nf4", "nf4_dq", "int8", "int8wo"}) {
      SCOPED_TRACE(component + " " + format);
      auto pcfg = PipelineQuantConfig::from_json({{"quant_mapping", {{component, spec_for(format)}}}});
      ASSERT_TRUE(pcfg.ok()) << pcfg.status();
      Loaded l = load(component);
      auto converted = l.quantize(*pcfg->resolve(component));
      ASSERT_TRUE(converted.ok()) << converted.status();
      ASSERT_FALSE(converted->empty());
      int64_t expected = expected_dense_bytes(component);
      for (const std::string& module : *converted) {
        const Shape& s = shapes.at(module + ".weight");
        expected += packed_bytes(format, s[0], s[1]) - s[0] * s[1] * 2;  // stored bf16
      }
      const ModelMemory m = l.memory();
      EXPECT_EQ(m.bytes, expected);
      EXPECT_EQ(m.quantized_layers, static_cast<int>(converted->size()));
      EXPECT_EQ(m.total_layers, layers);
      EXPECT_NE(m.format.find(format == "int8wo" ? "torchao" : "bitsandbytes"), std::string::npos)
          << m.format;
    }
  }
}

TEST(ComponentMemory, PipelineListsEveryComponent) {
  auto cfg = PipelineQuantConfig::from_json(
      {{"quant_mapping",
        {{"text_encoder_2", spec_for("nf4_dq")}, {"vae", spec_for("int8wo")},
         {"transformer", spec_for("int8")}}}});
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  auto p = FluxPipeline::load(tiny(), &*cfg);
  ASSERT_TRUE(p.ok()) << p.status();
  const std::vector<ComponentMemory> mem = (*p)->memory();
  ASSERT_EQ(mem.size(), 4u);
  const std::vector<std::string> names = {"text_encoder", "text_encoder_2", "transformer", "vae"};
  for (size_t i = 0; i < mem.size(); ++i) {
    EXPECT_EQ(mem[i].component, names[i]);
    EXPECT_EQ(mem[i].device, "cpu");
    EXPECT_GT(mem[i].bytes, 0);
  }
  EXPECT_EQ(mem[0].quantized_layers, 0);
  EXPECT_EQ(mem[0].bytes, expected_dense_bytes("text_encoder"));
  EXPECT_EQ(mem[1].quantized_layers, 12);  // wo stays out (keep_in_fp32)
  // The tiny T5's bf16 embedding table outweighs its quantized layers.
  EXPECT_EQ(mem[1].format, "bf16 + bitsandbytes nf4 (double quant)");
  EXPECT_EQ(mem[2].quantized_layers, mem[2].total_layers);
  EXPECT_LT(mem[2].bytes, expected_dense_bytes("transformer"));
  EXPECT_EQ(mem[3].quantized_layers, 4);
  EXPECT_NE((*p)->quantization().find("text_encoder_2"), std::string::npos);
}

TEST(MemoryTally, SharedBuffersAreCountedOnce) {
  Tensor a = Tensor::zeros({8, 4});  // 128 bytes
  MemoryTally t;
  t.weight(a);
  t.weight(a.reshape({32}));  // the same buffer again
  t.aux(a.slice0(2, 4));      // inside it
  Tensor b = Tensor::zeros({3}, DType::kBF16);
  t.weight(b);
  const ModelMemory m = t.finish();
  EXPECT_EQ(m.bytes, 128 + 6);
  EXPECT_EQ(m.format, "f32 + bf16");
}

}  // namespace
}  // namespace fluxserve
