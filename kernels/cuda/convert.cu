// Storage-dtype decode on the GPU, using the same scalar math as the CPU (kernels/common).
#include <cuda_runtime.h>

#include "engine/core/dtype.h"
#include "kernels/common/dtype_math.h"
#include "kernels/cuda/cuda_backend.h"

namespace fluxserve::cuda {
namespace {

template <DType kType>
__global__ void to_f32_kernel(const void* __restrict__ src, float* __restrict__ dst, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  if constexpr (kType == DType::kF32) dst[i] = static_cast<const float*>(src)[i];
  if constexpr (kType == DType::kBF16) dst[i] = dmath::bf16_to_f32(static_cast<const uint16_t*>(src)[i]);
  if constexpr (kType == DType::kF16) dst[i] = dmath::f16_to_f32(static_cast<const uint16_t*>(src)[i]);
  if constexpr (kType == DType::kF8E4M3FN)
    dst[i] = dmath::f8e4m3fn_to_f32(static_cast<const uint8_t*>(src)[i]);
  if constexpr (kType == DType::kF8E5M2)
    dst[i] = dmath::f8e5m2_to_f32(static_cast<const uint8_t*>(src)[i]);
}

template <DType kType>
cudaError_t launch(const void* src, float* dst, int64_t n, cudaStream_t s) {
  const int threads = 256;
  const int64_t blocks = (n + threads - 1) / threads;
  to_f32_kernel<kType><<<static_cast<unsigned>(blocks), threads, 0, s>>>(src, dst, n);
  return cudaGetLastError();
}

}  // namespace

std::string convert_to_f32(const void* src, int dtype_code, float* dst, int64_t n, void* stream) {
  if (n <= 0) return {};
  auto s = static_cast<cudaStream_t>(stream);
  cudaError_t err;
  switch (static_cast<DType>(dtype_code)) {
    case DType::kF32: err = launch<DType::kF32>(src, dst, n, s); break;
    case DType::kBF16: err = launch<DType::kBF16>(src, dst, n, s); break;
    case DType::kF16: err = launch<DType::kF16>(src, dst, n, s); break;
    case DType::kF8E4M3FN: err = launch<DType::kF8E4M3FN>(src, dst, n, s); break;
    case DType::kF8E5M2: err = launch<DType::kF8E5M2>(src, dst, n, s); break;
    default: return "convert_to_f32: unsupported dtype";
  }
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

}  // namespace fluxserve::cuda
