// The CUDA kernel of manifold_mixup::patchup for a build without nvcc (a CUDA torch without the
// CUDA toolkit; see mix_kernel_aten.h), composed of ATen ops. The block mask ([C, H, W], one per
// batch) depends only on the key and the feature maps' shape (ops/patchup.h): the CPU kernel
// draws it on one sample of zeros, the fused kernel's mask, and only the mask crosses the bus.
// The blend runs on the device, as the CPU kernel computes it: in x's opmath dtype, a row with
// lam == 1 and every feature outside the blocks being x's own. Its backward
// (autograd/patchup_kernel.cpp) is mix's backward and ATen arithmetic, which run on the device.
// Compiled into every build; registered for CUDA only where CMake defines
// MM_REGISTER_ATEN_CUDA_KERNEL (no fused kernels built).
#include <ATen/OpMathType.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/_assert_async.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "ops/patchup.h"

namespace manifold_mixup {
namespace detail {

std::tuple<at::Tensor, at::Tensor> patchup_aten(const at::Tensor& x_in, const at::Tensor& perm,
                                                const at::Tensor& lam, const at::Tensor& key,
                                                int64_t block_size, double gamma) {
  check_patchup_args(x_in, perm, lam, key, block_size, gamma);
  const auto host = at::TensorOptions().device(at::kCPU);
  const auto one_sample = at::zeros({1, x_in.size(1), x_in.size(2), x_in.size(3)}, host.dtype(x_in.scalar_type()));
  const auto mask_on_host = std::get<1>(patchup(one_sample, at::zeros({1}, host.dtype(at::kLong)),
                                                at::ones({1}, host.dtype(lam.scalar_type())),
                                                key.to(at::kCPU), block_size, gamma));
  c10::DeviceGuard guard(x_in.device());
  const auto mask = mask_on_host.to(x_in.device());
  const int64_t b = x_in.size(0);
  if (b > 0) {
    at::_assert_async(((perm >= 0) & (perm < b)).all(), "patchup: perm holds an index outside [0, B)");
  }
  const auto x = x_in.contiguous();
  const auto opmath = at::toOpMathType(x.scalar_type());
  const auto xf = x.to(opmath);
  const auto l = lam.to(opmath).view({b, 1, 1, 1});
  const auto mixed = (l * xf + (1 - l) * xf.index_select(0, perm)).to(x.scalar_type());
  auto out = at::where((mask != 0) & (l != 1), mixed, x).contiguous();
  return std::make_tuple(out, mask);
}

}  // namespace detail

#ifdef MM_REGISTER_ATEN_CUDA_KERNEL
TORCH_LIBRARY_IMPL(manifold_mixup, CUDA, m) { m.impl("patchup", &detail::patchup_aten); }
#endif

}  // namespace manifold_mixup
