// GGUF reader validation: hand-built files, valid and corrupt in every way the header can be (bad
// magic or version, counts and lengths past EOF, unknown value or ggml types, bad shapes,
// duplicates, misaligned, overlapping or truncated data), each a clear error naming the file and
// the key or tensor. Also the ggml quantizer API's argument checks and the FLUX name mapping's.
#include "engine/io/gguf.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "engine/quant/flux_gguf_names.h"
#include "engine/quant/ggml_formats.h"
#include "tests/unit/test_util.h"

namespace fluxserve {
namespace {

using testing::expect_error;

// Little-endian GGUF byte builder.
struct Bytes {
  std::vector<uint8_t> b;
  Bytes& raw(const void* p, size_t n) {
    const auto* c = static_cast<const uint8_t*>(p);
    b.insert(b.end(), c, c + n);
    return *this;
  }
  Bytes& u8(uint8_t v) { return raw(&v, 1); }
  Bytes& u32(uint32_t v) { return raw(&v, 4); }
  Bytes& u64(uint64_t v) { return raw(&v, 8); }
  Bytes& f32(float v) { return raw(&v, 4); }
  Bytes& str(const std::string& s) { return u64(s.size()).raw(s.data(), s.size()); }
  Bytes& pad(size_t align) {
    while (b.size() % align != 0) b.push_back(0);
    return *this;
  }
};

struct TensorSpec {
  std::string name;
  std::vector<uint64_t> ne;
  uint32_t type;
  uint64_t offset;
};

// Header with the given tensor infos (and optional extra raw KV bytes counted in n_kv), padded to
// 32, then `data_bytes` bytes of data.
std::vector<uint8_t> make_file(const std::vector<TensorSpec>& tensors, size_t data_bytes,
                               uint32_t version = 3, const Bytes* kvs = nullptr,
                               uint64_t n_kv = 0) {
  Bytes o;
  o.raw("GGUF", 4).u32(version).u64(tensors.size()).u64(n_kv);
  if (kvs != nullptr) o.raw(kvs->b.data(), kvs->b.size());
  for (const auto& t : tensors) {
    o.str(t.name).u32(static_cast<uint32_t>(t.ne.size()));
    for (uint64_t ne : t.ne) o.u64(ne);
    o.u32(t.type).u64(t.offset);
  }
  o.pad(32);
  for (size_t i = 0; i < data_bytes; ++i) o.u8(static_cast<uint8_t>(i));
  return o.b;
}

// Two tensors: f32 [4] at 0 (16 bytes), q8_0 [2, 32] at 32 (68 bytes).
std::vector<TensorSpec> good_tensors() { return {{"a", {4}, 0, 0}, {"w", {32, 2}, 8, 32}}; }

absl::Status parse(const std::vector<uint8_t>& f) {
  return parse_gguf(f.data(), f.size(), "test.gguf").status();
}

TEST(Gguf, ParsesValidHandBuiltFile) {
  Bytes kv;
  kv.str("general.alignment").u32(4).u32(32);
  kv.str("arr.empty").u32(9).u32(5).u64(0);
  kv.str("flag").u32(7).u8(1);
  const auto f = make_file(good_tensors(), 100, 3, &kv, 3);
  auto h = parse_gguf(f.data(), f.size(), "test.gguf");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->tensors.size(), 2u);
  EXPECT_EQ(h->alignment, 32u);
  EXPECT_TRUE(h->find_kv("arr.empty")->array.empty());
  EXPECT_EQ(h->find_kv("arr.empty")->array_type, GgufValueType::kI32);
  EXPECT_EQ(h->find_kv("flag")->as_int(), 1);
  const GgufTensorInfo* w = h->find_tensor("w");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->shape(), (Shape{2, 32}));
  EXPECT_EQ(w->nbytes, 68u);
  EXPECT_EQ(w->row_bytes(), 34u);
  // Version 2 has the same layout.
  EXPECT_TRUE(parse(make_file(good_tensors(), 100, 2)).ok());
}

TEST(Gguf, BadMagicAndVersion) {
  auto f = make_file(good_tensors(), 100);
  f[0] = 'X';
  expect_error(parse(f), {"test.gguf", "not a GGUF file", "magic"});
  expect_error(parse(make_file(good_tensors(), 100, 1)), {"test.gguf", "version 1"});
  expect_error(parse(make_file(good_tensors(), 100, 4)),
               {"test.gguf", "unsupported GGUF version 4"});
  expect_error(parse(make_file(good_tensors(), 100, 0x03000000)), {"byte-swapped"});
  std::vector<uint8_t> tiny = {'G', 'G'};
  expect_error(parse(tiny), {"not a GGUF file"});
  std::vector<uint8_t> header_only = {'G', 'G', 'U', 'F', 3, 0, 0, 0, 1};
  expect_error(parse(header_only), {"truncated", "tensor count"});
}

