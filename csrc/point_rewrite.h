// Mixup points in a TorchScript module (torch::jit::Module), for C and C++ hosts.
//
// TorchScript compiles a submodule's call into its parent's code, so a hook added at run time
// to a child of a loaded module never fires. A PointRewrite therefore rewrites the loaded
// module: in the methods of every ancestor of a point, after each
// `prim::CallMethod[name="forward"]` whose receiver is the point (a `prim::GetAttr` chain from
// self), it inserts a call to the op manifold_mixup::_mix_point(point, x) (ops/mix_point.cpp),
// passing the point's module object, which the op looks up in the point registry
// (point_registry.h). A method graph belongs to a module *type*, which several instances may
// share; the registry, keyed by object identity, keeps the unnamed instances unmixed.
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

#include "export.h"
#include "mixer.h"

namespace manifold_mixup {

// The mixup points of one Mixer, inserted into one TorchScript module by rewriting its methods.
// Undone by remove() or on destruction. At most one PointRewrite at a time may rewrite a given
// module type.
class MM_CORE_API PointRewrite {
 public:
  // Inserts points at the submodules at `names` (dotted paths), or by select_points(root) when
  // `names` is empty (keeping the candidates that are called with a single Tensor result), and
  // adds them, in order, as the mixer's points. Leaves the module and the mixer as they were
  // when it throws: NotFoundError when a name is not a submodule (the message names it);
  // ArgumentError when a name is given twice, when a point has no call site or one whose result
  // is not a single Tensor, or when the selection rules find nothing; StateError when the mixer
  // is in a batch or has points, or when another rewrite holds one of the objects or types.
  PointRewrite(std::shared_ptr<Mixer> mixer, torch::jit::Module root,
               std::vector<std::string> names = {});
  ~PointRewrite();
  PointRewrite(const PointRewrite&) = delete;
  PointRewrite& operator=(const PointRewrite&) = delete;

  // Restores every rewritten method and clears the mixer's points; ends the mixer's batch first
  // if one is open (removal never fails). Idempotent.
  void remove();
  bool installed() const;

  const std::vector<std::string>& point_names() const;
  // Which selection rule chose the points ("named by the host" when names were given).
  const std::string& selection() const;
  // How many times point i mixed (Mixer::point_mixes()[i]). ArgumentError when i is out of
  // range, StateError after remove().
  int64_t mix_count(size_t i) const;
  const std::shared_ptr<Mixer>& mixer() const;
  const torch::jit::Module& module() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace manifold_mixup
