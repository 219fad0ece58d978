// The C++ API of manifold-mixup, for hosts that train libtorch models without Python.
//
//   Mixer           per-batch state: weights, permutation, chosen point; mixed losses (mixer.h)
//   Schedule        alpha schedules (schedule.h)
//   mix             the dispatcher op, differentiable (ops/mix.h)
//   JitHook         mixup points installed on a TorchScript module by name or by the selection
//                   rules, removed exactly; forward() for one batch (hooks.h)
//   MixupPoint      the same for torch::nn models: a wrapper module (mixup_point.h)
//
// A training step on a TorchScript module:
//   auto mixer = std::make_shared<manifold_mixup::Mixer>(manifold_mixup::MixerOptions{});
//   torch::jit::Module net = torch::jit::load("model.pt");
//   manifold_mixup::JitHook hook(mixer, net, {"layer1", "layer2"});
//   mixer->begin_batch(x.size(0), x.device());
//   auto loss = mixer->mixed_cross_entropy(manifold_mixup::forward(mixer.get(), net, x), y).mean();
//   loss.backward(); optimizer.step(); mixer->end_batch();
#pragma once

#include "hooks.h"
#include "mixer.h"
#include "mixup_point.h"
#include "ops/mix.h"
#include "schedule.h"
#include "selection.h"
