// `fluxserve bench quant-linear`: the CPU time of one quantized Linear forward per format against
// the f32 GEMM (OpenBLAS sgemm through ops::linear) on the same shape. Prints a table and one
// RESULT line per format and M.
#include <algorithm>
#include <chrono>
#include <functional>
#include <iostream>
#include <random>

#include "absl/strings/str_format.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "engine/core/status.h"
#include "engine/quant/ggml_formats.h"
#include "engine/quant/ggml_linear.h"
#include "engine/quant/quantized_linear.h"
#include "kernels/common/dtype_math.h"
#include "kernels/ops.h"

namespace fluxserve::cli {
namespace {

constexpr const char* kUsage = R"(usage:
  fluxserve bench quant-linear [--m 512,1] [--k 3072] [--n 3072] [--threads T] [--iters I]
      [--warmup W] [--formats f32,nf4,...]
  y = x W^T for x [M, K], W [N, K]: the median time of each quantized format's CPU forward next to
  the f32 GEMM's. --m takes a comma list (default: a FLUX-like token batch and a GEMV).
  Formats: nf4 fp4 (bitsandbytes, double quant) int8_t0 int8_t6 (LLM.int8, threshold 0 / 6)
  int8wo int8dq int4wo int4dq float8wo float8dq_row float8dq_tensor fp6_e3m2 uint4wo (torchao)
  q8_0 q4_0 q5_1 q4_k q6_k (GGUF).
)";

struct Format {
  std::string name;
  nlohmann::json quant;  // a quant_mapping entry, or null for GGUF
  GgmlType ggml = GgmlType::kF32;
};

std::vector<Format> all_formats() {
  auto ao = [](const char* qt) { return nlohmann::json{{"quant_backend", "torchao"}, {"quant_type", qt}}; };
  auto bnb4 = [](const char* qt) {
    return nlohmann::json{{"quant_backend", "bitsandbytes_4bit"}, {"load_in_4bit", true},
                          {"bnb_4bit_quant_type", qt}, {"bnb_4bit_use_double_quant", true}};
  };
  auto bnb8 = [](double t) {
    return nlohmann::json{{"quant_backend", "bitsandbytes_8bit"}, {"load_in_8bit", true},
                          {"llm_int8_threshold", t}};
  };
  return {{"nf4", bnb4("nf4")},          {"fp4", bnb4("fp4")},
          {"int8_t0", bnb8(0.0)},        {"int8_t6", bnb8(6.0)},
          {"int8wo", ao("int8wo")},      {"int8dq", ao("int8dq")},
          {"int4wo", ao("int4wo")},      {"int4dq", ao("int4dq")},
          {"float8wo", ao("float8wo_e4m3")}, {"float8dq_row", ao("float8dq_e4m3_row")},
          {"float8dq_tensor", ao("float8dq_e4m3_tensor")}, {"fp6_e3m2", ao("fp6_e3m2")},
          {"uint4wo", ao("uint4wo")},
          {"q8_0", nullptr, GgmlType::kQ8_0},  {"q4_0", nullptr, GgmlType::kQ4_0},
          {"q5_1", nullptr, GgmlType::kQ5_1},  {"q4_k", nullptr, GgmlType::kQ4_K},
          {"q6_k", nullptr, GgmlType::kQ6_K}};
}

// GGUF blocks for w: the reference quantizer where fluxserve has one; K-quants (no quantizer)
// get random codes with fp16 scales of the weight's magnitude — the decode cost is the same.
absl::StatusOr<std::shared_ptr<const QuantizedLinearWeight>> ggml_weight(GgmlType t, const Tensor& w,
                                                                         std::mt19937& rng) {
  const int64_t n = w.size(0), k = w.size(1);
  auto bytes = std::make_shared<std::vector<uint8_t>>();
  if (ggml_can_quantize(t)) {
    FLUX_ASSIGN_OR_RETURN(*bytes, ggml_quantize(t, w.data<float>(), n * k));
  } else {
    const ggml::GgmlTypeInfo ti = ggml::ggml_type_info(t);
    bytes->resize(static_cast<size_t>(n * k / ti.block_size * ti.type_size));
    std::uniform_int_distribution<int> u(0, 255);
    for (uint8_t& b : *bytes) b = static_cast<uint8_t>(u(rng));
    const uint16_t d = dmath::f32_to_f16(1e-4f);
    const std::vector<int> d_at = t == GgmlType::kQ6_K ? std::vector<int>{208} : std::vector<int>{0, 2};
    for (size_t i = 0; i < bytes->size(); i += static_cast<size_t>(ti.type_size)) {
      for (int off : d_at) {
        (*bytes)[i + off] = static_cast<uint8_t>(d & 0xFF);
        (*bytes)[i + off + 1] = static_cast<uint8_t>(d >> 8);
      }
    }
  }
  return make_ggml_linear(t, n, k, bytes->data(), bytes->size(), bytes);
}

double median_ms(const std::function<void()>& f, int64_t warmup, int64_t iters) {
  std::vector<double> ms;
  for (int64_t i = 0; i < warmup + iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    const double dt = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (i >= warmup) ms.push_back(dt);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

absl::Status run(const Args& a) {
  FLUX_ASSIGN_OR_RETURN(int64_t k, a.int_or("k", 3072));
  FLUX_ASSIGN_OR_RETURN(int64_t n, a.int_or("n", 3072));
  FLUX_ASSIGN_OR_RETURN(int64_t threads, a.int_or("threads", 0));
  FLUX_ASSIGN_OR_RETURN(int64_t iters, a.int_or("iters", 5));
  FLUX_ASSIGN_OR_RETURN(int64_t warmup, a.int_or("warmup", 1));
  std::vector<int64_t> ms;
  for (absl::string_view s : absl::StrSplit(a.str_or("m", "512,1"), ',')) {
    int64_t m = 0;
    if (!absl::SimpleAtoi(s, &m) || m <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("--m: '", std::string(s), "' is not a positive integer"));
    }
    ms.push_back(m);
  }
  if (k <= 0 || n <= 0 || k % 256 != 0 || iters <= 0 || warmup < 0) {
    return absl::InvalidArgumentError("--k must be a positive multiple of 256 (K-quant blocks), --n and --iters positive");
  }
  std::vector<Format> formats = all_formats();
  if (a.has("formats")) {
    std::vector<Format> pick;
    for (absl::string_view s : absl::StrSplit(a.str_or("formats", ""), ',')) {
      auto it = std::find_if(formats.begin(), formats.end(), [&](const Format& f) { return f.name == s; });
      if (it == formats.end()) return absl::InvalidArgumentError(absl::StrCat("--formats: unknown '", std::string(s), "'"));
      pick.push_back(*it);
    }
    formats = pick;
  }
  const int nthreads = set_threads(threads);
  std::mt19937 rng(0);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Tensor w = Tensor::empty({n, k});
  for (int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] = 0.02f * nd(rng);

  struct Built {
    std::string name;
    std::shared_ptr<const QuantizedLinearWeight> q;
  };
  std::vector<Built> built;
  for (const Format& f : formats) {
    std::shared_ptr<const QuantizedLinearWeight> q;
    if (f.quant.is_null()) {
      FLUX_ASSIGN_OR_RETURN(q, ggml_weight(f.ggml, w, rng));
    } else {
      FLUX_ASSIGN_OR_RETURN(PipelineQuantConfig pq, PipelineQuantConfig::from_json(
                                                        {{"quant_mapping", {{"transformer", f.quant}}}}));
      FLUX_ASSIGN_OR_RETURN(q, quantize_linear_weight(w, *pq.resolve("transformer"), f.name));
      if (q == nullptr) return absl::InvalidArgumentError(absl::StrCat(f.name, ": K not divisible by its group size"));
    }
    built.push_back({f.name, q});
  }
  std::cout << absl::StrFormat("quantized linear: y = x W^T, K = %d, N = %d, %d threads\n", k, n, nthreads);
  for (int64_t m : ms) {
    Tensor x = Tensor::empty({m, k});
    for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = nd(rng);
    const double gflop = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) / 1e9;
    const double f32_ms = median_ms([&] { (void)ops::linear(x, w, nullptr); }, warmup, iters);
    std::cout << absl::StrFormat("\nM = %d\n%-16s %10s %10s %10s %12s\n", m, "format", "ms", "GFLOP/s",
                                 "vs f32", "weight MB");
    auto line = [&](const std::string& name, double t, double mb) {
      std::cout << absl::StrFormat("%-16s %10.2f %10.1f %9.2fx %12.2f\n", name, t, gflop / (t / 1e3), f32_ms / t, mb);
    };
    auto result = [&](const std::string& name, double t) {
      std::cout << absl::StrFormat("RESULT format=%s m=%d k=%d n=%d ms=%.3f gflops=%.2f vs_f32=%.3f threads=%d\n",
                                   name, m, k, n, t, gflop / (t / 1e3), f32_ms / t, nthreads);
    };
    line("f32 (sgemm)", f32_ms, static_cast<double>(w.nbytes()) / 1e6);
    result("f32", f32_ms);
    for (const Built& b : built) {
      absl::Status err;
      const double t = median_ms([&] {
        auto y = b.q->forward(x, nullptr);
        if (!y.ok()) err = y.status();
      }, warmup, iters);
      FLUX_RETURN_IF_ERROR(err);
      line(b.name, t, static_cast<double>(b.q->nbytes()) / 1e6);
      result(b.name, t);
    }
  }
  return absl::OkStatus();
}

}  // namespace

int bench_quant_linear_main(const std::vector<std::string>& args) {
  if (!args.empty() && (args[0] == "--help" || args[0] == "help")) {
    std::cout << kUsage;
    return 0;
  }
  auto a = Args::parse(args, {"m", "k", "n", "threads", "iters", "warmup", "formats"});
  absl::Status st = a.ok() ? run(*a) : a.status();
  if (!st.ok()) {
    std::cerr << "fluxserve bench quant-linear: " << st.message() << "\n" << kUsage;
    return 1;
  }
  return 0;
}

}  // namespace fluxserve::cli
