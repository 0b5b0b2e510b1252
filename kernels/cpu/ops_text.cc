// CPU ops used only by the text encoders (CLIP, T5): quick_gelu, elementwise product, embedding
// lookup. attention_ex lives in ops_cpu.cc beside attention, with which it shares the kernel.
#include <cstdint>
#include <cstring>

#include "engine/core/check.h"
#include "kernels/common/dtype_math.h"
#include "kernels/cpu/ops_cpu.h"
#include "kernels/cpu/vec_math.h"

namespace fluxserve::cpu {
namespace {

constexpr int64_t kParallelMin = 1 << 14;

void require_f32(const Tensor& t, const char* op) {
  FLUX_CHECK(t.dtype() == DType::kF32) << op << ": expected float32, got " << dtype_name(t.dtype());
}

template <class Id>
int64_t id_at(const Tensor& ids, int64_t i) {
  return static_cast<int64_t>(ids.data<Id>()[i]);
}

}  // namespace

void quick_gelu_(Tensor& x) {
  require_f32(x, "quick_gelu");
  float* p = x.data<float>();
  const int64_t n = x.numel();
  // transformers' QuickGELUActivation: input * torch.sigmoid(1.702 * input).
#pragma omp parallel for simd if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) p[i] = p[i] * (1.0f / (1.0f + vexp(-1.702f * p[i])));
}

void mul_(Tensor& x, const Tensor& y) {
  require_f32(x, "mul");
  require_f32(y, "mul");
  FLUX_CHECK(x.numel() == y.numel()) << "mul: " << x.shape_str() << " * " << y.shape_str();
  float* p = x.data<float>();
  const float* q = y.data<float>();
  const int64_t n = x.numel();
#pragma omp parallel for simd if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) p[i] *= q[i];
}

Tensor embedding(const Tensor& table, const Tensor& ids) {
  FLUX_CHECK(table.dim() == 2) << "embedding: table " << table.shape_str();
  FLUX_CHECK(ids.dtype() == DType::kI64 || ids.dtype() == DType::kI32)
      << "embedding: ids must be int32 or int64, got " << dtype_name(ids.dtype());
  const DType dt = table.dtype();
  FLUX_CHECK(dt == DType::kF32 || dt == DType::kBF16 || dt == DType::kF16)
      << "embedding: table dtype " << dtype_name(dt);
  const int64_t vocab = table.size(0), d = table.size(1), n = ids.numel();
  Shape shape = ids.shape();
  shape.push_back(d);
  Tensor out = Tensor::empty(shape);
  const bool i64 = ids.dtype() == DType::kI64;
  float* op = out.data<float>();
#pragma omp parallel for if (n * d > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = i64 ? id_at<int64_t>(ids, i) : id_at<int32_t>(ids, i);
    FLUX_CHECK(id >= 0 && id < vocab) << "embedding: id " << id << " outside [0, " << vocab << ")";
    float* o = op + i * d;
    if (dt == DType::kF32) {
      std::memcpy(o, table.data<float>() + id * d, static_cast<size_t>(d) * sizeof(float));
    } else if (dt == DType::kBF16) {
      const uint16_t* r = table.data<uint16_t>() + id * d;
      for (int64_t j = 0; j < d; ++j) o[j] = dmath::bf16_to_f32(r[j]);
    } else {
      const uint16_t* r = table.data<uint16_t>() + id * d;
      for (int64_t j = 0; j < d; ++j) o[j] = dmath::f16_to_f32(r[j]);
    }
  }
  return out;
}

}  // namespace fluxserve::cpu
