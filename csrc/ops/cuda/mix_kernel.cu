// Fused CUDA kernels of manifold_mixup::mix and _mix_backward, on the current stream.
// An index of perm outside [0, B) trips a device-side assert and is never dereferenced, in the
// forward and in the backward alike, and also when x has no elements per sample.
//
// Index math is 32-bit, with ATen's multiply-shift divider for the row of an element, whenever
// the tensor has fewer than 2^31 elements; larger tensors take 64-bit indices and a plain
// division.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/detail/IntegerDivider.cuh>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/sort.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>

#include "ops/mix.h"

namespace manifold_mixup {
namespace {

using at::cuda::detail::IntDivider;

constexpr int kThreads = 256;

int blocks_for(int64_t n) {
  const int64_t max_blocks = 65535LL * 8;
  return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, max_blocks));
}

template <typename index_t>
__device__ __forceinline__ index_t first_index() {
  return static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
template <typename index_t>
__device__ __forceinline__ index_t grid_stride() {
  return static_cast<index_t>(gridDim.x) * blockDim.x;
}

__global__ void check_indices_kernel(const int64_t* __restrict__ perm, int64_t b) {
  for (int64_t k = first_index<int64_t>(); k < b; k += grid_stride<int64_t>()) {
    CUDA_KERNEL_ASSERT_MSG(perm[k] >= 0 && perm[k] < b, "mix: perm holds an index outside [0, B)");
  }
}

template <typename scalar_t, typename opmath_t, typename index_t>
__global__ void mix_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ perm,
                           const opmath_t* __restrict__ lam, scalar_t* __restrict__ out,
                           int64_t b, index_t n, index_t features, IntDivider<index_t> rows) {
  for (index_t idx = first_index<index_t>(); idx < n; idx += grid_stride<index_t>()) {
    const auto rc = rows.divmod(idx);  // row i = rc.div, feature f = rc.mod
    const int64_t p = perm[rc.div];
    const bool ok = p >= 0 && p < b;
    CUDA_KERNEL_ASSERT_MSG(ok, "mix: perm holds an index outside [0, B)");
    const opmath_t l = lam[rc.div];
    const opmath_t other =
        ok ? static_cast<opmath_t>(x[static_cast<index_t>(p) * features + rc.mod]) : opmath_t(0);
    out[idx] = static_cast<scalar_t>(l * static_cast<opmath_t>(x[idx]) + (opmath_t(1) - l) * other);
  }
}

// grad[j] = lam[j] g[j] + sum over members k of j's group of (1 - lam[k]) g[k]; the groups
// (k with perm[k] == j) are given as a CSR layout: member[start[j] .. start[j+1]). Each output
// element is written by one thread from what it gathers: no atomics, deterministic.
template <typename scalar_t, typename opmath_t, typename index_t>
__global__ void mix_backward_kernel(const scalar_t* __restrict__ g, const int64_t* __restrict__ start,
                                    const int64_t* __restrict__ member,
                                    const opmath_t* __restrict__ lam, scalar_t* __restrict__ out,
                                    index_t n, index_t features, IntDivider<index_t> rows) {
  for (index_t idx = first_index<index_t>(); idx < n; idx += grid_stride<index_t>()) {
    const auto rc = rows.divmod(idx);
    const index_t j = rc.div;
    opmath_t acc = lam[j] * static_cast<opmath_t>(g[idx]);
    for (int64_t s = start[j]; s < start[j + 1]; ++s) {
      const index_t k = static_cast<index_t>(member[s]);
      acc += (opmath_t(1) - lam[k]) * static_cast<opmath_t>(g[k * features + rc.mod]);
    }
    out[idx] = static_cast<scalar_t>(acc);
  }
}

bool fits_32_bits(int64_t n) { return n <= std::numeric_limits<int32_t>::max(); }

void check_indices(const at::Tensor& perm, int64_t b, cudaStream_t stream) {
  if (b == 0) return;
  check_indices_kernel<<<blocks_for(b), kThreads, 0, stream>>>(perm.const_data_ptr<int64_t>(), b);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor mix_cuda(const at::Tensor& x_in, const at::Tensor& perm_in, const at::Tensor& lam_in) {
  c10::cuda::CUDAGuard guard(x_in.device());
  const detail::Operands a(x_in, perm_in, lam_in, "x");
  const auto &x = a.x, &perm = a.perm, &lam = a.lam;
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = out.numel();
  if (n == 0) {  // no element reads perm: check it alone, as the CPU kernel does
    check_indices(perm, a.batch, stream);
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mix_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const auto launch = [&](auto index) {
      using index_t = decltype(index);
      mix_kernel<scalar_t, opmath_t, index_t><<<blocks_for(n), kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), perm.const_data_ptr<int64_t>(), lam.const_data_ptr<opmath_t>(),
          out.mutable_data_ptr<scalar_t>(), a.batch, static_cast<index_t>(n),
          static_cast<index_t>(a.features), IntDivider<index_t>(static_cast<index_t>(a.features)));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (fits_32_bits(n)) launch(uint32_t{});
    else launch(int64_t{});
  });
  return out;
}

at::Tensor mix_backward_cuda(const at::Tensor& grad_in, const at::Tensor& perm_in,
                             const at::Tensor& lam_in) {
  c10::cuda::CUDAGuard guard(grad_in.device());
  const detail::Operands a(grad_in, perm_in, lam_in, "grad");
  const auto &g = a.x, &perm = a.perm, &lam = a.lam;
  auto out = at::empty_like(g, at::MemoryFormat::Contiguous);
  auto stream = c10::cuda::getCurrentCUDAStream();
  // The grouping below would drop or wrap an index outside [0, B): check first, on the device.
  check_indices(perm, a.batch, stream);
  const int64_t n = out.numel();
  if (n == 0) return out;
  // Sources grouped by target, with device-side ops only (no host sync) and no atomics: a
  // stable sort of perm gives the members in target order, and a binary search of each target
  // in the sorted values where its group starts.
  at::Tensor sorted, member;
  std::tie(sorted, member) = at::sort(perm, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor start = at::searchsorted(sorted, at::arange(a.batch + 1, perm.options()));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "mix_backward_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const auto launch = [&](auto index) {
      using index_t = decltype(index);
      mix_backward_kernel<scalar_t, opmath_t, index_t><<<blocks_for(n), kThreads, 0, stream>>>(
          g.const_data_ptr<scalar_t>(), start.const_data_ptr<int64_t>(), member.const_data_ptr<int64_t>(),
          lam.const_data_ptr<opmath_t>(), out.mutable_data_ptr<scalar_t>(), static_cast<index_t>(n),
          static_cast<index_t>(a.features), IntDivider<index_t>(static_cast<index_t>(a.features)));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (fits_32_bits(n)) launch(uint32_t{});
    else launch(int64_t{});
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(manifold_mixup, CUDA, m) {
  m.impl("mix", &mix_cuda);
  m.impl("_mix_backward", &mix_backward_cuda);
}

}  // namespace manifold_mixup
