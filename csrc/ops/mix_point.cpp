// The kernel of manifold_mixup::_mix_point(Any point, Tensor x) -> Tensor (schema in mix.cpp),
// the call PointRewrite inserts after each call of a mixup point in a TorchScript graph. It
// returns Mixer::point_output(x) when `point` is a registered point (point_registry.h) of a
// module in training mode, outside a plain forward; otherwise x.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <torch/csrc/jit/api/module.h>
#include <torch/library.h>

#include "point_registry.h"

namespace manifold_mixup {
namespace {

// Boxed, because its first argument is any module object.
void mix_point_kernel(const c10::OperatorHandle&, torch::jit::Stack* stack) {
  at::Tensor x = torch::jit::pop(*stack).toTensor();
  c10::IValue point = torch::jit::pop(*stack);
  if (point.isObject() && !in_plain_forward()) {
    const std::optional<PointEntry> entry = find_point(&point.toObjectRef());
    // A module in eval mode never mixes, as the Python package's forward hooks check too.
    if (entry && torch::jit::Module(point.toObject()).is_training())
      x = entry->mixer->point_output(entry->index, x);
  }
  torch::jit::push(*stack, std::move(x));
}

}  // namespace

// CompositeImplicitAutograd, as a kernel given with the schema would be: autograd sees the mix
// op that point_output calls.
TORCH_LIBRARY_IMPL(manifold_mixup, CompositeImplicitAutograd, m) {
  m.impl("_mix_point", torch::CppFunction::makeFromBoxedFunction<&mix_point_kernel>());
}

}  // namespace manifold_mixup