TEST(Gguf, CountsPastEof) {
  auto f = make_file(good_tensors(), 100);
  uint64_t huge = 1ull << 60;
  std::memcpy(f.data() + 8, &huge, 8);  // n_tensors
  expect_error(parse(f), {"test.gguf", "tensor count 1152921504606846976"});
  f = make_file(good_tensors(), 100);
  std::memcpy(f.data() + 16, &huge, 8);  // n_kv
  expect_error(parse(f), {"test.gguf", "metadata count"});
}

TEST(Gguf, StringAndArrayLengthsPastEof) {
  Bytes kv;
  kv.u64(1000).raw("abc", 3);  // key length past EOF
  expect_error(parse(make_file({}, 0, 3, &kv, 1)), {"test.gguf", "string length 1000"});
  Bytes arr;
  arr.str("big").u32(9).u32(10).u64(1ull << 40);  // u64 array of 2^40 elements
  expect_error(parse(make_file({}, 0, 3, &arr, 1)), {"key 'big'", "array of 1099511627776 u64"});
  Bytes sarr;
  sarr.str("s").u32(9).u32(8).u64(2).str("x").u64(99);  // 2nd string's length past EOF
  expect_error(parse(make_file({}, 0, 3, &sarr, 1)), {"key 's'[1]", "string length 99"});
}

TEST(Gguf, BadValueTypes) {
  Bytes kv;
  kv.str("k").u32(13).u32(0);
  expect_error(parse(make_file({}, 0, 3, &kv, 1)), {"key 'k'", "unknown value type 13"});
  Bytes nested;
  nested.str("n").u32(9).u32(9).u64(0);
  expect_error(parse(make_file({}, 0, 3, &nested, 1)), {"key 'n'", "nested arrays"});
  Bytes elem;
  elem.str("e").u32(9).u32(77).u64(0);
  expect_error(parse(make_file({}, 0, 3, &elem, 1)), {"key 'e'", "unknown array element type 77"});
  Bytes dup;
  dup.str("d").u32(4).u32(1).str("d").u32(4).u32(2);
  expect_error(parse(make_file({}, 0, 3, &dup, 2)), {"duplicate metadata key 'd'"});
}

TEST(Gguf, BadAlignment) {
  Bytes kv;
  kv.str("general.alignment").u32(5).u32(32);  // i32, not u32
  expect_error(parse(make_file(good_tensors(), 100, 3, &kv, 1)),
               {"general.alignment", "must be u32, got i32"});
  Bytes kv2;
  kv2.str("general.alignment").u32(4).u32(48);
  expect_error(parse(make_file(good_tensors(), 100, 3, &kv2, 1)), {"48 is not a power of two"});
  Bytes kv3;
  kv3.str("general.alignment").u32(4).u32(0);
  expect_error(parse(make_file(good_tensors(), 100, 3, &kv3, 1)), {"0 is not a power of two"});
}

TEST(Gguf, BadTensorInfos) {
  expect_error(parse(make_file({{"t", {1, 1, 1, 1, 1}, 0, 0}}, 64)),
               {"tensor 't'", "n_dims 5 exceeds the maximum of 4"});
  expect_error(parse(make_file({{"t", {4}, 4, 0}}, 64)), {"tensor 't'", "unknown ggml type 4"});
  expect_error(parse(make_file({{"t", {4}, 1000, 0}}, 64)), {"unknown ggml type 1000"});
  expect_error(parse(make_file({{"t", {48, 2}, 8, 0}}, 256)),
               {"tensor 't'", "ne[0] = 48 is not a multiple of the q8_0 block size 32"});
  expect_error(parse(make_file({{"t", {1ull << 40, 1ull << 40}, 0, 0}}, 64)),
               {"tensor 't'", "element count overflows"});
  expect_error(parse(make_file({{"t", {~0ull}, 0, 0}}, 64)), {"tensor 't'", "is negative"});
  expect_error(parse(make_file({{"t", {1ull << 62}, 0, 0}}, 64)),
               {"tensor 't'", "byte size overflows"});
  expect_error(parse(make_file({{"t", {4}, 0, 0}, {"t", {4}, 0, 32}}, 64)),
               {"duplicate tensor name 't'"});
}

TEST(Gguf, BadTensorData) {
  // Offset not a multiple of the alignment.
  expect_error(parse(make_file({{"a", {4}, 0, 16}}, 64)),
               {"tensor 'a'", "offset 16 is not a multiple of the alignment 32"});
  // Data past the end of the file (truncated data section).
  expect_error(parse(make_file(good_tensors(), 99)),
               {"test.gguf", "tensor 'w'", "past the end of the data section (99 bytes"});
  expect_error(parse(make_file({{"a", {4}, 0, 1ull << 62}}, 64)), {"tensor 'a'", "past the end"});
  // No data section at all.
  expect_error(parse(make_file(good_tensors(), 0)), {"past the end"});
  // Overlapping tensors.
  expect_error(parse(make_file({{"a", {64}, 0, 0}, {"b", {4}, 0, 224}, {"c", {4}, 0, 32}}, 256)),
               {"tensor 'c' bytes [32, 48) overlap tensor 'a' bytes [0, 256)"});
  // Truncated inside the tensor infos.
  auto f = make_file({{"a", {4, 1, 1, 1}, 0, 0}}, 64);
  f.resize(54);
  expect_error(parse(f), {"truncated at byte", "tensor 'a' ne[2]"});
}

