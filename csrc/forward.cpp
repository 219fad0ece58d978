#include "forward.h"

#include "errors.h"
#include "point_registry.h"

namespace manifold_mixup {

at::Tensor forward(Mixer* mixer, torch::jit::Module& module, const at::Tensor& x) {
  MM_CHECK_ARG(x.defined(), "forward: the input is undefined");
  c10::IValue out;
  if (mixer) {
    MM_CHECK_STATE(mixer->in_batch(), "forward: no batch has begun (call begin_batch first)");
    MM_CHECK_ARG(x.dim() >= 1 && x.size(0) == mixer->batch_size(), "forward: the input must have the ",
                 "batch's ", mixer->batch_size(), " samples along dim 0, got shape ", x.sizes());
    // Each forward of the batch mixes at the chosen point, with the batch's lam and perm.
    mixer->begin_forward();
    out = module.forward({module.is_training() ? mixer->mix_input(x) : x});
  } else {
    PlainForwardGuard plain;
    out = module.forward({x});
  }
  TORCH_CHECK(out.isTensor(), "forward: the module returned ", out.tagKind(), ", not a Tensor");
  return out.toTensor();
}

}  // namespace manifold_mixup
