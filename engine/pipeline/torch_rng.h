// torch's CPU random generator and torch.randn, reproduced bit for bit, so that `seed N` gives
// the initial latents diffusers gets with generator=torch.Generator("cpu").manual_seed(N).
//
// What is reproduced (checked bit for bit against the torch 2.15.0 x86-64 wheel by
// tools/golden/generate_rng.py and tests/golden/torch_rng_golden_test.cc):
//  - at::mt19937 (aten/src/ATen/core/MT19937RNGEngine.h): state[0] = seed & 0xffffffff (only the
//    low 32 bits of the 64-bit seed matter: seeds 5 and 2**32+5 draw the same numbers), the
//    Knuth initialisation, Cokus' next_state, the standard tempering.
//  - CPUGeneratorImpl (aten/src/ATen/CPUGeneratorImpl.cpp): random() = one mt19937 draw,
//    random64() = (draw1 << 32) | draw2; manual_seed clears the cached double normal sample.
//  - uniform_real_distribution (core/DistributionsHelper.h, core/TransformationHelper.h
//    uniform_real): float = (random() & (2^24-1)) * 2^-24, double = (random64() & (2^53-1)) * 2^-53.
//  - torch.randn = normal_(0, 1) -> normal_kernel (native/cpu/DistributionTemplates.h):
//      numel >= 16 (randn is always contiguous): normal_fill. f32: draw numel uniform floats into
//        the output, Box-Muller in place on every full block of 16 (u1 = 1 - x[j], u2 = x[j+8],
//        j < 8: x[j] = r cos θ, x[j+8] = r sin θ); if numel % 16 != 0, draw 16 fresh uniforms and
//        redo the block at [numel-16, numel). bf16/f16: per block, 16 uniforms into a float
//        buffer, Box-Muller in float, round to the output type; the tail block likewise from 16
//        fresh uniforms. Note the two consume different numbers of draws when numel % 16 != 0,
//        so a bf16 tail is NOT the f32 tail rounded (the full blocks are).
//      numel < 16: at::normal_distribution<double> per element: u1, u2 = uniform doubles,
//        r = sqrt(-2 log1p(-u2)), θ = 2π u1, returns r cos θ and caches r sin θ in the generator
//        for the next scalar sample (the cache survives across randn calls on one generator;
//        normal_fill neither reads nor clears it). double -> float (-> bf16/f16) by rounding.
//  - The Box-Muller block of 16 depends on torch's CPU capability (DispatchStub):
//      kX86Vectorized: torch on any x86-64 CPU with AVX2 (capability AVX2 or AVX512: normal_stub
//        is registered with REGISTER_NO_AVX512_DISPATCH in native/cpu/DistributionKernels.cpp,
//        so AVX-512 machines run the AVX2 kernel). NormalFill16<float> uses log256_ps and
//        sincos256_ps from native/cpu/avx_mathfun.h (cephes polynomials) and an FMA for
//        x*std+mean, and the wheel's GCC build fused most multiply-adds of those polynomials
//        into FMAs (-mfma, -ffp-contract=fast); the fusions were read off the disassembly (see
//        torch_rng.cc). We evaluate that exact instruction sequence lane by lane in portable
//        scalar float code (std::fma where torch has vfmadd), so our result does not depend on
//        the CPU *we* run on. A torch built by another compiler (clang: no contraction of
//        intrinsics across statements) could differ in the last bit; the wheels use GCC.
//        This is the path diffusers users get on Intel/AMD servers and desktops since ~2013.
//      kScalarLibm: torch's generic NormalFill16 (capability DEFAULT: x86 without AVX2, or
//        ATEN_CPU_CAPABILITY=default; presumably also aarch64 Linux builds, not verified):
//        logf/cosf/sinf from the C library.
//        Bit-exact only when our process uses the same libm implementation as that torch
//        (e.g. the same glibc); Apple's libm differs.
//    The numel < 16 path is the same double-precision libm code on every capability.
//
// No global state: each TorchGenerator is an independent mt19937 stream. Not thread-safe per
// instance (torch locks its generator; use one TorchGenerator per thread).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>

#include "engine/core/tensor.h"

namespace fluxserve {

enum class TorchRngPath : uint8_t {
  kX86Vectorized,  // torch on x86-64 with AVX2 / AVX-512 (the common case; the default)
  kScalarLibm,     // torch's scalar NormalFill16 (no AVX2, ATEN_CPU_CAPABILITY=default, aarch64)
};

class TorchGenerator {
 public:
  // torch.Generator("cpu").manual_seed(seed).
  explicit TorchGenerator(uint64_t seed, TorchRngPath path = TorchRngPath::kX86Vectorized);

  // Reseeds: fresh mt19937 state and no cached normal sample.
  void manual_seed(uint64_t seed);
  uint64_t initial_seed() const { return seed_; }
  TorchRngPath path() const { return path_; }

  // CPUGeneratorImpl::random / random64.
  uint32_t random();
  uint64_t random64();

  // torch.randn(shape, generator=this, dtype=out) on the CPU. `out` is kF32, kBF16 or kF16
  // (anything else is a programming error). Advances the generator as torch does, so a sequence
  // of calls matches the same sequence of torch.randn calls on one generator.
  Tensor randn(const Shape& shape, DType out = DType::kF32);

  // The f32 path writing into caller memory (n = numel of the drawn tensor).
  void randn_f32(float* out, int64_t n);

 private:
  float uniform_float();
  double uniform_double();
  double normal_double();  // at::normal_distribution<double>(0, 1), with the generator's cache
  void normal_fill_16(float* data) const;

  uint64_t seed_ = 0;
  TorchRngPath path_;
  std::array<uint32_t, 624> state_{};
  int left_ = 1;
  uint32_t next_ = 0;
  std::optional<double> next_double_normal_;
};

// diffusers' randn_tensor(shape, generator=[torch.Generator("cpu").manual_seed(s) for s in seeds])
// with a CPU generator list: batch item i is torch.randn(shape[1:]) from seeds[i], concatenated
// along dim 0. seeds.size() must equal shape[0].
Tensor randn_per_sample(std::span<const uint64_t> seeds, const Shape& shape, DType out = DType::kF32,
                        TorchRngPath path = TorchRngPath::kX86Vectorized);

}  // namespace fluxserve
