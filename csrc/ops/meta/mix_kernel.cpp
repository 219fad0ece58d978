// Shape-only kernels: what fake tensors and torch.compile see. They run the same argument
// checks as the real kernels (symbolic sizes allowed) and give the same memory format
// (detail::result_format), and allocate nothing real.
#include <torch/library.h>

#include "ops/mix.h"

namespace manifold_mixup {
namespace {

at::Tensor mix_meta(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& lam) {
  detail::check_mix_args(x, perm, lam);
  return detail::empty_result(x);
}

at::Tensor mix_backward_meta(const at::Tensor& grad, const at::Tensor& perm, const at::Tensor& lam) {
  detail::check_mix_args(grad, perm, lam, "grad");
  return detail::empty_result(grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(manifold_mixup, Meta, m) {
  m.impl("mix", &mix_meta);
  m.impl("_mix_backward", &mix_backward_meta);
}

}  // namespace manifold_mixup
