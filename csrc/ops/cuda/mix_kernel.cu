// Fused CUDA kernels of manifold_mixup::mix and _mix_backward, on the current stream.
// An index outside [0, B) trips a device-side assert and is never dereferenced.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ATen.h>
#include <ATen/ops/argsort.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <algorithm>

#include "ops/mix.h"

namespace manifold_mixup {
namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t n) {
  const int64_t max_blocks = 65535LL * 8;
  return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, max_blocks));
}

template <typename scalar_t, typename opmath_t>
__global__ void mix_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ perm,
                           const opmath_t* __restrict__ lam, scalar_t* __restrict__ out,
                           int64_t b, int64_t features) {
  const int64_t n = b * features;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < n;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = idx / features, f = idx - i * features;
    const int64_t p = perm[i];
    const bool ok = p >= 0 && p < b;
    CUDA_KERNEL_ASSERT(ok && "mix: perm holds an index outside [0, B)");
    const opmath_t l = lam[i];
    const opmath_t other = ok ? static_cast<opmath_t>(x[p * features + f]) : opmath_t(0);
    out[idx] = static_cast<scalar_t>(l * static_cast<opmath_t>(x[idx]) + (opmath_t(1) - l) * other);
  }
}

// grad[j] = lam[j] g[j] + sum over members k of j's group of (1 - lam[k]) g[k]; the groups
// (k with perm[k] == j) are given as a CSR layout: member[start[j] .. start[j+1]).
template <typename scalar_t, typename opmath_t>
__global__ void mix_backward_kernel(const scalar_t* __restrict__ g, const int64_t* __restrict__ start,
                                    const int64_t* __restrict__ member,
                                    const opmath_t* __restrict__ lam, scalar_t* __restrict__ out,
                                    int64_t b, int64_t features) {
  const int64_t n = b * features;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < n;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t j = idx / features, f = idx - j * features;
    opmath_t acc = lam[j] * static_cast<opmath_t>(g[idx]);
    const int64_t first = start[j], last = start[j + 1];
    for (int64_t s = first; s < last; ++s) {
      const int64_t k = member[s];
      acc += (opmath_t(1) - lam[k]) * static_cast<opmath_t>(g[k * features + f]);
    }
    out[idx] = static_cast<scalar_t>(acc);
  }
}

at::Tensor mix_cuda(const at::Tensor& x_in, const at::Tensor& perm_in, const at::Tensor& lam_in) {
  c10::cuda::CUDAGuard guard(x_in.device());
  const detail::Operands a(x_in, perm_in, lam_in, "x");
  const auto &x = a.x, &perm = a.perm, &lam = a.lam;
  const int64_t b = a.batch, features = a.features;
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mix_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    mix_kernel<scalar_t, opmath_t><<<blocks_for(out.numel()), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), perm.const_data_ptr<int64_t>(),
        lam.const_data_ptr<opmath_t>(), out.mutable_data_ptr<scalar_t>(), b, features);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor mix_backward_cuda(const at::Tensor& grad_in, const at::Tensor& perm_in,
                             const at::Tensor& lam_in) {
  c10::cuda::CUDAGuard guard(grad_in.device());
  const detail::Operands a(grad_in, perm_in, lam_in, "grad");
  const auto &g = a.x, &perm = a.perm, &lam = a.lam;
  const int64_t b = a.batch, features = a.features;
  auto out = at::empty_like(g, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  // Group sources by target with device-side ops only (no host sync): counts by index_add
  // (which asserts on an index outside [0, B)), starts by cumsum, members by a stable sort.
  auto start = at::zeros({b + 1}, perm.options());
  start.index_add_(0, perm + 1, at::ones_like(perm));
  start = start.cumsum(0);
  const auto member = at::argsort(perm, /*stable=*/true);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "mix_backward_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    mix_backward_kernel<scalar_t, opmath_t><<<blocks_for(out.numel()), kThreads, 0, stream>>>(
        g.const_data_ptr<scalar_t>(), start.const_data_ptr<int64_t>(),
        member.const_data_ptr<int64_t>(), lam.const_data_ptr<opmath_t>(),
        out.mutable_data_ptr<scalar_t>(), b, features);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(manifold_mixup, CUDA, m) {
  m.impl("mix", &mix_cuda);
  m.impl("_mix_backward", &mix_backward_cuda);
}

}  // namespace manifold_mixup
