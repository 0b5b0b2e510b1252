// GGUF against ggml's own Python package (tools/golden/generate_gguf.py, gguf-py 0.19.0): the
// reader on files GGUFWriter wrote (metadata of every value type, shapes, alignment), dequantized
// values of every decodable type bit for bit, our reference quantizers' bytes for the simple types,
// and the BFL -> diffusers FLUX name mapping against diffusers' own converter.
#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "engine/io/gguf.h"
#include "engine/io/safetensors.h"
#include "engine/quant/flux_gguf_names.h"
#include "engine/quant/ggml_formats.h"
#include "tests/golden/golden_util.h"

namespace fluxserve {
namespace {

using testing::fixture;

std::shared_ptr<const GgufFile> open_gguf(const std::string& rel) {
  auto f = GgufFile::open(fixture("gguf/" + rel));
  EXPECT_TRUE(f.ok()) << f.status();
  return f.ok() ? *f : nullptr;
}

std::shared_ptr<const SafetensorsFile> open_st(const std::string& rel) {
  auto f = SafetensorsFile::open(fixture("gguf/" + rel));
  EXPECT_TRUE(f.ok()) << f.status();
  return f.ok() ? *f : nullptr;
}

// Number of elements whose bits differ (NaN payloads included).
int64_t bit_mismatches(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return -1;
  int64_t n = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    n += std::memcmp(a.data<float>() + i, b.data<float>() + i, 4) != 0;
  }
  return n;
}

TEST(GgufGolden, MetadataOfEveryValueType) {
  auto f = open_gguf("types.gguf");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->header().version, 3u);
  EXPECT_EQ(f->header().alignment, 32u);
  EXPECT_EQ(f->header().data_offset % 32, 0u);
  auto kv = [&](const char* k) {
    const GgufValue* v = f->find_kv(k);
    EXPECT_NE(v, nullptr) << k;
    return v;
  };
  ASSERT_NE(kv("general.architecture"), nullptr);
  EXPECT_EQ(*kv("general.architecture")->as_string(), "fluxtest");
  EXPECT_EQ(kv("test.u8")->type, GgufValueType::kU8);
  EXPECT_EQ(kv("test.u8")->as_int(), 200);
  EXPECT_EQ(kv("test.i8")->type, GgufValueType::kI8);
  EXPECT_EQ(kv("test.i8")->as_int(), -100);
  EXPECT_EQ(kv("test.u16")->as_int(), 60000);
  EXPECT_EQ(kv("test.i16")->as_int(), -30000);
  EXPECT_EQ(kv("test.u32")->type, GgufValueType::kU32);
  EXPECT_EQ(kv("test.u32")->as_int(), 4000000000LL);
  EXPECT_EQ(kv("test.i32")->as_int(), -2000000000LL);
  EXPECT_EQ(kv("test.f32")->type, GgufValueType::kF32);
  EXPECT_EQ(kv("test.f32")->as_double(), 1.5);
  EXPECT_EQ(kv("test.bool")->type, GgufValueType::kBool);
  EXPECT_EQ(kv("test.bool")->as_int(), 1);
  EXPECT_EQ(*kv("test.string")->as_string(), "h\xc3\xa9llo gguf");
  EXPECT_EQ(kv("test.u64")->type, GgufValueType::kU64);
  EXPECT_EQ(std::get<uint64_t>(kv("test.u64")->scalar), 18000000000000000000ULL);
  EXPECT_EQ(kv("test.u64")->as_int(), std::nullopt);  // does not fit int64
  EXPECT_EQ(kv("test.i64")->as_int(), -9000000000000000000LL);
  EXPECT_EQ(kv("test.f64")->type, GgufValueType::kF64);
  EXPECT_EQ(kv("test.f64")->as_double(), -2.25);

  const GgufValue* ai = kv("test.array_i32");
  ASSERT_EQ(ai->type, GgufValueType::kArray);
  EXPECT_EQ(ai->array_type, GgufValueType::kI32);
  ASSERT_EQ(ai->array.size(), 3u);
  EXPECT_EQ(std::get<int32_t>(ai->array[1]), -2);
  const GgufValue* as = kv("test.array_str");
  EXPECT_EQ(as->array_type, GgufValueType::kString);
  ASSERT_EQ(as->array.size(), 3u);
  EXPECT_EQ(std::get<std::string>(as->array[0]), "a");
  EXPECT_EQ(std::get<std::string>(as->array[1]), "");
  EXPECT_EQ(std::get<std::string>(as->array[2]), "ccc");
  const GgufValue* af = kv("test.array_f32");
  EXPECT_EQ(af->array_type, GgufValueType::kF32);
  ASSERT_EQ(af->array.size(), 2u);
  EXPECT_EQ(std::get<float>(af->array[1]), -1.0f);
}

TEST(GgufGolden, ShapesAreTorchOrder) {
  auto f = open_gguf("types.gguf");
  ASSERT_NE(f, nullptr);
  auto t3 = f->tensor("t.f32_3d");
  ASSERT_TRUE(t3.ok()) << t3.status();
  EXPECT_EQ(t3->info->n_dims, 3);
  EXPECT_EQ(t3->info->ne[0], 4);  // fastest
  EXPECT_EQ(t3->shape(), (Shape{2, 3, 4}));
  auto d3 = ggml_dequantize(*t3);
  ASSERT_TRUE(d3.ok()) << d3.status();
  for (int i = 0; i < 24; ++i) EXPECT_EQ(d3->data<float>()[i], static_cast<float>(i));
  auto t1 = f->tensor("t.f32_1d");
  ASSERT_TRUE(t1.ok());
  EXPECT_EQ(t1->shape(), (Shape{7}));
  auto q = f->tensor("t.Q4_K");
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->shape(), (Shape{3, 512}));
  EXPECT_EQ(q->nbytes, 3u * 2 * 144);
  EXPECT_EQ(q->info->row_bytes(), 2u * 144);
  EXPECT_EQ(f->tensor("nope").status().code(), absl::StatusCode::kNotFound);
}

