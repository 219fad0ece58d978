// One forward pass of a TorchScript module for a C++ host (and the C ABI's mm_forward).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/csrc/jit/api/module.h>

#include "export.h"
#include "mixer.h"

namespace manifold_mixup {

// With a mixer: checks that a batch of it is open (StateError) and that dim 0 of x is the batch
// size (ArgumentError), mixes x when the input is the chosen point, and runs the module's
// forward, where its installed points mix. With mixer == nullptr: a plain forward, in which no
// point mixes, even while a batch of their mixer is open (a flag of the calling thread: code
// the module forks onto other threads is not covered). A module in eval mode mixes nothing
// either way. Throws c10::Error when the forward returns anything but one Tensor; TorchScript's
// own failures propagate as libtorch throws them.
MM_CORE_API at::Tensor forward(Mixer* mixer, torch::jit::Module& module, const at::Tensor& x);

}  // namespace manifold_mixup
