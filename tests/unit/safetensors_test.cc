// safetensors reader/writer: round trips of every dtype, metadata, zero-size tensors, and one
// corrupt file per validation rule, each failing with a message that names the file and tensor.
#include "engine/io/safetensors.h"
#include "tests/unit/test_util.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace fluxserve {
namespace {

using testing::expect_error;

// Writes a safetensors image by hand: 8-byte little-endian length (the header's own size unless
// overridden), the header text, then the data bytes.
void write_raw(const std::string& path, const std::string& header, const std::string& data,
               std::optional<uint64_t> length = std::nullopt) {
  const uint64_t n = length.value_or(header.size());
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  bytes += header;
  bytes += data;
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

Tensor random_tensor(Shape shape, DType dt, uint32_t seed) {
  Tensor t = Tensor::empty(std::move(shape), dt);
  std::mt19937 rng(seed);
  auto* p = static_cast<uint8_t*>(t.raw());
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<uint8_t>(rng());
  if (dt == DType::kBool) {
    for (size_t i = 0; i < t.nbytes(); ++i) p[i] &= 1;
  }
  return t;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() &&
         (a.nbytes() == 0 || std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0);
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::make_temp_dir("safetensors_test"); }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }

  // Writes `header` + `data` to a file named `name` and opens it; returns the open status.
  absl::Status open_raw(const std::string& name, const std::string& header,
                        const std::string& data = "",
                        std::optional<uint64_t> length = std::nullopt) {
    write_raw(path(name), header, data, length);
    return SafetensorsFile::open(path(name)).status();
  }

  std::string dir_;
};

// ---- round trips ----------------------------------------------------------------------------

class SafetensorsDTypeTest : public SafetensorsTest, public ::testing::WithParamInterface<DType> {};

TEST_P(SafetensorsDTypeTest, RoundTrip) {
  const DType dt = GetParam();
  const std::string file = path("rt.safetensors");
  Tensor a = random_tensor({2, 3, 5}, dt, 1);
  Tensor b = random_tensor({7}, dt, 2);
  ASSERT_TRUE(write_safetensors(file, {{"a.weight", a}, {"b", b}}).ok());

  auto f = SafetensorsFile::open(file);
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ((*f)->entries().size(), 2u);
  const SafetensorsEntry* e = (*f)->find("a.weight");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->dtype, dt);
  EXPECT_EQ(e->shape, (Shape{2, 3, 5}));
  EXPECT_EQ(e->end - e->begin, a.nbytes());

  auto ta = (*f)->get("a.weight");
  auto tb = (*f)->get("b");
  ASSERT_TRUE(ta.ok()) << ta.status();
  ASSERT_TRUE(tb.ok()) << tb.status();
  EXPECT_EQ(ta->dtype(), dt);
  EXPECT_EQ(ta->shape(), (Shape{2, 3, 5}));
  EXPECT_EQ(tb->shape(), (Shape{7}));
  EXPECT_TRUE(same_bytes(*ta, a));
  EXPECT_TRUE(same_bytes(*tb, b));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(ta->raw()) % dtype_size(dt), 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(tb->raw()) % dtype_size(dt), 0u);
}

INSTANTIATE_TEST_SUITE_P(AllDTypes, SafetensorsDTypeTest,
                         ::testing::Values(DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3FN,
                                           DType::kF8E5M2, DType::kI8, DType::kU8, DType::kI32,
                                           DType::kI64, DType::kBool),
                         [](const auto& info) {
                           std::string name(safetensors_dtype_name(info.param));
                           std::erase(name, '_');  // test names must be alphanumeric
                           return name;
                         });

TEST_F(SafetensorsTest, HeaderIsPaddedAndInGivenOrder) {
  const std::string file = path("order.safetensors");
  ASSERT_TRUE(write_safetensors(file, {{"zeta", random_tensor({3}, DType::kU8, 1)},
                                       {"alpha", random_tensor({1}, DType::kF32, 2)}})
                  .ok());
  std::ifstream in(file, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  EXPECT_EQ(n % 8, 0u);
  const std::string header = bytes.substr(8, n);
  EXPECT_LT(header.find("zeta"), header.find("alpha"));
  EXPECT_EQ(bytes.size(), 8 + n + 3 + 4);
  // Given order -> contiguous offsets: zeta [0,3), alpha [3,7) (misaligned: read as a copy).
  auto f = SafetensorsFile::open(file);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->find("zeta")->begin, 0u);
  EXPECT_EQ((*f)->find("alpha")->begin, 3u);
  EXPECT_EQ((*f)->entries()[0].name, "alpha");  // entries() are sorted by name
}

