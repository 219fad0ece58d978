// The CUDA kernel of manifold_mixup::patchup for a build without nvcc (a CUDA torch without the
// CUDA toolkit; see mix_kernel_aten.h). The block mask is drawn from the Philox key the same
// way on every device (ops/patchup.h), so the CPU kernel gives the fused kernel's result: the
// batch goes to the host and back, slower but correct. Its backward (autograd/patchup_kernel.cpp)
// is mix's backward and ATen arithmetic, which run on the device.
// Compiled into every build; registered for CUDA only where CMake defines
// MM_REGISTER_ATEN_CUDA_KERNEL (no fused kernels built).
#include <torch/library.h>

#include "ops/patchup.h"

namespace manifold_mixup {
namespace detail {

std::tuple<at::Tensor, at::Tensor> patchup_aten(const at::Tensor& x, const at::Tensor& perm,
                                                const at::Tensor& lam, const at::Tensor& key,
                                                int64_t block_size, double gamma) {
  check_patchup_args(x, perm, lam, key, block_size, gamma);
  const auto cpu = [](const at::Tensor& t) { return t.to(at::kCPU); };
  auto [out, mask] = patchup(cpu(x), cpu(perm), cpu(lam), cpu(key), block_size, gamma);
  return std::make_tuple(out.to(x.device()), mask.to(x.device()));
}

}  // namespace detail

#ifdef MM_REGISTER_ATEN_CUDA_KERNEL
TORCH_LIBRARY_IMPL(manifold_mixup, CUDA, m) { m.impl("patchup", &detail::patchup_aten); }
#endif

}  // namespace manifold_mixup
