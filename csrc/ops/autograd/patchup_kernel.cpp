// Autograd of manifold_mixup::patchup, in C++ so that C and C++ hosts train with no Python.
//
// With M the block mask (an output, not differentiable), out = (1 - M) x + M mix(x, perm, lam),
// so grad_x = (1 - M) g + mix's own backward of M g (the private op _mix_backward, whose
// autograd gives double backward), and grad_lam[i] = sum over features of
// M g[i] (x[i] - x[perm[i]]). The backward stores the mask ([C, H, W], one per batch), never a
// tensor of the batch's size beyond what mix's backward keeps.
#include <ATen/OpMathType.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "ops/mix.h"
#include "ops/patchup.h"

namespace manifold_mixup {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class PatchUpFunction : public torch::autograd::Function<PatchUpFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& perm,
                               const at::Tensor& lam, const at::Tensor& key, int64_t block_size,
                               double gamma) {
    at::Tensor out, mask;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(out, mask) = patchup(x, perm, lam, key, block_size, gamma);
    }
    ctx->save_for_backward({perm, lam, mask, lam.requires_grad() ? x : at::Tensor()});
    ctx->mark_non_differentiable({mask});
    return {out, mask};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &perm = saved[0], &lam = saved[1], &mask = saved[2], &x = saved[3];
    const auto& g = grads[0];
    at::Tensor grad_x, grad_lam;
    if (g.defined()) {
      const auto in_blocks = mask * g;
      if (ctx->needs_input_grad(0)) grad_x = (g - in_blocks) + detail::_mix_backward(in_blocks, perm, lam);
      if (ctx->needs_input_grad(2)) {
        const auto opmath = at::toOpMathType(x.scalar_type());
        const auto diff = x.to(opmath) - x.index_select(0, perm).to(opmath);
        grad_lam = (in_blocks.to(opmath) * diff).sum({1, 2, 3}).to(lam.scalar_type());
      }
    }
    return {grad_x, at::Tensor(), grad_lam, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> patchup_autograd(const at::Tensor& x, const at::Tensor& perm,
                                                    const at::Tensor& lam, const at::Tensor& key,
                                                    int64_t block_size, double gamma) {
  auto outs = PatchUpFunction::apply(x, perm, lam, key, block_size, gamma);
  return std::make_tuple(outs[0], outs[1]);
}

}  // namespace

TORCH_LIBRARY_IMPL(manifold_mixup, Autograd, m) { m.impl("patchup", &patchup_autograd); }

}  // namespace manifold_mixup