TEST_F(SafetensorsTest, MisalignedTensorIsCopiedAligned) {
  const std::string file = path("misaligned.safetensors");
  Tensor pad = random_tensor({1}, DType::kU8, 3);
  Tensor x = random_tensor({4, 3}, DType::kI64, 4);
  ASSERT_TRUE(write_safetensors(file, {{"pad", pad}, {"x", x}}).ok());
  auto f = SafetensorsFile::open(file);
  ASSERT_TRUE(f.ok()) << f.status();
  auto t = (*f)->get("x");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t->raw()) % 8, 0u);
  EXPECT_TRUE(same_bytes(*t, x));
}

TEST_F(SafetensorsTest, ViewOutlivesFileHandle) {
  const std::string file = path("view.safetensors");
  Tensor x = random_tensor({64}, DType::kF32, 5);
  ASSERT_TRUE(write_safetensors(file, {{"x", x}}).ok());
  Tensor view;
  {
    auto f = SafetensorsFile::open(file);
    ASSERT_TRUE(f.ok()) << f.status();
    auto t = (*f)->get("x");
    ASSERT_TRUE(t.ok()) << t.status();
    view = *t;
  }
  // The mapping is kept alive by the tensor's owner.
  EXPECT_NE(view.owner(), nullptr);
  EXPECT_TRUE(same_bytes(view, x));
}

TEST_F(SafetensorsTest, MetadataRoundTrip) {
  const std::string file = path("meta.safetensors");
  std::map<std::string, std::string> md = {
      {"format", "pt"}, {"note", "caf\xc3\xa9 \"quoted\"\n"}, {"empty", ""}};
  ASSERT_TRUE(write_safetensors(file, {{"w", random_tensor({2}, DType::kBF16, 6)}}, md).ok());
  auto f = SafetensorsFile::open(file);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->metadata(), md);
  EXPECT_EQ((*f)->entries().size(), 1u);
}

TEST_F(SafetensorsTest, NoMetadataWhenEmpty) {
  const std::string file = path("nometa.safetensors");
  ASSERT_TRUE(write_safetensors(file, {{"w", random_tensor({2}, DType::kF16, 7)}}).ok());
  std::ifstream in(file, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(bytes.find("__metadata__"), std::string::npos);
}

TEST_F(SafetensorsTest, ZeroSizeAndScalarTensors) {
  const std::string file = path("zero.safetensors");
  Tensor e0 = Tensor::empty({0}, DType::kF32);
  Tensor e1 = Tensor::empty({3, 0, 2}, DType::kBF16);
  Tensor scalar = random_tensor({}, DType::kI64, 8);
  Tensor after = random_tensor({5}, DType::kF32, 9);
  ASSERT_TRUE(
      write_safetensors(file, {{"e0", e0}, {"e1", e1}, {"scalar", scalar}, {"after", after}}).ok());
  auto f = SafetensorsFile::open(file);
  ASSERT_TRUE(f.ok()) << f.status();
  auto t0 = (*f)->get("e0");
  auto t1 = (*f)->get("e1");
  auto ts = (*f)->get("scalar");
  auto ta = (*f)->get("after");
  ASSERT_TRUE(t0.ok() && t1.ok() && ts.ok() && ta.ok());
  EXPECT_EQ(t0->shape(), (Shape{0}));
  EXPECT_EQ(t0->numel(), 0);
  EXPECT_EQ(t1->shape(), (Shape{3, 0, 2}));
  EXPECT_EQ(ts->shape(), Shape{});
  EXPECT_EQ(ts->numel(), 1);
  EXPECT_TRUE(same_bytes(*ts, scalar));
  EXPECT_TRUE(same_bytes(*ta, after));
}

TEST_F(SafetensorsTest, EmptyFileOfTensors) {
  const std::string file = path("none.safetensors");
  ASSERT_TRUE(write_safetensors(file, {}).ok());
  auto f = SafetensorsFile::open(file);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE((*f)->entries().empty());
}

TEST_F(SafetensorsTest, OverwritesExistingFileAndLeavesNoTemp) {
  const std::string file = path("over.safetensors");
  ASSERT_TRUE(write_safetensors(file, {{"a", random_tensor({2}, DType::kF32, 1)}}).ok());
  ASSERT_TRUE(write_safetensors(file, {{"b", random_tensor({3}, DType::kF32, 2)}}).ok());
  auto f = SafetensorsFile::open(file);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->find("a"), nullptr);
  EXPECT_NE((*f)->find("b"), nullptr);
  std::ifstream tmp(file + ".tmp");
  EXPECT_FALSE(tmp.good());
}

