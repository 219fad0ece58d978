// Autograd for manifold_mixup::mix, registered in C++ so C and C++ hosts train with no
// Python in the process.
//
// mix is linear in x: out = A x with A = diag(lam) + (1 - lam)-weighted row gather by perm.
// Its gradient with respect to x is A^T g (_mix_backward, a gather), and the gradient of
// _mix_backward with respect to g is A again, so double backward is mix itself.
// The gradient with respect to lam is sum over features of g[i] * (x[i] - x[perm[i]]).
// With Noisy Feature Mixup's noise, out = D A x + n (D the multiplicative noise, diagonal): the
// gradient is A^T D g, and D g is drawn again from the key by mix itself (perm the identity, lam
// 1, the additive level 0), so that no noise tensor is stored; the noise levels and the key
// get no gradient.
#include <ATen/OpMathType.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/zeros_like.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "ops/mix.h"

namespace manifold_mixup {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Sum over every dimension but the first: [B, ...] -> [B].
at::Tensor sum_per_sample(const at::Tensor& t) {
  if (t.dim() == 1) return t;
  std::vector<int64_t> dims(t.dim() - 1);
  for (int64_t d = 1; d < t.dim(); ++d) dims[d - 1] = d;
  return t.sum(dims);
}

// d/dlam[i] of <g, mix(x, perm, lam)>.
at::Tensor lam_grad(const at::Tensor& g, const at::Tensor& x, const at::Tensor& perm,
                    const at::Tensor& lam) {
  const auto opmath = at::toOpMathType(x.scalar_type());
  const auto diff = x.to(opmath) - x.index_select(0, perm).to(opmath);
  return sum_per_sample(g.to(opmath) * diff).to(lam.scalar_type());
}

class MixBackwardFunction : public torch::autograd::Function<MixBackwardFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& perm,
                            const at::Tensor& lam) {
    ctx->save_for_backward({grad, perm, lam});
    at::AutoDispatchBelowADInplaceOrView guard;
    return detail::_mix_backward(grad, perm, lam);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &g = saved[0], &perm = saved[1], &lam = saved[2];
    const auto& v = grads[0];
    at::Tensor grad_g, grad_lam;
    if (ctx->needs_input_grad(0)) grad_g = mix(v, perm, lam);
    if (ctx->needs_input_grad(2)) {
      // out[j] = lam[j] g[j] + sum_{perm[k]=j} (1 - lam[k]) g[k]: d/dlam[k] <v, out> =
      // <g[k], v[k] - v[perm[k]]>.
      grad_lam = lam_grad(g, v, perm, lam);
    }
    return {grad_g, at::Tensor(), grad_lam};
  }
};

// g times the multiplicative noise that a mix with `noise` and `key` drew: mix with perm the
// identity, lam 1 and the additive level 0 is exactly that product.
at::Tensor times_mult_noise(const at::Tensor& g, const at::Tensor& lam, const at::Tensor& noise,
                            const at::Tensor& key) {
  const auto identity = at::arange(g.size(0), key.options());
  const auto mult_only = at::cat({at::zeros_like(noise.narrow(0, 0, 1)), noise.narrow(0, 1, 1)});
  return mix(g, identity, at::ones_like(lam), mult_only, key);
}

class MixFunction : public torch::autograd::Function<MixFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& perm,
                            const at::Tensor& lam, const std::optional<at::Tensor>& noise,
                            const std::optional<at::Tensor>& key) {
    const bool need_x = lam.requires_grad();
    const bool noisy = noise.has_value() && noise->defined();
    ctx->save_for_backward({perm, lam, need_x ? x : at::Tensor(), noisy ? *noise : at::Tensor(),
                            noisy && key ? *key : at::Tensor()});
    at::AutoDispatchBelowADInplaceOrView guard;
    return mix(x, perm, lam, noise, key);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &perm = saved[0], &lam = saved[1], &x = saved[2], &noise = saved[3], &key = saved[4];
    const auto g = noise.defined() ? times_mult_noise(grads[0], lam, noise, key) : grads[0];
    at::Tensor grad_x, grad_lam;
    if (ctx->needs_input_grad(0)) grad_x = MixBackwardFunction::apply(g, perm, lam);
    if (ctx->needs_input_grad(2)) grad_lam = lam_grad(g, x, perm, lam);
    return {grad_x, at::Tensor(), grad_lam, at::Tensor(), at::Tensor()};
  }
};

at::Tensor mix_autograd(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& lam,
                        const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& key) {
  return MixFunction::apply(x, perm, lam, noise, key);
}

at::Tensor mix_backward_autograd(const at::Tensor& g, const at::Tensor& perm, const at::Tensor& lam) {
  return MixBackwardFunction::apply(g, perm, lam);
}

}  // namespace

TORCH_LIBRARY_IMPL(manifold_mixup, Autograd, m) {
  m.impl("mix", &mix_autograd);
  m.impl("_mix_backward", &mix_backward_autograd);
}

}  // namespace manifold_mixup
