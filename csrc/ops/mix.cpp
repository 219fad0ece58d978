// Schemas of the manifold_mixup ops and the checks every backend of mix shares.
// Backends of mix live beside this file: cpu/, cuda/, meta/, autograd/; _mix_point's kernel in
// mix_point.cpp.
#include "ops/mix.h"

#include <ATen/OpMathType.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "errors.h"

namespace manifold_mixup {

namespace detail {

void check_defined(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& lam,
                   const char* x_name) {
  MM_CHECK_ARG(x.defined(), "mix: ", x_name, " is an undefined tensor");
  MM_CHECK_ARG(perm.defined(), "mix: perm is an undefined tensor");
  MM_CHECK_ARG(lam.defined(), "mix: lam is an undefined tensor");
}

void check_mix_args(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& lam,
                    const char* x_name) {
  check_defined(x, perm, lam, x_name);
  MM_CHECK_ARG(at::isFloatingType(x.scalar_type()), "mix: ", x_name,
              " must be a floating tensor (float32, float64, float16 or bfloat16), got ",
              x.scalar_type());
  MM_CHECK_ARG(x.dim() >= 1, "mix: ", x_name, " must have at least one dimension (the batch), got a ",
              "0-dimensional tensor");
  MM_CHECK_ARG(perm.scalar_type() == at::kLong, "mix: perm must be an int64 tensor, got ",
              perm.scalar_type());
  MM_CHECK_ARG(at::isFloatingType(lam.scalar_type()), "mix: lam must be a floating tensor, got ",
              lam.scalar_type());
  MM_CHECK_ARG(perm.dim() == 1, "mix: perm must have shape [B] (one index per sample), got ",
              perm.dim(), " dimensions");
  MM_CHECK_ARG(lam.dim() == 1, "mix: lam must have shape [B] (one weight per sample), got ",
              lam.dim(), " dimensions");
  const auto& b = x.sym_size(0);
  MM_CHECK_ARG(perm.sym_size(0) == b, "mix: perm must have length B = ", b, " (", x_name,
              ".size(0)), got ", perm.sym_size(0));
  MM_CHECK_ARG(lam.sym_size(0) == b, "mix: lam must have length B = ", b, " (", x_name,
              ".size(0)), got ", lam.sym_size(0));
  MM_CHECK_ARG(perm.device() == x.device(), "mix: perm must be on ", x_name, "'s device (",
              x.device(), "), got ", perm.device());
  MM_CHECK_ARG(lam.device() == x.device(), "mix: lam must be on ", x_name, "'s device (",
              x.device(), "), got ", lam.device());
}

bool check_noise_args(const at::Tensor& x, const std::optional<at::Tensor>& noise,
                      const std::optional<at::Tensor>& key) {
  const bool has_noise = noise.has_value() && noise->defined();
  const bool has_key = key.has_value() && key->defined();
  MM_CHECK_ARG(has_noise == has_key, "mix: noise and key go together (Noisy Feature Mixup's ",
               "levels and the Philox key of its draws): pass both or neither");
  if (!has_noise) return false;
  MM_CHECK_ARG(at::isFloatingType(noise->scalar_type()) && noise->dim() == 1 &&
                   noise->sym_size(0) == 2,
               "mix: noise must be a floating tensor [2] (the additive and multiplicative noise ",
               "levels), got ", noise->scalar_type(), " of shape ", noise->sym_sizes());
  MM_CHECK_ARG(key->scalar_type() == at::kLong && key->sym_numel() == 1,
               "mix: key must be an int64 tensor of one element (a Philox key), got ",
               key->scalar_type(), " of shape ", key->sym_sizes());
  MM_CHECK_ARG(noise->device() == x.device() && key->device() == x.device(),
               "mix: noise and key must be on x's device (", x.device(), "), got ",
               noise->device(), " and ", key->device());
  return true;
}

at::MemoryFormat result_format(const at::Tensor& x, bool noisy) {
  // suggest_memory_format is ChannelsLast or ChannelsLast3d only for 4-d and 5-d tensors laid
  // out that way; dim 0 is then the outermost dimension, as in a contiguous tensor. The noise
  // is drawn in the logical order of the elements, which a contiguous result keeps.
  return noisy ? at::MemoryFormat::Contiguous : x.suggest_memory_format();
}

at::Tensor empty_result(const at::Tensor& x, bool noisy) {
  return at::empty_like(x, result_format(x, noisy));
}

Operands::Operands(const at::Tensor& x_in, const at::Tensor& perm_in, const at::Tensor& lam_in,
                   const std::optional<at::Tensor>& noise_in,
                   const std::optional<at::Tensor>& key_in) {
  const bool noisy = noise_in.has_value() && noise_in->defined();
  x = x_in.contiguous(result_format(x_in, noisy));
  perm = perm_in.contiguous();
  lam = lam_in.to(at::toOpMathType(x.scalar_type())).contiguous();
  if (noisy) {
    noise = noise_in->to(at::kFloat).contiguous();
    key = key_in->contiguous();
  }
  batch = x.size(0);
  features = batch == 0 ? 0 : x.numel() / batch;
}

}  // namespace detail

at::Tensor mix(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& lam,
               const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& key) {
  detail::check_defined(x, perm, lam, "x");
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("manifold_mixup::mix", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&,
                                         const std::optional<at::Tensor>&)>();
  return op.call(x, perm, lam, noise, key);
}

namespace detail {
at::Tensor _mix_backward(const at::Tensor& grad, const at::Tensor& perm, const at::Tensor& lam) {
  check_defined(grad, perm, lam, "grad");
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("manifold_mixup::_mix_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return op.call(grad, perm, lam);
}
}  // namespace detail

TORCH_LIBRARY(manifold_mixup, m) {
  // noise and key: Noisy Feature Mixup's levels and Philox key (ops/noise.h), both or neither.
  m.def("mix(Tensor x, Tensor perm, Tensor lam, Tensor? noise=None, Tensor? key=None) -> Tensor");
  // The gradient of mix with respect to x; private (leading underscore), as torchvision names
  // its backward ops: it is public only so that autograd can differentiate it again.
  m.def("_mix_backward(Tensor grad, Tensor perm, Tensor lam) -> Tensor");
  // Inserted into TorchScript graphs by PointRewrite; the kernel is in ops/mix_point.cpp.
  // Private (leading underscore): it takes any module object and has side effects on the
  // Mixer, so it is no functional op for users or opcheck. CONSERVATIVE: it may return its
  // input unchanged, and must never be moved or removed.
  m.def(torch::schema("_mix_point(Any point, Tensor x) -> Tensor", c10::AliasAnalysisKind::CONSERVATIVE));
}

}  // namespace manifold_mixup
