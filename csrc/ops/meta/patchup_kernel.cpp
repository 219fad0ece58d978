// Shape-only kernel of manifold_mixup::patchup: what fake tensors and torch.compile see. The
// same checks as the real kernels (symbolic sizes allowed), nothing allocated for real.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "ops/patchup.h"

namespace manifold_mixup {
namespace {

std::tuple<at::Tensor, at::Tensor> patchup_meta(const at::Tensor& x, const at::Tensor& perm,
                                                const at::Tensor& lam, const at::Tensor& key,
                                                int64_t block_size, double gamma) {
  detail::check_patchup_args(x, perm, lam, key, block_size, gamma);
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto mask = at::empty_symint({x.sym_size(1), x.sym_size(2), x.sym_size(3)}, x.options());
  return std::make_tuple(out, mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(manifold_mixup, Meta, m) { m.impl("patchup", &patchup_meta); }

}  // namespace manifold_mixup
