// The CUDA kernels of manifold_mixup::mix and _mix_backward for a build without nvcc, composed
// of ATen ops and compiled by the C++ compiler: see mix_kernel_aten.h for what they promise.
// Compiled into every build, so that the tests run them on CPU tensors; registered for the CUDA
// dispatch key only where CMake defines MM_REGISTER_ATEN_CUDA_KERNEL (no fused kernels built).
#include "ops/cuda/mix_kernel_aten.h"

#include <ATen/OpMathType.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/_assert_async.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/index_add.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <utility>

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

// Noisy Feature Mixup's draws for every element, (1 + mult U) and add N, as the fused kernels
// draw them from the key (ops/noise.h): the CPU kernel applies exactly that noise to a mix of
// ones (then of zeros) with perm the identity and lam 1. Drawn on the host and copied over:
// the price of a build without nvcc. With both levels 0 they are ones and zeros, and the op is
// exactly the mix.
std::pair<at::Tensor, at::Tensor> noise_rows(const Operands& a) {
  // In x's opmath dtype, where the kernels apply the noise.
  const auto opmath = at::TensorOptions().dtype(at::toOpMathType(a.x.scalar_type()));
  const auto identity = at::arange(a.batch, at::TensorOptions().dtype(at::kLong));
  const auto unit = at::ones({a.batch}, opmath);
  const auto levels = a.noise.to(at::kCPU), key = a.key.to(at::kCPU);
  const auto zero = at::zeros({1}, levels.options());
  const auto mult_only = at::cat({zero, levels.narrow(0, 1, 1)});
  const auto add_only = at::cat({levels.narrow(0, 0, 1), zero});
  const auto factor = mix(at::ones({a.batch, a.features}, opmath), identity, unit, mult_only, key);
  const auto additive = mix(at::zeros({a.batch, a.features}, opmath), identity, unit, add_only, key);
  return {factor.to(a.x.device()), additive.to(a.x.device())};
}

}  // namespace

at::Tensor mix_aten(const at::Tensor& x_in, const at::Tensor& perm_in, const at::Tensor& lam_in,
                    const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& key) {
  check_mix_args(x_in, perm_in, lam_in, "x");
  const bool noisy = check_noise_args(x_in, noise, key);
  c10::DeviceGuard guard(x_in.device());
  const Operands a(x_in, perm_in, lam_in, noise, key);
  check_indices(a.perm, a.batch);
  auto out = empty_result(a.x, noisy);
  if (out.numel() == 0) return out;
  const auto own = rows(a.x, a);
  const auto x = own.to(at::toOpMathType(a.x.scalar_type()));
  const auto l = a.lam.view({a.batch, 1});
  const auto blended = l * x + (1 - l) * x.index_select(0, a.perm);
  // A row with lam == 1 is x's own row, whatever 0 * x[perm[i]] would give (NaN for an inf).
  if (noisy) {  // then noised, as every row
    const auto [factor, additive] = noise_rows(a);
    rows(out, a).copy_(at::where(l == 1, x, blended) * factor + additive);
  } else {
    // Without noise it is x's own bits, NaN payloads included, which the round trip through the
    // opmath dtype would not keep (a GPU canonicalises a NaN it computes with).
    rows(out, a).copy_(at::where(l == 1, own, blended.to(own.scalar_type())));
  }
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
  const auto own = rows(a.x, a);
  const auto g = own.to(at::toOpMathType(a.x.scalar_type()));
  const auto l = a.lam.view({a.batch, 1});
  const auto w = 1 - l;
  // A source whose (1 - lam) is exactly 0 adds nothing, not 0 * g (NaN for an inf).
  const auto sends = w != 0;
  const auto sent = at::where(sends, w * g, at::zeros({}, g.options()));
  const auto summed = (l * g).index_add_(0, a.perm, sent);
  // A row that keeps its whole gradient (lam 1) and receives from no source is that gradient,
  // bit for bit, as in the fused kernel: not 1 * g + 0, which a GPU computes with (a NaN's
  // payload canonicalised, -0 made +0).
  const auto receives = at::zeros({a.batch}, g.options()).index_add_(0, a.perm, sends.view({a.batch}).to(g.scalar_type())) > 0;
  const auto untouched = ((l.view({a.batch}) == 1) & receives.logical_not()).view({a.batch, 1});
  rows(out, a).copy_(at::where(untouched, own, summed.to(own.scalar_type())));
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
