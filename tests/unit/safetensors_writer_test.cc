// SafetensorsStreamWriter: what it streams reads back identically through the validating reader,
// tensors are laid out by alignment then name (so every view stays aligned), and bad names, a
// second finish and an unwritable path are errors naming the file.
#include "engine/io/safetensors_writer.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "engine/io/safetensors.h"
#include "tests/unit/test_util.h"

namespace fluxserve {
namespace {

using testing::expect_error;
using testing::make_temp_dir;

Tensor filled(Shape shape, DType dt, uint8_t seed) {
  Tensor t = Tensor::empty(shape, dt);
  auto* p = static_cast<uint8_t*>(t.raw());
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<uint8_t>(seed + 31 * i);
  return t;
}

TEST(SafetensorsStreamWriter, RoundTripsAndAligns) {
  const std::string dir = make_temp_dir("st_stream");
  const std::string path = dir + "/m.safetensors";
  auto w = SafetensorsStreamWriter::create(path);
  ASSERT_TRUE(w.ok()) << w.status();
  // Added in an order that would misalign the f32 tensors if written as given.
  const std::vector<std::pair<std::string, Tensor>> tensors = {
      {"b.blob", filled({7}, DType::kU8, 1)},
      {"a.weight", filled({3, 5}, DType::kF32, 2)},
      {"c.half", filled({3}, DType::kBF16, 3)},
      {"d.scalar", filled({}, DType::kU8, 4)},
      {"e.empty", Tensor::empty({0, 4}, DType::kF32)},
      {"f.i64", filled({2}, DType::kI64, 5)},
  };
  for (const auto& [n, t] : tensors) ASSERT_TRUE((*w)->add(n, t).ok());
  EXPECT_FALSE(std::filesystem::exists(path));  // only complete files appear
  ASSERT_TRUE((*w)->finish({{"format", "pt"}}).ok());
  EXPECT_FALSE(std::filesystem::exists(path + ".data.tmp"));
  auto f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->metadata().at("format"), "pt");
  ASSERT_EQ((*f)->entries().size(), tensors.size());
  for (const auto& [n, t] : tensors) {
    const SafetensorsEntry* e = (*f)->find(n);
    ASSERT_NE(e, nullptr) << n;
    EXPECT_EQ(e->dtype, t.dtype());
    EXPECT_EQ(e->shape, t.shape());
    EXPECT_EQ(e->begin % dtype_size(e->dtype), 0u) << n << " misaligned";
    const Tensor r = *(*f)->get(n);
    ASSERT_EQ(r.nbytes(), t.nbytes());
    if (t.nbytes() > 0) {
      EXPECT_EQ(std::memcmp(r.raw(), t.raw(), t.nbytes()), 0) << n;
    }
  }
  // Larger alignment first, then by name: the i64 tensor leads, the u8 ones come last.
  EXPECT_EQ((*f)->find("f.i64")->begin, 0u);
  EXPECT_GT((*f)->find("b.blob")->begin, (*f)->find("c.half")->begin);
  EXPECT_LT((*f)->find("b.blob")->begin, (*f)->find("d.scalar")->begin);
  std::filesystem::remove_all(dir);
}

TEST(SafetensorsStreamWriter, Errors) {
  const std::string dir = make_temp_dir("st_stream_err");
  const std::string path = dir + "/m.safetensors";
  auto w = SafetensorsStreamWriter::create(path);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->add("x", filled({2}, DType::kF32, 0)).ok());
  expect_error((*w)->add("x", filled({2}, DType::kF32, 0)), {path, "duplicate", "'x'"});
  expect_error((*w)->add("__metadata__", filled({2}, DType::kF32, 0)), {path, "reserved"});
  expect_error((*w)->add(std::string("bad\xff", 4), filled({2}, DType::kF32, 0)), {path, "UTF-8"});
  ASSERT_TRUE((*w)->finish().ok());
  expect_error((*w)->finish(), {path, "already finished"}, absl::StatusCode::kFailedPrecondition);
  auto none = SafetensorsStreamWriter::create(dir + "/missing/m.safetensors");
  expect_error(none.status(), {"missing/m.safetensors"}, absl::StatusCode::kUnavailable);
  {  // an abandoned writer leaves nothing behind
    auto a = SafetensorsStreamWriter::create(dir + "/abandoned.safetensors");
    ASSERT_TRUE(a.ok());
    ASSERT_TRUE((*a)->add("y", filled({4}, DType::kU8, 1)).ok());
  }
  EXPECT_FALSE(std::filesystem::exists(dir + "/abandoned.safetensors.data.tmp"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/abandoned.safetensors"));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace fluxserve
