// Schemas of the manifold_mixup ops and the checks every backend of mix shares.
// Backends of mix live beside this file: cpu/, cuda/, meta/, autograd/; mix_point's kernel in
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

at::MemoryFormat result_format(const at::Tensor& x) {
  // suggest_memory_format is ChannelsLast or ChannelsLast3d only for 4-d and 5-d tensors laid
  // out that way; dim 0 is then the outermost dimension, as in a contiguous tensor.
  return x.suggest_memory_format();
}

at::Tensor empty_result(const at::Tensor& x) { return at::empty_like(x, result_format(x)); }

Operands::Operands(const at::Tensor& x_in, const at::Tensor& perm_in, const at::Tensor& lam_in) {
  x = x_in.contiguous(result_format(x_in));
  perm = perm_in.contiguous();
  lam = lam_in.to(at::toOpMathType(x.scalar_type())).contiguous();
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
  m.def("mix(Tensor x, Tensor perm, Tensor lam) -> Tensor");
  // The gradient of mix with respect to x; private (leading underscore), as torchvision names
  // its backward ops: it is public only so that autograd can differentiate it again.
  m.def("_mix_backward(Tensor grad, Tensor perm, Tensor lam) -> Tensor");
  // Inserted into TorchScript graphs by PointRewrite; the kernel is in ops/mix_point.cpp.
  // CONSERVATIVE: it may return its input unchanged, and must never be moved or removed.
  m.def(torch::schema("mix_point(Any point, Tensor x) -> Tensor", c10::AliasAnalysisKind::CONSERVATIVE));
}

}  // namespace manifold_mixup
