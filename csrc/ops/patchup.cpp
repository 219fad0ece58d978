// Schema of manifold_mixup::patchup and the checks and geometry its backends share. Backends
// live beside this file: cpu/, cuda/, meta/, autograd/ (patchup_kernel.*).
#include "ops/patchup.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "errors.h"

namespace manifold_mixup {

namespace detail {

void check_patchup_args(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& lam,
                        const at::Tensor& key, int64_t block_size, double gamma) {
  MM_CHECK_ARG(x.defined() && perm.defined() && lam.defined() && key.defined(),
               "patchup: x, perm, lam and key must be defined tensors");
  MM_CHECK_ARG(at::isFloatingType(x.scalar_type()) && x.dim() == 4,
               "patchup: x must be a floating tensor of feature maps [B, C, H, W], got ",
               x.scalar_type(), " of shape ", x.sym_sizes());
  const auto& b = x.sym_size(0);
  MM_CHECK_ARG(perm.scalar_type() == at::kLong && perm.dim() == 1 && perm.sym_size(0) == b,
               "patchup: perm must be int64 of shape [B] = [", b, "], got ", perm.scalar_type(),
               " of shape ", perm.sym_sizes());
  MM_CHECK_ARG(at::isFloatingType(lam.scalar_type()) && lam.dim() == 1 && lam.sym_size(0) == b,
               "patchup: lam must be floating of shape [B] = [", b, "], got ", lam.scalar_type(),
               " of shape ", lam.sym_sizes());
  MM_CHECK_ARG(key.scalar_type() == at::kLong && key.sym_numel() == 1,
               "patchup: key must be an int64 tensor of one element (the mask's Philox key), got ",
               key.scalar_type(), " of shape ", key.sym_sizes());
  for (const auto* t : {&perm, &lam, &key}) {
    MM_CHECK_ARG(t->device() == x.device(), "patchup: perm, lam and key must be on x's device (",
                 x.device(), "), got ", t->device());
  }
  MM_CHECK_ARG(block_size >= 1 && block_size % 2 == 1, "patchup: block_size must be an odd ",
               "number >= 1 (the block is centred on a feature), got ", block_size);
  MM_CHECK_ARG(std::isfinite(gamma) && gamma >= 0 && gamma <= 1,
               "patchup: gamma (the probability of a feature being altered) must be in [0, 1], got ",
               gamma);
}

PatchUpGeometry patchup_geometry(const at::Tensor& x, int64_t block_size, double gamma) {
  PatchUpGeometry g;
  g.channels = x.size(1);
  g.height = x.size(2);
  g.width = x.size(3);
  const int64_t fits = std::min(g.height, g.width);
  int64_t k = std::min(block_size, fits);
  if (k % 2 == 0) --k;  // the largest odd size that fits: the block stays centred
  g.radius = std::max<int64_t>(k, 1) / 2;
  if (fits <= 0) return g;  // no feature: no centre
  k = 2 * g.radius + 1;
  // The authors' adjust_gamma: gamma * W^2 / (k^2 (W - k + 1)^2), here for H != W as well.
  g.p = gamma * double(g.height) * double(g.width) /
        (double(k * k) * double(g.height - k + 1) * double(g.width - k + 1));
  g.p = std::min(std::max(g.p, 0.0), 1.0);
  g.threshold = static_cast<uint64_t>(std::ldexp(g.p, 32));  // p 1: 2^32, every draw is below
  return g;
}

}  // namespace detail

std::tuple<at::Tensor, at::Tensor> patchup(const at::Tensor& x, const at::Tensor& perm,
                                           const at::Tensor& lam, const at::Tensor& key,
                                           int64_t block_size, double gamma) {
  MM_CHECK_ARG(x.defined() && perm.defined() && lam.defined() && key.defined(),
               "patchup: x, perm, lam and key must be defined tensors");
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("manifold_mixup::patchup", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, int64_t, double)>();
  return op.call(x, perm, lam, key, block_size, gamma);
}

TORCH_LIBRARY_FRAGMENT(manifold_mixup, m) {
  m.def("patchup(Tensor x, Tensor perm, Tensor lam, Tensor key, int block_size=7, "
        "float gamma=0.9) -> (Tensor, Tensor)");
}

}  // namespace manifold_mixup