// ---- writer errors --------------------------------------------------------------------------

TEST_F(SafetensorsTest, WriteRejectsDuplicateName) {
  const std::string file = path("dup.safetensors");
  Tensor t = random_tensor({2}, DType::kF32, 1);
  expect_error(write_safetensors(file, {{"w", t}, {"w", t}}), {file, "duplicate", "'w'"});
}

TEST_F(SafetensorsTest, WriteRejectsNonCpuTensor) {
  const std::string file = path("gpu.safetensors");
  static const float fake[4] = {};
  Tensor t = Tensor::view_of(fake, {4}, DType::kF32, nullptr, Device::cuda(0));
  expect_error(write_safetensors(file, {{"w", t}}), {file, "'w'", "cuda:0"});
}

TEST_F(SafetensorsTest, WriteRejectsReservedName) {
  const std::string file = path("reserved.safetensors");
  expect_error(write_safetensors(file, {{"__metadata__", random_tensor({1}, DType::kU8, 1)}}),
               {file, "__metadata__"});
}

TEST_F(SafetensorsTest, WriteChecksUtf8Names) {
  const std::string file = path("utf8.safetensors");
  Tensor t = random_tensor({1}, DType::kU8, 1);
  for (const char* bad : {"bad\xff", "overlong\xc0\xaf", "surrogate\xed\xa0\x80", "cut\xe2\x82"}) {
    expect_error(write_safetensors(file, {{bad, t}}), {file, "UTF-8"});
  }
  expect_error(write_safetensors(file, {{"w", t}}, {{"k", "v\xfe"}}), {file, "UTF-8"});
  const std::string emoji = "emb.\xf0\x9f\x98\x80.\xc3\xa9";
  ASSERT_TRUE(write_safetensors(file, {{emoji, t}}).ok());
  auto f = SafetensorsFile::open(file);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_NE((*f)->find(emoji), nullptr);
}

TEST_F(SafetensorsTest, WriteFailureNamesPath) {
  const std::string file = path("no/such/dir/x.safetensors");
  absl::Status s = write_safetensors(file, {{"w", random_tensor({1}, DType::kU8, 1)}});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find(file), std::string::npos) << s;
}

// ---- corrupt files --------------------------------------------------------------------------

TEST_F(SafetensorsTest, MissingFileIsNotFound) {
  expect_error(SafetensorsFile::open(path("absent.safetensors")).status(), {"absent.safetensors"},
               absl::StatusCode::kNotFound);
}

TEST_F(SafetensorsTest, EmptyFile) {
  write_bytes(path("empty.safetensors"), "");
  expect_error(SafetensorsFile::open(path("empty.safetensors")).status(),
               {"empty.safetensors", "too small"});
}

TEST_F(SafetensorsTest, ShorterThanLengthPrefix) {
  write_bytes(path("short.safetensors"), "\x10\x00\x00");
  expect_error(SafetensorsFile::open(path("short.safetensors")).status(), {"short.safetensors"});
}

TEST_F(SafetensorsTest, HeaderLengthPastEndOfFile) {
  expect_error(open_raw("past.safetensors", "{}", "", 1000),
               {"past.safetensors", "header length 1000 past end of file (size 10)"});
  expect_error(open_raw("huge.safetensors", "{}", "", UINT64_MAX),
               {"huge.safetensors", "past end of file"});
}

