// Schema of the manifold_mixup ops and the checks every backend shares.
// Backends live beside this file: cpu/, cuda/, meta/, autograd/.
#include "ops/mix.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace manifold_mixup {

namespace detail {

void check_defined(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& lam,
                   const char* x_name) {
  TORCH_CHECK(x.defined(), "mix: ", x_name, " is an undefined tensor");
  TORCH_CHECK(perm.defined(), "mix: perm is an undefined tensor");
  TORCH_CHECK(lam.defined(), "mix: lam is an undefined tensor");
}

void check_mix_args(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& lam,
                    const char* x_name) {
  check_defined(x, perm, lam, x_name);
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "mix: ", x_name,
              " must be a floating tensor (float32, float64, float16 or bfloat16), got ",
              x.scalar_type());
  TORCH_CHECK(x.dim() >= 1, "mix: ", x_name, " must have at least one dimension (the batch), got a ",
              "0-dimensional tensor");
  TORCH_CHECK(perm.scalar_type() == at::kLong, "mix: perm must be an int64 tensor, got ",
              perm.scalar_type());
  TORCH_CHECK(at::isFloatingType(lam.scalar_type()), "mix: lam must be a floating tensor, got ",
              lam.scalar_type());
  TORCH_CHECK(perm.dim() == 1, "mix: perm must have shape [B] (one index per sample), got ",
              perm.dim(), " dimensions");
  TORCH_CHECK(lam.dim() == 1, "mix: lam must have shape [B] (one weight per sample), got ",
              lam.dim(), " dimensions");
  const auto& b = x.sym_size(0);
  TORCH_CHECK(perm.sym_size(0) == b, "mix: perm must have length B = ", b, " (", x_name,
              ".size(0)), got ", perm.sym_size(0));
  TORCH_CHECK(lam.sym_size(0) == b, "mix: lam must have length B = ", b, " (", x_name,
              ".size(0)), got ", lam.sym_size(0));
  TORCH_CHECK(perm.device() == x.device(), "mix: perm must be on ", x_name, "'s device (",
              x.device(), "), got ", perm.device());
  TORCH_CHECK(lam.device() == x.device(), "mix: lam must be on ", x_name, "'s device (",
              x.device(), "), got ", lam.device());
}

at::ScalarType opmath_type(at::ScalarType x_dtype) {
  return x_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

Operands::Operands(const at::Tensor& x_in, const at::Tensor& perm_in, const at::Tensor& lam_in,
                   const char* x_name) {
  check_mix_args(x_in, perm_in, lam_in, x_name);
  x = x_in.contiguous();
  perm = perm_in.contiguous();
  lam = lam_in.to(opmath_type(x.scalar_type())).contiguous();
  batch = x.size(0);
  features = batch == 0 ? 0 : x.numel() / batch;
}

}  // namespace detail

at::Tensor mix(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& lam) {
  detail::check_defined(x, perm, lam, "x");
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("manifold_mixup::mix", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return op.call(x, perm, lam);
}

at::Tensor mix_backward(const at::Tensor& grad, const at::Tensor& perm, const at::Tensor& lam) {
  detail::check_defined(grad, perm, lam, "grad");
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("manifold_mixup::mix_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return op.call(grad, perm, lam);
}

TORCH_LIBRARY(manifold_mixup, m) {
  m.def("mix(Tensor x, Tensor perm, Tensor lam) -> Tensor");
  m.def("mix_backward(Tensor grad, Tensor perm, Tensor lam) -> Tensor");
}

}  // namespace manifold_mixup