TEST(Gguf, OpenErrors) {
  expect_error(GgufFile::open("/nonexistent/x.gguf").status(),
               {"/nonexistent/x.gguf", "cannot open"}, absl::StatusCode::kNotFound);
  const std::string dir = testing::make_temp_dir("gguf");
  const std::string path = dir + "/small.gguf";
  std::ofstream(path, std::ios::binary) << "GGUF";
  expect_error(GgufFile::open(path).status(), {path, "too small"});

  const std::string good = dir + "/good.gguf";
  const auto bytes = make_file(good_tensors(), 100);
  std::ofstream(good, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  auto f = GgufFile::open(good);
  ASSERT_TRUE(f.ok()) << f.status();
  auto a = (*f)->tensor("a");
  ASSERT_TRUE(a.ok());
  auto d = ggml_dequantize(*a);
  ASSERT_TRUE(d.ok()) << d.status();
  float want;
  const uint8_t le[4] = {0, 1, 2, 3};
  std::memcpy(&want, le, 4);
  EXPECT_EQ(d->data<float>()[0], want);
  expect_error((*f)->tensor("zz").status(), {good, "no tensor 'zz'"}, absl::StatusCode::kNotFound);
}

TEST(GgmlFormats, ArgumentChecks) {
  std::vector<float> x(64, 1.0f);
  expect_error(ggml_quantize(GgmlType::kQ8_0, x.data(), 48).status(), {"48 elements of q8_0"});
  expect_error(ggml_quantize(GgmlType::kQ4_K, x.data(), 256).status(), {"q4_K", "not supported"},
               absl::StatusCode::kUnimplemented);
  std::vector<uint8_t> buf(68);
  expect_error(ggml_dequantize(GgmlType::kIQ4_NL, buf.data(), 36, 64, x.data()),
               {"iq4_nl", "not supported"}, absl::StatusCode::kUnimplemented);
  expect_error(ggml_dequantize(GgmlType::kQ8_0, buf.data(), 67, 64, x.data()),
               {"need 68 bytes, got 67"});
}

TEST(GgmlFormats, QuantizeRoundTripsWithinOneStep) {
  std::vector<float> x(256);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * static_cast<float>(i)) * 3.0f;
  for (GgmlType t : {GgmlType::kQ8_0, GgmlType::kQ5_0, GgmlType::kQ5_1, GgmlType::kQ4_0,
                     GgmlType::kQ4_1, GgmlType::kF16, GgmlType::kBF16}) {
    auto q = ggml_quantize(t, x.data(), 256);
    ASSERT_TRUE(q.ok()) << q.status();
    std::vector<float> y(256);
    ASSERT_TRUE(ggml_dequantize(t, q->data(), q->size(), 256, y.data()).ok());
    double err = 0;
    for (size_t i = 0; i < x.size(); ++i) err = std::max(err, std::abs(double(x[i]) - y[i]));
    EXPECT_LT(err, 0.45) << ggml::ggml_type_info(t).name;  // ≤ one step of Q4 (6 / 15)
  }
}

TEST(FluxGgufNames, MissingAndMisshapenTensors) {
  std::vector<GgufTensorInfo> ts;
  auto add = [&](const std::string& name, std::vector<int64_t> shape_torch) {
    GgufTensorInfo t;
    t.name = name;
    t.type = GgmlType::kF32;
    t.n_dims = static_cast<int>(shape_torch.size());
    for (int i = 0; i < t.n_dims; ++i) t.ne[i] = shape_torch[shape_torch.size() - 1 - i];
    t.nbytes = static_cast<uint64_t>(t.numel()) * 4;
    ts.push_back(t);
  };
  expect_error(map_flux_gguf(ts, "f.gguf").status(), {"f.gguf", "'img_in.weight' is missing"});
  add("model.diffusion_model.img_in.weight", {8, 4});
  add("model.diffusion_model.img_in.bias", {8});
  expect_error(map_flux_gguf(ts, "f.gguf").status(), {"'time_in.in_layer.weight' is missing"});
  GgufTensorInfo q;
  q.name = "x";
  q.type = GgmlType::kQ8_0;
  q.n_dims = 1;
  q.ne = {64, 1, 1, 1};
  q.nbytes = 68;
  expect_error(gguf_row_bytes(q, {16, 16}).status(), {"not whole 32-element blocks"});
  auto ok = gguf_row_bytes(q, {32, 32});
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->offset, 34u);
}

}  // namespace
}  // namespace fluxserve