TEST_F(SafetensorsTest, TruncatedData) {
  // The header promises 16 bytes of data; only 8 are there.
  expect_error(
      open_raw("trunc.safetensors", R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
               std::string(8, '\0')),
      {"trunc.safetensors", "'w'", "past the end of the data section (8 bytes)"});
}

TEST_F(SafetensorsTest, TruncatedCopyOfValidFile) {
  const std::string file = path("valid.safetensors");
  ASSERT_TRUE(write_safetensors(file, {{"w", random_tensor({16}, DType::kF32, 1)}}).ok());
  std::ifstream in(file, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  write_bytes(path("cut.safetensors"), bytes.substr(0, bytes.size() - 1));
  expect_error(SafetensorsFile::open(path("cut.safetensors")).status(), {"cut.safetensors", "'w'"});
  write_bytes(path("cut2.safetensors"), bytes.substr(0, 20));
  expect_error(SafetensorsFile::open(path("cut2.safetensors")).status(),
               {"cut2.safetensors", "past end of file"});
}

TEST_F(SafetensorsTest, BadJson) {
  expect_error(open_raw("badjson.safetensors", R"({"w": {"dtype": )"),
               {"badjson.safetensors", "invalid JSON", "byte"});
  expect_error(open_raw("garbage.safetensors", std::string("\xff\xfe\x00\x01", 4)),
               {"garbage.safetensors", "invalid JSON"});
}

TEST_F(SafetensorsTest, HeaderNotAnObject) {
  expect_error(open_raw("array.safetensors", "[1, 2, 3]"),
               {"array.safetensors", "must be a JSON object", "array"});
}

TEST_F(SafetensorsTest, EntryNotAnObject) {
  expect_error(open_raw("entry.safetensors", R"({"w": 5})"), {"entry.safetensors", "'w'"});
}

TEST_F(SafetensorsTest, UnknownDType) {
  expect_error(
      open_raw("dtype.safetensors", R"({"w":{"dtype":"F31","shape":[1],"data_offsets":[0,4]}})",
               std::string(4, '\0')),
      {"dtype.safetensors", "'w'", "unknown dtype 'F31'"});
  expect_error(
      open_raw("dtype2.safetensors", R"({"w":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})",
               std::string(4, '\0')),
      {"dtype2.safetensors", "'w'", "dtype"});
}

TEST_F(SafetensorsTest, NegativeShape) {
  expect_error(
      open_raw("neg.safetensors", R"({"w":{"dtype":"U8","shape":[2,-1],"data_offsets":[0,0]}})"),
      {"neg.safetensors", "'w'", "negative dimension -1"});
}

TEST_F(SafetensorsTest, NonIntegerShape) {
  expect_error(
      open_raw("fshape.safetensors", R"({"w":{"dtype":"U8","shape":[2.5],"data_offsets":[0,2]}})",
               std::string(2, '\0')),
      {"fshape.safetensors", "'w'", "shape[0]"});
}

TEST_F(SafetensorsTest, ShapeByteRangeMismatch) {
  expect_error(open_raw("mismatch.safetensors",
                        R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})",
                        std::string(24, '\0')),
               {"mismatch.safetensors", "'w'", "20 bytes", "needs 24"});
}

TEST_F(SafetensorsTest, ShapeOverflow) {
  expect_error(
      open_raw("overflow.safetensors",
               R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}})"),
      {"overflow.safetensors", "'w'", "too large"});
  // numel fits in 64 bits but its byte size does not.
  expect_error(
      open_raw("overflow2.safetensors",
               R"({"w":{"dtype":"I64","shape":[4611686018427387904],"data_offsets":[0,0]}})"),
      {"overflow2.safetensors", "'w'", "too large"});
}

TEST_F(SafetensorsTest, OffsetsPastDataSection) {
  expect_error(
      open_raw("pastdata.safetensors", R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[8,12]}})",
               std::string(10, '\0')),
      {"pastdata.safetensors", "'w'", "end 12", "(10 bytes)"});
}

