// Exact integer matrix products for the dynamic int8 formats (bitsandbytes LLM.int8, torchao
// int8dq), whose references accumulate int8 x int8 products in int32. Two implementations with
// identical results: an AVX-512 VNNI kernel where the build targets it, and everywhere else
// OpenBLAS sgemm on the codes as f32 — an f32 sum of integers is exact while every partial sum
// stays within 2^24, so K is cut into chunks short enough for that and the chunk results are
// added in int32.
#pragma once

#include <cstdint>

namespace fluxserve {

// The longest K chunk whose sgemm is exact for operands bounded by |a| <= max_a, |b| <= max_b:
// every product is exact in f32 (|a·b| <= 2^14 needs 15 bits, so FMA or not makes no difference)
// and every partial sum, in whatever order and blocking sgemm adds them, is an integer bounded by
// chunk * max_a * max_b <= 2^24, which f32 represents exactly.
int64_t exact_sgemm_chunk(int64_t max_a, int64_t max_b);

// acc[M, N] (row-major, int32) = a[M, K] · b[N, K]ᵀ exactly for int8 a (activation codes) and b
// (weight codes): int8_gemm_vnni where it is available (and K <= 65536), else
// int8_gemm_sgemm. The int32 total cannot overflow below K = 2^31 / 2^14 = 131072.
void int8_gemm_exact(const int8_t* a, int64_t m, int64_t k, const int8_t* b, int64_t n,
                     int32_t* acc);

// The chunked-sgemm implementation: parallel (OpenMP) over panels of weight rows widened into
// per-thread f32 buffers; sgemm runs single-threaded inside the parallel region. Every
// |value| <= 128, so chunks of 1024 (128·128·1024 = 2^24) are exact.
void int8_gemm_sgemm(const int8_t* a, int64_t m, int64_t k, const int8_t* b, int64_t n,
                     int32_t* acc);

// The AVX-512 VNNI implementation (vpdpbusd: unsigned x signed bytes, four products per int32
// lane, no saturation). The activations are offset to a + 128 in [0, 255] and the offset is
// taken back exactly: Σ (a+128)·b = Σ a·b + 128·Σ b. Every lane stays below 255·128·K <= 2^31
// for K <= 65536. Returns false (acc untouched) when the build has no VNNI or K > 65536.
bool int8_gemm_vnni(const int8_t* a, int64_t m, int64_t k, const int8_t* b, int64_t n,
                    int32_t* acc);

}  // namespace fluxserve
