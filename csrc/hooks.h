// Mixup points on TorchScript modules (torch::jit::Module), for C and C++ hosts.
//
// TorchScript compiles a submodule's call into its parent's code, so a hook added at run time
// to a child of a loaded module never fires. Installing a point therefore rewrites the loaded
// module: in the methods of every ancestor of the point, after each
// `prim::CallMethod[name="forward"]` whose receiver is the point (a `prim::GetAttr` chain from
// self), it inserts a call to the op
//     manifold_mixup::mix_point(Any point, Tensor x) -> Tensor
// passing the point's module object. The op looks that object up in a registry keyed by object
// identity and, when it is a point of a mixer in a batch, returns Mixer::point_output(x); for
// any other object it returns x. A method graph belongs to a module *type*, which several
// instances may share; the identity registry is what keeps the unnamed instances unmixed.
//
// Graph executors copy (and inline) a method's graph on its first run, so rewriting a graph in
// place has no effect on a module that already ran. The rewrite is therefore made on copies, put
// in fresh functions that replace the methods of every ancestor type (their executors start
// empty); removing puts the original function objects back, which restores the module exactly,
// cached plans included. (Checked on libtorch 2.13: from C++, a forward graph rewritten in
// place after one forward keeps running the old plan.) So take torch::jit::Method handles after
// installing, and drop those taken while installed before removing: they name the replaced
// functions. Module::forward / run_method look the method up on each call and are always right.
#pragma once

#include <torch/csrc/jit/api/module.h>

#include <memory>
#include <string>
#include <vector>

#include "mixer.h"
#include "selection.h"

namespace manifold_mixup {

// Mixup points installed on one TorchScript module for one Mixer. Removed on destruction.
// At most one JitHook at a time may rewrite a given module type.
class JitHook {
 public:
  // Installs points on the submodules at `names` (dotted paths), or by select_points(root) when
  // `names` is empty, and adds them, in order, as the mixer's points. Throws c10::Error (and
  // leaves the module and the mixer as they were) when a name is not a submodule (the message
  // names it), when a point has no call site whose result is a single Tensor, when the mixer
  // already has points or is in a batch, or when another hook rewrites one of the same types.
  JitHook(std::shared_ptr<Mixer> mixer, torch::jit::Module root,
          std::vector<std::string> names = {});
  ~JitHook();
  JitHook(const JitHook&) = delete;
  JitHook& operator=(const JitHook&) = delete;

  // Restores every rewritten method and clears the mixer's points. Idempotent. Throws when the
  // mixer is in a batch (end it first).
  void remove();
  bool installed() const;

  const std::vector<std::string>& point_names() const;
  // Which selection rule chose the points ("named by the host" when names were given).
  const std::string& selection() const;
  // How many times point i mixed (Mixer::point_mixes()[i]).
  int64_t mix_count(size_t i) const;
  const std::shared_ptr<Mixer>& mixer() const;
  const torch::jit::Module& module() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// One forward pass of `module` in a batch of `mixer` (or a plain one when mixer is null): checks
// that dim 0 of x is the batch size, mixes x when the input is the chosen point, runs the
// module's forward (where the installed points mix) and checks that it returns one Tensor.
at::Tensor forward(Mixer* mixer, torch::jit::Module& module, const at::Tensor& x);

}  // namespace manifold_mixup
