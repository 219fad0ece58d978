// The C ABI's losses and gradients: mixed and plain cross-entropy, mixed regression targets,
// mean squared error, backward.
#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/mse_loss.h>
#include <torch/csrc/autograd/autograd.h>

#include "errors.h"
#include "guard.h"
#include "handles.h"
#include "manifold_mixup.h"
#include "mixer.h"

using manifold_mixup::Mixer;
using manifold_mixup::capi::guard;
using manifold_mixup::capi::live;
using manifold_mixup::capi::new_tensor;
using manifold_mixup::capi::nonnull;

namespace {

// logits [B, C] floating against int64 class indices [B] in [0, C): libtorch's own check of
// the range is an assertion, not an argument error.
void check_class_targets(const at::Tensor& logits, const at::Tensor& targets) {
  MM_CHECK_ARG(at::isFloatingType(logits.scalar_type()) && logits.dim() == 2, "logits must be a floating ",
               "tensor [B, C], got ", logits.scalar_type(), " of shape ", logits.sizes());
  MM_CHECK_ARG(targets.scalar_type() == at::kLong && targets.dim() == 1 && targets.size(0) == logits.size(0),
               "targets must be int64 class indices of shape [", logits.size(0), "], got ",
               targets.scalar_type(), " of shape ", targets.sizes());
  if (targets.numel() > 0) {
    const int64_t lo = targets.min().item<int64_t>(), hi = targets.max().item<int64_t>();
    MM_CHECK_ARG(lo >= 0 && hi < logits.size(1), "targets must be class indices in [0, ", logits.size(1),
                 "), got values in [", lo, ", ", hi, "]");
  }
}

}  // namespace

extern "C" {

mm_status mm_mixed_cross_entropy(const mm_mixer* mixer, const mm_tensor* logits, const mm_tensor* targets,
                                 mm_tensor** loss) {
  return guard(__func__, [&] {
    const Mixer& m = *live(mixer, "mixer").mixer;
    const at::Tensor& l = live(logits, "logits").t;
    const at::Tensor& t = live(targets, "targets").t;
    nonnull(loss, "loss");
    MM_CHECK_STATE(m.in_batch(), "no batch has begun (call mm_batch_begin first)");
    check_class_targets(l, t);
    manifold_mixup::ClassLossOptions mean;
    mean.reduction = at::Reduction::Mean;
    *loss = new_tensor(m.mixed_cross_entropy(l, t, mean));
  });
}

mm_status mm_cross_entropy(const mm_tensor* logits, const mm_tensor* targets, mm_tensor** loss) {
  return guard(__func__, [&] {
    const at::Tensor& l = live(logits, "logits").t;
    const at::Tensor& t = live(targets, "targets").t;
    nonnull(loss, "loss");
    check_class_targets(l, t);
    *loss = new_tensor(at::cross_entropy_loss(l, t));
  });
}

mm_status mm_mix_targets(const mm_mixer* mixer, const mm_tensor* targets, mm_tensor** mixed) {
  return guard(__func__, [&] {
    const Mixer& m = *live(mixer, "mixer").mixer;
    const at::Tensor& t = live(targets, "targets").t;
    nonnull(mixed, "mixed");
    *mixed = new_tensor(m.mix_targets(t));
  });
}

mm_status mm_mse_loss(const mm_tensor* prediction, const mm_tensor* target, mm_tensor** loss) {
  return guard(__func__, [&] {
    const at::Tensor& p = live(prediction, "prediction").t;
    const at::Tensor& t = live(target, "target").t;
    nonnull(loss, "loss");
    MM_CHECK_ARG(at::isFloatingType(p.scalar_type()) && at::isFloatingType(t.scalar_type()) && p.sizes() == t.sizes(),
                 "prediction and target must be floating tensors of one shape, got ", p.scalar_type(),
                 p.sizes(), " and ", t.scalar_type(), t.sizes());
    *loss = new_tensor(at::mse_loss(p, t));
  });
}

mm_status mm_backward(const mm_tensor* loss) {
  return guard(__func__, [&] {
    const at::Tensor& l = live(loss, "loss").t;
    MM_CHECK_ARG(l.numel() == 1, "the loss must be a scalar, has ", l.numel(), " elements");
    MM_CHECK_ARG(l.requires_grad(), "the loss does not require grad (no parameter in training reached it)");
    torch::autograd::backward({l.reshape({})});
  });
}

}  // extern "C"