TEST_F(SafetensorsTest, BeginAfterEnd) {
  expect_error(
      open_raw("begin.safetensors", R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})",
               std::string(8, '\0')),
      {"begin.safetensors", "'w'", "begin 4 > end 0"});
}

TEST_F(SafetensorsTest, MalformedOffsets) {
  expect_error(
      open_raw("off3.safetensors", R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}})",
               std::string(2, '\0')),
      {"off3.safetensors", "'w'", "data_offsets"});
  expect_error(
      open_raw("offneg.safetensors", R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}})",
               std::string(2, '\0')),
      {"offneg.safetensors", "'w'", "data_offsets"});
}

TEST_F(SafetensorsTest, OverlappingRanges) {
  expect_error(open_raw("overlap.safetensors",
                        R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},)"
                        R"( "b":{"dtype":"U8","shape":[4],"data_offsets":[6,10]}})",
                        std::string(16, '\0')),
               {"overlap.safetensors", "'a'", "'b'", "overlap"});
  // Identical ranges overlap too.
  expect_error(open_raw("same.safetensors",
                        R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                        R"( "b":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}})",
                        std::string(4, '\0')),
               {"same.safetensors", "overlap"});
}

TEST_F(SafetensorsTest, AdjacentRangesAndGapsAreFine) {
  EXPECT_TRUE(open_raw("adjacent.safetensors",
                       R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                       R"( "z":{"dtype":"U8","shape":[0],"data_offsets":[4,4]},)"
                       R"( "b":{"dtype":"U8","shape":[2],"data_offsets":[8,10]}})",
                       std::string(12, '\0'))
                  .ok());
}

TEST_F(SafetensorsTest, UnknownEntryField) {
  expect_error(open_raw("extra.safetensors",
                        R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"bias":1}})",
                        std::string(1, '\0')),
               {"extra.safetensors", "'w'", "unknown field 'bias'"});
}

TEST_F(SafetensorsTest, MissingEntryField) {
  expect_error(open_raw("nofield.safetensors", R"({"w":{"dtype":"U8","shape":[1]}})"),
               {"nofield.safetensors", "'w'", "data_offsets"});
}

TEST_F(SafetensorsTest, BadMetadata) {
  expect_error(open_raw("meta1.safetensors", R"({"__metadata__": {"format": 1}})"),
               {"meta1.safetensors", "__metadata__", "'format'"});
  expect_error(open_raw("meta2.safetensors", R"({"__metadata__": [1]})"),
               {"meta2.safetensors", "__metadata__"});
}

TEST_F(SafetensorsTest, MissingKeyIsNotFound) {
  const std::string file = path("keys.safetensors");
  ASSERT_TRUE(write_safetensors(file, {{"present", random_tensor({1}, DType::kF32, 1)}}).ok());
  auto f = SafetensorsFile::open(file);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->find("absent"), nullptr);
  expect_error((*f)->get("absent").status(), {file, "'absent'"}, absl::StatusCode::kNotFound);
}

TEST(SafetensorsHeaderTest, ParsesDirectly) {
  auto h = parse_safetensors_header(R"({"b":{"dtype":"BF16","shape":[2],"data_offsets":[4,8]},)"
                                    R"( "a":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]},)"
                                    R"( "__metadata__":{"k":"v"}})",
                                    8, "mem");
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->entries.size(), 2u);
  EXPECT_EQ(h->entries[0].name, "a");
  EXPECT_EQ(h->entries[0].dtype, DType::kF8E4M3FN);
  EXPECT_EQ(h->entries[1].dtype, DType::kBF16);
  EXPECT_EQ(h->metadata.at("k"), "v");
}

TEST(SafetensorsHeaderTest, NullMetadataIsAbsent) {
  auto h = parse_safetensors_header(R"({"__metadata__": null})", 0, "mem");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_TRUE(h->metadata.empty());
}

TEST(SafetensorsHeaderTest, HeaderSizeLimit) {
  const std::string big(100'000'001, ' ');
  expect_error(parse_safetensors_header(big, 0, "big.safetensors").status(),
               {"big.safetensors", "exceeds the limit"});
}

}  // namespace
}  // namespace fluxserve
