// Exact integer matrix products on top of OpenBLAS sgemm, for the dynamic int8 formats
// (bitsandbytes LLM.int8, torchao int8dq), whose references accumulate in int32. OpenBLAS has no
// int8 GEMM, but an f32 sum of integers is exact while every partial sum stays within 2^24, so K
// is cut into chunks short enough for that and the chunk results are added in int32.
#pragma once

#include <cstdint>

namespace fluxserve {

// The longest K chunk whose sgemm is exact for operands bounded by |a| <= max_a, |b| <= max_b:
// every product is exact in f32 (|a·b| <= 2^14 needs 15 bits, so FMA or not makes no difference)
// and every partial sum, in whatever order and blocking sgemm adds them, is an integer bounded by
// chunk * max_a * max_b <= 2^24, which f32 represents exactly.
int64_t exact_sgemm_chunk(int64_t max_a, int64_t max_b);

// acc[M, N] (row-major, int32) = a[M, K] · b[N, K]ᵀ exactly, with `a` holding int8 values as f32
// (the caller widens the activations once) and `b` the int8 weight. Parallel (OpenMP) over panels
// of weight rows, each widened into a per-thread f32 buffer; sgemm runs single-threaded inside the
// parallel region (OpenBLAS' OpenMP build does so when omp_in_parallel()). Every |value| <= 128,
// so chunks of 1024 (128·128·1024 = 2^24) are exact, and the chunk sums add up in int32 to the
// reference's int32 accumulator (which cannot overflow below K = 2^31 / 2^14 = 131072).
void int8_gemm_exact(const float* a, int64_t m, int64_t k, const int8_t* b, int64_t n,
                     int32_t* acc);

}  // namespace fluxserve
