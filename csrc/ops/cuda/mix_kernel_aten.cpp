// The CUDA kernels of manifold_mixup::mix and _mix_backward for a build without nvcc, composed
// of ATen ops and compiled by the C++ compiler: see mix_kernel_aten.h for what they promise.
// Compiled into every build, so that the tests run them on CPU tensors; registered for the CUDA
// dispatch key only where CMake defines MM_REGISTER_ATEN_CUDA_KERNEL (no fused kernels built).
#include "ops/cuda/mix_kernel_aten.h"

#include <ATen/OpMathType.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/_assert_async.h>
#include <ATen/ops/index_add.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "ops/mix.h"

namespace manifold_mixup {
namespace detail {
namespace {

// On the tensors' device, without a host sync: on CUDA a device-side assert, on the CPU an
// exception carrying the message.
void check_indices(const at::Tensor& perm, int64_t b) {
  if (b == 0) return;
  at::_assert_async(((perm >= 0) & (perm < b)).all(), "mix: perm holds an index outside [0, B)");
}

// Each sample of x (and of the result, in the same memory format: mix.h) is one dense block of
// `features` elements, sample i at i * features: seen as [batch, features] in memory order.
at::Tensor rows(const at::Tensor& t, const Operands& a) {
  return t.as_strided({a.batch, a.features}, {a.features, 1});
}

}  // namespace

at::Tensor mix_aten(const at::Tensor& x_in, const at::Tensor& perm_in, const at::Tensor& lam_in,
                    const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& key) {
  check_mix_args(x_in, perm_in, lam_in, "x");
  if (check_noise_args(x_in, noise, key)) {
    // Noisy Feature Mixup: the CPU kernel draws the same counter-based noise (ops/noise.h), so
    // the result is the fused kernel's; the copies to and from the host are the price.
    const auto cpu = [](const at::Tensor& t) { return t.to(at::kCPU); };
    return mix(cpu(x_in), cpu(perm_in), cpu(lam_in), cpu(*noise), cpu(*key)).to(x_in.device());
  }
  c10::DeviceGuard guard(x_in.device());
  const Operands a(x_in, perm_in, lam_in);
  check_indices(a.perm, a.batch);
  auto out = empty_result(a.x);
  if (out.numel() == 0) return out;
  const auto x = rows(a.x, a).to(at::toOpMathType(a.x.scalar_type()));
  const auto l = a.lam.view({a.batch, 1});
  const auto mixed = l * x + (1 - l) * x.index_select(0, a.perm);
  // A row with lam == 1 is x's own row, whatever 0 * x[perm[i]] would give (NaN for an inf).
  rows(out, a).copy_(at::where(l == 1, x, mixed));
  return out;
}

at::Tensor mix_backward_aten(const at::Tensor& grad_in, const at::Tensor& perm_in,
                             const at::Tensor& lam_in) {
  check_mix_args(grad_in, perm_in, lam_in, "grad");
  c10::DeviceGuard guard(grad_in.device());
  const Operands a(grad_in, perm_in, lam_in);
  check_indices(a.perm, a.batch);
  auto out = empty_result(a.x);
  if (out.numel() == 0) return out;
  const auto g = rows(a.x, a).to(at::toOpMathType(a.x.scalar_type()));
  const auto l = a.lam.view({a.batch, 1});
  const auto w = 1 - l;
  // A source whose (1 - lam) is exactly 0 adds nothing, not 0 * g (NaN for an inf).
  const auto sent = at::where(w == 0, at::zeros({}, g.options()), w * g);
  rows(out, a).copy_((l * g).index_add_(0, a.perm, sent));
  return out;
}

}  // namespace detail

#ifdef MM_REGISTER_ATEN_CUDA_KERNEL
TORCH_LIBRARY_IMPL(manifold_mixup, CUDA, m) {
  m.impl("mix", &detail::mix_aten);
  m.impl("_mix_backward", &detail::mix_backward_aten);
}
#endif

}  // namespace manifold_mixup
