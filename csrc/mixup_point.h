// MixupPoint: a mixup point for C++ frontend (torch::nn) models, which have no forward hooks.
// Wrap the module whose output should mix, attach the wrappers to a Mixer, train as usual:
//
//   torch::nn::Sequential net(torch::nn::Linear(4, 8), MixupPoint(torch::nn::Linear(8, 8)),
//                             torch::nn::Linear(8, 3));
//   auto mixer = std::make_shared<Mixer>(MixerOptions{});
//   attach_points(mixer, *net);                       // point 0: "1", the wrapped Linear
//   mixer->begin_batch(B, x.device());
//   auto loss = mixer->mixed_cross_entropy(net->forward(mixer->mix_input(x)), y).mean();
//   ...; mixer->end_batch();
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "errors.h"
#include "mixer.h"

namespace manifold_mixup {

class MixupPointImpl : public torch::nn::Module {
 public:
  explicit MixupPointImpl(torch::nn::AnyModule inner) : inner_(std::move(inner)) {
    register_module("inner", inner_.ptr());
  }
  // Any module holder or module pointer whose forward takes and returns one Tensor.
  template <typename M, typename = std::enable_if_t<!std::is_same_v<std::decay_t<M>, torch::nn::AnyModule>>>
  explicit MixupPointImpl(M inner) : MixupPointImpl(torch::nn::AnyModule(std::move(inner))) {}

  // inner(x), mixed when this point is the attached mixer's chosen one (first call per batch)
  // and the wrapper is in training mode: a module in eval mode never mixes.
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor out = inner_.forward(x);
    return mixer_ && is_training() ? mixer_->point_output(index_, out) : out;
  }

  // Makes this wrapper point `index` of `mixer` (see attach_points); detach() undoes it.
  void attach(std::shared_ptr<Mixer> mixer, int64_t index) {
    mixer_ = std::move(mixer);
    index_ = index;
  }
  void detach() {
    mixer_.reset();
    index_ = -1;
  }
  bool attached() const { return mixer_ != nullptr; }
  torch::nn::AnyModule& inner() { return inner_; }

 private:
  torch::nn::AnyModule inner_;
  std::shared_ptr<Mixer> mixer_;
  int64_t index_ = -1;
};
TORCH_MODULE(MixupPoint);

// Makes every MixupPoint inside `root` (in named_modules order) a point of `mixer`, named by its
// path; returns the names. Throws StateError if the mixer already has points or is in a batch,
// ArgumentError if there is no MixupPoint.
inline std::vector<std::string> attach_points(const std::shared_ptr<Mixer>& mixer, torch::nn::Module& root) {
  MM_CHECK_ARG(mixer, "attach_points: the mixer is null");
  MM_CHECK_STATE(mixer->num_points() == 0, "attach_points: the mixer already has ", mixer->num_points(),
              " points (detach_points first)");
  std::vector<std::string> names;
  for (const auto& item : root.named_modules("", /*include_self=*/false)) {
    if (auto* point = dynamic_cast<MixupPointImpl*>(item.value().get())) {
      point->attach(mixer, mixer->add_point(item.key()));
      names.push_back(item.key());
    }
  }
  MM_CHECK_ARG(!names.empty(), "attach_points: no MixupPoint inside the module");
  return names;
}

// Detaches every MixupPoint inside `root` and clears the mixer's points.
inline void detach_points(const std::shared_ptr<Mixer>& mixer, torch::nn::Module& root) {
  MM_CHECK_ARG(mixer, "detach_points: the mixer is null");
  mixer->clear_points();
  for (const auto& item : root.named_modules("", /*include_self=*/false))
    if (auto* point = dynamic_cast<MixupPointImpl*>(item.value().get())) point->detach();
}

}  // namespace manifold_mixup
