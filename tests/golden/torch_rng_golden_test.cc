// TorchGenerator::randn against torch.randn(shape, generator=torch.Generator("cpu").manual_seed(N))
// as recorded by tools/golden/generate_rng.py: every case bit for bit (memcmp), for both of
// torch's CPU Box-Muller paths (vec = AVX2/AVX-512 avx_mathfun, scalar = libm), f32/bf16/f16,
// diffusers' per-sample generator lists and a sequence of draws on one generator.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/io/checkpoint.h"
#include "engine/io/safetensors.h"
#include "engine/pipeline/torch_rng.h"
#include "tests/golden/golden_util.h"

namespace fluxserve {
namespace {

using testing::fixture;

DType dtype_of(const std::string& name) {
  if (name == "bf16") return DType::kBF16;
  if (name == "f16") return DType::kF16;
  return DType::kF32;
}

std::string fnv1a64(const void* p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  const auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
  char buf[17];
  snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

// Index of the first differing element (for the failure message), or -1.
int64_t first_diff(const Tensor& a, const void* ref, int64_t n, size_t esize, int64_t offset = 0) {
  const char* pa = static_cast<const char*>(a.raw()) + offset * esize;
  for (int64_t i = 0; i < n; ++i) {
    if (std::memcmp(pa + i * esize, static_cast<const char*>(ref) + i * esize, esize) != 0) return i;
  }
  return -1;
}

std::string describe(const Tensor& ours, const Tensor& ref, int64_t i, int64_t offset) {
  const float a = (*ours.as_f32()).data<float>()[offset + i];
  const float b = (*ref.as_f32()).data<float>()[i];
  return absl::StrCat("first difference at element ", offset + i, ": ours ", a, " torch ", b);
}

class TorchRngGolden : public ::testing::Test {
 protected:
  void SetUp() override {
    auto cases = read_json_file(fixture("rng/cases.json"));
    ASSERT_TRUE(cases.ok()) << cases.status();
    cases_ = *cases;
    auto file = SafetensorsFile::open(fixture("rng/randn.safetensors"));
    ASSERT_TRUE(file.ok()) << file.status();
    file_ = *file;
    for (const auto& e : cases_["tensors"]) entries_[e["name"].get<std::string>()] = e;
  }

  // Compares `ours` with the recorded case `name` byte for byte (whole tensor, or head/tail plus
  // the FNV-1a hash of all bytes for the big ones). Returns false on a mismatch.
  bool check(const std::string& name, const Tensor& ours) {
    auto it = entries_.find(name);
    EXPECT_NE(it, entries_.end()) << "no case " << name;
    if (it == entries_.end()) return false;
    const auto& e = it->second;
    const Shape shape = e["shape"].get<Shape>();
    EXPECT_EQ(ours.shape(), shape) << name;
    EXPECT_EQ(ours.dtype(), dtype_of(e["dtype"].get<std::string>())) << name;
    if (ours.shape() != shape) return false;
    const size_t es = dtype_size(ours.dtype());
    bool ok = true;
    if (e["stored"] == "full") {
      const Tensor ref = *file_->get(name);
      EXPECT_EQ(ref.nbytes(), ours.nbytes()) << name;
      const int64_t d = first_diff(ours, ref.raw(), ref.numel(), es);
      EXPECT_EQ(d, -1) << name << ": " << (d >= 0 ? describe(ours, ref, d, 0) : "");
      ok = ok && d == -1;
    } else {
      const int64_t edge = cases_["edge"].get<int64_t>();
      const Tensor head = *file_->get(name + "/head");
      const Tensor tail = *file_->get(name + "/tail");
      const int64_t dh = first_diff(ours, head.raw(), edge, es);
      EXPECT_EQ(dh, -1) << name << " head: " << (dh >= 0 ? describe(ours, head, dh, 0) : "");
      const int64_t off = ours.numel() - edge;
      const int64_t dt = first_diff(ours, tail.raw(), edge, es, off);
      EXPECT_EQ(dt, -1) << name << " tail: " << (dt >= 0 ? describe(ours, tail, dt, off) : "");
      const std::string h = fnv1a64(ours.raw(), ours.nbytes());
      EXPECT_EQ(h, e["fnv1a64"].get<std::string>()) << name << ": hash of all bytes differs";
      ok = ok && dh == -1 && dt == -1 && h == e["fnv1a64"].get<std::string>();
    }
    return ok;
  }

  nlohmann::json cases_;
  std::shared_ptr<const SafetensorsFile> file_;
  std::map<std::string, nlohmann::json> entries_;
};

TorchRngPath path_of(const std::string& p) {
  return p == "scalar" ? TorchRngPath::kScalarLibm : TorchRngPath::kX86Vectorized;
}

TEST_F(TorchRngGolden, SingleGeneratorEveryCase) {
  int checked = 0, failed = 0;
  for (const auto& [name, e] : entries_) {
    // "<path>/s<seed>/<shape>/<dtype>"
    std::vector<std::string> parts = absl::StrSplit(name, '/');
    if (parts.size() != 4 || parts[1][0] != 's') continue;
    const uint64_t seed = std::stoull(parts[1].substr(1));
    TorchGenerator gen(seed, path_of(parts[0]));
    const Tensor ours = gen.randn(e["shape"].get<Shape>(), dtype_of(parts[3]));
    failed += check(name, ours) ? 0 : 1;
    ++checked;
  }
  // 7 seeds x 10 shapes x (f32, bf16) + 7 x 3 f16, for each of the two paths.
  EXPECT_EQ(checked, 2 * (7 * 10 * 2 + 7 * 3));
  EXPECT_EQ(failed, 0);
}

TEST_F(TorchRngGolden, PerSampleGeneratorsLikeDiffusersRandnTensor) {
  int checked = 0;
  for (const char* path : {"vec", "scalar"}) {
    for (size_t i = 0; i < cases_["multi"].size(); ++i) {
      const auto& m = cases_["multi"][i];
      const std::vector<uint64_t> seeds = m["seeds"].get<std::vector<uint64_t>>();
      for (const char* dt : {"f32", "bf16"}) {
        const Tensor ours = randn_per_sample(seeds, m["shape"].get<Shape>(), dtype_of(dt), path_of(path));
        check(absl::StrCat(path, "/multi", i, "/", dt), ours);
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 12);
}

TEST_F(TorchRngGolden, SequenceOfDrawsOnOneGenerator) {
  // Exercises the cached second Box-Muller sample of the scalar (numel < 16) path across calls,
  // and that normal_fill neither uses nor clears it.
  for (const char* path : {"vec", "scalar"}) {
    TorchGenerator gen(cases_["sequence"]["seed"].get<uint64_t>(), path_of(path));
    int i = 0;
    for (const auto& d : cases_["sequence"]["draws"]) {
      const std::string dt = d[1].get<std::string>();
      const Tensor ours = gen.randn(d[0].get<Shape>(), dtype_of(dt));
      check(absl::StrCat(path, "/seq", i, "/", dt), ours);
      ++i;
    }
    EXPECT_EQ(i, 8);
  }
}

TEST_F(TorchRngGolden, RecordsTheTorchBuild) {
  EXPECT_FALSE(cases_["torch_version"].get<std::string>().empty());
  const std::string cap = cases_["cpu_capability"].get<std::string>();
  EXPECT_TRUE(cap == "AVX2" || cap == "AVX512") << cap;
}

}  // namespace
}  // namespace fluxserve