class GgufTypeGolden : public ::testing::TestWithParam<const char*> {};

TEST_P(GgufTypeGolden, DequantizeIsBitExact) {
  const std::string type = GetParam();
  auto f = open_gguf("types.gguf");
  auto e = open_st("types_expected.safetensors");
  ASSERT_NE(f, nullptr);
  ASSERT_NE(e, nullptr);
  auto view = f->tensor("t." + type);
  ASSERT_TRUE(view.ok()) << view.status();
  auto ours = ggml_dequantize(*view);
  ASSERT_TRUE(ours.ok()) << ours.status();
  auto ref = e->get("deq." + type);
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(bit_mismatches(*ours, *ref), 0) << type;
}

class GgufQuantizeGolden : public ::testing::TestWithParam<const char*> {};

TEST_P(GgufQuantizeGolden, QuantizeMatchesReferenceBytes) {
  const std::string type = GetParam();
  auto e = open_st("types_expected.safetensors");
  ASSERT_NE(e, nullptr);
  ASSERT_NE(e->find("src." + type), nullptr) << type;
  auto f = open_gguf("types.gguf");
  auto view = f->tensor("t." + type);
  ASSERT_TRUE(view.ok());
  auto src = e->get("src." + type);
  auto want = e->get("q." + type);
  ASSERT_TRUE(src.ok() && want.ok());
  auto ours = ggml_quantize(view->type(), src->data<float>(), src->numel());
  ASSERT_TRUE(ours.ok()) << ours.status();
  ASSERT_EQ(ours->size(), want->nbytes());
  int64_t bad = 0;
  for (size_t i = 0; i < ours->size(); ++i) bad += (*ours)[i] != want->data<uint8_t>()[i];
  EXPECT_EQ(bad, 0) << type << ": bytes differ from gguf.quants.quantize";
  // And the bytes GGUFWriter stored are the same.
  EXPECT_EQ(std::memcmp(ours->data(), view->data, ours->size()), 0);
}

INSTANTIATE_TEST_SUITE_P(AllTypes, GgufTypeGolden,
                         ::testing::Values("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0",
                                           "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"));
// gguf-py has no K-quant quantizer, and neither do we.
INSTANTIATE_TEST_SUITE_P(SimpleTypes, GgufQuantizeGolden,
                         ::testing::Values("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0",
                                           "Q5_1"));

TEST(GgufGolden, CustomAlignment) {
  auto f = open_gguf("aligned64.gguf");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->header().alignment, 64u);
  EXPECT_EQ(f->header().data_offset % 64, 0u);
  auto b = f->tensor("b");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->info->offset % 64, 0u);
  EXPECT_EQ(b->type(), GgmlType::kF16);
  auto d = ggml_dequantize(*b);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->shape(), (Shape{1, 32}));
  for (int i = 0; i < 32; ++i) EXPECT_EQ(d->data<float>()[i], static_cast<float>(i));
}

TEST(GgufGolden, FluxBflNamesMapToDiffusers) {
  auto f = open_gguf("flux_tiny_bfl.gguf");
  auto e = open_st("flux_tiny_expected.safetensors");
  ASSERT_NE(f, nullptr);
  ASSERT_NE(e, nullptr);
  auto m = map_flux_gguf(f->tensors(), f->path());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->num_layers, 1);
  EXPECT_EQ(m->num_single_layers, 2);
  EXPECT_EQ(m->inner_dim, 32);
  EXPECT_EQ(m->mlp_hidden_dim, 128);
  EXPECT_TRUE(m->has_guidance);
  EXPECT_TRUE(m->unused.empty());

  std::set<std::string> expected_keys;
  for (const auto& entry : e->entries()) expected_keys.insert(entry.name);
  std::set<std::string> ours;
  for (const auto& [k, v] : m->tensors) ours.insert(k);
  EXPECT_EQ(ours, expected_keys);

  for (const auto& [key, src] : m->tensors) {
    auto ref = e->get(key);
    ASSERT_TRUE(ref.ok()) << key;
    EXPECT_EQ(src.shape, ref->shape()) << key;
    auto got = dequantize_flux_gguf_tensor(*f, src);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(bit_mismatches(*got, *ref), 0) << key << " from " << src.gguf_name;
  }
  // The quantized splits are byte ranges of whole rows.
  const FluxGgufSource& k = m->tensors.at("transformer_blocks.0.attn.add_k_proj.weight");
  EXPECT_EQ(k.info->type, GgmlType::kQ5_0);
  ASSERT_EQ(k.rows.size(), 1u);
  auto bytes = gguf_row_bytes(*k.info, k.rows[0]);
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(bytes->offset, 32u * 22);  // 32 rows of one 22-byte block
  EXPECT_EQ(bytes->size, 32u * 22);
  const FluxGgufSource& n = m->tensors.at("norm_out.linear.weight");
  ASSERT_EQ(n.rows.size(), 2u);
  EXPECT_EQ(n.rows[0].begin, 32);
  EXPECT_EQ(n.rows[1].begin, 0);
}

}  // namespace
}  // namespace fluxserve
