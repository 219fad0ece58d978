// The inner loops of the CPU kernels, compiled once per CPU capability (like ATen's own
// kernels): mix_loops_default.cpp for any x86-64 or other CPU, mix_loops_avx2.cpp with
// AVX2/FMA/F16C, where float16 converts in hardware. mix_kernel.cpp picks one at run time
// from what the CPU supports (ATEN_CPU_CAPABILITY=default forces the portable one).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace manifold_mixup::cpu {

// Sources of grad_x[j]: the k with perm[k] == j, grouped by j (a CSR layout), so the
// backward is a gather. For a permutation every group has exactly one member.
struct Preimages {
  std::vector<int64_t> start;   // size b + 1
  std::vector<int64_t> member;  // size b
};

// x, out: contiguous [B, ...] of one floating dtype; perm: contiguous int64 [B] in range;
// lam: contiguous [B] of x's opmath dtype; noise and key: undefined, or float32 [2] and int64
// [1] (Noisy Feature Mixup, ops/noise.h).
#define MM_DECLARE_LOOPS(capability)                                                          \
  namespace capability {                                                                      \
  void mix_rows(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& lam,           \
                const at::Tensor& noise, const at::Tensor& key, at::Tensor& out);             \
  void mix_backward_rows(const at::Tensor& g, const Preimages& pre, const at::Tensor& lam,    \
                         at::Tensor& out);                                                    \
  }
MM_DECLARE_LOOPS(DEFAULT)
#ifdef MM_HAVE_AVX2_LOOPS
MM_DECLARE_LOOPS(AVX2)
#endif
#undef MM_DECLARE_LOOPS

}  // namespace manifold_mixup::cpu
