// The C++ API of manifold-mixup, for hosts that train libtorch models without Python:
// libmanifold_mixup_core, which the Python module and the C library (manifold_mixup.h, the C
// API) link too. Installed as <manifold_mixup/manifold_mixup.hpp>; link the CMake target
// ManifoldMixup::core (find_package(ManifoldMixup REQUIRED COMPONENTS core)).
//
//   Mixer           per-batch state: weights, permutation, chosen point; mixed losses (mixer.h)
//   Schedule        alpha schedules (schedule.h)
//   mix             the dispatcher op, differentiable (ops/mix.h)
//   PointRewrite    mixup points inserted into a TorchScript module by name or by the selection
//                   rules (selection.h), removed exactly (point_rewrite.h); forward() runs one
//                   forward pass in a batch, or a plain one (forward.h)
//   MixupPoint      the same for torch::nn models: a wrapper module (mixup_point.h)
//   ArgumentError, NotFoundError, StateError, IoError
//                   what the core throws, by kind, all c10::Error (errors.h)
//
// A training step on a TorchScript module:
//   auto mixer = std::make_shared<manifold_mixup::Mixer>(manifold_mixup::MixerOptions{});
//   torch::jit::Module net = torch::jit::load("model.pt");
//   manifold_mixup::PointRewrite points(mixer, net, {"layer1", "layer2"});
//   mixer->begin_batch(x.size(0), x.device());
//   auto loss = mixer->mixed_cross_entropy(manifold_mixup::forward(mixer.get(), net, x), y).mean();
//   loss.backward(); optimizer.step(); mixer->end_batch();
#pragma once

#include "errors.h"
#include "forward.h"
#include "mixer.h"
#include "mixup_point.h"
#include "ops/mix.h"
#include "ops/patchup.h"
#include "point_rewrite.h"
#include "schedule.h"
#include "selection.h"
