// CUDA kernel of manifold_mixup::patchup (see ops/patchup.h), on the stream current at the
// call, with no host sync: the key is read on the device. Two launches: the mask (each feature
// tests the block centres of its window, drawn from the same Philox counters as on the CPU, so
// a key gives the same mask on both), then one pass over the batch that reads each row and its
// partner once and writes the result once. A row whose lam is exactly 1 is copied without
// reading its partner. An index of perm outside [0, B) trips a device-side assert and is never
// dereferenced, as in mix's kernels.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/detail/IntegerDivider.cuh>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "ops/patchup.h"

#ifdef CUDA_KERNEL_ASSERT_MSG
#define MM_PATCHUP_ASSERT(cond, msg) CUDA_KERNEL_ASSERT_MSG(cond, msg)
#else
#define MM_PATCHUP_ASSERT(cond, msg) CUDA_KERNEL_ASSERT(cond)
#endif

namespace manifold_mixup {
namespace {

using at::cuda::detail::IntDivider;

constexpr int kThreads = 256;

int blocks_for(int64_t n) {
  const int64_t max_blocks = 65535LL * 8;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, max_blocks)));
}

template <typename scalar_t>
__global__ void mask_kernel(const int64_t* __restrict__ key, scalar_t* __restrict__ mask,
                            int64_t channels, int64_t height, int64_t width, int64_t radius,
                            uint64_t threshold) {
  const int64_t n = channels * height * width;
  const uint64_t k = static_cast<uint64_t>(*key);
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t w = e % width, h = (e / width) % height, c = e / (width * height);
    bool hole = false;
    for (int64_t u = max(h - radius, int64_t(0)); u <= min(h + radius, height - 1) && !hole; ++u) {
      for (int64_t v = max(w - radius, int64_t(0)); v <= min(w + radius, width - 1) && !hole; ++v) {
        hole = detail::patchup_centre(k, static_cast<uint64_t>((c * height + u) * width + v), threshold);
      }
    }
    mask[e] = hole ? scalar_t(1) : scalar_t(0);
  }
}

template <typename scalar_t, typename opmath_t, typename index_t>
__global__ void apply_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ perm,
                             const opmath_t* __restrict__ lam, const scalar_t* __restrict__ mask,
                             scalar_t* __restrict__ out, int64_t b, index_t n, index_t features,
                             IntDivider<index_t> rows) {
  for (index_t idx = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const auto rc = rows.divmod(idx);  // row i = rc.div, feature f = rc.mod
    const opmath_t l = lam[rc.div];
    const scalar_t own = x[idx];
    if (l == opmath_t(1) || static_cast<opmath_t>(mask[rc.mod]) == opmath_t(0)) {
      out[idx] = own;
      continue;
    }
    const int64_t p = perm[rc.div];
    const bool ok = p >= 0 && p < b;
    MM_PATCHUP_ASSERT(ok, "patchup: perm holds an index outside [0, B)");
    const opmath_t other =
        ok ? static_cast<opmath_t>(x[static_cast<index_t>(p) * features + rc.mod]) : opmath_t(0);
    out[idx] = static_cast<scalar_t>(l * static_cast<opmath_t>(own) + (opmath_t(1) - l) * other);
  }
}

std::tuple<at::Tensor, at::Tensor> patchup_cuda(const at::Tensor& x_in, const at::Tensor& perm_in,
                                                const at::Tensor& lam_in, const at::Tensor& key_in,
                                                int64_t block_size, double gamma) {
  detail::check_patchup_args(x_in, perm_in, lam_in, key_in, block_size, gamma);
  c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous();
  const auto perm = perm_in.contiguous();
  const auto lam = lam_in.to(at::toOpMathType(x.scalar_type())).contiguous();
  const auto key = key_in.contiguous();
  const auto g = detail::patchup_geometry(x, block_size, gamma);
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto mask = at::empty({g.channels, g.height, g.width}, x.options());
  const int64_t features = mask.numel(), n = out.numel();
  if (features == 0) return std::make_tuple(out, mask);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "patchup_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    mask_kernel<scalar_t><<<blocks_for(features), kThreads, 0, stream>>>(
        key.const_data_ptr<int64_t>(), mask.mutable_data_ptr<scalar_t>(), g.channels, g.height,
        g.width, g.radius, g.threshold);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (n == 0) return;
    const auto launch = [&](auto index) {
      using index_t = decltype(index);
      apply_kernel<scalar_t, opmath_t, index_t><<<blocks_for(n), kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), perm.const_data_ptr<int64_t>(),
          lam.const_data_ptr<opmath_t>(), mask.const_data_ptr<scalar_t>(),
          out.mutable_data_ptr<scalar_t>(), x.size(0), static_cast<index_t>(n),
          static_cast<index_t>(features), IntDivider<index_t>(static_cast<index_t>(features)));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (n <= std::numeric_limits<int32_t>::max()) launch(uint32_t{});
    else launch(int64_t{});
  });
  return std::make_tuple(out, mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(manifold_mixup, CUDA, m) { m.impl("patchup", &patchup_cuda); }

}  // namespace manifold_mixup
